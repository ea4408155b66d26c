package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/cgroup"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// BenchmarkProxy measures podnet's service proxy against kube-proxy in
// nftables mode (and, for first-packet latency, iptables mode), built from
// the same k8s.io/kubernetes module as the apiserver, against one real
// kube-apiserver, each proxy alone in a fresh node namespace of its own:
//
//   - full sync: process start until the first complete sync of N
//     Services × 10 endpoints is in the kernel, and the process's peak RSS;
//   - add one Service: from the API create until a probe's connection to
//     its ClusterIP succeeds;
//   - first-packet latency: TCP connect time to the first and the last of
//     the Services.
//
// Every endpoint is a real listener on the node namespace's loopback, so
// any Service's traffic can be checked. It writes the "proxy" section of
// RESULTS.md.
//
//	go test ./bench -run '^$' -bench Proxy -benchtime 1x -timeout 60m
//
// PODNET_BENCH_PROXY_SIZES (default 1000,10000,30000) and
// PODNET_BENCH_PROXY_RUNS (default 3) change the sizes and the runs,
// PODNET_BENCH_PROXY_SECTION the RESULTS.md section it writes, and
// PODNET_BENCH_EBPF=0 leaves out the eBPF dataplane's run.
// PODNET_BENCH_API_DIR keeps the apiserver's state in a directory and
// reuses it: the Services one run created are there for the next, so a
// large size is grown once (30,000 takes over half an hour here) and
// measured many times. PODNET_BENCH_KP_TIMEOUT (default 10m) bounds
// kube-proxy's first sync. PODNET_BENCH_GROW_ONLY=1 only grows the
// apiserver state to the largest size, for later runs.
// PODNET_BENCH_PROFILE=DIR saves podnet's heap profile after each run;
// PODNET_BENCH_KUBEPROXY=0 leaves kube-proxy out (a development run,
// whose RESULTS section has no ratios). PODNET_BENCH_LOGS=DIR keeps the
// proxies' logs there.
func BenchmarkProxy(b *testing.B) {
	testenv.RequireRoot(b)
	sizes := envInts("PODNET_BENCH_PROXY_SIZES", []int{1000, 10000, 30000})
	runs := envInts("PODNET_BENCH_PROXY_RUNS", []int{3})[0]
	var apiOpts []testenv.APIServerOption
	if d := os.Getenv("PODNET_BENCH_API_DIR"); d != "" {
		apiOpts = append(apiOpts, testenv.WithStateDir(d))
	}
	kpTimeout := 10 * time.Minute
	if s := os.Getenv("PODNET_BENCH_KP_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("PODNET_BENCH_KP_TIMEOUT: %v", err)
		}
		kpTimeout = d
	}
	api := testenv.StartAPIServer(b, apiOpts...)
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 5000, 10000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	pb := &proxyBench{b: b, c: c, api: api, sizes: sizes, podnet: filepath.Join(testenv.Binaries(b), "podnet"), tmp: b.TempDir(), kpTimeout: kpTimeout}
	if d := os.Getenv("PODNET_BENCH_LOGS"); d != "" {
		// Keep every proxy's log (podnet's at debug level) for a look at
		// where its time went.
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
		pb.tmp = d
	}
	for _, n := range []string{"bench-pn", "bench-kp"} {
		pb.makeNode(n)
	}
	have, added := pb.existing()
	pb.added = added
	if have > sizes[0] {
		b.Fatalf("the apiserver state holds %d Services, more than the first size %d: use a fresh PODNET_BENCH_API_DIR", have, sizes[0])
	}
	if have > 0 {
		b.Logf("reusing %d Services (and %d added ones) from %s", have, added, os.Getenv("PODNET_BENCH_API_DIR"))
	}
	var out strings.Builder
	sizeList := make([]string, len(sizes))
	for i, n := range sizes {
		sizeList[i] = strconv.Itoa(n)
	}
	env := ""
	for _, name := range []string{"PODNET_BENCH_PROXY_SECTION", "PODNET_BENCH_API_DIR", "PODNET_BENCH_KP_TIMEOUT"} {
		if v := os.Getenv(name); v != "" {
			env += name + "=" + v + " "
		}
	}
	fmt.Fprintf(&out, "## Service proxy: podnet vs kube-proxy (nftables mode), %s Services\n\n`%sPODNET_BENCH_PROXY_SIZES=%s PODNET_BENCH_PROXY_RUNS=%d go test ./bench -run '^$' -bench Proxy -benchtime 1x -timeout 80m`\n\n",
		strings.Join(sizeList, ", "), env, strings.Join(sizeList, ","), runs)
	fmt.Fprintf(&out, "One real kube-apiserver; each proxy runs alone in a fresh node namespace, one after the other; every Service has 10 ready endpoints. Full sync: process start until the first sync of every Service is in the kernel (podnet: /readyz; kube-proxy: its first `sync_proxy_rules` observation). Peak memory: the proxy process's VmHWM (the `nft` children are not counted for either). Add one: from the API create until a TCP connect to the new ClusterIP succeeds (podnet's 50 ms and kube-proxy's 1 s minimum sync intervals, both defaults, included). Medians of %d runs. kube-proxy v1.37.2, from the same module as the apiserver.\n\n", runs)
	fmt.Fprintln(&out, "| Services | podnet full sync | kube-proxy full sync | speed-up | podnet peak RSS | kube-proxy peak RSS | memory ratio | podnet add one | kube-proxy add one | speed-up |")
	fmt.Fprintln(&out, "|---|---|---|---|---|---|---|---|---|---|")
	if os.Getenv("PODNET_BENCH_GROW_ONLY") == "1" {
		// Prepare PODNET_BENCH_API_DIR for later runs, measuring nothing.
		pb.grow(have, sizes[len(sizes)-1])
		return
	}
	var latency, ebpfRow string
	for _, n := range sizes {
		pb.grow(have, n)
		have = n
		var pnSync, kpSync, pnMem, kpMem, pnAdd, kpAdd []float64
		kpTimedOut := false
		for r := range runs {
			for _, p := range []string{"podnet", "kube-proxy"} {
				if p == "kube-proxy" && os.Getenv("PODNET_BENCH_KUBEPROXY") == "0" {
					continue // a development run: podnet alone, no ratios
				}
				res := pb.run(p, "nftables", fmt.Sprintf("%d-%d", n, r), true, n == latencyAt(sizes) && r == 0)
				if p == "podnet" {
					pnSync, pnMem, pnAdd = append(pnSync, ms(res.sync)), append(pnMem, res.peakMiB), append(pnAdd, ms(res.add))
				} else {
					kpSync, kpMem, kpAdd = append(kpSync, ms(res.sync)), append(kpMem, res.peakMiB), append(kpAdd, ms(res.add))
					kpTimedOut = kpTimedOut || res.timedOut
				}
				if res.latency != "" {
					latency += res.latency
					b.Logf("latency: %s", res.latency)
				}
				b.Logf("%d services, %s run %d: sync %s, peak %.0f MiB, add %s", n, p, r, res.sync.Round(time.Millisecond), res.peakMiB, res.add.Round(time.Millisecond))
			}
		}
		if n == latencyAt(sizes) && os.Getenv("PODNET_BENCH_EBPF") != "0" {
			// podnet's eBPF dataplane: the socket balancer in front of
			// the same rules.
			res := pb.run("podnet", "ebpf", "ebpf", true, true)
			latency += res.latency
			ebpfRow = fmt.Sprintf("| %d | %s | %.0f MiB | %s |\n", n, fmtMS(ms(res.sync)), res.peakMiB, fmtMS(ms(res.add)))
			b.Logf("%d services, podnet ebpf: sync %s, peak %.0f MiB, add %s", n, res.sync.Round(time.Millisecond), res.peakMiB, res.add.Round(time.Millisecond))
		}
		if n == latencyAt(sizes) {
			// iptables mode, the O(n) reference for first-packet latency.
			ipt := pb.run("kube-proxy", "iptables", "ipt", false, true)
			latency += ipt.latency
			b.Logf("%d services, kube-proxy iptables: sync %s", n, ipt.sync.Round(time.Millisecond))
		}
		add := func(xs []float64) string {
			if median(xs) == 0 {
				return "-"
			}
			return fmtMS(median(xs))
		}
		addRatio := "-"
		if median(pnAdd) > 0 {
			addRatio = fmt.Sprintf("%.1f×", median(kpAdd)/median(pnAdd))
		}
		kpSyncText, lower := fmtMS(median(kpSync)), ""
		if kpTimedOut {
			kpSyncText, lower, addRatio = fmt.Sprintf("> %s (no sync)", fmtDur(pb.kpTimeout)), "> ", "-"
		}
		fmt.Fprintf(&out, "| %d | %s | %s | %s%.1f× | %.0f MiB | %.0f MiB | %.2f | %s | %s | %s |\n", n,
			fmtMS(median(pnSync)), kpSyncText, lower, median(kpSync)/median(pnSync),
			median(pnMem), median(kpMem), median(pnMem)/median(kpMem), add(pnAdd), add(kpAdd), addRatio)
	}
	if ebpfRow != "" {
		fmt.Fprintf(&out, "\n### podnet with --dataplane=ebpf (one run)\n\nThe socket-level balancer (docs/ebpf.md) programmed in the same transaction loop, after the nftables rules it sits in front of.\n\n| Services | full sync | peak RSS | add one |\n|---|---|---|---|\n%s", ebpfRow)
	}
	if latency != "" {
		fmt.Fprintf(&out, "\nTargets: podnet at least 5× faster than kube-proxy nftables on the full sync and the add-one, with less memory.\n")
		fmt.Fprintf(&out, "\n### First-packet latency at %d Services\n\nTCP connect time from the node namespace to the first and the last Service (for iptables, the first and last in `KUBE-SERVICES`), 400 connects each, alternating; median and p90. Target: last/first ≤ 1.1 for podnet.\n\n| proxy | first median | last median | first p90 | last p90 | last / first |\n|---|---|---|---|---|---|\n%s", latencyAt(sizes), latency)
	}
	// A run of other sizes (30,000 alone, which takes most of an hour to
	// set up) can keep its own section: PODNET_BENCH_PROXY_SECTION.
	section := "proxy"
	if s := os.Getenv("PODNET_BENCH_PROXY_SECTION"); s != "" {
		section = s
	}
	if err := updateSection("RESULTS.md", section, runMeta()+out.String()); err != nil {
		b.Fatal(err)
	}
}

