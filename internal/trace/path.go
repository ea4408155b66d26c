package trace

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netpol"
	"github.com/podnet/podnet/internal/routing"
)

// Env is what a trace reads: the policy world, the kernels' routing
// decisions, the agents' desired routes, and Services. A lab answers from
// its namespaces; a cluster from its apiserver and its agents.
type Env interface {
	World() *netpol.World
	// PodRoute is how a pod's own namespace routes dst; ErrNotInspectable
	// when the environment cannot look inside pods.
	PodRoute(pod string, dst netip.Addr) (dev string, gw netip.Addr, err error)
	// NodeRoute is how a node's kernel routes dst; DesiredRoute the route
	// its agent wants for dst (ok false: none).
	NodeRoute(node string, dst netip.Addr) (dev string, gw netip.Addr, err error)
	DesiredRoute(node string, dst netip.Addr) (r routing.Route, ok bool, err error)
	NodeAddr(node string, v4 bool) netip.Addr
	// Service resolves a Service port for a client of like's family: its
	// address, port and ready backends.
	Service(ns, name string, like netip.Addr, port uint16) (vip netip.AddrPort, backends []netip.AddrPort, err error)
}

// ErrNotInspectable says an environment cannot see a pod's own routes.
var ErrNotInspectable = errors.New("not inspectable from here")

// Request names the packet: from a pod (namespace/name) to a pod or
// Service (namespace/name) or an address, on a port.
type Request struct {
	From, To string
	Port     uint16
	Protocol string
}

// Endpoints are what Run resolved, for a live probe to use.
type Endpoints struct {
	Src, Dst netip.Addr
	Port     uint16
	Protocol model.Protocol
}

func describeRoute(dst netip.Addr, dev string, gw netip.Addr) string {
	if gw.IsValid() {
		return fmt.Sprintf("%s via %s dev %s", dst, gw, dev)
	}
	return fmt.Sprintf("%s dev %s", dst, dev)
}

