package agent

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func ctFlow(proto uint8, dst string, dport uint16, replySrc string, rport uint16) *netlink.ConntrackFlow {
	return &netlink.ConntrackFlow{
		Forward: netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP("10.244.3.3"), SrcPort: 40000, DstIP: net.ParseIP(dst), DstPort: dport},
		Reverse: netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP(replySrc), SrcPort: rport, DstIP: net.ParseIP("10.244.3.3"), DstPort: 40000},
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestStaleUDPFlows(t *testing.T) {
	f := udpFlows{
		goneEPs: map[netip.AddrPort]bool{ap("10.244.1.5:5353"): true},
		vips:    map[netip.AddrPort]bool{ap("10.96.0.10:53"): true, netip.AddrPortFrom(netip.Addr{}, 30053): true},
		newVIPs: map[netip.AddrPort]bool{ap("10.96.0.20:53"): true},
	}
	for _, tc := range []struct {
		name string
		fl   *netlink.ConntrackFlow
		want bool
	}{
		{"to the service, answered by the gone endpoint", ctFlow(unix.IPPROTO_UDP, "10.96.0.10", 53, "10.244.1.5", 5353), true},
		{"via a node port, answered by the gone endpoint", ctFlow(unix.IPPROTO_UDP, "192.168.77.11", 30053, "10.244.1.5", 5353), true},
		{"another service sharing the endpoint", ctFlow(unix.IPPROTO_UDP, "10.96.0.99", 53, "10.244.1.5", 5353), false},
		{"to the service, answered by a live endpoint", ctFlow(unix.IPPROTO_UDP, "10.96.0.10", 53, "10.244.2.5", 5353), false},
		{"a newly served address, never answered", ctFlow(unix.IPPROTO_UDP, "10.96.0.20", 53, "10.96.0.20", 53), true},
		{"TCP is left alone", ctFlow(unix.IPPROTO_TCP, "10.96.0.10", 53, "10.244.1.5", 5353), false},
	} {
		if got := f.MatchConntrackFlow(tc.fl); got != tc.want {
			t.Errorf("%s: match %v, want %v", tc.name, got, tc.want)
		}
	}
}
