package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/cgroup"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// BenchmarkDataplanes compares podnet's two dataplanes on the traffic a
// Service carries, in a 2-node lab, client pod on one node and server pod
// on the other, against the same pods talking directly (no Service):
//
//   - TCP_RR: request/response transactions per second over one
//     connection (1 byte each way), as netperf's TCP_RR;
//   - TCP_CRR: connect, one transaction, close, per second;
//   - stream: one iperf3 TCP stream, Gbit/s.
//
// Medians of PODNET_BENCH_DP_RUNS (default 3) runs of 3 s each. It
// writes the "dataplanes" section of RESULTS.md.
//
//	go test ./bench -run '^$' -bench Dataplanes -benchtime 1x
func BenchmarkDataplanes(b *testing.B) {
	testenv.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("skipped: iperf3 is not installed (make deps)")
	}
	runs := envInts("PODNET_BENCH_DP_RUNS", []int{3})[0]
	bin := filepath.Join(testenv.Binaries(b), "podnet")
	var rows strings.Builder
	for _, dp := range []string{"nftables", "ebpf"} {
		if dp == "ebpf" {
			if _, err := cgroup.Root(); err != nil {
				b.Logf("ebpf left out: %v", err)
				continue
			}
		}
		m := measureDataplane(b, bin, dp, runs)
		for _, path := range []string{"pod → pod", "pod → ClusterIP", "external → NodePort"} {
			r := m[path]
			fmt.Fprintf(&rows, "| %s | %s | %.0f | %.0f | %.2f | %.3f |\n", dp, path, median(r.rr), median(r.crr), median(r.gbps), median(r.cpuPerGbit))
		}
	}
	out := fmt.Sprintf("## Dataplanes: Service traffic under nftables and eBPF\n\n`go test ./bench -run '^$' -bench Dataplanes -benchtime 1x`\n\n"+
		"2-node lab (`--mode direct`), client pod on node1, server pod on node2; \"pod → pod\" is the baseline with no Service; \"external → NodePort\" is the lab's router (outside the cluster) to node1's node port, served by the pod on node2. "+
		"TCP_RR: 1-byte request/response transactions per second on one connection; TCP_CRR: connect, one transaction, close, per second; "+
		"stream: one iperf3 TCP stream; CPU per Gbit: the machine's busy CPU seconds (all processes and the kernel, from /proc/stat) during the stream, per gigabit moved. Medians of %d runs of 3 s.\n\n"+
		"| dataplane | path | TCP_RR /s | TCP_CRR /s | stream Gbit/s | CPU s per Gbit |\n|---|---|---|---|---|---|\n%s", runs, rows.String())
	if err := updateSection("RESULTS.md", "dataplanes", runMeta()+out); err != nil {
		b.Fatal(err)
	}
}

type dpResult struct{ rr, crr, gbps, cpuPerGbit []float64 }

// busySeconds is the machine's CPU time spent not idle so far, from
// /proc/stat (all CPUs).
func busySeconds() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	busy := 0.0
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / 100 // USER_HZ
}

