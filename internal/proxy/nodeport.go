package proxy

import (
	"net/netip"
	"slices"
	"time"

	"github.com/podnet/podnet/internal/model"
)

// NodePortTarget is what the eBPF dataplane's tc balancer does with the
// first packet of a connection that enters the node for one external
// entry point of a Service.
type NodePortTarget struct {
	// Cluster are the endpoints any client may use (and, under policy
	// Cluster, the only ones); Local are this node's, for policy Local.
	Cluster, Local []netip.AddrPort
	// LocalPolicy is externalTrafficPolicy: Local: clients outside the
	// cluster keep their address and reach Local only (none: dropped).
	LocalPolicy bool
	// Affinity, when set, sends a client (by its address) back to the
	// endpoint it had while it returns within this long.
	Affinity time.Duration
}

// NodePortBackends is the tc balancer's share of one Service: its node
// ports (under the unspecified address of each family, meaning any of
// the node's own addresses), external IPs and load-balancer IPs, with the
// endpoints chosen exactly as the nftables rules choose them. What it
// leaves out stays with the nftables rules, which see every packet the
// balancer did not set up: entry points with no endpoint to use under
// policy Cluster (the rules reject), SCTP, and ports with more endpoints
// than a slot.
func NodePortBackends(self Self, s model.Service, eps map[model.PortKey][]model.Endpoint) map[Frontend]NodePortTarget {
	out := map[Frontend]NodePortTarget{}
	for _, cip := range s.ClusterIPs {
		var addrs []netip.Addr
		for _, a := range append(append([]netip.Addr{}, s.ExternalIPs...), s.LoadBalancerIPs...) {
			if a.Is4() == cip.Is4() && !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
		for _, p := range s.Ports {
			if p.Protocol != model.TCP && p.Protocol != model.UDP {
				continue
			}
			if len(addrs) == 0 && p.NodePort == 0 {
				continue
			}
			all := eps[model.PortKey{ServiceName: s.ServiceName, Port: p.Name, Protocol: p.Protocol}]
			all = filter(all, func(e model.Endpoint) bool { return e.Addr.Is4() == cip.Is4() })
			if len(all) == 0 || !hasUsable(all) {
				continue // the rules reject
			}
			cluster, local := Categorize(all, self)
			if !s.ExternalLocal && len(cluster) == 0 {
				continue
			}
			if len(cluster) > SlotSize || len(local) > SlotSize {
				continue
			}
			t := NodePortTarget{Cluster: addrPorts(cluster), LocalPolicy: s.ExternalLocal, Affinity: s.Affinity}
			if s.ExternalLocal {
				t.Local = addrPorts(local)
			}
			for _, a := range addrs {
				out[Frontend{Addr: a, Port: p.Port, Protocol: p.Protocol}] = t
			}
			if p.NodePort != 0 {
				out[Frontend{Addr: Unspecified(cip), Port: p.NodePort, Protocol: p.Protocol}] = t
			}
		}
	}
	return out
}

// Unspecified is the unspecified address of a's family: a node port's
// frontend address, which stands for every address of the node.
func Unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func addrPorts(eps []model.Endpoint) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, e := range eps {
		out = append(out, netip.AddrPortFrom(e.Addr, e.Port))
	}
	return out
}
