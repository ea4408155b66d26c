// Package routing computes, from the set of nodes, the routes a node needs
// to reach every other node's pods. It is pure: no netlink, no client-go.
//
// Modes fit beside each other here: each peer gets a Route whose Kind says
// how it is reached. Only direct routing exists today: the peer's pod
// ranges are routed through the peer's underlay address, which requires the
// two nodes to share an L2 segment. An overlay kind adds its own fields
// (device, neighbour, FDB entry) to the same per-peer record.
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
)

// ParseMode validates a mode name.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeDirect:
		return Mode(s), nil
	}
	return "", fmt.Errorf("unknown routing mode %q (supported: direct)", s)
}

// Route is one desired route to a peer's pod range.
type Route struct {
	Dst  netip.Prefix
	Via  netip.Addr
	Peer string
}

func (r Route) String() string { return fmt.Sprintf("%s via %s (%s)", r.Dst, r.Via, r.Peer) }

// State is everything the routing backend must make true on one node.
type State struct {
	Routes []Route
	// Skipped explains peers or ranges that could not be routed, such as
	// a pod range with no underlay address of its family.
	Skipped []string
}

// Desired computes the routes node self needs in mode.
func Desired(self string, nodes []model.Node, mode Mode) State {
	var st State
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		for _, c := range n.PodCIDRs {
			via, ok := n.Addr(c.Addr().Is4())
			if !ok {
				st.Skipped = append(st.Skipped, fmt.Sprintf("%s: no underlay address of the family of %s", n.Name, c))
				continue
			}
			st.Routes = append(st.Routes, Route{Dst: c, Via: via, Peer: n.Name})
		}
	}
	sort.Slice(st.Routes, func(i, j int) bool {
		a, b := st.Routes[i], st.Routes[j]
		if a.Dst.Addr() != b.Dst.Addr() {
			return a.Dst.Addr().Less(b.Dst.Addr())
		}
		return a.Dst.Bits() < b.Dst.Bits()
	})
	// Two nodes claiming overlapping ranges is a control-plane error; the
	// first (lowest address) wins and the rest are reported.
	var kept []Route
	for _, r := range st.Routes {
		if len(kept) > 0 && kept[len(kept)-1].Dst.Overlaps(r.Dst) {
			st.Skipped = append(st.Skipped, fmt.Sprintf("%s: range %s overlaps %s of %s", r.Peer, r.Dst, kept[len(kept)-1].Dst, kept[len(kept)-1].Peer))
			continue
		}
		kept = append(kept, r)
	}
	st.Routes = kept
	return st
}

// String renders the state as text, one route per line, for golden tests.
func (s State) String() string {
	var b strings.Builder
	for _, r := range s.Routes {
		fmt.Fprintln(&b, r)
	}
	for _, m := range s.Skipped {
		fmt.Fprintln(&b, "skipped:", m)
	}
	return b.String()
}