func measureDataplane(b *testing.B, bin, dataplane string, runs int) map[string]*dpResult {
	name := "bdp" + testenv.Unique()
	if out, err := exec.Command(bin, "lab", "up", "--name", name, "--nodes", "2", "--dataplane", dataplane).CombinedOutput(); err != nil {
		b.Fatalf("lab up: %v\n%s", err, out)
	}
	defer exec.Command(bin, "lab", "down", "--name", name).Run()
	if dataplane == "ebpf" {
		// This process is the client: it joins the lab's cgroup, where
		// the socket balancer is attached, for the measurement.
		defer joinCgroup(b, "pnl-"+name)()
	}
	manifest := `
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}}
spec: {nodeName: node2, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: rr, namespace: bench}
spec:
  type: NodePort
  selector: {app: server}
  ports: [{name: rr, port: 80, targetPort: 7000, nodePort: 30080}, {name: stream, port: 5201, targetPort: 5201, nodePort: 30201}]
`
	f := filepath.Join(b.TempDir(), "bench.yaml")
	os.WriteFile(f, []byte(manifest), 0o644)
	if out, err := exec.Command(bin, "lab", "apply", "--name", name, "-f", f).CombinedOutput(); err != nil {
		b.Fatalf("lab apply: %v\n%s", err, out)
	}
	nsOf := func(pod string) string {
		var m map[string]string
		if err := lab.NewClient(name).Do("GET", "/v1/netns?namespace=bench&pod="+pod, nil, &m); err != nil {
			b.Fatal(err)
		}
		return m["path"]
	}
	clientNS, serverNS := nsOf("client"), nsOf("server")
	var pods corev1.PodList
	var svcs corev1.ServiceList
	getJSON(b, bin, name, "pods", &pods)
	getJSON(b, bin, name, "services", &svcs)
	serverIP, vip := "", ""
	for _, p := range pods.Items {
		if p.Name == "server" {
			serverIP = p.Status.PodIP
		}
	}
	for _, s := range svcs.Items {
		if s.Name == "rr" {
			vip = s.Spec.ClusterIP
		}
	}
	if serverIP == "" || vip == "" {
		b.Fatalf("server %q, ClusterIP %q", serverIP, vip)
	}
	// The baseline has a port of its own: under the socket balancer a
	// Service connection goes to the pod's own address, and the baseline's
	// TIME_WAIT sockets on the same port would slow its port search.
	stop := echoServer(b, serverNS, ":7000")
	defer stop()
	stopDirect := echoServer(b, serverNS, ":7001")
	defer stopDirect()

	res := map[string]*dpResult{}
	for _, path := range []struct{ name, rr, stream string }{
		{"pod → pod", net.JoinHostPort(serverIP, "7001"), serverIP},
		{"pod → ClusterIP", net.JoinHostPort(vip, "80"), vip},
		// From the fabric's router (outside the cluster) to node1's node
		// port, served by the pod on node2: translated, masqueraded and
		// forwarded (under ebpf the tc balancer sets it up).
		{"external → NodePort", "192.168.77.11:30080", "192.168.77.11:30201"},
	} {
		from := clientNS
		if strings.HasPrefix(path.name, "external") {
			from = netns.Path(lab.Prefix(name) + "router")
		}
		r := &dpResult{}
		res[path.name] = r
		for range runs {
			r.rr = append(r.rr, tcpRR(b, from, path.rr, 3*time.Second))
			r.crr = append(r.crr, tcpCRR(b, from, path.rr, 3*time.Second))
			c0, t0 := busySeconds(), time.Now()
			g, err := iperfVia(from, serverNS, serverIP, path.stream, 3)
			if err != nil {
				b.Fatalf("%s %s stream: %v", dataplane, path.name, err)
			}
			r.gbps = append(r.gbps, g)
			// CPU seconds the whole machine spent per gigabit moved: the
			// stream's senders, receivers and the kernel between them.
			if bits := g * time.Since(t0).Seconds(); bits > 0 {
				r.cpuPerGbit = append(r.cpuPerGbit, (busySeconds()-c0)/bits)
			}
		}
		b.Logf("%s %s: TCP_RR %.0f/s, TCP_CRR %.0f/s, %.2f Gbit/s", dataplane, path.name, median(r.rr), median(r.crr), median(r.gbps))
	}
	return res
}

func getJSON(b *testing.B, bin, name, kind string, v any) {
	out, err := exec.Command(bin, "lab", "get", "--name", name, kind, "-o", "json").Output()
	if err != nil {
		b.Fatalf("lab get %s: %v", kind, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		b.Fatal(err)
	}
}

// joinCgroup moves this process into a cgroup v2 group (by name, under
// the hierarchy's root) and returns how to move back.
func joinCgroup(b *testing.B, group string) func() {
	root, err := cgroup.Root()
	if err != nil {
		b.Fatal(err)
	}
	leave, err := cgroup.Join(filepath.Join(root, group))
	if err != nil {
		b.Fatalf("join cgroup %s: %v", group, err)
	}
	return leave
}

// echoServer answers every byte it reads with one byte, in the namespace.
func echoServer(b *testing.B, ns, addr string) func() {
	var ln net.Listener
	if err := netns.Do(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return func() { ln.Close() }
}

func dialIn(ns, dst string) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", dst, 2*time.Second); return err })
	return c, err
}

// tcpRR counts 1-byte transactions on one connection for d.
func tcpRR(b *testing.B, ns, dst string, d time.Duration) float64 {
	c, err := dialIn(ns, dst)
	if err != nil {
		b.Fatalf("TCP_RR to %s: %v", dst, err)
	}
	defer c.Close()
	buf := []byte{1}
	n := 0
	t0 := time.Now()
	for time.Since(t0) < d {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(t0).Seconds()
}

// tcpCRR counts connect + one transaction + close for d.
func tcpCRR(b *testing.B, ns, dst string, d time.Duration) float64 {
	buf := []byte{1}
	n := 0
	t0 := time.Now()
	for time.Since(t0) < d {
		c, err := dialIn(ns, dst)
		if err != nil {
			b.Fatalf("TCP_CRR to %s: %v", dst, err)
		}
		c.Write(buf)
		_, err = io.ReadFull(c, buf)
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(t0).Seconds()
}
