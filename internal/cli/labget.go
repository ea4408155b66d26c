package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/lab"
)

func labGetCmd(name *string) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:       "get nodes|pods|services|namespaces|networkpolicies",
		Short:     "List lab objects",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"nodes", "pods", "services", "namespaces", "networkpolicies"},
		RunE: func(cmd *cobra.Command, args []string) error {
			return printGet(*name, args[0], output, os.Stdout)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "", "wide or json")
	return c
}

func printGet(name, kind, output string, out io.Writer) error {
	if alias, ok := map[string]string{"node": "nodes", "no": "nodes", "pod": "pods", "po": "pods", "service": "services", "svc": "services",
		"namespace": "namespaces", "ns": "namespaces", "networkpolicy": "networkpolicies", "netpol": "networkpolicies"}[kind]; ok {
		kind = alias
	}
	switch kind {
	case "nodes", "pods", "services", "namespaces", "networkpolicies":
	default:
		return fmt.Errorf("unknown kind (want nodes, pods, services, namespaces or networkpolicies)")
	}
	c := lab.NewClient(name)
	var raw json.RawMessage
	if err := c.Do("GET", "/v1/"+kind, nil, &raw); err != nil {
		return err
	}
	if output == "json" {
		_, err := out.Write(append(raw, '\n'))
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	wide := output == "wide"
	switch kind {
	case "nodes":
		var l corev1.NodeList
		if err := json.Unmarshal(raw, &l); err != nil {
			return err
		}
		sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
		fmt.Fprintln(w, "NAME\tINTERNAL-IP\tPOD-CIDRS\tZONE")
		for _, n := range l.Items {
			var ips []string
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					ips = append(ips, a.Address)
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", n.Name, strings.Join(ips, ","), strings.Join(n.Spec.PodCIDRs, ","), n.Labels["topology.kubernetes.io/zone"])
		}
	case "pods":
		var l corev1.PodList
		if err := json.Unmarshal(raw, &l); err != nil {
			return err
		}
		sort.Slice(l.Items, func(i, j int) bool {
			a, b := l.Items[i], l.Items[j]
			return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
		})
		fmt.Fprint(w, "NAMESPACE\tNAME\tSTATUS\tIP\tNODE")
		if wide {
			fmt.Fprint(w, "\tIPS\tPORTS\tLABELS")
		}
		fmt.Fprintln(w)
		for _, p := range l.Items {
			status := string(p.Status.Phase)
			if status == "" {
				status = "Pending"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s", p.Namespace, p.Name, status, dash(p.Status.PodIP), p.Spec.NodeName)
			if wide {
				var ips, ports, labels []string
				for _, ip := range p.Status.PodIPs {
					ips = append(ips, ip.IP)
				}
				for _, c := range p.Spec.Containers {
					for _, cp := range c.Ports {
						ports = append(ports, fmt.Sprintf("%d/%s", cp.ContainerPort, protoOr(cp.Protocol)))
					}
				}
				for k, v := range p.Labels {
					labels = append(labels, k+"="+v)
				}
				sort.Strings(labels)
				fmt.Fprintf(w, "\t%s\t%s\t%s", dash(strings.Join(ips, ",")), dash(strings.Join(ports, ",")), dash(strings.Join(labels, ",")))
			}
			fmt.Fprintln(w)
		}
	case "services":
		var l corev1.ServiceList
		if err := json.Unmarshal(raw, &l); err != nil {
			return err
		}
		eps := map[string][]string{}
		if wide {
			var sl discoveryv1.EndpointSliceList
			if err := c.Do("GET", "/v1/endpointslices", nil, &sl); err != nil {
				return err
			}
			for _, s := range sl.Items {
				key := s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName]
				for _, e := range s.Endpoints {
					for _, a := range e.Addresses {
						for _, p := range s.Ports {
							if p.Port != nil {
								eps[key] = append(eps[key], fmt.Sprintf("%s:%d", a, *p.Port))
							}
						}
					}
				}
			}
		}
		fmt.Fprint(w, "NAMESPACE\tNAME\tTYPE\tCLUSTER-IP\tPORTS")
		if wide {
			fmt.Fprint(w, "\tCLUSTER-IPS\tSELECTOR\tENDPOINTS")
		}
		fmt.Fprintln(w)
		for _, s := range l.Items {
			var ports []string
			for _, p := range s.Spec.Ports {
				if p.NodePort != 0 {
					ports = append(ports, fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, protoOr(p.Protocol)))
				} else {
					ports = append(ports, fmt.Sprintf("%d/%s", p.Port, protoOr(p.Protocol)))
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s", s.Namespace, s.Name, s.Spec.Type, dash(s.Spec.ClusterIP), dash(strings.Join(ports, ",")))
			if wide {
				var sel []string
				for k, v := range s.Spec.Selector {
					sel = append(sel, k+"="+v)
				}
				sort.Strings(sel)
				e := eps[s.Namespace+"/"+s.Name]
				sort.Strings(e)
				fmt.Fprintf(w, "\t%s\t%s\t%s", dash(strings.Join(s.Spec.ClusterIPs, ",")), dash(strings.Join(sel, ",")), dash(strings.Join(e, ",")))
			}
			fmt.Fprintln(w)
		}
	case "namespaces":
		var l corev1.NamespaceList
		if err := json.Unmarshal(raw, &l); err != nil {
			return err
		}
		sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
		fmt.Fprintln(w, "NAME\tLABELS")
		for _, n := range l.Items {
			fmt.Fprintf(w, "%s\t%s\n", n.Name, labelString(n.Labels))
		}
	case "networkpolicies":
		var l networkingv1.NetworkPolicyList
		if err := json.Unmarshal(raw, &l); err != nil {
			return err
		}
		sort.Slice(l.Items, func(i, j int) bool {
			return l.Items[i].Namespace+"/"+l.Items[i].Name < l.Items[j].Namespace+"/"+l.Items[j].Name
		})
		fmt.Fprintln(w, "NAMESPACE\tNAME\tPOD-SELECTOR\tTYPES")
		for _, p := range l.Items {
			sel, _ := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
			var types []string
			for _, t := range p.Spec.PolicyTypes {
				types = append(types, string(t))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", p.Namespace, p.Name, dash(sel.String()), dash(strings.Join(types, ",")))
		}
	}
	return nil
}

func labelString(m map[string]string) string {
	var labels []string
	for k, v := range m {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	return dash(strings.Join(labels, ","))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func protoOr(p corev1.Protocol) string {
	if p == "" {
		return "TCP"
	}
	return string(p)
}

// printMatrix prints one reachability matrix per port and protocol: rows
// are sources, columns are targets (numbered, with a legend).
func printMatrix(out io.Writer, res []lab.ProbeResult) {
	type pp struct {
		port  int
		proto string
	}
	var order []pp
	by := map[pp]map[[2]string]bool{}
	podSet := map[string]bool{}
	for _, r := range res {
		k := pp{r.Port, r.Protocol}
		if by[k] == nil {
			by[k] = map[[2]string]bool{}
			order = append(order, k)
		}
		by[k][[2]string{r.From, r.To}] = r.Connected
		podSet[r.From], podSet[r.To] = true, true
	}
	var pods []string
	for p := range podSet {
		pods = append(pods, p)
	}
	sort.Strings(pods)
	sort.Slice(order, func(i, j int) bool {
		if order[i].port != order[j].port {
			return order[i].port < order[j].port
		}
		return order[i].proto < order[j].proto
	})
	ok := 0
	for _, r := range res {
		if r.Connected {
			ok++
		}
	}
	for _, k := range order {
		fmt.Fprintf(out, "\n%s/%d (rows: from, columns: to; ✓ connected, ✗ failed, . not probed)\n", k.proto, k.port)
		w := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
		fmt.Fprint(w, "\t")
		for i := range pods {
			fmt.Fprintf(w, "%d\t", i+1)
		}
		fmt.Fprintln(w)
		for i, from := range pods {
			fmt.Fprintf(w, "%d %s\t", i+1, from)
			for _, to := range pods {
				c, probed := by[k][[2]string{from, to}]
				mark := "."
				if probed && c {
					mark = "✓"
				} else if probed {
					mark = "✗"
				}
				fmt.Fprintf(w, "%s\t", mark)
			}
			fmt.Fprintln(w)
		}
		w.Flush()
	}
	fmt.Fprintf(out, "\n%d/%d connections succeeded\n", ok, len(res))
}

// printServiceProbe lists each client → Service try and the backend that
// answered, so load balancing and traffic policies are visible.
func printServiceProbe(out io.Writer, res []lab.ProbeResult) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FROM\tSERVICE\tTARGET\tPROTO\tANSWERED BY\tSEEN SOURCE")
	ok := 0
	for _, r := range res {
		ans, src := r.AnsweredBy, r.Source
		if !r.Connected {
			ans, src = "FAILED: "+r.Error, "-"
		} else {
			ok++
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.From, strings.TrimPrefix(r.To, "svc/"), r.Target, r.Protocol, ans, dash(src))
	}
	w.Flush()
	fmt.Fprintf(out, "%d/%d connections answered\n", ok, len(res))
}
