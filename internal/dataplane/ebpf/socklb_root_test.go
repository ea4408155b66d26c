package ebpf

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cgroup"
	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
	"github.com/podnet/podnet/internal/testenv"
)

// The tests' client is this test binary run again as a child process, so
// that it can start inside the test's cgroup and network namespace:
// PODNET_SOCKLB_CLIENT="proto addr:port count" makes it connect (or send)
// count times and print, per try, what answered, the peer address the
// socket API reported, and the socket's own address.
func TestMain(m *testing.M) {
	if spec := os.Getenv("PODNET_SOCKLB_CLIENT"); spec != "" {
		client(spec)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func client(spec string) {
	var proto, dst string
	var n int
	fmt.Sscan(spec, &proto, &dst, &n)
	for range n {
		switch proto {
		case "tcp":
			c, err := net.DialTimeout("tcp", dst, time.Second)
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Println("answer", strings.TrimSpace(line), "peer", c.RemoteAddr(), "local", c.LocalAddr())
			c.Close()
		case "udp":
			// Unconnected: sendmsg and recvmsg do the translation.
			c, err := net.ListenUDP("udp", nil)
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst))
			c.WriteToUDP([]byte("ping"), to)
			c.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 64)
			k, from, err := c.ReadFromUDP(buf)
			if err != nil {
				fmt.Println("error", err)
			} else {
				ap := from.AddrPort() // a dual-stack socket reports IPv4 as mapped
				fmt.Println("answer", string(buf[:k]), "peer", netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), "local", c.LocalAddr())
			}
			c.Close()
		}
	}
}

// labCgroup makes a throwaway cgroup v2 directory for the test's client
// processes, so the programs see nothing else on the machine.
func labCgroup(t *testing.T) string {
	t.Helper()
	root, err := cgroup.Root()
	if err != nil {
		t.Skipf("skipped: %v", err)
	}
	dir := filepath.Join(root, "pnt-"+testenv.Unique())
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	return dir
}

// pinFS mounts a private BPF file system instance for the test's pins.
func pinFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("skipped: cannot mount a BPF file system: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "podnet")
}

