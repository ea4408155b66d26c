package ebpf

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
	"github.com/podnet/podnet/internal/testenv"
)

// npLab is a node namespace with the balancer on its uplink, a client
// namespace on the other end of it, and a backend on the node that
// answers each connection with the address it came from.
type npLab struct {
	node, client string
	np           *NodePort
}

func newNPLab(t *testing.T) *npLab {
	testenv.RequireRoot(t)
	_, pins := testenv.EBPFSandbox(t)
	l := &npLab{node: testenv.NetNS(t, "npn"), client: testenv.NetNS(t, "npc")}
	nh, err := netns.Handle(l.node)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	ch, err := netns.Handle(l.client)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	cfd, err := os.Open(l.client)
	if err != nil {
		t.Fatal(err)
	}
	defer cfd.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1", PeerNamespace: netlink.NsFd(cfd.Fd())}
	if err := nh.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	addr := func(h *netlink.Handle, name, cidr string) {
		lk, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(cidr)
		if err := h.AddrAdd(lk, a); err != nil {
			t.Fatal(err)
		}
		h.LinkSetUp(lk)
	}
	addr(nh, "up0", "10.98.0.1/24")
	addr(nh, "lo", "10.98.1.1/32")
	addr(nh, "lo", "10.98.1.2/32")
	addr(ch, "up1", "10.98.0.2/24")
	up1, _ := ch.LinkByName("up1")
	_, ext, _ := net.ParseCIDR("10.98.2.0/24")
	if err := ch.RouteAdd(&netlink.Route{LinkIndex: up1.Attrs().Index, Dst: ext, Gw: net.ParseIP("10.98.0.1")}); err != nil {
		t.Fatal(err)
	}
	// The kernel applies a conntrack entry's NAT only where conntrack
	// and the NAT hooks are on in the namespace: a NAT chain turns on the
	// hooks, a rule that reads conntrack turns on conntrack. On a node,
	// the proxy's table does both.
	nat := "table ip pnt-nat {\n chain pre { type nat hook prerouting priority -100; ct state new counter; }\n chain post { type nat hook postrouting priority 100; }\n chain in { type nat hook input priority 100; }\n}\n"
	if err := netns.Do(l.node, func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(nat)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v: %s", err, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Two backends: each answers with the address the connection came
	// from; the second also names itself.
	for addr, suffix := range map[string]string{"10.98.1.1:8080": "", "10.98.1.2:8080": " via b2"} {
		var ln net.Listener
		if err := netns.Do(l.node, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(c.RemoteAddr().(*net.TCPAddr).IP.String() + suffix + "\n"))
				c.Close()
			}
		}()
	}
	if l.np, err = OpenNodePort(pins); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveNodePort(pins); l.np.Close() })
	if err := l.np.Attach(l.node, "up0"); err != nil {
		t.Fatal(err)
	}
	if err := l.np.SetNode([]netip.Addr{netip.MustParseAddr("10.98.0.1")}, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	return l
}