var (
	programmedLine = regexp.MustCompile(`msg="services programmed".*`)
	syncLine       = regexp.MustCompile(`time=\S+ level=DEBUG msg="service sync".*`)
)

type proxyBench struct {
	b      *testing.B
	c      kubernetes.Interface
	api    *testenv.APIServer
	podnet string
	tmp    string
	added  int
	sizes  []int
	// kpTimeout bounds kube-proxy's first sync.
	kpTimeout time.Duration
}

// existing counts the bench's Services already in the API (from an
// earlier run, with PODNET_BENCH_API_DIR): the grown ones (svc-N) and
// the ones add-one created (added-N).
func (pb *proxyBench) existing() (grown, added int) {
	ctx := context.Background()
	opts := metav1.ListOptions{Limit: 5000}
	for {
		l, err := pb.c.CoreV1().Services("default").List(ctx, opts)
		if err != nil {
			pb.b.Fatal(err)
		}
		for _, s := range l.Items {
			switch {
			case strings.HasPrefix(s.Name, "svc-"):
				grown++
			case strings.HasPrefix(s.Name, "added-"):
				added++
			}
		}
		if l.Continue == "" {
			return grown, added
		}
		opts.Continue = l.Continue
	}
}

// latencyAt is the size first-packet latency is measured at: 10,000, or
// the largest size below it when the run is smaller.
func latencyAt(sizes []int) int {
	at := 0
	for _, n := range sizes {
		if n <= 10000 && n > at {
			at = n
		}
	}
	return at
}

