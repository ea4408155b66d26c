package link_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/dataplane/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/routing"
	"github.com/podnet/podnet/internal/testenv"
)

// TestSyncPrunesOnlyOwnRoutes: a stale podnet route is removed, a wrong
// one is corrected, and a route of another owner is left alone.
func TestSyncPrunesOnlyOwnRoutes(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.NetNS(t, "routes")
	h, err := netns.Handle(p)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	eth0, _ := h.LinkByName("eth0")
	h.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.168.1.1"), Mask: net.CIDRMask(24, 32)}})
	h.LinkSetUp(eth0)
	peer, _ := h.LinkByName("peer0")
	h.LinkSetUp(peer)

	add := func(dst, via string, proto netlink.RouteProtocol) {
		_, n, _ := net.ParseCIDR(dst)
		if err := h.RouteAdd(&netlink.Route{Dst: n, Gw: net.ParseIP(via), Protocol: proto}); err != nil {
			t.Fatalf("route %s: %v", dst, err)
		}
	}
	add("10.244.9.0/24", "192.168.1.9", link.PeerProtocol)         // a node that left while the agent was down
	add("10.244.2.0/24", "192.168.1.99", link.PeerProtocol)        // a node that changed address
	add("10.50.0.0/16", "192.168.1.254", netlink.RouteProtocol(4)) // someone else's (static)

	r := link.NewRoutes(h)
	want := []routing.Route{
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("192.168.1.2")},
		{Dst: netip.MustParsePrefix("10.244.3.0/24"), Via: netip.MustParseAddr("192.168.1.3")},
	}
	changed, removed, err := r.Sync(want)
	if err != nil || changed != 2 || removed != 1 {
		t.Fatalf("sync: changed=%d removed=%d err=%v", changed, removed, err)
	}
	dump, _ := r.Dump()
	if dump != "10.244.2.0/24 via 192.168.1.2\n10.244.3.0/24 via 192.168.1.3" {
		t.Fatalf("routes:\n%s", dump)
	}
	_, foreign, _ := net.ParseCIDR("10.50.0.0/16")
	if rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: foreign}, netlink.RT_FILTER_DST); len(rs) != 1 {
		t.Fatal("the foreign route was touched")
	}
	// A second sync with nothing to do changes nothing.
	if c, rm, err := r.Sync(want); c != 0 || rm != 0 || err != nil {
		t.Fatalf("idempotent sync: %d %d %v", c, rm, err)
	}
}
