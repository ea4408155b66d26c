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

// udpFlows matches UDP flows by the reply's source (a DNATed endpoint) or
// the original destination (a Service address; an invalid address
// matches any destination on that port, for node ports).
type udpFlows struct {
	replySrc map[netip.AddrPort]bool
	origDst  map[netip.AddrPort]bool
}

func (f udpFlows) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool {
	if fl.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	if f.replySrc[addrPort(fl.Reverse.SrcIP, fl.Reverse.SrcPort)] {
		return true
	}
	dst := addrPort(fl.Forward.DstIP, fl.Forward.DstPort)
	return f.origDst[dst] || f.origDst[netip.AddrPortFrom(netip.Addr{}, dst.Port())]
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

// cleanup compares one Service's UDP use before and after a sync.
func (c *conntrackCleaner) cleanup(before, after udpUse) {
	f := udpFlows{replySrc: map[netip.AddrPort]bool{}, origDst: map[netip.AddrPort]bool{}}
	for ep := range before.endpoints {
		if !after.endpoints[ep] {
			f.replySrc[ep] = true
		}
	}
	for vip := range after.vips {
		if !before.vips[vip] {
			f.origDst[vip] = true
		}
	}
	if len(f.replySrc)+len(f.origDst) == 0 {
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
