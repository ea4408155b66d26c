// Package k8s turns Kubernetes API objects into podnet's model types. It is
// the only place that knows both vocabularies.
package k8s

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/model"
)

// Node converts a Node object. A node whose addresses or pod ranges do not
// parse is returned with an error naming the field, so the caller can log
// it and skip it without stopping.
func Node(n *corev1.Node) (model.Node, error) {
	out := model.Node{Name: n.Name}
	seen := map[bool]bool{}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			return out, fmt.Errorf("node %s: InternalIP %q: %w", n.Name, a.Address, err)
		}
		ip = ip.Unmap()
		if seen[ip.Is4()] {
			continue
		}
		seen[ip.Is4()] = true
		out.Addrs = append(out.Addrs, ip)
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return out, fmt.Errorf("node %s: podCIDR %q: %w", n.Name, c, err)
		}
		out.PodCIDRs = append(out.PodCIDRs, p.Masked())
	}
	return out, nil
}
