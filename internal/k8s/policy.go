package k8s

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netpol"
)

// Policy converts a NetworkPolicy, defaulting policyTypes as the API
// documents it: Ingress always, Egress when the policy has egress rules.
// A field that does not parse makes an error naming the policy, for the
// caller to log and skip.
func Policy(np *networkingv1.NetworkPolicy) (model.Policy, error) {
	out := model.Policy{PolicyName: model.PolicyName{Namespace: np.Namespace, Name: np.Name}}
	fail := func(what string, err error) (model.Policy, error) {
		return model.Policy{}, fmt.Errorf("networkpolicy %s: %s: %w", out.PolicyName, what, err)
	}
	sel, err := selector(&np.Spec.PodSelector)
	if err != nil {
		return fail("podSelector", err)
	}
	out.Pods = *sel
	if len(np.Spec.PolicyTypes) == 0 {
		out.Ingress = true
		out.Egress = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			out.Ingress = true
		case networkingv1.PolicyTypeEgress:
			out.Egress = true
		default:
			return fail("policyTypes", fmt.Errorf("unknown type %q", t))
		}
	}
	for i, r := range np.Spec.Ingress {
		rule, err := policyRule(r.From, r.Ports)
		if err != nil {
			return fail(fmt.Sprintf("ingress[%d]", i), err)
		}
		out.IngressRules = append(out.IngressRules, rule)
	}
	for i, r := range np.Spec.Egress {
		rule, err := policyRule(r.To, r.Ports)
		if err != nil {
			return fail(fmt.Sprintf("egress[%d]", i), err)
		}
		out.EgressRules = append(out.EgressRules, rule)
	}
	return out, nil
}

func policyRule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (model.PolicyRule, error) {
	var r model.PolicyRule
	for i, p := range peers {
		peer, err := policyPeer(p)
		if err != nil {
			return r, fmt.Errorf("peer %d: %w", i, err)
		}
		r.Peers = append(r.Peers, peer)
	}
	for i, p := range ports {
		port, err := policyPort(p)
		if err != nil {
			return r, fmt.Errorf("port %d: %w", i, err)
		}
		r.Ports = append(r.Ports, port)
	}
	return r, nil
}

func policyPeer(p networkingv1.NetworkPolicyPeer) (model.PolicyPeer, error) {
	var out model.PolicyPeer
	if p.IPBlock != nil {
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			return out, fmt.Errorf("ipBlock cannot be combined with selectors")
		}
		cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil {
			return out, fmt.Errorf("ipBlock cidr: %w", err)
		}
		b := &model.IPBlock{CIDR: cidr.Masked()}
		for _, e := range p.IPBlock.Except {
			ex, err := netip.ParsePrefix(e)
			if err != nil {
				return out, fmt.Errorf("ipBlock except: %w", err)
			}
			if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() < cidr.Bits() || !cidr.Contains(ex.Addr()) {
				return out, fmt.Errorf("ipBlock except %s is not inside %s", ex, cidr)
			}
			b.Except = append(b.Except, ex.Masked())
		}
		out.Block = b
		return out, nil
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return out, fmt.Errorf("peer selects nothing (no podSelector, namespaceSelector or ipBlock)")
	}
	var err error
	if p.PodSelector != nil {
		if out.Pods, err = selector(p.PodSelector); err != nil {
			return out, fmt.Errorf("podSelector: %w", err)
		}
	}
	if p.NamespaceSelector != nil {
		if out.Namespaces, err = selector(p.NamespaceSelector); err != nil {
			return out, fmt.Errorf("namespaceSelector: %w", err)
		}
	}
	return out, nil
}

