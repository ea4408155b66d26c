// Package routing computes, from the set of nodes, everything a node needs
// to reach every other node's pods: routes, and for the overlay, VXLAN
// devices, neighbour entries and forwarding-database entries. It is pure:
// no netlink, no client-go.
//
// # Modes
//
//   - direct: each peer's pod ranges are routed through the peer's underlay
//     address. The kernel forwards pod packets unchanged, so this costs
//     nothing, but the two nodes must share an L2 segment: a peer that is
//     not on one of this node's subnets cannot be reached and is reported.
//   - vxlan: every peer is reached through a VXLAN device (see vxlan.go).
//   - auto: per node pair, direct when the peer is on one of this node's
//     subnets, VXLAN otherwise.
package routing

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/podnet/podnet/internal/model"
)

// Mode is how a node reaches its peers.
type Mode string

// Modes.
const (
	ModeDirect Mode = "direct"
	ModeVXLAN  Mode = "vxlan"
	ModeAuto   Mode = "auto"
)

// ParseMode validates a mode name.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeDirect, ModeVXLAN, ModeAuto:
		return Mode(s), nil
	}
	return "", fmt.Errorf("unknown routing mode %q (supported: direct, vxlan, auto)", s)
}

// Route is one desired route to a peer's pod range. Dev and OnLink are set
// for overlay routes, whose next hop is the peer's VTEP address.
type Route struct {
	Dst    netip.Prefix
	Via    netip.Addr
	Dev    string
	OnLink bool
	Peer   string
}

func (r Route) String() string {
	s := fmt.Sprintf("%s via %s", r.Dst, r.Via)
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	if r.OnLink {
		s += " onlink"
	}
	if r.Peer != "" {
		s += " (" + r.Peer + ")"
	}
	return s
}

// Self is what a node knows about itself beyond its Node object: its
// underlay addresses with their prefix lengths, read from the kernel.
type Self struct {
	Name string
	// Local are the node's underlay addresses with prefix lengths; a peer
	// whose address falls in one of them is on the same subnet.
	Local []netip.Prefix
}

func (s Self) sameSubnet(a netip.Addr) bool {
	for _, p := range s.Local {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Config is the cluster-wide routing configuration.
type Config struct {
	Mode  Mode
	VXLAN VXLANConfig
}

// State is everything the routing backend must make true on one node.
type State struct {
	Routes     []Route
	Devices    []Device
	Neighbours []Neighbour
	FDB        []FDBEntry
	// Skipped explains peers or ranges that could not be routed.
	Skipped []string
}

// Desired computes the routing state of node self.
func Desired(self Self, nodes []model.Node, cfg Config) State {
	var st State
	var me model.Node
	for _, n := range nodes {
		if n.Name == self.Name {
			me = n
		}
	}
	ov := newOverlay(me, cfg.VXLAN)
	for _, n := range nodes {
		if n.Name == self.Name {
			continue
		}
		for _, c := range n.PodCIDRs {
			is4 := c.Addr().Is4()
			peerAddr, sameFamily := n.Addr(is4)
			direct := sameFamily && self.sameSubnet(peerAddr)
			switch {
			case cfg.Mode == ModeDirect && !sameFamily:
				st.Skipped = append(st.Skipped, fmt.Sprintf("%s: no underlay address of the family of %s; direct mode cannot route it (use vxlan or auto)", n.Name, c))
			case cfg.Mode == ModeDirect && !direct:
				st.Skipped = append(st.Skipped, fmt.Sprintf("%s: %s is not on this node's subnets; direct mode needs a shared L2 segment (use vxlan or auto)", n.Name, peerAddr))
			case cfg.Mode != ModeVXLAN && direct:
				st.Routes = append(st.Routes, Route{Dst: c, Via: peerAddr, Peer: n.Name})
			default:
				r, err := ov.peer(n, c)
				if err != nil {
					st.Skipped = append(st.Skipped, fmt.Sprintf("%s: %v", n.Name, err))
					continue
				}
				st.Routes = append(st.Routes, r)
			}
		}
	}
	st.Routes, st.Skipped = dropOverlaps(st.Routes, st.Skipped)
	ov.finish(&st)
	return st
}

// dropOverlaps keeps the first of any overlapping routes (by address) and
// reports the rest: two nodes claiming overlapping ranges is a
// control-plane error that must not take the dataplane down.
func dropOverlaps(rs []Route, skipped []string) ([]Route, []string) {
	sort.Slice(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if a.Dst.Addr() != b.Dst.Addr() {
			return a.Dst.Addr().Less(b.Dst.Addr())
		}
		return a.Dst.Bits() < b.Dst.Bits()
	})
	var kept []Route
	for _, r := range rs {
		if len(kept) > 0 && kept[len(kept)-1].Dst.Overlaps(r.Dst) {
			prev := kept[len(kept)-1]
			skipped = append(skipped, fmt.Sprintf("%s: range %s overlaps %s of %s", r.Peer, r.Dst, prev.Dst, prev.Peer))
			continue
		}
		kept = append(kept, r)
	}
	return kept, skipped
}

// String renders the state as text, for golden tests and for humans.
func (s State) String() string {
	var b strings.Builder
	for _, d := range s.Devices {
		fmt.Fprintln(&b, "device", d)
	}
	for _, r := range s.Routes {
		fmt.Fprintln(&b, "route", r)
	}
	for _, n := range s.Neighbours {
		fmt.Fprintln(&b, "neigh", n)
	}
	for _, f := range s.FDB {
		fmt.Fprintln(&b, "fdb", f)
	}
	for _, m := range s.Skipped {
		fmt.Fprintln(&b, "skipped:", m)
	}
	return b.String()
}
