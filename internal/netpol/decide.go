package netpol

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/podnet/podnet/internal/model"
)

// Conn is one connection attempt as policy sees it: after service
// translation, between real addresses.
type Conn struct {
	Src, Dst netip.Addr
	Protocol model.Protocol
	// Port is the destination port (0 for protocols without ports).
	Port uint16
	// SrcNode and DstNode, when the address is a node's own address,
	// name that node: a pod and its own node always talk freely.
	SrcNode, DstNode string
}

// RuleRef names one rule of one policy.
type RuleRef struct {
	Policy model.PolicyName
	Index  int
}

func (r RuleRef) String() string { return fmt.Sprintf("%s rule %d", r.Policy, r.Index) }

// Side is the verdict of one direction: egress of the source, or ingress
// of the destination.
type Side struct {
	// Pod is the pod at this end, if the address belongs to one.
	Pod *model.PolicyPod
	// Exempt says why policy does not apply here ("" if it does).
	Exempt string
	// Isolating are the policies that select the pod in this direction;
	// empty means the pod is not isolated and everything passes.
	Isolating []model.PolicyName
	// AllowedBy is the first rule that admits the connection.
	AllowedBy *RuleRef
	Allowed   bool
}

// Decision is the verdict on a connection and the reasons for it.
type Decision struct {
	Conn    Conn
	Egress  Side
	Ingress Side
	Allowed bool
}

// Decide evaluates a connection against the v1 semantics: a direction is
// isolated by the policies that select the pod for it, and isolated
// traffic passes when any rule of any of them admits it.
func (w *World) Decide(c Conn) Decision {
	d := Decision{Conn: c}
	src, srcOK := w.PodByIP(c.Src)
	dst, dstOK := w.PodByIP(c.Dst)
	var srcPod, dstPod *model.PolicyPod
	if srcOK {
		srcPod = &src
	}
	if dstOK {
		dstPod = &dst
	}
	d.Egress = w.side(srcPod, dstPod, c.Dst, c, false)
	d.Ingress = w.side(dstPod, srcPod, c.Src, c, true)
	d.Allowed = d.Egress.Allowed && d.Ingress.Allowed
	return d
}

func (w *World) side(pod, peer *model.PolicyPod, peerAddr netip.Addr, c Conn, ingress bool) Side {
	s := Side{Pod: pod}
	peerNode := c.DstNode
	if ingress {
		peerNode = c.SrcNode
	}
	switch {
	case pod == nil:
		s.Exempt = "not a pod"
	case peer != nil && peer.Key() == pod.Key():
		s.Exempt = "a pod reaching itself"
	case peerNode != "" && peerNode == pod.Node:
		s.Exempt = "its own node"
	}
	if s.Exempt != "" {
		s.Allowed = true
		return s
	}
	pols := w.isolating(*pod, ingress)
	if len(pols) == 0 {
		s.Allowed = true
		return s
	}
	// The pod whose named ports count: the selected pod on ingress, the
	// destination on egress.
	target := pod
	if !ingress {
		target = peer
	}
	for _, p := range pols {
		s.Isolating = append(s.Isolating, p.PolicyName)
		rules := p.IngressRules
		if !ingress {
			rules = p.EgressRules
		}
		for i, r := range rules {
			if s.AllowedBy != nil {
				break
			}
			if w.ruleAdmits(p, r, peerAddr, peer, target, c) {
				s.AllowedBy = &RuleRef{Policy: p.PolicyName, Index: i}
			}
		}
	}
	s.Allowed = s.AllowedBy != nil
	return s
}

func (w *World) ruleAdmits(p *model.Policy, r model.PolicyRule, addr netip.Addr, peer, target *model.PolicyPod, c Conn) bool {
	if !portAdmits(r.Ports, target, c) {
		return false
	}
	if r.Peers == nil {
		return true
	}
	for _, pe := range r.Peers {
		if w.peerMatches(p, pe, addr, peer) {
			return true
		}
	}
	return false
}

func portAdmits(ports []model.PolicyPort, target *model.PolicyPod, c Conn) bool {
	if ports == nil {
		return true
	}
	for _, pp := range ports {
		if pp.Protocol != c.Protocol {
			continue
		}
		switch {
		case pp.Named != "":
			if target == nil {
				continue
			}
			if n, ok := target.Resolve(pp.Named, pp.Protocol); ok && n == c.Port {
				return true
			}
		case pp.Port == 0:
			return true
		case pp.EndPort != 0:
			if pp.Port <= c.Port && c.Port <= pp.EndPort {
				return true
			}
		case pp.Port == c.Port:
			return true
		}
	}
	return false
}

// String explains a decision in a few lines, for `podnet policy explain`.
func (d Decision) String() string {
	var b strings.Builder
	verdict := "ALLOWED"
	if !d.Allowed {
		verdict = "DENIED"
	}
	fmt.Fprintf(&b, "%s %s -> %s %s/%d\n", verdict, d.Conn.Src, d.Conn.Dst, d.Conn.Protocol, d.Conn.Port)
	b.WriteString(d.Egress.explain("egress"))
	b.WriteString(d.Ingress.explain("ingress"))
	return b.String()
}

func (s Side) explain(dir string) string {
	who := "(not a pod)"
	if s.Pod != nil {
		who = s.Pod.Key()
	}
	switch {
	case s.Exempt != "":
		return fmt.Sprintf("  %s of %s: allowed (%s)\n", dir, who, s.Exempt)
	case len(s.Isolating) == 0:
		return fmt.Sprintf("  %s of %s: allowed (no policy isolates it for %s)\n", dir, who, dir)
	case s.AllowedBy != nil:
		return fmt.Sprintf("  %s of %s: allowed by %s (isolated by %s)\n", dir, who, s.AllowedBy, names(s.Isolating))
	}
	return fmt.Sprintf("  %s of %s: dropped: isolated by %s; no rule matched\n", dir, who, names(s.Isolating))
}

func names(ps []model.PolicyName) string {
	var s []string
	for _, p := range ps {
		s = append(s, "policy "+p.String())
	}
	return strings.Join(s, ", ")
}