func policyPort(p networkingv1.NetworkPolicyPort) (model.PolicyPort, error) {
	out := model.PolicyPort{Protocol: model.TCP}
	if p.Protocol != nil {
		switch *p.Protocol {
		case corev1.ProtocolTCP:
		case corev1.ProtocolUDP:
			out.Protocol = model.UDP
		case corev1.ProtocolSCTP:
			out.Protocol = model.SCTP
		default:
			return out, fmt.Errorf("unknown protocol %q", *p.Protocol)
		}
	}
	if p.Port == nil {
		if p.EndPort != nil {
			return out, fmt.Errorf("endPort without port")
		}
		return out, nil
	}
	if p.Port.Type == intstr.String {
		if p.Port.StrVal == "" {
			return out, fmt.Errorf("empty port name")
		}
		if p.EndPort != nil {
			return out, fmt.Errorf("endPort with named port %q", p.Port.StrVal)
		}
		out.Named = p.Port.StrVal
		return out, nil
	}
	if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
		return out, fmt.Errorf("port %d out of range", p.Port.IntVal)
	}
	out.Port = uint16(p.Port.IntVal)
	if p.EndPort != nil {
		if *p.EndPort < p.Port.IntVal || *p.EndPort > 65535 {
			return out, fmt.Errorf("endPort %d out of range for port %d", *p.EndPort, p.Port.IntVal)
		}
		out.EndPort = uint16(*p.EndPort)
	}
	return out, nil
}

func selector(s *metav1.LabelSelector) (*model.Selector, error) {
	out := &model.Selector{Labels: s.MatchLabels}
	for _, e := range s.MatchExpressions {
		op := model.SelectorOp(e.Operator)
		switch op {
		case model.OpIn, model.OpNotIn:
			if len(e.Values) == 0 {
				return nil, fmt.Errorf("%s %s needs values", e.Key, op)
			}
		case model.OpExists, model.OpDoesNotExist:
			if len(e.Values) != 0 {
				return nil, fmt.Errorf("%s %s takes no values", e.Key, op)
			}
		default:
			return nil, fmt.Errorf("unknown operator %q", e.Operator)
		}
		out.Exprs = append(out.Exprs, model.SelectorExpr{Key: e.Key, Op: op, Values: e.Values})
	}
	return out, nil
}

// PolicyPod converts a pod for policy. Pods on the host network, pods
// without an address yet and finished pods take no part: policy neither
// isolates nor selects them.
func PolicyPod(p *corev1.Pod) (model.PolicyPod, bool) {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return model.PolicyPod{}, false
	}
	out := model.PolicyPod{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Labels: p.Labels}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	if len(out.IPs) == 0 {
		return model.PolicyPod{}, false
	}
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			proto := model.TCP
			switch cp.Protocol {
			case corev1.ProtocolUDP:
				proto = model.UDP
			case corev1.ProtocolSCTP:
				proto = model.SCTP
			}
			out.Ports = append(out.Ports, model.NamedPort{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	return out, true
}

// PolicyNamespace converts a namespace. The API server sets the
// kubernetes.io/metadata.name label on every namespace; it is added here
// too, so a namespace seen before that label (or in the lab) still matches.
func PolicyNamespace(ns *corev1.Namespace) model.PolicyNamespace {
	labels := make(map[string]string, len(ns.Labels)+1)
	for k, v := range ns.Labels {
		labels[k] = v
	}
	labels[corev1.LabelMetadataName] = ns.Name
	return model.PolicyNamespace{Name: ns.Name, Labels: labels}
}

// PolicyWorld converts API objects into a netpol.World. Policies that do
// not convert are left out and reported to bad (which may be nil).
func PolicyWorld(pods []*corev1.Pod, nss []*corev1.Namespace, pols []*networkingv1.NetworkPolicy, bad func(*networkingv1.NetworkPolicy, error)) *netpol.World {
	var mp []model.PolicyPod
	for _, p := range pods {
		if pp, ok := PolicyPod(p); ok {
			mp = append(mp, pp)
		}
	}
	mn := make([]model.PolicyNamespace, 0, len(nss))
	for _, n := range nss {
		mn = append(mn, PolicyNamespace(n))
	}
	var mpol []model.Policy
	for _, np := range pols {
		pol, err := Policy(np)
		if err != nil {
			if bad != nil {
				bad(np, err)
			}
			continue
		}
		mpol = append(mpol, pol)
	}
	return netpol.NewWorld(mp, mn, mpol)
}
