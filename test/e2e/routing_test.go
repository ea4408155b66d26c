package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// podIPs maps namespace/name to the pod's addresses by family.
func (l *labRun) podIPs() map[string]map[bool]string {
	out := map[string]map[bool]string{}
	for _, p := range l.pods() {
		m := map[bool]string{}
		for _, ip := range p.Status.PodIPs {
			a := netip.MustParseAddr(ip.IP)
			m[a.Is4()] = a.String()
		}
		out[p.Namespace+"/"+p.Name] = m
	}
	return out
}

func (l *labRun) podNS(ns, name string) string {
	l.t.Helper()
	var resp struct{ Path string }
	if err := lab.NewClient(l.name).Do("GET", "/v1/netns?namespace="+ns+"&pod="+name, nil, &resp); err != nil {
		l.t.Fatal(err)
	}
	return resp.Path
}

func (l *labRun) nodeNS(node string) string { return netns.Path(lab.Prefix(l.name) + node) }

// TestModesAndTopologies runs every cross-node mode on the topologies it
// supports, in every family it supports, and checks that every pod reaches
// every pod and that the server sees the client pod's own address: pod to
// pod traffic is never NATed.
func TestModesAndTopologies(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		subnets  int
		family   string
		families []string
	}{
		{"direct", 1, "--dual-stack", []string{"ipv4", "ipv6"}},
		{"vxlan", 1, "--dual-stack", []string{"ipv4", "ipv6"}},
		{"vxlan", 2, "--ipv6", []string{"ipv6"}},
		{"auto", 2, "--dual-stack", []string{"ipv4", "ipv6"}},
		{"vxlan", 3, "", []string{"ipv4"}},
	} {
		name := fmt.Sprintf("%s-%dsubnets%s", tc.mode, tc.subnets, tc.family)
		t.Run(name, func(t *testing.T) {
			args := []string{"--nodes", "3", "--mode", tc.mode, "--subnets", fmt.Sprint(tc.subnets)}
			if tc.family != "" {
				args = append(args, tc.family)
			}
			l := startLab(t, args...)
			l.apply(podsYAML(6, 3))
			ips := l.podIPs()
			for _, fam := range tc.families {
				res := l.probe("--family", fam)
				assertAllConnected(t, res, 6*6*2)
				for _, r := range res {
					if want := ips[r.From][fam == "ipv4"]; r.Connected && r.Source != want {
						t.Errorf("%s → %s (%s): server saw source %s, want the pod's own %s", r.From, r.To, fam, r.Source, want)
					}
				}
			}
		})
	}
}

// TestMasquerade: pod traffic to an address outside the cluster leaves
// with the node's address; the outside host is the lab router.
func TestMasquerade(t *testing.T) {
	l := startLab(t, "--nodes", "2", "--mode", "auto", "--subnets", "2", "--dual-stack")
	l.apply(podsYAML(2, 2))
	router := netns.Path(lab.Prefix(l.name) + "router")
	for _, ext := range []netip.Addr{lab.External4, lab.External6} {
		seen := serveRemoteAddr(t, router, netip.AddrPortFrom(ext, 9000))
		for pod, nodeAddr := range map[string]string{"p1": "192.168.77.11", "p2": "192.168.78.12"} {
			if ext.Is6() {
				nodeAddr = map[string]string{"p1": "fd77::11", "p2": "fd77:1::12"}[pod]
			}
			if err := netns.Do(l.podNS("e2e", pod), func() error {
				c, err := net.DialTimeout("tcp", netip.AddrPortFrom(ext, 9000).String(), 2*time.Second)
				if err != nil {
					return err
				}
				return c.Close()
			}); err != nil {
				t.Fatalf("%s → %s: %v", pod, ext, err)
			}
			if got := <-seen; got != nodeAddr {
				t.Errorf("%s → outside %s arrived from %s, want the node's %s", pod, ext, got, nodeAddr)
			}
		}
	}
}

// serveRemoteAddr accepts TCP connections inside nsPath and reports each
// client's address.
func serveRemoteAddr(t *testing.T, nsPath string, at netip.AddrPort) <-chan string {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(nsPath, func() (err error) { ln, err = net.Listen("tcp", at.String()); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan string, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			ch <- ap.Addr().Unmap().String()
			c.Close()
		}
	}()
	return ch
}