type proxyResult struct {
	sync, add time.Duration
	peakMiB   float64
	latency   string
	// timedOut: the proxy had not synced in its time (sync is a
	// lower bound, and nothing else was measured).
	timedOut bool
}

func envInts(name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			panic(fmt.Sprintf("%s: %v", name, err))
		}
		out = append(out, n)
	}
	return out
}

// fmtDur writes a whole number of minutes as "N min".
func fmtDur(d time.Duration) string {
	if d%time.Minute == 0 {
		return fmt.Sprintf("%d min", int(d/time.Minute))
	}
	return d.String()
}

func fmtMS(x float64) string {
	if x >= 1000 {
		return fmt.Sprintf("%.2f s", x/1000)
	}
	return fmt.Sprintf("%.0f ms", x)
}

func (pb *proxyBench) makeNode(name string) {
	ctx := context.Background()
	n, err := pb.c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}}}, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsAlreadyExists(err) {
			return // from an earlier run (PODNET_BENCH_API_DIR)
		}
		pb.b.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.250.0.1"}}
	if _, err := pb.c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		pb.b.Fatal(err)
	}
}

// backends are the 10 endpoint addresses every Service uses; each node
// namespace has them on its loopback with one listener on port 8080.
var backends = func() []string {
	var out []string
	for i := 1; i <= 10; i++ {
		out = append(out, fmt.Sprintf("10.200.0.%d", i))
	}
	return out
}()

