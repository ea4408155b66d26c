package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// BenchmarkConvergence measures how long every agent of a 3-node lab takes
// to program a Node that joins, and to remove one that leaves, while the
// real kube-apiserver holds 1,000 more (simulated) Nodes that every agent
// also routes to. It writes its section of RESULTS.md.
//
//	go test ./bench -run '^$' -bench Convergence -benchtime 1x
func BenchmarkConvergence(b *testing.B) {
	testenv.RequireRoot(b)
	const simulated, rounds = 1000, 7
	api := testenv.StartAPIServer(b)
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(testenv.Binaries(b), "podnet")
	name := "bconv" + testenv.Unique()
	if out, err := exec.Command(bin, "lab", "up", "--name", name, "--nodes", "3", "--mode", "vxlan", "--kubeconfig", api.Kubeconfig).CombinedOutput(); err != nil {
		b.Fatalf("lab up: %v\n%s", err, out)
	}
	b.Cleanup(func() { exec.Command(bin, "lab", "down", "--name", name).Run() })

	// 1,000 simulated peers, created by 16 workers.
	var wg sync.WaitGroup
	jobs := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				createNode(b, c, fmt.Sprintf("sim%04d", i), i)
			}
		}()
	}
	for i := 0; i < simulated; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	handles := map[string]*netlink.Handle{}
	for _, n := range []string{"node1", "node2", "node3"} {
		h, err := netns.Handle(netns.Path(lab.Prefix(name) + n))
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		handles[n] = h
	}
	waitAll(b, handles, simCIDR(simulated-1), true, 120*time.Second) // the last simulated peer is routed everywhere

	var joins, leaves []float64
	for r := 0; r < rounds; r++ {
		i := simulated + r
		dst := simCIDR(i)
		// The clock starts before the API call: the figure includes the
		// apiserver's write and watch delivery, as a user would see it.
		t0 := time.Now()
		createNode(b, c, fmt.Sprintf("probe%d", r), i)
		waitAll(b, handles, dst, true, 10*time.Second)
		joins = append(joins, ms(time.Since(t0)))
		t1 := time.Now()
		if err := c.CoreV1().Nodes().Delete(context.Background(), fmt.Sprintf("probe%d", r), metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
		waitAll(b, handles, dst, false, 10*time.Second)
		leaves = append(leaves, ms(time.Since(t1)))
	}
	b.ReportMetric(median(joins), "join-ms")
	b.ReportMetric(median(leaves), "leave-ms")

	var s strings.Builder
	fmt.Fprintf(&s, "## Convergence on node join and leave\n\n`go test ./bench -run '^$' -bench Convergence -benchtime 1x`\n\n")
	fmt.Fprintf(&s, "A 3-node lab (`--mode vxlan`) on a real kube-apiserver that also holds %d simulated Nodes, each routed by every agent (a route, a neighbour and an FDB entry per peer). Time from the API call that creates (deletes) a Node until the route to its pod range is present on (gone from) all three nodes; %d rounds. Target: under 1 s at 1,000 peers.\n\n", simulated, rounds)
	fmt.Fprintln(&s, "| event | median | max | runs (ms) |")
	fmt.Fprintln(&s, "|---|---|---|---|")
	for _, row := range []struct {
		name string
		v    []float64
	}{{"join", joins}, {"leave", leaves}} {
		var each []string
		mx := 0.0
		for _, x := range row.v {
			each = append(each, fmt.Sprintf("%.0f", x))
			mx = max(mx, x)
		}
		fmt.Fprintf(&s, "| %s | %.0f ms | %.0f ms | %s |\n", row.name, median(row.v), mx, strings.Join(each, ", "))
	}
	fmt.Fprintln(&s)
	if err := updateSection("RESULTS.md", "convergence", runMeta()+s.String()); err != nil {
		b.Fatal(err)
	}
}

func simCIDR(i int) string { return fmt.Sprintf("10.99.%d.%d/26", i/4, (i%4)*64) }

func createNode(b *testing.B, c kubernetes.Interface, name string, i int) {
	ctx := context.Background()
	cidr := simCIDR(i)
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
	created, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		b.Error(err)
		return
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.30.%d.%d", i/250, 1+i%250)}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		b.Error(err)
	}
}

// waitAll polls every node until the route to dst is present (or absent)
// and returns the elapsed time.
func waitAll(b *testing.B, handles map[string]*netlink.Handle, dst string, present bool, limit time.Duration) time.Duration {
	_, ipn, _ := net.ParseCIDR(dst)
	t0 := time.Now()
	for n, h := range handles {
		for {
			rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipn}, netlink.RT_FILTER_DST)
			if err != nil {
				b.Fatal(err)
			}
			if (len(rs) > 0) == present {
				break
			}
			if time.Since(t0) > limit {
				b.Fatalf("%s: route %s present=%v not reached after %s", n, dst, present, limit)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return time.Since(t0)
}
