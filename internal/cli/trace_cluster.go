package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/netpol"
	"github.com/podnet/podnet/internal/routing"
	"github.com/podnet/podnet/internal/trace"
)

// clusterEnv answers a trace from a cluster: objects from the apiserver,
// each node's routing decisions from its agent (/route, through the
// apiserver's pod proxy). Pods' own namespaces are out of reach.
type clusterEnv struct {
	ctx       context.Context
	client    kubernetes.Interface
	namespace string
	world     *netpol.World
	agents    map[string]string // node → agent pod
	nodes     map[string]corev1.Node
}

func newClusterEnv(ctx context.Context, kubeconfig, namespace string) (*clusterEnv, error) {
	client, err := kubeClient(kubeconfig)
	if err != nil {
		return nil, err
	}
	w, err := loadPolicyWorld(ctx, "", client)
	if err != nil {
		return nil, err
	}
	e := &clusterEnv{ctx: ctx, client: client, namespace: namespace, world: w, agents: map[string]string{}, nodes: map[string]corev1.Node{}}
	pods, err := agentPods(ctx, client, namespace)
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		e.agents[p.Spec.NodeName] = p.Name
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, n := range nodes.Items {
		e.nodes[n.Name] = n
	}
	return e, nil
}

func (e *clusterEnv) World() *netpol.World { return e.world }

func (e *clusterEnv) PodRoute(string, netip.Addr) (string, netip.Addr, error) {
	return "", netip.Addr{}, trace.ErrNotInspectable
}

func (e *clusterEnv) route(node string, dst netip.Addr) (agent.RouteAnswer, error) {
	var ans agent.RouteAnswer
	pod, ok := e.agents[node]
	if !ok {
		return ans, fmt.Errorf("no podnet agent on node %s", node)
	}
	b, err := e.client.CoreV1().Pods(e.namespace).ProxyGet("http", pod, "9941", "/route", map[string]string{"dst": dst.String()}).DoRaw(e.ctx)
	if err != nil {
		return ans, fmt.Errorf("agent on %s: %w", node, err)
	}
	return ans, json.Unmarshal(b, &ans)
}

func (e *clusterEnv) NodeRoute(node string, dst netip.Addr) (string, netip.Addr, error) {
	ans, err := e.route(node, dst)
	if err == nil && ans.Error != "" {
		err = fmt.Errorf("%s", ans.Error)
	}
	return ans.Dev, ans.Gw, err
}

func (e *clusterEnv) DesiredRoute(node string, dst netip.Addr) (routing.Route, bool, error) {
	ans, err := e.route(node, dst)
	if err != nil || ans.Desired == nil {
		return routing.Route{}, false, err
	}
	return *ans.Desired, true, nil
}

func (e *clusterEnv) NodeAddr(node string, v4 bool) netip.Addr {
	for _, a := range e.nodes[node].Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == corev1.NodeInternalIP && ip.Is4() == v4 {
			return ip
		}
	}
	return netip.Addr{}
}

func (e *clusterEnv) Service(ns, name string, like netip.Addr, port uint16) (netip.AddrPort, []netip.AddrPort, error) {
	s, err := e.client.CoreV1().Services(ns).Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	var vip netip.Addr
	for _, ip := range s.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil && a.Is4() == like.Is4() && !vip.IsValid() {
			vip = a
		}
	}
	if !vip.IsValid() {
		return netip.AddrPort{}, nil, fmt.Errorf("service %s/%s has no ClusterIP of the source's family", ns, name)
	}
	var sp *corev1.ServicePort
	for i, p := range s.Spec.Ports {
		if port == 0 || uint16(p.Port) == port {
			sp = &s.Spec.Ports[i]
			break
		}
	}
	if sp == nil {
		return netip.AddrPort{}, nil, fmt.Errorf("service %s/%s has no port %d", ns, name, port)
	}
	slices, err := e.client.DiscoveryV1().EndpointSlices(ns).List(e.ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}).String()})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	var out []netip.AddrPort
	for _, es := range slices.Items {
		for _, p := range es.Ports {
			if p.Port == nil || (p.Name != nil && *p.Name != sp.Name) {
				continue
			}
			for _, ep := range es.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				for _, a := range ep.Addresses {
					if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() == vip.Is4() {
						out = append(out, netip.AddrPortFrom(ip, uint16(*p.Port)))
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return netip.AddrPortFrom(vip, uint16(sp.Port)), out, nil
}

// live runs --live in a cluster: the agent on the source pod's node makes
// one real connection from inside the pod (POST /probe), then every
// node's agent is asked for the flows it recorded from the pod since.
func (e *clusterEnv) live(from string, ep trace.Endpoints, sources []*flowSource) string {
	start := time.Now()
	probe := func() (agent.ProbeAnswer, error) {
		var ans agent.ProbeAnswer
		ns, name, _ := strings.Cut(from, "/")
		p, err := e.client.CoreV1().Pods(ns).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return ans, err
		}
		pod, ok := e.agents[p.Spec.NodeName]
		if !ok {
			return ans, fmt.Errorf("no podnet agent on node %s", p.Spec.NodeName)
		}
		b, err := e.client.CoreV1().RESTClient().Post().Namespace(e.namespace).Resource("pods").
			Name(utilnet.JoinSchemeNamePort("http", pod, "9941")).SubResource("proxy").Suffix("probe").
			Param("pod", from).Param("dst", netip.AddrPortFrom(ep.Dst, ep.Port).String()).Param("protocol", string(ep.Protocol)).
			DoRaw(e.ctx)
		if err != nil {
			return ans, fmt.Errorf("agent on %s: %w: %s", p.Spec.NodeName, err, strings.TrimSpace(string(b)))
		}
		return ans, json.Unmarshal(b, &ans)
	}
	flows := func() []string {
		time.Sleep(300 * time.Millisecond) // let the events arrive
		// The agents' clocks may be a little off ours: ask a second more.
		q := url.Values{"from": {from}, "since": {(time.Since(start) + time.Second).Round(time.Second).String()}}
		var seen []string
		for _, s := range sources {
			page, err := s.get(e.ctx, q)
			if err != nil {
				seen = append(seen, fmt.Sprintf("node %s: %v", s.node, err))
				continue
			}
			for _, r := range page.Flows {
				if !r.Time.Before(start) {
					seen = append(seen, r.String())
				}
			}
		}
		return seen
	}
	return liveReport(probe, flows)
}

// liveReport is the --live line from a probe and the flows that followed.
func liveReport(probe func() (agent.ProbeAnswer, error), flows func() []string) string {
	ans, err := probe()
	if err != nil {
		return "not sent: " + err.Error()
	}
	return trace.LiveLine(ans.Outcome+" (from "+ans.Pod+"'s namespace "+ans.NetNS+", in "+ans.Took+")", flows())
}
