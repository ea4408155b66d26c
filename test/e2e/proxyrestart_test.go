package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// plug connects namespace peer to node with a veth: node side nodeAddr,
// peer side peerAddr with a default route through the node.
func plug(t *testing.T, node, peer, name string, nodeAddr, peerAddr netip.Prefix) {
	t.Helper()
	nh, err := netns.Handle(node)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	ph, err := netns.Handle(peer)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	pfd, err := os.Open(peer)
	if err != nil {
		t.Fatal(err)
	}
	defer pfd.Close()
	if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(pfd.Fd())}); err != nil {
		t.Fatal(err)
	}
	addr := func(h *netlink.Handle, dev string, p netip.Prefix) netlink.Link {
		l, err := h.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	addr(nh, name, nodeAddr)
	pl := addr(ph, "eth0", peerAddr)
	if lo, err := ph.LinkByName("lo"); err == nil {
		ph.LinkSetUp(lo)
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: nodeAddr.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
}

// TestProxyRestartKeepsConnections restarts a podnet agent (the service
// proxy) while a long-lived TCP stream and a steady stream of new
// connections run through a ClusterIP: neither may see a single error.
// It runs under each dataplane: under eBPF the socket balancer's pinned
// maps and programs keep translating while no agent runs, and the
// restarted agent takes them over.
func TestProxyRestartKeepsConnections(t *testing.T) {
	testenv.RequireRoot(t)
	for _, dp := range []string{"nftables", "ebpf"} {
		t.Run(dp, func(t *testing.T) { testProxyRestart(t, dp) })
	}
}

func testProxyRestart(t *testing.T, dataplane string) {
	api := testenv.StartAPIServer(t)
	c := clientFor(t, api)
	ctx := context.Background()
	node, client, server := testenv.NetNS(t, "node"), testenv.NetNS(t, "cli"), testenv.NetNS(t, "srv")
	plug(t, node, client, "vc", netip.MustParsePrefix("10.0.1.1/24"), netip.MustParsePrefix("10.0.1.2/24"))
	plug(t, node, server, "vs", netip.MustParsePrefix("10.0.2.1/24"), netip.MustParsePrefix("10.0.2.2/24"))
	if err := netns.Sysctl(node, "net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	makeNode(t, c, "solo", "10.0.1.1", "10.244.1.0/24")

	// The backend: an echo server in the server namespace.
	var ln net.Listener
	if err := netns.Do(server, func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); bufio.NewReader(conn).WriteTo(conn) }()
		}
	}()
	svc, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	port, proto, ready := int32(8080), corev1.ProtocolTCP, true
	nodeName, portName := "solo", "tcp"
	if _, err := c.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-1", Labels: map[string]string{discoveryv1.LabelServiceName: "echo"},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &nodeName}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")

	bin := filepath.Join(testenv.Binaries(t), "podnet")
	health := freeAddr(t)
	tmp := t.TempDir()
	var extra []string
	if dataplane == "ebpf" {
		// This process (the client) joins a throwaway cgroup that the
		// balancer attaches to; the pins live in a private BPF file
		// system.
		cg, pins := testenv.EBPFSandbox(t)
		extra = []string{"--dataplane", "ebpf", "--bpf-cgroup", cg, "--bpf-pin-dir", pins}
	}
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"agent", "--kubeconfig", api.Kubeconfig, "--node-name", "solo", "--mode", "direct",
			"--netns", node, "--proxy", "--cni-conf-dir", filepath.Join(tmp, "net.d"), "--cni-data-dir", filepath.Join(tmp, "data"), "--health-addr", health}, extra...)...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	waitReady := func() {
		eventually(t, 20*time.Second, "agent ready", func() (bool, string) {
			b := scrapeQuiet(health, "/readyz")
			return b == "ok\n", b
		})
	}
	agentProc := start()
	waitReady()
	// The proxy's metrics mean what kube-proxy's do.
	metrics := scrape(t, "http://"+health+"/metrics")
	for _, m := range []string{"podnet_proxy_sync_proxy_rules_duration_seconds_count", "podnet_proxy_network_programming_duration_seconds_count 1",
		"podnet_proxy_full_syncs_total 1", "podnet_proxy_services 2", "podnet_proxy_nftables_elements"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics lack %q", m)
		}
	}

	dialVIP := func() (net.Conn, error) {
		var conn net.Conn
		err := netns.Do(client, func() (err error) {
			conn, err = net.DialTimeout("tcp", vip, time.Second)
			return err
		})
		return conn, err
	}
	stream, err := dialVIP()
	if err != nil {
		t.Fatalf("connect to the ClusterIP: %v", err)
	}
	defer stream.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var echoed, newOK atomic.Int64
	var errMu sync.Mutex
	var errs []string
	fail := func(f string, a ...any) {
		errMu.Lock()
		errs = append(errs, fmt.Sprintf(f, a...))
		errMu.Unlock()
	}
	wg.Add(2)
	go func() { // the long-lived stream: a line every 10 ms, echoed back
		defer wg.Done()
		r := bufio.NewReader(stream)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			stream.SetDeadline(time.Now().Add(2 * time.Second))
			line := fmt.Sprintf("line %d\n", i)
			if _, err := stream.Write([]byte(line)); err != nil {
				fail("stream write %d: %v", i, err)
				return
			}
			got, err := r.ReadString('\n')
			if err != nil || got != line {
				fail("stream read %d: %q %v", i, got, err)
				return
			}
			echoed.Add(1)
		}
	}()
	go func() { // new connections, one every 20 ms
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			conn, err := dialVIP()
			if err != nil {
				fail("new connection %d: %v", i, err)
				continue
			}
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			conn.Write([]byte("hi\n"))
			got, err := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err != nil || got != "hi\n" {
				fail("new connection %d: echo %q %v", i, got, err)
				continue
			}
			newOK.Add(1)
		}
	}()

	time.Sleep(500 * time.Millisecond)
	agentProc.Process.Signal(syscall.SIGTERM)
	agentProc.Wait()
	time.Sleep(500 * time.Millisecond) // traffic runs with no agent at all
	start()
	waitReady()
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors across the restart, first: %s", len(errs), strings.Join(errs[:min(5, len(errs))], "; "))
	}
	if echoed.Load() < 50 || newOK.Load() < 25 {
		t.Fatalf("too little traffic to prove anything: %d echoes, %d new connections", echoed.Load(), newOK.Load())
	}
	if dataplane == "ebpf" {
		// The connections were the balancer's: they left the client
		// addressed to the endpoint, so the node forwarded them with no
		// NAT. (Under nftables every one is DNATed.)
		var nat, direct int
		for _, f := range conntrackFlows(t, node) {
			if f.nat || f.origDst.String() == svc.Spec.ClusterIP {
				nat++
			} else if f.origDst.String() == "10.0.2.2" {
				direct++
			}
		}
		if nat > 0 || direct == 0 {
			t.Errorf("conntrack on the node: %d translated per packet, %d addressed to the endpoint; want all by the socket balancer", nat, direct)
		}
	}
	t.Logf("across the restart: %d stream echoes and %d new connections, no errors", echoed.Load(), newOK.Load())
}

func scrapeQuiet(addr, path string) string {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\n\r\n", path)
	b, _ := bufio.NewReader(conn).ReadString(0)
	_, body, _ := strings.Cut(b, "\r\n\r\n")
	return body
}