// serve answers each TCP connection and UDP datagram with its own
// address, inside the namespace.
func serve(t *testing.T, ns string, addrs ...string) {
	t.Helper()
	err := netns.Do(ns, func() error {
		for _, a := range addrs {
			if strings.HasPrefix(a, "udp:") {
				pc, err := net.ListenPacket("udp", a[4:])
				if err != nil {
					return err
				}
				t.Cleanup(func() { pc.Close() })
				go func() {
					buf := make([]byte, 64)
					for {
						_, from, err := pc.ReadFrom(buf)
						if err != nil {
							return
						}
						pc.WriteTo([]byte(a[4:]), from)
					}
				}()
				continue
			}
			l, err := net.Listen("tcp", a)
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					fmt.Fprintln(c, a)
					c.Close()
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// run starts the client in the cgroup and namespace and returns its
// lines.
func run(t *testing.T, cgroup, ns, spec string) []string {
	t.Helper()
	cg, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PODNET_SOCKLB_CLIENT="+spec)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	var out []byte
	err = netns.Do(ns, func() (err error) {
		out, err = cmd.Output()
		return err
	})
	if err != nil {
		t.Fatalf("client %q: %v", spec, err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

func TestSocketLoadBalancer(t *testing.T) {
	testenv.RequireRoot(t)
	cgroup := labCgroup(t)
	pins := pinFS(t)
	ns := testenv.NetNS(t, "socklb")
	if err := netns.Do(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatal(err)
	}
	serve(t, ns, "127.0.0.1:18081", "127.0.0.1:18082", "[::1]:18084", "udp:127.0.0.1:18083")

	lb, err := Open(cgroup, pins)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if lb != nil {
			lb.Remove()
		}
	}()
	var cookie uint64
	if err := netns.Do(ns, func() (err error) { cookie, err = NetNSCookie(); return err }); err != nil {
		t.Fatal(err)
	}
	tcpVIP := Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP}
	udpVIP := Frontend{Addr: netip.MustParseAddr("10.96.0.11"), Port: 53, Protocol: model.UDP}
	v6VIP := Frontend{Addr: netip.MustParseAddr("fd00:96::10"), Port: 80, Protocol: model.TCP}
	stickyVIP := Frontend{Addr: netip.MustParseAddr("10.96.0.12"), Port: 80, Protocol: model.TCP}
	two := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:18081"), netip.MustParseAddrPort("127.0.0.1:18082")}
	desired := map[Frontend]proxy.SocketTarget{
		tcpVIP:    {Backends: two},
		udpVIP:    {Backends: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:18083")}},
		v6VIP:     {Backends: []netip.AddrPort{netip.MustParseAddrPort("[::1]:18084")}},
		stickyVIP: {Backends: two, Affinity: time.Minute},
	}
	if _, err := lb.Sync(desired); err != nil {
		t.Fatal(err)
	}

	// A namespace the balancer was not told about is left alone: the
	// ClusterIP has no route there, so the connect fails.
	if out := run(t, cgroup, ns, "tcp 10.96.0.10:80 1"); !strings.HasPrefix(out[0], "error") {
		t.Fatalf("translated in a namespace that is not this node's: %q", out)
	}
	if err := lb.AllowNetNS(cookie); err != nil {
		t.Fatal(err)
	}
	answers := func(out []string) map[string]int {
		got := map[string]int{}
		for _, l := range out {
			f := strings.Fields(l)
			if len(f) != 6 || f[0] != "answer" {
				t.Fatalf("client: %q", l)
			}
			got[f[1]]++
		}
		return got
	}
	events, err := lb.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	// flows checks that each connection the client printed came with one
	// flow event naming its own port, the backend that answered and the
	// Service it meant.
	flows := func(out []string, proto model.Protocol, svc string) {
		t.Helper()
		want := map[string]string{} // client port -> backend
		for _, l := range out {
			f := strings.Fields(l)
			_, port, _ := net.SplitHostPort(f[5])
			want[port] = f[1]
		}
		for len(want) > 0 {
			ev, err := events.Read(time.Now().Add(2 * time.Second))
			if err != nil {
				t.Fatalf("%d %s connections have no flow event (%v): %v", len(want), proto, err, want)
			}
			port := fmt.Sprint(ev.Src.Port())
			// A TCP socket has its address when the SYN leaves; an
			// unbound UDP socket has only its port (the address is
			// chosen per datagram), which the agent matches with
			// conntrack's record of the flow.
			srcOK := ev.Src.Addr().IsLoopback() || proto == model.UDP && ev.Src.Addr().IsUnspecified()
			if ev.Protocol != proto || ev.Service.String() != svc || want[port] != ev.Backend.String() || !srcOK || ev.NetNS != cookie {
				t.Fatalf("flow event %+v matches no %s connection to %s: %v", ev, proto, svc, want)
			}
			delete(want, port)
		}
	}
	out := run(t, cgroup, ns, "tcp 10.96.0.10:80 40")
	flows(out, model.TCP, "10.96.0.10:80")
	got := answers(out)
	if got["127.0.0.1:18081"] == 0 || got["127.0.0.1:18082"] == 0 {
		t.Errorf("40 connections to the ClusterIP did not reach both backends: %v", got)
	}
	if !strings.Contains(out[0], "peer 10.96.0.10:80 ") {
		t.Errorf("getpeername reports the backend, not the ClusterIP: %q", out[0])
	}
	if out := run(t, cgroup, ns, "udp 10.96.0.11:53 3"); len(answers(out)) != 1 || !strings.Contains(out[0], "peer 10.96.0.11:53") {
		t.Errorf("UDP through the ClusterIP: %q (the reply must come from the ClusterIP)", out)
	} else {
		flows(out, model.UDP, "10.96.0.11:53")
	}
	if out := run(t, cgroup, ns, "tcp [fd00:96::10]:80 2"); answers(out)["[::1]:18084"] != 2 {
		t.Errorf("IPv6 ClusterIP: %q", out)
	} else {
		flows(out, model.TCP, "[fd00:96::10]:80")
	}
	// Nothing else: one event per connection.
	if ev, err := events.Read(time.Now().Add(200 * time.Millisecond)); err == nil {
		t.Errorf("an extra flow event: %+v", ev)
	}
	// Session affinity: a client (its network namespace) keeps its
	// backend, across processes.
	first := answers(run(t, cgroup, ns, "tcp 10.96.0.12:80 10"))
	second := answers(run(t, cgroup, ns, "tcp 10.96.0.12:80 10"))
	if len(first) != 1 || fmt.Sprint(first) != fmt.Sprint(second) {
		t.Errorf("sticky Service: %v then %v, want one backend throughout", first, second)
	}
	// This test process is not in the cgroup: its sockets are not
	// translated.
	if err := netns.Do(ns, func() error {
		_, err := net.DialTimeout("tcp", "10.96.0.10:80", 200*time.Millisecond)
		return err
	}); err == nil {
		t.Error("a process outside the cgroup was translated")
	}

	// A backend leaves: it is never chosen again.
	desired[tcpVIP] = proxy.SocketTarget{Backends: two[1:]}
	if _, err := lb.Sync(desired); err != nil {
		t.Fatal(err)
	}
	if got := answers(run(t, cgroup, ns, "tcp 10.96.0.10:80 10")); got["127.0.0.1:18082"] != 10 {
		t.Errorf("after the backend change: %v", got)
	}

	// The agent stops: translation goes on from the pinned links and maps.
	lb.Close()
	lb = nil
	if got := answers(run(t, cgroup, ns, "tcp 10.96.0.10:80 3")); got["127.0.0.1:18082"] != 3 {
		t.Errorf("with no agent running: %v", got)
	}
	// A new agent picks up the pinned state and goes on from it.
	lb, err = Open(cgroup, pins)
	if err != nil {
		t.Fatal(err)
	}
	if len(lb.committed) != 4 || lb.committed[stickyVIP].Affinity != time.Minute {
		t.Errorf("a restarted balancer read back %+v, want the 4 services with their affinity", lb.committed)
	}
	st, err := lb.Sync(desired)
	if err != nil || st.Changed != 0 {
		t.Errorf("the first sync after a restart changed %d services (%v), want none", st.Changed, err)
	}
	delete(desired, udpVIP)
	if _, err := lb.Sync(desired); err != nil {
		t.Fatal(err)
	}
	if out := run(t, cgroup, ns, "udp 10.96.0.11:53 1"); !strings.HasPrefix(out[0], "error") {
		t.Errorf("a deleted Service still translates: %q", out)
	}

	// Remove takes everything away.
	if err := lb.Remove(); err != nil {
		t.Fatal(err)
	}
	lb = nil
	if out := run(t, cgroup, ns, "tcp 10.96.0.10:80 1"); !strings.HasPrefix(out[0], "error") {
		t.Errorf("translated after Remove: %q", out)
	}
	if entries, err := os.ReadDir(pins); err == nil {
		t.Errorf("pins left behind: %v", entries)
	}
}
