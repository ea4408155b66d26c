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

func self(name string, local ...string) Self {
	s := Self{Name: name}
	for _, l := range local {
		s.Local = append(s.Local, netip.MustParsePrefix(l))
	}
	return s
}

// Two subnets: n1 and n2 share 192.168.1.0/24, n3 is on 192.168.2.0/24.
var cluster = []model.Node{
	node("n3", []string{"192.168.2.13"}, "10.244.3.0/24", "fd00:3::/64"),
	node("n1", []string{"192.168.1.11", "fd77::11"}, "10.244.1.0/24", "fd00:1::/64"),
	node("n2", []string{"192.168.1.12", "fd77::12"}, "10.244.2.0/24", "fd00:2::/64"),
	node("bad", []string{"192.168.1.14"}, "10.244.2.128/25"),
}

var n1 = self("n1", "192.168.1.11/24", "fd77::11/64")

func golden(t *testing.T, got State, want string) {
	t.Helper()
	if got.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestDesiredDirect(t *testing.T) {
	golden(t, Desired(n1, cluster, Config{Mode: ModeDirect}), `route 10.244.2.0/24 via 192.168.1.12 (n2)
route fd00:2::/64 via fd77::12 (n2)
skipped: n3: 192.168.2.13 is not on this node's subnets; direct mode needs a shared L2 segment (use vxlan or auto)
skipped: n3: no underlay address of the family of fd00:3::/64; direct mode cannot route it (use vxlan or auto)
skipped: bad: range 10.244.2.128/25 overlaps 10.244.2.0/24 of n2
`)
	if s := Desired(self("solo"), nil, Config{Mode: ModeDirect}); len(s.Routes)+len(s.Devices) != 0 {
		t.Fatalf("no peers, want nothing: %v", s)
	}
}

func TestDesiredVXLAN(t *testing.T) {
	golden(t, Desired(n1, cluster, Config{Mode: ModeVXLAN, VXLAN: VXLANConfig{UplinkMTU: 9000}}), `device pnvx4 vni 1 port 8472 local 192.168.1.11 mac 0e:70:c0:a8:01:0b mtu 8950 addrs 10.244.1.1/32,fd00:1::1/128
device pnvx6 vni 1 port 8472 local fd77::11 mac 0e:76:00:00:00:11 mtu 8930 addrs 10.244.1.1/32,fd00:1::1/128
route 10.244.2.0/24 via 10.244.2.1 dev pnvx4 onlink (n2)
route 10.244.3.0/24 via 10.244.3.1 dev pnvx4 onlink (n3)
route fd00:2::/64 via fd00:2::1 dev pnvx6 onlink (n2)
route fd00:3::/64 via fd00:3::1 dev pnvx4 onlink (n3)
neigh 10.244.2.1 lladdr 0e:70:c0:a8:01:0c dev pnvx4
neigh 10.244.3.1 lladdr 0e:70:c0:a8:02:0d dev pnvx4
neigh fd00:2::1 lladdr 0e:76:00:00:00:12 dev pnvx6
neigh fd00:3::1 lladdr 0e:70:c0:a8:02:0d dev pnvx4
fdb 0e:70:c0:a8:01:0c dst 192.168.1.12 dev pnvx4
fdb 0e:70:c0:a8:02:0d dst 192.168.2.13 dev pnvx4
fdb 0e:76:00:00:00:12 dst fd77::12 dev pnvx6
skipped: bad: range 10.244.2.128/25 overlaps 10.244.2.0/24 of n2
`)
}

func TestDesiredAuto(t *testing.T) {
	golden(t, Desired(n1, cluster[:3], Config{Mode: ModeAuto}), `device pnvx4 vni 1 port 8472 local 192.168.1.11 mac 0e:70:c0:a8:01:0b mtu 1450 addrs 10.244.1.1/32,fd00:1::1/128
route 10.244.2.0/24 via 192.168.1.12 (n2)
route 10.244.3.0/24 via 10.244.3.1 dev pnvx4 onlink (n3)
route fd00:2::/64 via fd77::12 (n2)
route fd00:3::/64 via fd00:3::1 dev pnvx4 onlink (n3)
neigh 10.244.3.1 lladdr 0e:70:c0:a8:02:0d dev pnvx4
neigh fd00:3::1 lladdr 0e:70:c0:a8:02:0d dev pnvx4
fdb 0e:70:c0:a8:02:0d dst 192.168.2.13 dev pnvx4
`)
}

func TestPodMTU(t *testing.T) {
	for _, tc := range []struct {
		mode   Mode
		u4, u6 bool
		want   int
	}{
		{ModeDirect, true, true, 1500},
		{ModeVXLAN, true, false, 1450},
		{ModeVXLAN, false, true, 1430},
		{ModeAuto, true, true, 1430},
	} {
		if got := PodMTU(1500, tc.mode, tc.u4, tc.u6); got != tc.want {
			t.Errorf("PodMTU(%s, v4=%v, v6=%v) = %d, want %d", tc.mode, tc.u4, tc.u6, got, tc.want)
		}
	}
}
