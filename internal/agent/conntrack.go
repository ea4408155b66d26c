package agent

import (
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// conntrackCleaner deletes UDP conntrack entries the new rules made
// stale. UDP has no connection to close: without this, a client that
// keeps sending from the same port (a DNS resolver does) keeps hitting an
// endpoint that is gone until the entry times out, and a client that sent
// to a Service while it had no endpoints keeps its un-NATed entry after
// endpoints appear. TCP needs nothing: a dead endpoint's connections are
// reset or time out on their own.
type conntrackCleaner struct {
	h   *netlink.Handle
	log *slog.Logger
}

// udpFlows matches one Service's stale UDP flows: those to one of its
// addresses (vips) answered by an endpoint it no longer uses (goneEPs),
// and any to an address it newly serves (newVIPs), which were made while
// it had no endpoint. An invalid address in a vip set stands for any
// destination on that port (node ports). Flows of other Services to the
// same endpoint are left alone.
type udpFlows struct {
	goneEPs, vips, newVIPs map[netip.AddrPort]bool
}

func inSet(set map[netip.AddrPort]bool, dst netip.AddrPort) bool {
	return set[dst] || set[netip.AddrPortFrom(netip.Addr{}, dst.Port())]
}

func (f udpFlows) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool {
	if fl.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst := addrPort(fl.Forward.DstIP, fl.Forward.DstPort)
	if f.goneEPs[addrPort(fl.Reverse.SrcIP, fl.Reverse.SrcPort)] && inSet(f.vips, dst) {
		return true
	}
	return inSet(f.newVIPs, dst)
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

// cleanup compares one Service's UDP use before and after a sync.
func (c *conntrackCleaner) cleanup(before, after udpUse) {
	f := udpFlows{goneEPs: map[netip.AddrPort]bool{}, vips: before.vips, newVIPs: map[netip.AddrPort]bool{}}
	for ep := range before.endpoints {
		if !after.endpoints[ep] {
			f.goneEPs[ep] = true
		}
	}
	for vip := range after.vips {
		if !before.vips[vip] {
			f.newVIPs[vip] = true
		}
	}
	if len(f.goneEPs)+len(f.newVIPs) == 0 {
		return
	}
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f)
		if err != nil {
			c.log.Warn("conntrack cleanup", "err", err)
			continue
		}
		if n > 0 {
			c.log.Info("deleted stale UDP conntrack entries", "count", n)
		}
	}
}
