package cli

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/k8s"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netpol"
)

func policyCmd() *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Inspect NetworkPolicy"}
	c.AddCommand(policyExplainCmd())
	return c
}

func policyExplainCmd() *cobra.Command {
	var from, to, protocol, labName, kubeconfig string
	var port int
	var confirm bool
	c := &cobra.Command{
		Use:   "explain --from NS/POD --to NS/POD|IP --port P [--protocol TCP]",
		Short: "Say which policies select each side of a connection and which rule, if any, allows it",
		Long: "explain evaluates a connection with the same model the agents compile the\n" +
			"dataplane from. It reads pods, namespaces and policies from a lab (--lab)\n" +
			"or from the cluster (--kubeconfig, or $KUBECONFIG). In a lab, --probe also\n" +
			"tries the connection with real packets.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return fmt.Errorf("--from and --to are required")
			}
			proto := model.Protocol(strings.ToLower(protocol))
			switch proto {
			case model.TCP, model.UDP, model.SCTP:
			default:
				return fmt.Errorf("protocol %q: want TCP, UDP or SCTP", protocol)
			}
			if port < 1 || port > 65535 {
				return fmt.Errorf("--port %d: want 1-65535", port)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var client kubernetes.Interface
			if labName == "" {
				var err error
				if client, err = kubeClient(kubeconfig); err != nil {
					return err
				}
			}
			w, err := loadPolicyWorld(ctx, labName, client)
			if err != nil {
				return err
			}
			conn, err := resolveConn(w, from, to, proto, uint16(port))
			if err != nil {
				return err
			}
			d := w.Decide(conn)
			fmt.Print(d.String())
			if confirm {
				if labName == "" {
					return fmt.Errorf("--probe needs --lab")
				}
				return confirmByProbe(labName, from, to, port, protocol, d.Allowed)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&from, "from", "", "source pod (NAMESPACE/NAME)")
	f.StringVar(&to, "to", "", "destination pod (NAMESPACE/NAME) or IP address")
	f.IntVar(&port, "port", 0, "destination port")
	f.StringVar(&protocol, "protocol", "TCP", "TCP, UDP or SCTP")
	f.StringVar(&labName, "lab", "", "read the objects from this lab instead of a cluster")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (default: $KUBECONFIG or ~/.kube/config)")
	f.BoolVar(&confirm, "probe", false, "in a lab, confirm the answer with a real connection")
	return c
}

// loadPolicyWorld reads pods, namespaces and policies from a lab's API or
// a cluster.
func loadPolicyWorld(ctx context.Context, labName string, client kubernetes.Interface) (*netpol.World, error) {
	var pods corev1.PodList
	var nss corev1.NamespaceList
	var pols networkingv1.NetworkPolicyList
	if labName != "" {
		c := lab.NewClient(labName)
		for kind, into := range map[string]any{"pods": &pods, "namespaces": &nss, "networkpolicies": &pols} {
			if err := c.Do("GET", "/v1/"+kind, nil, into); err != nil {
				return nil, err
			}
		}
	} else {
		p, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list pods: %w", err)
		}
		n, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list namespaces: %w", err)
		}
		np, err := client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list networkpolicies: %w", err)
		}
		pods, nss, pols = *p, *n, *np
	}
	var pp []*corev1.Pod
	for i := range pods.Items {
		pp = append(pp, &pods.Items[i])
	}
	var nn []*corev1.Namespace
	for i := range nss.Items {
		nn = append(nn, &nss.Items[i])
	}
	var pl []*networkingv1.NetworkPolicy
	for i := range pols.Items {
		pl = append(pl, &pols.Items[i])
	}
	return k8s.PolicyWorld(pp, nn, pl, func(np *networkingv1.NetworkPolicy, err error) {
		fmt.Fprintf(os.Stderr, "warning: %v (the agents skip it too)\n", err)
	}), nil
}

// resolveConn turns NS/POD names (or an IP for the destination) into a
// connection between addresses, IPv4 preferred when both ends have it.
func resolveConn(w *netpol.World, from, to string, proto model.Protocol, port uint16) (netpol.Conn, error) {
	pod := func(s string) (model.PolicyPod, error) {
		ns, name, ok := strings.Cut(s, "/")
		if !ok {
			return model.PolicyPod{}, fmt.Errorf("%q: want NAMESPACE/NAME", s)
		}
		p, found := w.PodByName(ns, name)
		if !found {
			return model.PolicyPod{}, fmt.Errorf("pod %s not found (or not on the pod network yet)", s)
		}
		return p, nil
	}
	src, err := pod(from)
	if err != nil {
		return netpol.Conn{}, err
	}
	conn := netpol.Conn{Protocol: proto, Port: port}
	if a, err := netip.ParseAddr(to); err == nil {
		conn.Dst = a
		for _, ip := range src.IPs {
			if ip.Is4() == a.Is4() {
				conn.Src = ip
			}
		}
		if !conn.Src.IsValid() {
			return conn, fmt.Errorf("pod %s has no address of %s's family", from, to)
		}
		return conn, nil
	}
	dst, err := pod(to)
	if err != nil {
		return conn, err
	}
	for _, s := range src.IPs {
		for _, d := range dst.IPs {
			if s.Is4() == d.Is4() && !conn.Src.IsValid() {
				conn.Src, conn.Dst = s, d
			}
		}
	}
	if !conn.Src.IsValid() {
		return conn, fmt.Errorf("pods %s and %s share no address family", from, to)
	}
	return conn, nil
}

func confirmByProbe(labName, from, to string, port int, protocol string, predicted bool) error {
	res, err := probe(labName, lab.ProbeRequest{From: from, To: to, Port: port, Protocol: protocol, Timeout: time.Second})
	if err != nil {
		return err
	}
	if len(res) == 0 {
		return fmt.Errorf("probe: no such pair in the lab")
	}
	got := res[0].Connected
	word := map[bool]string{true: "connected", false: "did not connect"}[got]
	if got == predicted {
		fmt.Printf("probe: %s, as predicted\n", word)
		return nil
	}
	return exitError{code: 2, msg: fmt.Sprintf("probe: %s, but the model predicted otherwise (%s)", word, res[0].Error)}
}
