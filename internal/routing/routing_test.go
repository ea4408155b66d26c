package routing

import (
	"net/netip"
	"testing"

	"github.com/podnet/podnet/internal/model"
)

func node(name string, addrs []string, cidrs ...string) model.Node {
	n := model.Node{Name: name}
	for _, a := range addrs {
		n.Addrs = append(n.Addrs, netip.MustParseAddr(a))
	}
	for _, c := range cidrs {
		n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix(c))
	}
	return n
}

func TestDesiredDirect(t *testing.T) {
	nodes := []model.Node{
		node("n3", []string{"192.168.1.13"}, "10.244.3.0/24", "fd00:3::/64"),
		node("n1", []string{"192.168.1.11", "fd77::11"}, "10.244.1.0/24", "fd00:1::/64"),
		node("n2", []string{"192.168.1.12", "fd77::12"}, "10.244.2.0/24", "fd00:2::/64"),
		node("bad", []string{"192.168.1.14"}, "10.244.2.128/25"),
	}
	got := Desired("n1", nodes, ModeDirect).String()
	want := `10.244.2.0/24 via 192.168.1.12 (n2)
10.244.3.0/24 via 192.168.1.13 (n3)
fd00:2::/64 via fd77::12 (n2)
skipped: n3: no underlay address of the family of fd00:3::/64
skipped: bad: range 10.244.2.128/25 overlaps 10.244.2.0/24 of n2
`
	if got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	if s := Desired("solo", nodes[:0], ModeDirect); len(s.Routes) != 0 {
		t.Fatalf("no peers, want no routes: %v", s)
	}
}