func (pb *proxyBench) createService(name string) string {
	ctx := context.Background()
	var svc *corev1.Service
	var err error
	for try := 0; ; try++ {
		svc, err = pb.c.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err == nil || try == 5 {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		pb.b.Fatalf("create service %s: %v", name, err)
	}
	port, proto, ready, pname := int32(8080), corev1.ProtocolTCP, true, "http"
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
	}
	for _, a := range backends {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	for try := 0; ; try++ {
		_, err = pb.c.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{})
		if err == nil || try == 5 {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		pb.b.Fatalf("create endpointslice %s: %v", name, err)
	}
	return svc.Spec.ClusterIP
}

// grow creates Services from..to-1, with 32 workers.
func (pb *proxyBench) grow(from, to int) {
	if from >= to {
		return
	}
	t0 := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				pb.createService(fmt.Sprintf("svc-%05d", i))
			}
		}()
	}
	for i := from; i < to; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	pb.b.Logf("created services %d..%d in %s", from, to, time.Since(t0).Round(time.Second))
}

// nodeNS makes a fresh node namespace: the node's address and the
// backends on loopback, a listener for them, and a relay that makes the
// apiserver (on the root namespace's loopback) reachable at the same
// address inside it, for kube-proxy, which cannot be pointed at another
// namespace.
func (pb *proxyBench) nodeNS(tag string) (string, func()) {
	name := "pnt-bproxy-" + tag
	path, err := netns.Create(name)
	if err != nil {
		pb.b.Fatal(err)
	}
	h, err := netns.Handle(path)
	if err != nil {
		pb.b.Fatal(err)
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	h.LinkSetUp(lo)
	for _, a := range append([]string{"10.250.0.1"}, backends...) {
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(a), Mask: net.CIDRMask(32, 32)}}); err != nil {
			pb.b.Fatal(err)
		}
	}
	// Service addresses need a route for the connect to reach netfilter,
	// as a node's default route gives them.
	_, svcNet, _ := net.ParseCIDR("10.96.0.0/16")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: svcNet}); err != nil {
		pb.b.Fatal(err)
	}
	var lns []net.Listener
	listen := func(addr string) net.Listener {
		var ln net.Listener
		if err := netns.Do(path, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			pb.b.Fatal(err)
		}
		lns = append(lns, ln)
		return ln
	}
	srv := listen(":8080")
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	apiAddr := strings.TrimPrefix(pb.apiServerURL(), "https://")
	relay := listen(apiAddr)
	go func() {
		for {
			c, err := relay.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", apiAddr)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return path, func() {
		for _, ln := range lns {
			ln.Close()
		}
		netns.Delete(name)
	}
}

func (pb *proxyBench) apiServerURL() string {
	cfg, err := clientcmd.BuildConfigFromFlags("", pb.api.Kubeconfig)
	if err != nil {
		pb.b.Fatal(err)
	}
	return cfg.Host
}

// nsGet is an HTTP GET from inside a namespace.
func nsGet(path, url string) (string, error) {
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = netns.Do(path, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	hc := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dial}}
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

var syncCount = regexp.MustCompile(`(?m)^kubeproxy_sync_proxy_rules_duration_seconds_count(\{[^}]*\})? ([0-9]+)`)

// profileDir, from PODNET_BENCH_PROFILE, receives podnet's heap profile
// at the end of each run.
var profileDir = os.Getenv("PODNET_BENCH_PROFILE")

