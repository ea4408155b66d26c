package cni_test

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cni"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// TestChainingWithReferencePlugins chains podnet with portmap (hostPort),
// bandwidth and tuning, all built from containernetworking/plugins, and
// checks each one's effect with real packets and kernel state.
func TestChainingWithReferencePlugins(t *testing.T) {
	e := newEnv(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("skipped: portmap needs the iptables binary (apt-get install iptables)")
	}
	// The node's uplink, and an outside client on the other end of it.
	client := testenv.NetNS(t, "client")
	link(t, e.node, "eth0", "192.0.2.1/24", client, "eth0", "192.0.2.2/24")

	l := e.list("1.1.0", []string{"10.244.1.0/24"},
		`{"type":"portmap","capabilities":{"portMappings":true}}`,
		`{"type":"bandwidth","capabilities":{"bandwidth":true}}`,
		`{"type":"tuning","sysctl":{"net.core.somaxconn":"512"}}`)
	pod := testenv.NetNS(t, "pod")
	r := rt("chained", pod)
	r.CapabilityArgs = map[string]any{
		"portMappings": []map[string]any{{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}},
		"bandwidth":    map[string]any{"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000},
	}
	if _, err := e.add(l, r); err != nil {
		t.Fatalf("ADD through the chain: %v", err)
	}
	serveTCP(t, pod, ":8080", "pod")

	// portmap: the hostPort on the node's address reaches the pod.
	if got, err := dialFrom(client, netip.MustParseAddrPort("192.0.2.1:30080")); err != nil || got != "pod" {
		t.Fatalf("hostPort 30080 from outside: %q %v", got, err)
	}
	// bandwidth: a token bucket shapes the pod's ingress on the host veth.
	h, _ := netns.Handle(e.node)
	defer h.Close()
	hv, err := h.LinkByName(cni.HostIfName("chained", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	qds, _ := h.QdiscList(hv)
	var kinds []string
	for _, q := range qds {
		kinds = append(kinds, q.Type())
	}
	if !strings.Contains(strings.Join(kinds, ","), "tbf") {
		t.Errorf("no tbf qdisc on the host veth: %v", kinds)
	}
	// tuning: the sysctl is set inside the pod.
	var somax string
	netns.Do(pod, func() error {
		b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
		somax = strings.TrimSpace(string(b))
		return err
	})
	if somax != "512" {
		t.Errorf("somaxconn in the pod = %q, want 512", somax)
	}
	if err := e.check(l, r); err != nil {
		t.Errorf("CHECK through the chain: %v", err)
	}
	if err := e.del(l, r); err != nil {
		t.Fatalf("DEL through the chain: %v", err)
	}
	if _, err := dialFrom(client, netip.MustParseAddrPort("192.0.2.1:30080")); err == nil {
		t.Error("hostPort still answers after DEL")
	}
	if n, v := e.allocations(), e.hostVeths(); n != 0 || len(v) != 0 {
		t.Errorf("after DEL: %d allocations, veths %v", n, v)
	}
}

// link joins two namespaces with a veth pair and addresses both ends.
func link(t *testing.T, nsA, nameA, addrA, nsB, nameB, addrB string) {
	t.Helper()
	ha, err := netns.Handle(nsA)
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	hb, err := netns.Handle(nsB)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	fd, err := os.Open(nsB)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB, PeerNamespace: netlink.NsFd(int(fd.Fd()))}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		h    *netlink.Handle
		name string
		addr string
	}{{ha, nameA, addrA}, {hb, nameB, addrB}} {
		l, err := x.h.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		ip, n, _ := net.ParseCIDR(x.addr)
		n.IP = ip
		if err := x.h.AddrAdd(l, &netlink.Addr{IPNet: n}); err != nil {
			t.Fatal(err)
		}
		if err := x.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}
