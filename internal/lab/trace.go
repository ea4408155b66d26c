package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/netpol"
	"github.com/podnet/podnet/internal/routing"
	"github.com/podnet/podnet/internal/trace"
)

// TraceRequest asks how a packet from a pod reaches a destination: a pod
// or Service ("namespace/name") or an address, with a port.
type TraceRequest struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	// Live also sends real packets and reports what the kernel did with
	// them, from its conntrack and nflog events.
	Live bool `json:"live,omitempty"`
}

// routeGet asks a namespace's kernel how it routes dst: the device and
// gateway (none for a directly connected destination).
func routeGet(nsPath string, dst netip.Addr) (dev string, gw netip.Addr, err error) {
	h, err := netns.Handle(nsPath)
	if err != nil {
		return "", gw, err
	}
	defer h.Close()
	rs, err := h.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		return "", gw, fmt.Errorf("no route to %s", dst)
	}
	if l, err := h.LinkByIndex(rs[0].LinkIndex); err == nil {
		dev = l.Attrs().Name
	}
	if rs[0].Gw != nil {
		gw, _ = netip.AddrFromSlice(rs[0].Gw)
		gw = gw.Unmap()
	}
	return dev, gw, nil
}

// labEnv answers a trace from the lab's namespaces and agents.
type labEnv struct{ l *Lab }

func (e labEnv) World() *netpol.World {
	for _, n := range e.l.nodes {
		if w := n.agent.PolicyWorld(); w != nil {
			return w
		}
	}
	return nil
}

func (e labEnv) PodRoute(pod string, dst netip.Addr) (string, netip.Addr, error) {
	e.l.mu.Lock()
	sb, ok := e.l.sandboxes[pod]
	e.l.mu.Unlock()
	if !ok {
		return "", netip.Addr{}, fmt.Errorf("pod %s is not running in the lab", pod)
	}
	return routeGet(sb.nsPath, dst)
}

func (e labEnv) NodeRoute(node string, dst netip.Addr) (string, netip.Addr, error) {
	n := e.l.node(node)
	if n == nil {
		return "", netip.Addr{}, fmt.Errorf("no node %s", node)
	}
	return routeGet(n.nsPath, dst)
}

func (e labEnv) DesiredRoute(node string, dst netip.Addr) (routing.Route, bool, error) {
	n := e.l.node(node)
	if n == nil {
		return routing.Route{}, false, fmt.Errorf("no node %s", node)
	}
	rs, err := n.agent.DesiredRoutes()
	if err != nil {
		return routing.Route{}, false, err
	}
	for _, r := range rs {
		if r.Dst.Contains(dst) {
			return r, true, nil
		}
	}
	return routing.Route{}, false, nil
}

func (e labEnv) NodeAddr(node string, v4 bool) netip.Addr {
	if n := e.l.node(node); n != nil {
		return n.nodeAddr(v4)
	}
	return netip.Addr{}
}

func (e labEnv) Service(ns, name string, like netip.Addr, port uint16) (netip.AddrPort, []netip.AddrPort, error) {
	s, err := e.l.factory.Core().V1().Services().Lister().Services(ns).Get(name)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	vip, sp, err := servicePort(s, []netip.Addr{like}, port)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	return netip.AddrPortFrom(vip, uint16(sp.Port)), e.l.serviceBackends(s, sp, vip.Is4()), nil
}

// Trace computes a packet's path from the agents' desired state and the
// kernels' actual state, flagging where they disagree. With Live, a real
// connection follows the model, whatever its verdict: the kernel's events
// say where the packets stopped.
func (l *Lab) Trace(ctx context.Context, req TraceRequest) (trace.Result, error) {
	l.mu.Lock()
	src, ok := l.sandboxes[req.From]
	l.mu.Unlock()
	if !ok {
		return trace.Result{}, fmt.Errorf("pod %s is not running in the lab", req.From)
	}
	res, ep, err := trace.Run(labEnv{l}, trace.Request{From: req.From, To: req.To, Port: uint16(req.Port), Protocol: req.Protocol})
	if err != nil {
		return res, err
	}
	if req.Live {
		res.Live = l.traceLive(ctx, req, src, ep.Dst, ep.Port, string(ep.Protocol))
	}
	return res, nil
}

// traceLive sends a real connection attempt and reports what the kernel
// recorded: the conntrack and nflog events the agents turned into flows.
func (l *Lab) traceLive(ctx context.Context, req TraceRequest, src *sandbox, dst netip.Addr, port uint16, proto string) string {
	start := time.Now()
	_, err := dial(ctx, src.nsPath, strings.ToUpper(proto), netip.AddrPortFrom(dst, port), time.Second)
	time.Sleep(300 * time.Millisecond) // let the events arrive
	f := flow.Filter{From: req.From, Since: start}
	var seen []string
	for _, n := range l.nodes {
		recs, _ := n.agent.Flows(f, 0)
		for _, r := range recs {
			seen = append(seen, r.String())
		}
	}
	outcome := "connected"
	if err != nil {
		outcome = "failed: " + err.Error()
	}
	return trace.LiveLine(outcome, seen)
}

func (n *labNode) nodeAddr(is4 bool) netip.Addr {
	if n.agent == nil {
		return netip.Addr{}
	}
	h, err := netns.Handle(n.nsPath)
	if err != nil {
		return netip.Addr{}
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		return netip.Addr{}
	}
	fam := netlink.FAMILY_V4
	if !is4 {
		fam = netlink.FAMILY_V6
	}
	addrs, _ := h.AddrList(l, fam)
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.Unmap().IsLinkLocalUnicast() {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// servicePort picks the Service's address of the source's family and the
// port asked for (or its first).
func servicePort(s *corev1.Service, like []netip.Addr, port uint16) (netip.Addr, corev1.ServicePort, error) {
	var vip netip.Addr
	for _, ip := range s.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil && (!vip.IsValid() && a.Is4() == like[0].Is4()) {
			vip = a
		}
	}
	if !vip.IsValid() {
		return vip, corev1.ServicePort{}, fmt.Errorf("service %s/%s has no ClusterIP of the source's family", s.Namespace, s.Name)
	}
	for _, p := range s.Spec.Ports {
		if port == 0 || uint16(p.Port) == port {
			return vip, p, nil
		}
	}
	return vip, corev1.ServicePort{}, fmt.Errorf("service %s/%s has no port %d", s.Namespace, s.Name, port)
}

// serviceBackends lists a Service port's ready endpoints of one family.
func (l *Lab) serviceBackends(s *corev1.Service, sp corev1.ServicePort, v4 bool) []netip.AddrPort {
	slices, _ := l.factory.Discovery().V1().EndpointSlices().Lister().EndpointSlices(s.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: s.Name}))
	var out []netip.AddrPort
	for _, es := range slices {
		for _, p := range es.Ports {
			if p.Port == nil || (p.Name != nil && *p.Name != sp.Name) {
				continue
			}
			for _, e := range es.Endpoints {
				if e.Conditions.Ready != nil && !*e.Conditions.Ready {
					continue
				}
				for _, a := range e.Addresses {
					if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() == v4 {
						out = append(out, netip.AddrPortFrom(ip, uint16(*p.Port)))
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}
