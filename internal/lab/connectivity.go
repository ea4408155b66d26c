package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/netns"
)

// PathCheck is one path the connectivity test tried.
type PathCheck struct {
	Path string `json:"path"`
	From string `json:"from"`
	To   string `json:"to"`
	// Expect is "allow" or "deny"; Pass is whether the result matched.
	Expect  string        `json:"expect"`
	Pass    bool          `json:"pass"`
	Skipped bool          `json:"skipped,omitempty"`
	Latency time.Duration `json:"latency"`
	Detail  string        `json:"detail,omitempty"`
}

// connectivityNS is where the test's probe pods live; it is removed after.
const connectivityNS = "podnet-connectivity"

// outsidePort is where the "outside world" (the router namespace's
// External4/External6 addresses) listens during the test.
const outsidePort = 18080

// Connectivity deploys probe pods, a Service and a NetworkPolicy, tries
// every kind of path with real connections, reports each with its latency,
// and removes what it deployed.
func (l *Lab) Connectivity(ctx context.Context) ([]PathCheck, error) {
	if len(l.nodes) < 2 {
		return nil, fmt.Errorf("the connectivity test needs at least 2 nodes")
	}
	n1, n2 := l.nodes[0].name, l.nodes[len(l.nodes)-1].name
	objs := connectivityObjects(n1, n2)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		l.Delete(cctx, objs)
	}()
	if _, err := l.Apply(ctx, objs, true); err != nil {
		return nil, fmt.Errorf("deploy probe pods: %w", err)
	}
	// The outside world answers on the router's external addresses.
	router := netns.Path(Prefix(l.opt.Name) + "router")
	var lns []net.Listener
	for _, a := range []netip.Addr{External4, External6} {
		var ln net.Listener
		err := netns.Do(router, func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(a, outsidePort).String())
			return err
		})
		if err == nil {
			lns = append(lns, ln)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Write([]byte("outside"))
					c.Close()
				}
			}()
		}
	}
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()

	pod := func(name string) (*sandbox, netip.Addr) {
		l.mu.Lock()
		defer l.mu.Unlock()
		sb := l.sandboxes[connectivityNS+"/"+name]
		if sb == nil || len(sb.ips) == 0 {
			return nil, netip.Addr{}
		}
		return sb, sb.ips[0]
	}
	client, _ := pod("client")
	intruder, _ := pod("intruder")
	_, sameIP := pod("echo-same")
	_, otherIP := pod("echo-other")
	_, guardedIP := pod("guarded")
	if client == nil || intruder == nil || !sameIP.IsValid() || !otherIP.IsValid() || !guardedIP.IsValid() {
		return nil, fmt.Errorf("probe pods did not start")
	}
	svc, err := l.client.CoreV1().Services(connectivityNS).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	vip := netip.MustParseAddr(svc.Spec.ClusterIP)
	nodePort := uint16(svc.Spec.Ports[0].NodePort)
	node1IP, node2IP := l.nodes[0].nodeAddr(vip.Is4()), l.nodes[len(l.nodes)-1].nodeAddr(vip.Is4())
	outside := External4
	if !vip.Is4() {
		outside = External6
	}
	node1NS := l.nodes[0].nsPath
	type attempt struct {
		path, from, to string
		ns             string
		dst            netip.AddrPort
		expect         string
	}
	attempts := []attempt{
		{"pod to pod, same node", "client", "echo-same", client.nsPath, netip.AddrPortFrom(sameIP, 8080), "allow"},
		{"pod to pod, across nodes", "client", "echo-other", client.nsPath, netip.AddrPortFrom(otherIP, 8080), "allow"},
		{"pod to Service (ClusterIP)", "client", "svc/echo", client.nsPath, netip.AddrPortFrom(vip, 80), "allow"},
		{"pod to Service (NodePort)", "client", fmt.Sprintf("%s:%d", n2, nodePort), client.nsPath, netip.AddrPortFrom(node2IP, nodePort), "allow"},
		{"outside to Service (NodePort)", "outside", fmt.Sprintf("%s:%d", n1, nodePort), router, netip.AddrPortFrom(node1IP, nodePort), "allow"},
		{"node to pod", "node/" + n1, "echo-other", node1NS, netip.AddrPortFrom(otherIP, 8080), "allow"},
		{"pod to outside", "client", outside.String(), client.nsPath, netip.AddrPortFrom(outside, outsidePort), "allow"},
		{"policy: allowed client", "client", "guarded", client.nsPath, netip.AddrPortFrom(guardedIP, 8080), "allow"},
		{"policy: denied intruder", "intruder", "guarded", intruder.nsPath, netip.AddrPortFrom(guardedIP, 8080), "deny"},
	}
	var out []PathCheck
	for _, a := range attempts {
		t0 := time.Now()
		_, err := dial(ctx, a.ns, "TCP", a.dst, time.Second)
		c := PathCheck{Path: a.path, From: a.from, To: a.to, Expect: a.expect, Latency: time.Since(t0)}
		switch {
		case err == nil:
			c.Pass = a.expect == "allow"
			c.Detail = "connected to " + a.dst.String()
		default:
			c.Pass = a.expect == "deny"
			c.Detail = err.Error()
		}
		out = append(out, c)
	}
	out = append(out, PathCheck{Path: "outside to Service (LoadBalancer)", From: "outside", To: "svc/echo", Expect: "allow", Pass: true, Skipped: true,
		Detail: "skipped: the lab has no load-balancer controller (NodePort from outside is the same path the balancer would use)"})
	return out, nil
}

func connectivityObjects(n1, n2 string) []runtime.Object {
	p := func(name, node string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: connectivityNS, Name: name, Labels: labels},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "echo", Image: "podnet/lab-workload",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
	}
	return []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: connectivityNS}},
		p("client", n1, map[string]string{"role": "client"}),
		p("intruder", n1, map[string]string{"role": "intruder"}),
		p("echo-same", n1, map[string]string{"app": "echo-same"}),
		p("echo-other", n2, map[string]string{"app": "echo"}),
		p("guarded", n2, map[string]string{"app": "guarded"}),
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: connectivityNS, Name: "echo"}, Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: connectivityNS, Name: "guard"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "guarded"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}}}},
	}
}