// dial connects from the client namespace and returns the address the
// backend saw, or "" when nothing answered.
func (l *npLab) dial(t *testing.T, dst string) string {
	t.Helper()
	var seen string
	netns.Do(l.client, func() error {
		c, err := net.DialTimeout("tcp", dst, 500*time.Millisecond)
		if err != nil {
			return nil
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		seen = strings.TrimSpace(line)
		return nil
	})
	return seen
}

func TestNodePortBalancer(t *testing.T) {
	l := newNPLab(t)
	backend := []netip.AddrPort{netip.MustParseAddrPort("10.98.1.1:8080")}
	nodePort := Frontend{Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: model.TCP}
	extIP := Frontend{Addr: netip.MustParseAddr("10.98.2.2"), Port: 80, Protocol: model.TCP}
	sync := func(m map[Frontend]proxy.NodePortTarget) {
		t.Helper()
		if _, err := l.np.Sync(m); err != nil {
			t.Fatal(err)
		}
	}
	counters := func() NodePortCounters {
		t.Helper()
		c, err := l.np.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// Nothing in the map: the packet goes on to the node's port, where
	// nothing listens.
	if got := l.dial(t, "10.98.0.1:30080"); got != "" {
		t.Fatalf("before sync: %q answered", got)
	}

	// Policy Cluster: translated and masqueraded to the node's address.
	sync(map[Frontend]proxy.NodePortTarget{nodePort: {Cluster: backend}, extIP: {Cluster: backend}})
	if got := l.dial(t, "10.98.0.1:30080"); got != "10.98.0.1" {
		t.Fatalf("node port, policy Cluster: backend saw %q, want the node's address", got)
	}
	if got := l.dial(t, "10.98.2.2:80"); got != "10.98.0.1" {
		t.Fatalf("external IP, policy Cluster: backend saw %q, want the node's address", got)
	}
	if c := counters(); c.Translated != 2 {
		t.Fatalf("counters %+v, want 2 translated", c)
	}

	// Policy Local: the client's own address reaches the backend.
	sync(map[Frontend]proxy.NodePortTarget{nodePort: {Cluster: backend, Local: backend, LocalPolicy: true}})
	if got := l.dial(t, "10.98.0.1:30080"); got != "10.98.0.2" {
		t.Fatalf("node port, policy Local: backend saw %q, want the client's address", got)
	}
	// The external IP went from the map: nothing answers it now.
	if got := l.dial(t, "10.98.2.2:80"); got != "" {
		t.Fatalf("removed external IP still answered by %q", got)
	}

	// Policy Local without an endpoint here: dropped, and counted.
	sync(map[Frontend]proxy.NodePortTarget{nodePort: {Cluster: backend, LocalPolicy: true}})
	drops, err := l.np.Drops()
	if err != nil {
		t.Fatal(err)
	}
	defer drops.Close()
	before := counters().DroppedLocal
	if got := l.dial(t, "10.98.0.1:30080"); got != "" {
		t.Fatalf("policy Local with no local endpoint: %q answered", got)
	}
	if c := counters(); c.DroppedLocal <= before {
		t.Fatalf("counters %+v: the drop was not counted", c)
	}
	// And reported, for the flow log.
	ev, err := drops.Read(time.Now().Add(time.Second))
	if err != nil {
		t.Fatalf("no drop event: %v", err)
	}
	if ev.Src.Addr().String() != "10.98.0.2" || ev.Dst.String() != "10.98.0.1:30080" || ev.Protocol != model.TCP || !ev.NoLocalEndpoint {
		t.Errorf("drop event %+v", ev)
	}

	// A client in the cluster's pod range may use any endpoint under
	// Local, as with kube-proxy.
	if err := l.np.SetNode([]netip.Addr{netip.MustParseAddr("10.98.0.1")}, []netip.Prefix{netip.MustParsePrefix("10.98.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if got := l.dial(t, "10.98.0.1:30080"); got != "10.98.0.1" {
		t.Fatalf("pod-range client, policy Local: backend saw %q, want a translated, masqueraded connection", got)
	}
}

// TestNodePortReopen: a second agent opens the pinned maps and link and
// keeps serving; Sync with the same state changes nothing that matters.
func TestNodePortReopen(t *testing.T) {
	l := newNPLab(t)
	backend := []netip.AddrPort{netip.MustParseAddrPort("10.98.1.1:8080")}
	want := map[Frontend]proxy.NodePortTarget{{Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: model.TCP}: {Cluster: backend}}
	if _, err := l.np.Sync(want); err != nil {
		t.Fatal(err)
	}
	pins := l.np.pinDir
	l.np.Close()
	// No agent: the pinned link and maps go on translating.
	if got := l.dial(t, "10.98.0.1:30080"); got != "10.98.0.1" {
		t.Fatalf("with no agent: backend saw %q", got)
	}
	np, err := OpenNodePort(pins)
	if err != nil {
		t.Fatal(err)
	}
	l.np = np
	if err := np.Attach(l.node, "up0"); err != nil {
		t.Fatal(err)
	}
	st, err := np.Sync(want)
	if err != nil {
		t.Fatal(err)
	}
	if st.Frontends != 1 {
		t.Fatalf("after reopen: %+v", st)
	}
	if got := l.dial(t, "10.98.0.1:30080"); got != "10.98.0.1" {
		t.Fatalf("after reopen: backend saw %q", got)
	}
	// An agent switching dataplanes removes the pins of one that ran
	// before it.
	np.Close()
	if err := RemoveNodePort(pins); err != nil {
		t.Fatal(err)
	}
	if got := l.dial(t, "10.98.0.1:30080"); got != "" {
		t.Fatalf("after remove: %q still answered", got)
	}
}

// TestNodePortAffinity: with sessionAffinity ClientIP a client keeps its
// backend; without, it sees both.
func TestNodePortAffinity(t *testing.T) {
	l := newNPLab(t)
	both := []netip.AddrPort{netip.MustParseAddrPort("10.98.1.1:8080"), netip.MustParseAddrPort("10.98.1.2:8080")}
	sticky := Frontend{Addr: netip.IPv4Unspecified(), Port: 30090, Protocol: model.TCP}
	plain := Frontend{Addr: netip.IPv4Unspecified(), Port: 30091, Protocol: model.TCP}
	if _, err := l.np.Sync(map[Frontend]proxy.NodePortTarget{
		sticky: {Cluster: both, Affinity: time.Minute},
		plain:  {Cluster: both},
	}); err != nil {
		t.Fatal(err)
	}
	seen := func(port string) map[string]int {
		m := map[string]int{}
		for range 16 {
			m[l.dial(t, "10.98.0.1:"+port)]++
		}
		return m
	}
	if m := seen("30090"); len(m) != 1 || m[""] != 0 {
		t.Errorf("with affinity the client saw %v, want one backend every time", m)
	}
	if m := seen("30091"); len(m) != 2 || m[""] != 0 {
		t.Errorf("without affinity the client saw %v, want both backends", m)
	}
}
