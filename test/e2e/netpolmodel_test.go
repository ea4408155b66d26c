package e2e

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// An independent model of networking.k8s.io/v1 NetworkPolicy, written
// from the API documentation and sharing no code with internal/netpol: it
// reads the API objects as they are (selectors through apimachinery's own
// label selector parsing) and answers one question, is this connection
// allowed? The truth-table tests compare its answers with real packets.

type npWorld struct {
	pods       []corev1.Pod
	namespaces map[string]map[string]string // name → labels
	policies   []networkingv1.NetworkPolicy
}

type npConn struct {
	from, to *corev1.Pod
	// toAddr is the destination address the packet carries (the pod's,
	// or any address for ipBlock peers).
	fromAddr, toAddr netip.Addr
	port             int
	protocol         corev1.Protocol
}

func selects(sel *metav1.LabelSelector, l map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false // the API server would have refused it
	}
	return s.Matches(labels.Set(l))
}

func (w npWorld) allowed(c npConn) bool {
	if c.from.Namespace == c.to.Namespace && c.from.Name == c.to.Name {
		return true
	}
	return w.direction(c, c.from, true) && w.direction(c, c.to, false)
}

// direction decides egress of the source (egress=true) or ingress of the
// destination.
func (w npWorld) direction(c npConn, pod *corev1.Pod, egress bool) bool {
	isolated := false
	for i := range w.policies {
		p := &w.policies[i]
		if p.Namespace != pod.Namespace || !selects(&p.Spec.PodSelector, pod.Labels) {
			continue
		}
		if !affects(p, egress) {
			continue
		}
		isolated = true
		if egress {
			for _, r := range p.Spec.Egress {
				if w.peersMatch(p, r.To, c.to, c.toAddr) && portsMatch(r.Ports, c, c.to) {
					return true
				}
			}
		} else {
			for _, r := range p.Spec.Ingress {
				if w.peersMatch(p, r.From, c.from, c.fromAddr) && portsMatch(r.Ports, c, c.to) {
					return true
				}
			}
		}
	}
	return !isolated
}

// affects applies the documented policyTypes default: Ingress always, and
// Egress only when the policy has egress rules.
func affects(p *networkingv1.NetworkPolicy, egress bool) bool {
	types := p.Spec.PolicyTypes
	if len(types) == 0 {
		if egress {
			return len(p.Spec.Egress) > 0
		}
		return true
	}
	for _, t := range types {
		if (t == networkingv1.PolicyTypeEgress) == egress {
			return true
		}
	}
	return false
}

func (w npWorld) peersMatch(p *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, pod *corev1.Pod, addr netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			cidr := netip.MustParsePrefix(peer.IPBlock.CIDR)
			in := cidr.Contains(addr)
			for _, e := range peer.IPBlock.Except {
				if netip.MustParsePrefix(e).Contains(addr) {
					in = false
				}
			}
			if in {
				return true
			}
			continue
		}
		nsOK := false
		if peer.NamespaceSelector == nil {
			nsOK = pod.Namespace == p.Namespace
		} else {
			nsOK = selects(peer.NamespaceSelector, w.namespaces[pod.Namespace])
		}
		podOK := peer.PodSelector == nil || selects(peer.PodSelector, pod.Labels)
		if nsOK && podOK {
			return true
		}
	}
	return false
}

// portsMatch checks a rule's ports; named ports are looked up in the
// destination pod's containers, on both ingress and egress.
func portsMatch(ports []networkingv1.NetworkPolicyPort, c npConn, dst *corev1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		proto := corev1.ProtocolTCP
		if pp.Protocol != nil {
			proto = *pp.Protocol
		}
		if proto != c.protocol {
			continue
		}
		if pp.Port == nil {
			return true
		}
		if pp.Port.Type == intstr.String {
			for _, ctr := range dst.Spec.Containers {
				for _, cp := range ctr.Ports {
					cpProto := cp.Protocol
					if cpProto == "" {
						cpProto = corev1.ProtocolTCP
					}
					if cp.Name == pp.Port.StrVal && cpProto == proto && int(cp.ContainerPort) == c.port {
						return true
					}
				}
			}
			continue
		}
		lo, hi := int(pp.Port.IntVal), int(pp.Port.IntVal)
		if pp.EndPort != nil {
			hi = int(*pp.EndPort)
		}
		if lo <= c.port && c.port <= hi {
			return true
		}
	}
	return false
}

func protoOf(s string) corev1.Protocol { return corev1.Protocol(strings.ToUpper(s)) }