// snmp reads a counter of /proc/net/snmp inside a namespace.
func snmp(t *testing.T, nsPath, proto, field string) int {
	t.Helper()
	var v int
	err := netns.Do(nsPath, func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		var names []string
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != proto+":" {
				continue
			}
			if names == nil {
				names = fields
				continue
			}
			for i, n := range names {
				if n == field {
					v, _ = strconv.Atoi(fields[i])
					return nil
				}
			}
		}
		return fmt.Errorf("no %s %s", proto, field)
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestOverlayMTU: pods get the uplink MTU less the VXLAN overhead; a bulk
// TCP transfer and a UDP datagram of exactly the pod MTU cross the overlay
// without any fragmentation; a larger datagram is handled as the kernel
// always handles it: refused with EMSGSIZE when DF is set, fragmented and
// reassembled when it is not. Nothing is silently dropped.
func TestOverlayMTU(t *testing.T) {
	l := startLab(t, "--nodes", "2", "--mode", "vxlan", "--subnets", "2")
	l.apply(podsYAML(2, 2))
	p1, p2 := l.podNS("e2e", "p1"), l.podNS("e2e", "p2")
	h, err := netns.Handle(p1)
	if err != nil {
		t.Fatal(err)
	}
	eth0, err := h.LinkByName("eth0")
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	mtu := eth0.Attrs().MTU
	if mtu != 1500-50 {
		t.Fatalf("pod MTU %d, want 1450 (1500 uplink - 50 VXLAN over IPv4)", mtu)
	}
	dst := netip.MustParseAddr(l.podIPs()["e2e/p2"][true])
	counters := func() [3]int {
		return [3]int{snmp(t, l.nodeNS("node1"), "Ip", "FragCreates"), snmp(t, l.nodeNS("node2"), "Ip", "ReasmReqds"), snmp(t, p2, "Ip", "ReasmReqds")}
	}
	before := counters()

	// Bulk TCP: 8 MiB, byte-exact.
	const size = 8 << 20
	var ln net.Listener
	if err := netns.Do(p2, func() (err error) { ln, err = net.Listen("tcp", ":7000"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	if err := netns.Do(p1, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, 7000).String(), 3*time.Second)
		if err != nil {
			return err
		}
		buf := make([]byte, 64<<10)
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
		return c.Close()
	}); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != size {
		t.Fatalf("TCP across the overlay delivered %d bytes, want %d", n, size)
	}

	// UDP of exactly the pod MTU (IP 20 + UDP 8 + payload), DF set.
	var pc net.PacketConn
	if err := netns.Do(p2, func() (err error) { pc, err = net.ListenPacket("udp4", ":7001"); return }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if n, err := sendUDP(p1, dst, mtu-28, syscall.IP_PMTUDISC_DO); err != nil || n != mtu-28 {
		t.Fatalf("UDP of the pod MTU with DF: sent %d, %v", n, err)
	}
	if n := recvUDP(t, pc); n != mtu-28 {
		t.Fatalf("UDP of the pod MTU: received %d bytes, want %d", n, mtu-28)
	}
	after := counters()
	if after != before {
		t.Fatalf("fragmentation happened (node1 FragCreates, node2 ReasmReqds, pod ReasmReqds): before %v after %v", before, after)
	}

	// Larger than the MTU with DF: the sender is told at once.
	if _, err := sendUDP(p1, dst, mtu-28+100, syscall.IP_PMTUDISC_DO); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("oversized UDP with DF: want EMSGSIZE, got %v", err)
	}
	// Larger than the MTU without DF: fragmented by the sender, reassembled
	// by the receiver, delivered whole.
	if _, err := sendUDP(p1, dst, mtu-28+100, syscall.IP_PMTUDISC_DONT); err != nil {
		t.Fatalf("oversized UDP without DF: %v", err)
	}
	if n := recvUDP(t, pc); n != mtu-28+100 {
		t.Fatalf("oversized UDP without DF: received %d, want %d", n, mtu-28+100)
	}
	if r := snmp(t, p2, "Ip", "ReasmOKs"); r == 0 {
		t.Fatal("the receiver reassembled nothing")
	}
}

func sendUDP(nsPath string, dst netip.Addr, payload, pmtu int) (int, error) {
	var n int
	err := netns.Do(nsPath, func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(dst, 7001).String())
		if err != nil {
			return err
		}
		defer c.Close()
		raw, _ := c.(*net.UDPConn).SyscallConn()
		var serr error
		raw.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, pmtu)
		})
		if serr != nil {
			return serr
		}
		n, err = c.Write(make([]byte, payload))
		return err
	})
	return n, err
}

func recvUDP(t *testing.T, pc net.PacketConn) int {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 65536)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("UDP receive: %v", err)
	}
	return n
}