func pickFamily(ips []netip.Addr, like netip.Addr) netip.Addr {
	for _, a := range ips {
		if a.Is4() == like.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

func podGateway(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.MustParseAddr("169.254.1.1")
	}
	return netip.MustParseAddr("fe80::1")
}

// Run traces a packet hop by hop and ends with a verdict line. An error
// means the request itself is wrong (unknown pod, no such port).
func Run(env Env, req Request) (Result, Endpoints, error) {
	res := Result{From: req.From, To: req.To}
	var ep Endpoints
	ep.Protocol = model.Protocol(strings.ToLower(req.Protocol))
	if ep.Protocol == "" {
		ep.Protocol = model.TCP
	}
	w := env.World()
	if w == nil {
		return res, ep, fmt.Errorf("policy state not known yet")
	}
	sns, sname, _ := strings.Cut(req.From, "/")
	src, ok := w.PodByName(sns, sname)
	if !ok || len(src.IPs) == 0 {
		return res, ep, fmt.Errorf("pod %s is not running on the pod network", req.From)
	}
	// Destination: an address, a pod, or a Service.
	port := req.Port
	var dstAddr netip.Addr
	var svcName string
	var backends []netip.AddrPort
	if a, err := netip.ParseAddr(req.To); err == nil {
		dstAddr = a
	} else if ns, name, ok := strings.Cut(req.To, "/"); ok {
		if p, found := w.PodByName(ns, name); found {
			dstAddr = pickFamily(p.IPs, src.IPs[0])
			if port == 0 && len(p.Ports) > 0 {
				port = p.Ports[0].Port
			}
		} else {
			vip, bs, err := env.Service(ns, name, src.IPs[0], port)
			if err != nil {
				return res, ep, fmt.Errorf("%s is neither a pod nor a usable Service: %w", req.To, err)
			}
			svcName, dstAddr, port, backends = req.To, vip.Addr(), vip.Port(), bs
		}
	} else {
		return res, ep, fmt.Errorf("destination %q: want NAMESPACE/NAME or an address", req.To)
	}
	if !dstAddr.IsValid() {
		return res, ep, fmt.Errorf("%s has no address of the source's family", req.To)
	}
	srcAddr := pickFamily(src.IPs, dstAddr)
	ep = Endpoints{Src: srcAddr, Dst: dstAddr, Port: port, Protocol: ep.Protocol}
	where := "pod " + req.From
	nodeWhere := "node " + src.Node

	// 1. The source pod's own route.
	dev, gw, err := env.PodRoute(req.From, dstAddr)
	switch {
	case errors.Is(err, ErrNotInspectable):
		res.Add(where, "route", fmt.Sprintf("default via %s dev eth0 (set by podnet's CNI plugin; the pod's namespace is not inspected from here)", podGateway(dstAddr)))
	case err != nil:
		res.Add(where, "route", err.Error()).Finding = "the pod has no route to " + dstAddr.String()
		res.End(Broken, "at %s: no route to %s", req.From, dstAddr)
		return res, ep, nil
	default:
		h := res.Add(where, "route", describeRoute(dstAddr, dev, gw))
		if want := podGateway(dstAddr); gw != want || dev != "eth0" {
			h.Finding = fmt.Sprintf("podnet routes pods through %s dev eth0", want)
		}
	}
	// 2. The node-side veth.
	hostDev, _, err := env.NodeRoute(src.Node, srcAddr)
	h := res.Add(nodeWhere, "host veth", fmt.Sprintf("%s arrives from %s on %s", req.From, srcAddr, hostDev))
	if err != nil || !strings.HasPrefix(hostDev, "pn") {
		h.Finding = "the node has no route back to the pod through its veth"
	}
	// 3. Service translation.
	dst := dstAddr
	if svcName != "" {
		if len(backends) == 0 {
			res.Add(nodeWhere, "service", fmt.Sprintf("svc/%s %s has no endpoints: rejected with ICMP port unreachable", svcName, netip.AddrPortFrom(dstAddr, port)))
			res.End(Rejected, "at %s: Service %s has no endpoints", nodeWhere, svcName)
			return res, ep, nil
		}
		var names []string
		follow := backends[0]
		for _, b := range backends {
			names = append(names, nameOf(w, b.Addr())+" "+b.String())
		}
		// Follow a backend other than the source itself, when there is one:
		// the path to another pod says more than hairpin.
		for _, b := range backends {
			if b.Addr() != srcAddr {
				follow = b
				break
			}
		}
		res.Add(nodeWhere, "service", fmt.Sprintf("svc/%s %s → DNAT to one of %d: %s; following %s",
			svcName, netip.AddrPortFrom(dstAddr, port), len(backends), strings.Join(names, ", "), nameOf(w, follow.Addr())))
		dst, port = follow.Addr(), follow.Port()
	}
	dstName := nameOf(w, dst)
	// 4. Egress policy of the source.
	d := w.Decide(netpol.Conn{Src: srcAddr, Dst: dst, Protocol: ep.Protocol, Port: port})
	res.Add(where, "policy egress", sideText(d.Egress, "egress"))
	if !d.Egress.Allowed {
		res.End(Dropped, "at %s egress: isolated by %s, no rule matches port %d to %s", req.From, policyList(d.Egress.Isolating), port, dstName)
		return res, ep, nil
	}
	// 5. The node's routing decision, against the desired routes.
	dstPod, dstIsPod := w.PodByIP(dst)
	dev, gw, err = env.NodeRoute(src.Node, dst)
	if err != nil {
		res.Add(nodeWhere, "route", err.Error()).Finding = "no route to " + dst.String()
		res.End(Broken, "at %s: no route to %s", nodeWhere, dst)
		return res, ep, nil
	}
	h = res.Add(nodeWhere, "route", describeRoute(dst, dev, gw))
	if dstIsPod && dstPod.Node != src.Node {
		want, ok, err := env.DesiredRoute(src.Node, dst)
		switch {
		case err != nil:
			h.Finding = "cannot read the desired routes: " + err.Error()
		case !ok:
			h.Finding = "the agent wants no route to " + dst.String() + " (see podnet doctor)"
		case want.Dev != "" && want.Dev != dev || want.Via.IsValid() && want.Via != gw:
			h.Finding = "the kernel disagrees with the desired route " + want.String()
		}
		if h.Finding != "" {
			res.End(Broken, "at %s: the kernel routes %s, not as podnet wants it (%s); run podnet doctor", nodeWhere, describeRoute(dst, dev, gw), h.Finding)
			return res, ep, nil
		}
		// 6. Encapsulation and the underlay next hop.
		if strings.HasPrefix(dev, routing.DevicePrefix) {
			peer := env.NodeAddr(dstPod.Node, dst.Is4())
			udev, ugw, _ := env.NodeRoute(src.Node, peer)
			res.Add(nodeWhere, "encapsulation", fmt.Sprintf("VXLAN on %s to VTEP %s (node %s); underlay %s", dev, peer, dstPod.Node, describeRoute(peer, udev, ugw)))
		} else {
			res.Add(nodeWhere, "encapsulation", fmt.Sprintf("none: routed directly to node %s (%s)", dstPod.Node, gw))
		}
	}
	if !dstIsPod {
		res.End(Delivered, "to %s outside the pod network (masqueraded if it leaves the cluster)", dst)
		return res, ep, nil
	}
	// 7. The destination node and pod.
	pdev, _, err := env.NodeRoute(dstPod.Node, dst)
	h = res.Add("node "+dstPod.Node, "route", fmt.Sprintf("%s is local, behind %s", dst, pdev))
	if err != nil || !strings.HasPrefix(pdev, "pn") {
		h.Finding = "the destination node has no route to the pod's veth"
	}
	res.Add("pod "+dstName, "policy ingress", sideText(d.Ingress, "ingress"))
	if !d.Ingress.Allowed {
		res.End(Dropped, "at %s ingress: isolated by %s, no rule matches port %d from %s", dstName, policyList(d.Ingress.Isolating), port, req.From)
		return res, ep, nil
	}
	res.End(Delivered, "to %s (%s) on node %s", dstName, netip.AddrPortFrom(dst, port), dstPod.Node)
	return res, ep, nil
}

func nameOf(w *netpol.World, a netip.Addr) string {
	if p, ok := w.PodByIP(a); ok {
		return p.Key()
	}
	return a.String()
}

func sideText(s netpol.Side, dir string) string {
	switch {
	case s.Exempt != "":
		return "allowed: " + s.Exempt
	case len(s.Isolating) == 0:
		return "allowed: no policy isolates it for " + dir
	case s.AllowedBy != nil:
		return fmt.Sprintf("allowed by %s (isolated by %s)", s.AllowedBy, policyList(s.Isolating))
	}
	return "DROPPED: isolated by " + policyList(s.Isolating) + ", no rule matches"
}

func policyList(ps []model.PolicyName) string {
	var out []string
	for _, p := range ps {
		out = append(out, "policy "+p.String())
	}
	return strings.Join(out, ", ")
}
