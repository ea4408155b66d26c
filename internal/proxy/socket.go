package proxy

import (
	"net/netip"
	"time"

	"github.com/podnet/podnet/internal/model"
)

// Frontend is a Service address as a socket names it.
type Frontend struct {
	Addr     netip.Addr
	Port     uint16
	Protocol model.Protocol
}

func (f Frontend) String() string {
	return netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + string(f.Protocol)
}

// SocketTarget is what the socket-level balancer does with one frontend.
type SocketTarget struct {
	Backends []netip.AddrPort
	// Affinity, when set, sends a client back to the backend it had
	// as long as it comes back within this long (sessionAffinity
	// ClientIP). The client is its network namespace: a pod, or the node.
	Affinity time.Duration
}

// SocketBackends is the socket-level balancer's share of one Service
// (the eBPF dataplane): each ClusterIP and port, with the endpoints a
// connection from this node may use, chosen exactly as the nftables
// rules choose them (ready before terminating, zone hints,
// internalTrafficPolicy). What it leaves out stays with the nftables
// rules, which still see every packet the balancer did not rewrite:
// ports with no endpoint to use (the rules reject or drop), SCTP (no
// socket hook), and ports with more endpoints than a slot holds.
func SocketBackends(self Self, s model.Service, eps map[model.PortKey][]model.Endpoint) map[Frontend]SocketTarget {
	out := map[Frontend]SocketTarget{}
	for _, cip := range s.ClusterIPs {
		for _, p := range s.Ports {
			if p.Protocol != model.TCP && p.Protocol != model.UDP {
				continue
			}
			all := eps[model.PortKey{ServiceName: s.ServiceName, Port: p.Name, Protocol: p.Protocol}]
			all = filter(all, func(e model.Endpoint) bool { return e.Addr.Is4() == cip.Is4() })
			cluster, local := Categorize(all, self)
			use := cluster
			if s.InternalLocal {
				use = local
			}
			if len(use) > SlotSize {
				use = use[:0] // left to the nftables rules, which take any number
			}
			var bs []netip.AddrPort
			for _, e := range use {
				bs = append(bs, netip.AddrPortFrom(e.Addr, e.Port))
			}
			if len(bs) > 0 {
				out[Frontend{Addr: cip, Port: p.Port, Protocol: p.Protocol}] = SocketTarget{Backends: bs, Affinity: s.Affinity}
			}
		}
	}
	return out
}
