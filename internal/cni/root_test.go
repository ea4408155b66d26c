package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cni"
	"github.com/podnet/podnet/internal/ipam"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// env is a node namespace with podnet installed as a CNI plugin, driven
// through libcni exactly as a container runtime drives it.
type env struct {
	t       *testing.T
	bin     string
	node    string
	dataDir string
	cni     *libcni.CNIConfig
}

func newEnv(t *testing.T) *env {
	testenv.RequireRoot(t)
	bin := testenv.Binaries(t)
	e := &env{
		t: t, bin: bin, node: testenv.NetNS(t, "node"), dataDir: t.TempDir(),
		cni: libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil),
	}
	// A node always has an address of its own; the node's traffic to its
	// pods takes it as source.
	h, err := netns.Handle(e.node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	for _, a := range []string{"192.0.2.10/32", "2001:db8::10/128"} {
		ip, n, _ := net.ParseCIDR(a)
		n.IP = ip
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: n}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *env) list(version string, podCIDRs []string, chained ...string) *libcni.NetworkConfigList {
	e.t.Helper()
	cidrs, _ := json.Marshal(podCIDRs)
	plugins := []string{fmt.Sprintf(`{"type":"podnet","podCIDRs":%s,"mtu":1400,"dataDir":%q,"dns":{"nameservers":["10.96.0.10"]}}`, cidrs, e.dataDir)}
	plugins = append(plugins, chained...)
	l, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":%q,"name":"podnet","plugins":[%s]}`, version, strings.Join(plugins, ","))))
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

func rt(id, nsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: nsPath, IfName: "eth0"}
}

func (e *env) add(l *libcni.NetworkConfigList, r *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := netns.Do(e.node, func() (err error) {
		res, err = e.cni.AddNetworkList(context.Background(), l, r)
		return err
	})
	return res, err
}

func (e *env) del(l *libcni.NetworkConfigList, r *libcni.RuntimeConf) error {
	return netns.Do(e.node, func() error { return e.cni.DelNetworkList(context.Background(), l, r) })
}

func (e *env) check(l *libcni.NetworkConfigList, r *libcni.RuntimeConf) error {
	return netns.Do(e.node, func() error { return e.cni.CheckNetworkList(context.Background(), l, r) })
}

func (e *env) store() *ipam.Store {
	s, err := ipam.Open(filepath.Join(e.dataDir, "podnet"))
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) allocations() int {
	all, err := e.store().List()
	if err != nil {
		e.t.Fatal(err)
	}
	return len(all)
}

// hostVeths lists podnet's node-side veths in the node namespace.
func (e *env) hostVeths() []string {
	h, err := netns.Handle(e.node)
	if err != nil {
		e.t.Fatal(err)
	}
	defer h.Close()
	links, _ := h.LinkList()
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, cni.HostIfPrefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// serveTCP listens inside nsPath and answers each connection with reply.
func serveTCP(t *testing.T, nsPath string, addr string, reply string) {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(nsPath, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(reply))
			c.Close()
		}
	}()
}

func dialFrom(nsPath string, dst netip.AddrPort) (string, error) {
	var got string
	err := netns.Do(nsPath, func() error {
		c, err := net.DialTimeout("tcp", dst.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

func resultAddrs(t *testing.T, r types.Result) []netip.Addr {
	t.Helper()
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		out = append(out, a.Unmap())
	}
	return out
}

func TestAddResultAndConnectivity(t *testing.T) {
	for _, version := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			e := newEnv(t)
			l := e.list(version, []string{"10.244.1.0/24", "fd00:10:244:1::/64"})
			podA, podB := testenv.NetNS(t, "a"), testenv.NetNS(t, "b")
			ra, err := e.add(l, rt("ctr-a", podA))
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if ra.Version() != version {
				t.Fatalf("result version %s, want %s", ra.Version(), version)
			}
			if _, err := e.add(l, rt("ctr-b", podB)); err != nil {
				t.Fatalf("ADD b: %v", err)
			}
			res, _ := current.NewResultFromResult(ra)
			if len(res.Interfaces) != 2 || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != podA {
				t.Fatalf("interfaces: %+v", res.Interfaces)
			}
			if len(res.IPs) != 2 || len(res.Routes) != 2 || res.DNS.Nameservers[0] != "10.96.0.10" {
				t.Fatalf("result: %s", mustJSON(res))
			}
			addrA := resultAddrs(t, ra)
			if addrA[0].String() != "10.244.1.2" || addrA[1].String() != "fd00:10:244:1::2" {
				t.Fatalf("addresses %v", addrA)
			}
			// The pod interface carries the MTU from the config.
			h, _ := netns.Handle(podA)
			defer h.Close()
			link, err := h.LinkByName("eth0")
			if err != nil || link.Attrs().MTU != 1400 {
				t.Fatalf("pod eth0: %v mtu=%d", err, link.Attrs().MTU)
			}
			// Real packets: node → pod and pod → pod on the same node, both families.
			addrB := resultAddrs(t, mustResult(t, e, l, "ctr-b", podB))
			serveTCP(t, podB, ":8080", "b")
			for _, a := range addrB {
				if got, err := dialFrom(podA, netip.AddrPortFrom(a, 8080)); err != nil || got != "b" {
					t.Errorf("pod a → pod b %s: %q %v", a, got, err)
				}
				if got, err := dialFrom(e.node, netip.AddrPortFrom(a, 8080)); err != nil || got != "b" {
					t.Errorf("node → pod b %s: %q %v", a, got, err)
				}
			}
		})
	}
}