func saveURL(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// run starts one proxy in a fresh namespace and measures it.
func (pb *proxyBench) run(proxy, mode, tag string, addOne, latency bool) proxyResult {
	b := pb.b
	ns, cleanup := pb.nodeNS(tag)
	defer cleanup()
	var cmd *exec.Cmd
	var synced func() bool
	profile := func() {}
	if proxy == "podnet" {
		health := freeLocalAddr(b)
		dir := filepath.Join(pb.tmp, tag)
		cmd = exec.Command(pb.podnet, "agent", "--kubeconfig", pb.api.Kubeconfig, "--node-name", "bench-pn", "--mode", "direct",
			"--netns", ns, "--proxy", "--cluster-cidr", "10.244.0.0/16", "--cni-conf-dir", filepath.Join(dir, "net.d"),
			"--cni-data-dir", filepath.Join(dir, "data"), "--health-addr", health, "--log-level", "debug")
		if mode == "ebpf" {
			// The balancer attaches to a throwaway cgroup that this
			// process joins for the run (its probes are the clients),
			// and serves only the node namespace.
			cg, pins, leave := ebpfSandbox(b)
			defer leave()
			cmd.Args = append(cmd.Args, "--dataplane", "ebpf", "--bpf-cgroup", cg, "--bpf-scoped", "--bpf-pin-dir", pins)
		}
		if profileDir != "" {
			cmd.Args = append(cmd.Args, "--profiling")
			profile = func() {
				// The heap as the run ends: after the full sync and the
				// add-one, for `go tool pprof`.
				if err := saveURL("http://"+health+"/debug/pprof/heap", filepath.Join(profileDir, "heap-"+mode+"-"+tag+".pb.gz")); err != nil {
					b.Logf("heap profile: %v", err)
				}
			}
		}
		synced = func() bool {
			resp, err := http.Get("http://" + health + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		}
	} else {
		cmd = exec.Command(pb.api.KASBinary(), "proxy", "--kubeconfig="+pb.api.Kubeconfig, "--proxy-mode="+mode,
			"--hostname-override=bench-kp", "--cluster-cidr=10.244.0.0/16", "--conntrack-max-per-core=0",
			"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256")
		cmd.SysProcAttr = &syscall.SysProcAttr{}
		synced = func() bool {
			body, err := nsGet(ns, "http://127.0.0.1:10249/metrics")
			if err != nil {
				return false
			}
			m := syncCount.FindStringSubmatch(body)
			return m != nil && m[2] != "0"
		}
	}
	logf, _ := os.Create(filepath.Join(pb.tmp, proxy+"-"+tag+".log"))
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	t0 := time.Now()
	if proxy == "podnet" {
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
	} else {
		// kube-proxy programs the namespace it runs in.
		if err := netns.Do(ns, cmd.Start); err != nil {
			b.Fatal(err)
		}
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	limit := 10 * time.Minute
	if proxy == "kube-proxy" {
		limit = pb.kpTimeout
	}
	for !synced() {
		if time.Since(t0) > limit {
			if mode == "iptables" {
				// The O(n) reference may simply be too slow here: say so
				// in the results instead of failing the whole run.
				b.Logf("kube-proxy iptables did not sync in %s; log in %s", fmtDur(pb.kpTimeout), logf.Name())
				return proxyResult{latency: fmt.Sprintf("| kube-proxy (iptables) | did not finish its first sync of %d Services in %s | | | | |\n", latencyAt(pb.sizes), fmtDur(pb.kpTimeout))}
			}
			if proxy == "kube-proxy" {
				// Say so in the results (as "> 10 min", with its memory
				// so far) instead of losing the whole run.
				b.Logf("kube-proxy %s %s did not sync in %s; log in %s", mode, tag, fmtDur(pb.kpTimeout), logf.Name())
				return proxyResult{sync: time.Since(t0), timedOut: true, peakMiB: peakRSS(cmd.Process.Pid)}
			}
			b.Fatalf("%s %s did not sync in 10 minutes; log in %s", proxy, tag, logf.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
	res := proxyResult{sync: time.Since(t0)}
	if proxy == "podnet" {
		// The agent's own account of the sync (render and transaction),
		// to tell it apart from listing the API.
		if l, err := os.ReadFile(logf.Name()); err == nil {
			if m := programmedLine.Find(l); m != nil {
				b.Logf("%s: %s", tag, m)
			}
		}
	}
	if addOne {
		pb.added++
		name := fmt.Sprintf("added-%04d", pb.added)
		var logAt int64
		if fi, err := logf.Stat(); err == nil {
			logAt = fi.Size()
		}
		t1 := time.Now()
		vip := pb.createService(name)
		created := time.Since(t1)
		dst := net.JoinHostPort(vip, "80")
		for {
			if connectTime(ns, dst) > 0 {
				break
			}
			if time.Since(t1) > 2*time.Minute {
				b.Fatalf("%s: new service %s unreachable after 2 minutes", proxy, name)
			}
			time.Sleep(2 * time.Millisecond)
		}
		res.add = time.Since(t1)
		b.Logf("%s %s add one: API create took %s of %s", proxy, tag, created.Round(time.Millisecond), res.add.Round(time.Millisecond))
		if proxy == "podnet" {
			// The agent's syncs meanwhile, to tell where the time went.
			if l, err := os.ReadFile(logf.Name()); err == nil && int(logAt) <= len(l) {
				for _, m := range syncLine.FindAll(l[logAt:], 20) {
					b.Logf("  %s", m)
				}
			}
		}
	}
	if latency {
		first, last := "svc-00000", fmt.Sprintf("svc-%05d", latencyAt(pb.sizes)-1)
		label := proxy + " (" + mode + ")"
		if mode == "iptables" {
			first, last = iptablesEnds(b, ns)
		}
		res.latency = pb.latency(ns, label, first, last)
	}
	res.peakMiB = peakRSS(cmd.Process.Pid)
	profile()
	return res
}

// iptablesEnds finds the Services whose rules come first and last in
// KUBE-SERVICES, the chain iptables mode walks rule by rule.
func iptablesEnds(b *testing.B, ns string) (string, string) {
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns), "iptables-save", "-t", "nat").Output()
	if err != nil {
		b.Fatal(err)
	}
	re := regexp.MustCompile(`-A KUBE-SERVICES -d \S+ .*--comment "default/(svc-\d+):http cluster IP"`)
	var names []string
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		names = append(names, m[1])
	}
	if len(names) < 2 {
		b.Fatalf("no KUBE-SERVICES rules found")
	}
	return names[0], names[len(names)-1]
}

func (pb *proxyBench) latency(ns, label, first, last string) string {
	ip := func(name string) string {
		s, err := pb.c.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			pb.b.Fatal(err)
		}
		return net.JoinHostPort(s.Spec.ClusterIP, "80")
	}
	a, z := ip(first), ip(last)
	var fa, za []float64
	for range 400 {
		for _, x := range []struct {
			dst string
			out *[]float64
		}{{a, &fa}, {z, &za}} {
			d := connectTime(ns, x.dst)
			if d <= 0 {
				pb.b.Fatalf("%s: connect to %s failed", label, x.dst)
			}
			*x.out = append(*x.out, float64(d)/float64(time.Microsecond))
		}
	}
	sort.Float64s(fa)
	sort.Float64s(za)
	return fmt.Sprintf("| %s | %.0f µs | %.0f µs | %.0f µs | %.0f µs | %.2f |\n", label,
		median(fa), median(za), percentile(fa, 90), percentile(za, 90), median(za)/median(fa))
}

// connectTime is one TCP connect from the namespace; 0 on failure.
func connectTime(ns, dst string) time.Duration {
	var d time.Duration
	netns.Do(ns, func() error {
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", dst, 50*time.Millisecond)
		if err != nil {
			return err
		}
		d = time.Since(t0)
		c.Close()
		return nil
	})
	return d
}

func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

func freeLocalAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ebpfSandbox makes a throwaway cgroup v2 group and a private BPF file
// system for an eBPF-dataplane run, and moves this process into the
// group so that its probes are the balancer's clients; leave undoes it
// all once the agent has stopped.
func ebpfSandbox(b *testing.B) (dir, pins string, leave func()) {
	root, err := cgroup.Root()
	if err != nil {
		b.Fatal(err)
	}
	dir = filepath.Join(root, "pnt-bench-"+testenv.Unique())
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	back, err := cgroup.Join(dir)
	if err != nil {
		b.Fatal(err)
	}
	fsDir := b.TempDir()
	if err := syscall.Mount("bpf", fsDir, "bpf", 0, "mode=0700"); err != nil {
		b.Fatal(err)
	}
	return dir, filepath.Join(fsDir, "podnet"), func() {
		back()
		syscall.Unmount(fsDir, syscall.MNT_DETACH)
		os.Remove(dir)
	}
}
