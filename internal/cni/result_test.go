package cni

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
)

func TestBuildResult(t *testing.T) {
	conf := &NetConf{MTU: 1450}
	conf.DNS = types.DNS{Nameservers: []string{"10.96.0.10"}, Search: []string{"svc.cluster.local"}}
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	host := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pnabc", HardwareAddr: mac("02:00:00:00:00:01")}}
	pod := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: mac("02:00:00:00:00:02")}}
	args := &skel.CmdArgs{IfName: "eth0", Netns: "/run/netns/p"}
	res := buildResult(conf, args, host, pod, []netip.Addr{netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00::2")})
	got, _ := json.Marshal(res)
	want := `{"cniVersion":"1.1.0","dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]},"interfaces":[{"mac":"02:00:00:00:00:01","mtu":1450,"name":"pnabc"},{"mac":"02:00:00:00:00:02","mtu":1450,"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"address":"10.244.1.2/32","gateway":"169.254.1.1","interface":1},{"address":"fd00::2/128","gateway":"fe80::1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"},{"dst":"::/0","gw":"fe80::1"}]}`
	if string(got) != want {
		t.Fatalf("result:\n got %s\nwant %s", got, want)
	}
}

func TestHostIfName(t *testing.T) {
	a, b := HostIfName("c1", "eth0"), HostIfName("c1", "eth1")
	if a == b || len(a) > 15 || a[:2] != HostIfPrefix {
		t.Fatalf("names %q %q: must differ, start with %q and fit IFNAMSIZ", a, b, HostIfPrefix)
	}
	if HostIfName("c1", "eth0") != a {
		t.Fatal("name is not stable")
	}
}
