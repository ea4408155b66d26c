package nft

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

func TestRenderMasq(t *testing.T) {
	fake := knftables.NewFake(knftables.InetFamily, RoutingTable)
	m := NewMasqWith(fake)
	c := MasqConfig{
		Uplinks:   []string{"eth0"},
		PodRanges: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
		Internal:  []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
	}
	if err := m.Sync(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	// Syncing twice gives the same table: the transaction is whole-state.
	if err := m.Sync(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	for _, want := range []string{
		`add chain inet podnet-routing nat-postrouting { type nat hook postrouting priority 100 ; }`,
		`add rule inet podnet-routing nat-postrouting oifname { "eth0" } ip saddr @pod-ranges-v4 ip daddr != @internal-v4 masquerade`,
		`add rule inet podnet-routing nat-postrouting oifname { "eth0" } ip6 saddr @pod-ranges-v6 ip6 daddr != @internal-v6 masquerade`,
		`add element inet podnet-routing internal-v4 { 10.96.0.0/16 }`,
		`add element inet podnet-routing pod-ranges-v6 { fd00:10:244::/56 }`,
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("dump lacks %q:\n%s", want, dump)
		}
	}
	if n := strings.Count(dump, " masquerade\n"); n != 2 {
		t.Errorf("%d masquerade rules after two syncs, want 2:\n%s", n, dump)
	}
}
