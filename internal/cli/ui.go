package cli

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/ui"
)

func labUICmd(name *string) *cobra.Command {
	var addr string
	c := &cobra.Command{
		Use:   "ui [--addr 127.0.0.1:8088]",
		Short: "Serve a web view of the lab: nodes, pods, services with endpoints, a live service map (drops in red) and a filterable flow table",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serveUI(cmd.Context(), addr, "lab "+*name, labUISource{c: lab.NewClient(*name)})
		},
	}
	c.Flags().StringVar(&addr, "addr", "127.0.0.1:8088", "listen address (loopback by default: the page has no authentication)")
	return c
}

// labUISource reads a lab's API.
type labUISource struct{ c *lab.Client }

func (s labUISource) State(ctx context.Context) (ui.State, error) {
	var nodes corev1.NodeList
	var pods corev1.PodList
	var svcs corev1.ServiceList
	var slices discoveryv1.EndpointSliceList
	for path, into := range map[string]any{"/v1/nodes": &nodes, "/v1/pods": &pods, "/v1/services": &svcs, "/v1/endpointslices": &slices} {
		if err := s.c.Do("GET", path, nil, into); err != nil {
			return ui.State{}, err
		}
	}
	return uiState(nodes.Items, pods.Items, svcs.Items, slices.Items), nil
}

// uiState turns API objects into what the page draws.
func uiState(nodes []corev1.Node, pods []corev1.Pod, svcs []corev1.Service, slices []discoveryv1.EndpointSlice) ui.State {
	st := ui.State{Nodes: []ui.Node{}, Pods: []ui.Pod{}, Services: []ui.Service{}}
	for _, n := range nodes {
		addr := ""
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && addr == "" {
				addr = a.Address
			}
		}
		st.Nodes = append(st.Nodes, ui.Node{Name: n.Name, Address: addr, PodCIDRs: n.Spec.PodCIDRs})
	}
	for _, p := range pods {
		if p.Spec.HostNetwork {
			continue // host-network pods are their node, not pod-network endpoints
		}
		var ips []string
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		st.Pods = append(st.Pods, ui.Pod{Name: p.Namespace + "/" + p.Name, Node: p.Spec.NodeName, IPs: ips, Labels: labelString(p.Labels)})
	}
	eps := map[string][]string{}
	for _, sl := range slices {
		key := sl.Namespace + "/" + sl.Labels[discoveryv1.LabelServiceName]
		for _, e := range sl.Endpoints {
			for _, a := range e.Addresses {
				for _, p := range sl.Ports {
					if p.Port != nil {
						eps[key] = append(eps[key], fmt.Sprintf("%s:%d", a, *p.Port))
					}
				}
			}
		}
	}
	for _, sv := range svcs {
		var ports []string
		for _, p := range sv.Spec.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", p.Port, protoOr(p.Protocol)))
		}
		key := sv.Namespace + "/" + sv.Name
		e := eps[key]
		sort.Strings(e)
		st.Services = append(st.Services, ui.Service{Name: key, ClusterIP: sv.Spec.ClusterIP, Ports: strings.Join(ports, ", "), Endpoints: e})
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Name < st.Nodes[j].Name })
	sort.Slice(st.Pods, func(i, j int) bool { return st.Pods[i].Name < st.Pods[j].Name })
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Name < st.Services[j].Name })
	return st
}

func (s labUISource) Flows(ctx context.Context) ([]flow.Record, error) {
	var nodes corev1.NodeList
	if err := s.c.Do("GET", "/v1/nodes", nil, &nodes); err != nil {
		return nil, err
	}
	var out []flow.Record
	for _, n := range nodes.Items {
		var page struct {
			Flows []flow.Record `json:"flows"`
		}
		if err := s.c.Do("GET", "/v1/flows?"+url.Values{"node": {n.Name}}.Encode(), nil, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Flows...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// clusterUISource reads a cluster through its apiserver; flows come from
// every agent through the apiserver's pod proxy.
type clusterUISource struct {
	client    kubernetes.Interface
	namespace string
	sources   []*flowSource
}

func (s *clusterUISource) State(ctx context.Context) (ui.State, error) {
	lo := metav1.ListOptions{}
	nodes, err := s.client.CoreV1().Nodes().List(ctx, lo)
	if err != nil {
		return ui.State{}, err
	}
	pods, err := s.client.CoreV1().Pods("").List(ctx, lo)
	if err != nil {
		return ui.State{}, err
	}
	svcs, err := s.client.CoreV1().Services("").List(ctx, lo)
	if err != nil {
		return ui.State{}, err
	}
	slices, err := s.client.DiscoveryV1().EndpointSlices("").List(ctx, lo)
	if err != nil {
		return ui.State{}, err
	}
	return uiState(nodes.Items, pods.Items, svcs.Items, slices.Items), nil
}

func (s *clusterUISource) Flows(ctx context.Context) ([]flow.Record, error) {
	var out []flow.Record
	for _, src := range s.sources {
		page, err := src.get(ctx, url.Values{})
		if err != nil {
			continue // an agent that does not answer leaves a gap, not an error page
		}
		out = append(out, page.Flows...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

func uiCmd() *cobra.Command {
	var addr, kubeconfig, namespace string
	c := &cobra.Command{
		Use:   "ui [--addr 127.0.0.1:8088]",
		Short: "Serve a web view of the cluster: nodes, pods, services with endpoints, a live service map (drops in red) and a filterable flow table",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := kubeClient(kubeconfig)
			if err != nil {
				return err
			}
			sources, err := clusterFlowSources(cmd.Context(), kubeconfig, namespace)
			if err != nil {
				return err
			}
			return serveUI(cmd.Context(), addr, "cluster", &clusterUISource{client: client, namespace: namespace, sources: sources})
		},
	}
	c.Flags().StringVar(&addr, "addr", "127.0.0.1:8088", "listen address (loopback by default: the page has no authentication)")
	c.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (default: $KUBECONFIG or ~/.kube/config)")
	c.Flags().StringVar(&namespace, "namespace", "kube-system", "namespace of the podnet DaemonSet")
	return c
}

func serveUI(ctx context.Context, addr, what string, src ui.Source) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("podnet %s: http://%s/\n", what, ln.Addr())
	srv := &http.Server{Handler: ui.Handler(src)}
	go func() { <-ctx.Done(); srv.Close() }()
	return srv.Serve(ln)
}