// mustResult fetches the cached result of an attachment, as a runtime does.
func mustResult(t *testing.T, e *env, l *libcni.NetworkConfigList, id, nsPath string) types.Result {
	t.Helper()
	r, err := e.cni.GetNetworkListCachedResult(l, rt(id, nsPath))
	if err != nil || r == nil {
		t.Fatalf("cached result: %v", err)
	}
	return r
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestAddFailsWhenInterfaceExists(t *testing.T) {
	e := newEnv(t)
	l := e.list("1.1.0", []string{"10.244.1.0/24"})
	pod := testenv.NetNS(t, "pod")
	if _, err := e.add(l, rt("first", pod)); err != nil {
		t.Fatal(err)
	}
	_, err := e.add(l, rt("second", pod))
	if err == nil || !strings.Contains(err.Error(), "interface eth0 already exists") {
		t.Fatalf("want 'already exists', got %v", err)
	}
	if n := e.allocations(); n != 1 {
		t.Fatalf("failed ADD left %d allocations, want 1", n)
	}
}

func TestAddRollsBackOnFailure(t *testing.T) {
	e := newEnv(t)
	l := e.list("1.1.0", []string{"10.244.1.0/24"})
	pod := testenv.NetNS(t, "pod")
	// A default route already present in the pod makes ADD fail at its
	// last pod-side step, after the address and the veth exist.
	h, _ := netns.Handle(pod)
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "x0"}, PeerName: "x1"}); err != nil {
		t.Fatal(err)
	}
	x0, _ := h.LinkByName("x0")
	h.LinkSetUp(x0)
	h.AddrAdd(x0, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.0.2.1"), Mask: net.CIDRMask(24, 32)}})
	if err := h.RouteAdd(&netlink.Route{LinkIndex: x0.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: net.ParseIP("192.0.2.254")}); err != nil {
		t.Fatal(err)
	}
	_, err := e.add(l, rt("doomed", pod))
	if err == nil || !strings.Contains(err.Error(), "default route") {
		t.Fatalf("want a default-route failure, got %v", err)
	}
	if n := e.allocations(); n != 0 {
		t.Errorf("failed ADD left %d allocations", n)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Errorf("failed ADD left host veths %v", v)
	}
	if _, err := h.LinkByName("eth0"); err == nil {
		t.Errorf("failed ADD left eth0 in the pod")
	}
}

