package agent

import (
	"net/netip"
	"testing"
)

func TestNextBlockAndLeaseName(t *testing.T) {
	p := netip.MustParsePrefix("10.244.0.0/24")
	var got []string
	for i := 0; i < 3; i++ {
		got = append(got, p.String())
		p, _ = nextBlock(p)
	}
	if got[1] != "10.244.1.0/24" || got[2] != "10.244.2.0/24" {
		t.Fatalf("blocks %v", got)
	}
	if n, _ := nextBlock(netip.MustParsePrefix("fd00:10:244:ff::/64")); n.String() != "fd00:10:244:100::/64" {
		t.Fatalf("v6 next: %s", n)
	}
	if _, ok := nextBlock(netip.MustParsePrefix("255.255.255.0/24")); ok {
		t.Fatal("no block after the last one")
	}
	for in, want := range map[string]string{
		"10.244.3.0/24":      "podnet-block-10-244-3-0-24",
		"fd00:10:244:3::/64": "podnet-block-fd00-0010-0244-0003-0000-0000-0000-0000-64",
	} {
		if got := LeaseName(netip.MustParsePrefix(in)); got != want {
			t.Errorf("LeaseName(%s) = %s, want %s", in, got, want)
		}
	}
}
