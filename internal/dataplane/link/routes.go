// Package link makes a node's routing table match routing.State through
// netlink. Every route it installs carries PeerProtocol, and it only ever
// lists, replaces or deletes routes with that protocol, so nothing that
// another component installed is touched.
package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/routing"
)

// PeerProtocol marks routes to peer nodes' pod ranges. (Per-pod routes
// that the CNI plugin installs use a different number, so the two owners
// never prune each other's routes.)
const PeerProtocol netlink.RouteProtocol = 153

// Routes is the netlink route backend for one network namespace.
type Routes struct {
	h *netlink.Handle
}

// NewRoutes returns a backend working through h.
func NewRoutes(h *netlink.Handle) *Routes { return &Routes{h: h} }

// Installed lists podnet's peer routes currently in the main table.
func (r *Routes) Installed() ([]routing.Route, error) {
	var out []routing.Route
	rh := r.h
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := r.h.RouteListFiltered(fam, &netlink.Route{Protocol: PeerProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, x := range rs {
			if x.Dst == nil {
				continue
			}
			dst, ok := prefix(x.Dst)
			if !ok {
				continue
			}
			via, _ := netip.AddrFromSlice(x.Gw)
			r := routing.Route{Dst: dst, Via: via.Unmap(), OnLink: x.Flags&int(netlink.FLAG_ONLINK) != 0}
			if r.OnLink {
				if l, err := r2link(rh, x.LinkIndex); err == nil {
					r.Dev = l
				}
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// Sync makes the installed peer routes equal to want: it replaces every
// wanted route (a no-op when it is already right) and deletes every other
// route of podnet's protocol. Removing a route that is already gone is not
// an error. It returns how many routes it added or changed and removed.
func (r *Routes) Sync(want []routing.Route) (changed, removed int, err error) {
	have, err := r.Installed()
	if err != nil {
		return 0, 0, err
	}
	cur := map[netip.Prefix]routing.Route{}
	for _, x := range have {
		cur[x.Dst] = x
	}
	keep := map[netip.Prefix]bool{}
	var errs []error
	for _, w := range want {
		keep[w.Dst] = true
		if c, ok := cur[w.Dst]; ok && c.Via == w.Via && c.Dev == w.Dev && c.OnLink == w.OnLink {
			continue
		}
		nr := &netlink.Route{Dst: ipNet(w.Dst), Gw: w.Via.AsSlice(), Protocol: PeerProtocol, Table: unix.RT_TABLE_MAIN}
		if w.Dev != "" {
			l, err := r.h.LinkByName(w.Dev)
			if err != nil {
				errs = append(errs, fmt.Errorf("route %s: %w", w, err))
				continue
			}
			nr.LinkIndex = l.Attrs().Index
		}
		if w.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := r.h.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", w, err))
			continue
		}
		changed++
	}
	for _, x := range have {
		if keep[x.Dst] {
			continue
		}
		err := r.h.RouteDel(&netlink.Route{Dst: ipNet(x.Dst), Protocol: PeerProtocol, Table: unix.RT_TABLE_MAIN})
		if err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", x.Dst, err))
			continue
		}
		removed++
	}
	return changed, removed, errors.Join(errs...)
}

// Dump renders the installed peer routes as text, sorted, for tests.
func (r *Routes) Dump() (string, error) {
	rs, err := r.Installed()
	if err != nil {
		return "", err
	}
	var lines []string
	for _, x := range rs {
		x.Peer = ""
		lines = append(lines, x.String())
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

func r2link(h *netlink.Handle, index int) (string, error) {
	l, err := h.LinkByIndex(index)
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}