func TestDelIsIdempotent(t *testing.T) {
	e := newEnv(t)
	l := e.list("1.1.0", []string{"10.244.1.0/24"})
	pod := testenv.NetNS(t, "pod")
	if _, err := e.add(l, rt("c1", pod)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := e.del(l, rt("c1", pod)); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if n, v := e.allocations(), e.hostVeths(); n != 0 || len(v) != 0 {
		t.Fatalf("after DEL: %d allocations, veths %v", n, v)
	}
	if err := e.del(l, rt("never-added", pod)); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
	// The pod's namespace is gone before DEL: DEL still succeeds and
	// releases the address and the host veth.
	gone := testenv.NetNS(t, "gone")
	if _, err := e.add(l, rt("c2", gone)); err != nil {
		t.Fatal(err)
	}
	if err := netns.DeletePath(gone); err != nil {
		t.Fatal(err)
	}
	if err := e.del(l, rt("c2", gone)); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	if n, v := e.allocations(), e.hostVeths(); n != 0 || len(v) != 0 {
		t.Fatalf("after DEL without netns: %d allocations, veths %v", n, v)
	}
}

func TestCheckReportsDifferences(t *testing.T) {
	e := newEnv(t)
	l := e.list("1.1.0", []string{"10.244.1.0/24", "fd00:1::/64"})
	pod := testenv.NetNS(t, "pod")
	if _, err := e.add(l, rt("c1", pod)); err != nil {
		t.Fatal(err)
	}
	if err := e.check(l, rt("c1", pod)); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	h, _ := netns.Handle(pod)
	defer h.Close()
	eth0, _ := h.LinkByName("eth0")
	if err := h.AddrDel(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.244.1.2"), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	h.LinkSetMTU(eth0, 1300)
	err := e.check(l, rt("c1", pod))
	if err == nil {
		t.Fatal("CHECK passed with an address missing")
	}
	for _, want := range []string{"address 10.244.1.2 is missing", "mtu 1300, want 1400", "route 0.0.0.0/0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK error %q does not mention %q", err, want)
		}
	}
}

func TestStatus(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	err := netns.Do(e.node, func() error { return e.cni.GetStatusNetworkList(ctx, e.list("1.1.0", nil)) })
	var ce *types.Error
	if !asCNIError(err, &ce) || ce.Code != cni.ErrPluginNotAvailable {
		t.Fatalf("STATUS without pod ranges: want code 50, got %v", err)
	}
	if err := netns.Do(e.node, func() error { return e.cni.GetStatusNetworkList(ctx, e.list("1.1.0", []string{"10.244.1.0/24"})) }); err != nil {
		t.Fatalf("STATUS with a pod range: %v", err)
	}
}

func asCNIError(err error, out **types.Error) bool {
	for err != nil {
		if e, ok := err.(*types.Error); ok {
			*out = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func TestGCReleasesStaleAttachments(t *testing.T) {
	e := newEnv(t)
	l := e.list("1.1.0", []string{"10.244.1.0/24"})
	var pods []string
	for _, id := range []string{"c1", "c2", "c3"} {
		p := testenv.NetNS(t, id)
		pods = append(pods, p)
		if _, err := e.add(l, rt(id, p)); err != nil {
			t.Fatal(err)
		}
	}
	err := netns.Do(e.node, func() error {
		return e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "c2", IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	all, _ := e.store().List()
	if len(all) != 1 {
		t.Fatalf("after GC: %v", all)
	}
	for _, a := range all {
		if a.ContainerID != "c2" {
			t.Fatalf("GC kept %s, want c2", a.ContainerID)
		}
	}
	if v := e.hostVeths(); len(v) != 1 || v[0] != cni.HostIfName("c2", "eth0") {
		t.Fatalf("host veths after GC: %v", v)
	}
	if err := e.check(l, rt("c2", pods[1])); err != nil {
		t.Fatalf("the valid attachment broke: %v", err)
	}
}

// TestCrashMidAddLeaksNothingAfterGC kills the plugin right after it has
// recorded an allocation, then shows that GC, told which attachments are
// valid, gives the address back.
func TestCrashMidAddLeaksNothingAfterGC(t *testing.T) {
	e := newEnv(t)
	l := e.list("1.1.0", []string{"10.244.1.0/24"})
	keep := testenv.NetNS(t, "keep")
	if _, err := e.add(l, rt("keep", keep)); err != nil {
		t.Fatal(err)
	}
	t.Setenv(cni.CrashEnv, "allocate")
	if _, err := e.add(l, rt("crashed", testenv.NetNS(t, "crash"))); err == nil {
		t.Fatal("ADD with the crash hook succeeded")
	}
	os.Unsetenv(cni.CrashEnv)
	if n := e.allocations(); n != 2 {
		t.Fatalf("after the crash: %d allocations, want 2 (one leaked)", n)
	}
	err := netns.Do(e.node, func() error {
		return e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := e.allocations(); n != 1 {
		t.Fatalf("after GC: %d allocations, want 1", n)
	}
}

func TestConcurrentAdds(t *testing.T) {
	e := newEnv(t)
	l := e.list("1.1.0", []string{"10.244.0.0/22", "fd00:c::/64"})
	const n = 200
	pods := make([]string, n)
	for i := range pods {
		pods[i] = testenv.NetNS(t, fmt.Sprint(i))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[netip.Addr]int{}
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := e.add(l, rt(fmt.Sprintf("c%d", i), pods[i]))
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, a := range resultAddrs(t, r) {
				if j, dup := seen[a]; dup {
					errs <- fmt.Errorf("%s given to c%d and c%d", a, j, i)
				}
				seen[a] = i
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != 2*n || e.allocations() != 2*n {
		t.Fatalf("%d distinct addresses, %d allocations; want %d", len(seen), e.allocations(), 2*n)
	}
}

// runPlugin runs the binary directly, the way a runtime execs it, and
// returns its stdout.
func runPlugin(t *testing.T, e *env, envv []string, stdin string) (string, error) {
	var out bytes.Buffer
	err := netns.Do(e.node, func() error {
		cmd := exec.Command(filepath.Join(e.bin, "podnet"))
		cmd.Env = envv
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout = &out
		return cmd.Run()
	})
	return out.String(), err
}

func TestErrorCodes(t *testing.T) {
	e := newEnv(t)
	pod := testenv.NetNS(t, "pod")
	base := func(cmd string) []string {
		return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_NETNS=" + pod, "CNI_IFNAME=eth0", "CNI_PATH=" + e.bin}
	}
	good := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podnet","type":"podnet","podCIDRs":["10.244.1.0/24"],"dataDir":%q}`, e.dataDir)
	for _, tc := range []struct {
		name  string
		env   []string
		stdin string
		code  uint
		msg   string
	}{
		{"old version", base("ADD"), `{"cniVersion":"0.3.1","name":"podnet","type":"podnet","podCIDRs":["10.244.1.0/24"]}`, types.ErrIncompatibleCNIVersion, "incompatible"},
		{"missing env", []string{"CNI_COMMAND=ADD", "CNI_PATH=/x"}, good, types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"bad netns", append(base("ADD")[:2], "CNI_NETNS=/nonexistent", "CNI_IFNAME=eth0", "CNI_PATH=/x"), good, types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"not json", base("ADD"), `{"cniVersion":`, types.ErrDecodingFailure, "unmarshal"},
		{"bad cidr", base("ADD"), `{"cniVersion":"1.1.0","name":"podnet","type":"podnet","podCIDRs":["10.244.1.0/33"]}`, types.ErrInvalidNetworkConfig, "10.244.1.0/33"},
		{"two v4 ranges", base("ADD"), `{"cniVersion":"1.1.0","name":"podnet","type":"podnet","podCIDRs":["10.1.0.0/24","10.2.0.0/24"]}`, types.ErrInvalidNetworkConfig, "more than one IPv4"},
		{"bad mtu", base("ADD"), `{"cniVersion":"1.1.0","name":"podnet","type":"podnet","podCIDRs":["10.1.0.0/24"],"mtu":100}`, types.ErrInvalidNetworkConfig, "mtu 100"},
		{"no range yet", base("ADD"), `{"cniVersion":"1.1.0","name":"podnet","type":"podnet","podCIDRs":[]}`, types.ErrTryAgainLater, "no pod range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runPlugin(t, e, tc.env, tc.stdin)
			if err == nil {
				t.Fatalf("plugin succeeded: %s", out)
			}
			var ce types.Error
			if jerr := json.Unmarshal([]byte(out), &ce); jerr != nil {
				t.Fatalf("stdout is not a CNI error: %q", out)
			}
			if ce.Code != tc.code || !strings.Contains(ce.Msg+ce.Details, tc.msg) {
				t.Fatalf("got code %d %q, want code %d mentioning %q", ce.Code, ce.Msg+" "+ce.Details, tc.code, tc.msg)
			}
		})
	}
	out, err := runPlugin(t, e, []string{"CNI_COMMAND=VERSION"}, "")
	if err != nil {
		t.Fatalf("VERSION: %v", err)
	}
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		if !strings.Contains(out, `"`+v+`"`) {
			t.Errorf("VERSION output %s lacks %s", out, v)
		}
	}
}
