package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/cli"
	"github.com/podnet/podnet/internal/dataplane/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

func clientFor(t *testing.T, api *testenv.APIServer) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func makeNode(t *testing.T, c kubernetes.Interface, name, addr string, cidrs ...string) {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	created, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("node %s status: %v", name, err)
	}
}

func deleteNode(t *testing.T, c kubernetes.Interface, name string) {
	t.Helper()
	if err := c.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete node %s: %v", name, err)
	}
}

// kernelRoutes dumps podnet's peer routes and overlay entries in a node
// namespace.
func kernelRoutes(t *testing.T, nsPath string) string {
	t.Helper()
	h, err := netns.Handle(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r, err := link.NewRoutes(h).Dump()
	if err != nil {
		t.Fatal(err)
	}
	o, err := link.NewOverlay(h).Dump()
	if err != nil {
		t.Fatal(err)
	}
	return r + "\n" + o
}

// eventually polls cond for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s; state:\n%s", d, what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLabOnRealAPIServer runs the lab's agents and controllers against a
// real kube-apiserver: pods connect, Nodes created, recreated and deleted
// through the API change every node's routes, neighbours and FDB entries,
// and a 30 s apiserver outage leaves the dataplane working and the agents
// resume afterwards.
func TestLabOnRealAPIServer(t *testing.T) {
	testenv.RequireRoot(t)
	api := testenv.StartAPIServer(t)
	c := clientFor(t, api)
	l := startLab(t, "--nodes", "3", "--mode", "vxlan", "--subnets", "2", "--kubeconfig", api.Kubeconfig)
	l.apply(podsYAML(6, 3))
	assertAllConnected(t, l.probe("--port", "8080"), 36)

	nodes := []string{"node1", "node2", "node3"}
	has := func(want ...string) func() (bool, string) {
		return func() (bool, string) {
			var all strings.Builder
			ok := true
			for _, n := range nodes {
				k := kernelRoutes(t, l.nodeNS(n))
				fmt.Fprintf(&all, "%s:\n%s\n", n, k)
				for _, w := range want {
					neg := strings.HasPrefix(w, "!")
					if strings.Contains(k, strings.TrimPrefix(w, "!")) == neg {
						ok = false
					}
				}
			}
			return ok, all.String()
		}
	}
	// A node joins: every agent programs a route, a neighbour and an FDB entry.
	makeNode(t, c, "ghost", "192.168.77.60", "10.244.60.0/24")
	eventually(t, 5*time.Second, "ghost programmed on every node", has(
		"10.244.60.0/24 via 10.244.60.1 dev pnvx4 onlink", "neigh 10.244.60.1 lladdr 0e:70:c0:a8:4d:3c", "fdb 0e:70:c0:a8:4d:3c dst 192.168.77.60"))
	// Its pod range changes (Node.spec.podCIDRs is immutable, so it comes
	// back as a new Node): the old entries go, the new ones come.
	deleteNode(t, c, "ghost")
	makeNode(t, c, "ghost", "192.168.77.61", "10.244.61.0/24")
	eventually(t, 5*time.Second, "ghost reprogrammed", has(
		"!10.244.60.0/24", "!10.244.60.1", "!192.168.77.60", "10.244.61.0/24 via 10.244.61.1", "dst 192.168.77.61"))
	// It leaves: nothing of it remains anywhere.
	deleteNode(t, c, "ghost")
	eventually(t, 5*time.Second, "ghost gone from every node", has("!10.244.61.", "!192.168.77.61"))

	// The apiserver goes away for 30 s: traffic keeps flowing.
	api.Stop()
	stopped := time.Now()
	assertAllConnected(t, l.probe("--port", "8080"), 36)
	time.Sleep(30*time.Second - time.Since(stopped))
	api.Restart(t)
	assertAllConnected(t, l.probe("--port", "8080"), 36)
	// The agents resumed: a new node is programmed.
	makeNode(t, c, "ghost2", "192.168.78.62", "10.244.62.0/24")
	eventually(t, 20*time.Second, "agents resumed after the outage", has("10.244.62.0/24 via 10.244.62.1 dev pnvx4"))
}

// TestAgentProcessPrunesAtStartup runs `podnet agent` as a process in a
// node namespace against a real apiserver. While it is down, a peer is
// deleted and another added; when it starts again it removes the stale
// route and adds the new one, leaving routes it does not own alone.
func TestAgentProcessPrunesAtStartup(t *testing.T) {
	testenv.RequireRoot(t)
	api := testenv.StartAPIServer(t)
	c := clientFor(t, api)
	node := testenv.NetNS(t, "solo")
	h, err := netns.Handle(node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 9000}, PeerName: "eth0p"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"eth0", "eth0p"} {
		l, _ := h.LinkByName(n)
		h.LinkSetUp(l)
	}
	eth0, _ := h.LinkByName("eth0")
	h.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.168.90.1"), Mask: net.CIDRMask(24, 32)}})
	_, foreign, _ := net.ParseCIDR("10.99.0.0/16")
	if err := h.RouteAdd(&netlink.Route{Dst: foreign, Gw: net.ParseIP("192.168.90.254"), Protocol: netlink.RouteProtocol(4)}); err != nil {
		t.Fatal(err)
	}

	makeNode(t, c, "solo", "192.168.90.1", "10.244.1.0/24")
	makeNode(t, c, "peer-a", "192.168.90.2", "10.244.2.0/24")
	makeNode(t, c, "peer-b", "192.168.90.3", "10.244.3.0/24")
	// The CNI config directory starts out as a regular file, so the first
	// syncs fail to write the conflist: the agent must keep retrying on its
	// own, with no API event to wake it, and recover once it can write.
	tmp := t.TempDir()
	confDir, cniBin := filepath.Join(tmp, "net.d"), filepath.Join(tmp, "bin")
	if err := os.WriteFile(confDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(testenv.Binaries(t), "podnet")
	health := freeAddr(t)
	// The agent process runs beside the apiserver (loopback) and manages
	// the node namespace through --netns, as the lab's agents do.
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "agent", "--kubeconfig", api.Kubeconfig, "--node-name", "solo", "--mode", "direct",
			"--netns", node, "--cluster-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/16",
			"--cni-conf-dir", confDir, "--cni-bin-dir", cniBin, "--cni-data-dir", filepath.Join(tmp, "data"), "--health-addr", health)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	routes := func(want string) func() (bool, string) {
		return func() (bool, string) {
			k := kernelRoutes(t, node)
			return strings.TrimSpace(k) == want, k
		}
	}
	agentProc := start()
	eventually(t, 10*time.Second, "first sync", routes("10.244.2.0/24 via 192.168.90.2\n10.244.3.0/24 via 192.168.90.3"))
	eventually(t, 5*time.Second, "failed syncs counted", func() (bool, string) {
		b := scrape(t, "http://"+health+"/metrics")
		return strings.Contains(b, `podnet_routing_syncs_total{result="error"}`), b
	})
	if b := scrape(t, "http://"+health+"/readyz"); b == "ok\n" {
		t.Fatal("ready while the conflist cannot be written")
	}
	os.Remove(confDir)
	// Ready means the first full sync is applied, conflist included.
	eventually(t, 5*time.Second, "readyz", func() (bool, string) {
		b := scrape(t, "http://"+health+"/readyz")
		return b == "ok\n", b
	})
	conf, err := os.ReadFile(filepath.Join(confDir, agent.ConflistName))
	if err != nil || !strings.Contains(string(conf), `"10.244.1.0/24"`) || !strings.Contains(string(conf), `"mtu": 9000`) {
		t.Fatalf("conflist: %v\n%s", err, conf)
	}
	// The agent installed itself as the CNI plugin, as a DaemonSet does.
	if st, err := os.Stat(filepath.Join(cniBin, "podnet")); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("CNI binary not installed: %v", err)
	}
	if body := scrape(t, "http://"+health+"/metrics"); !strings.Contains(body, "podnet_routing_routes 2") || !strings.Contains(body, `podnet_routing_syncs_total{result="success"}`) {
		t.Fatalf("metrics:\n%s", body)
	}

	agentProc.Process.Signal(syscall.SIGTERM)
	agentProc.Wait()
	// A restart keeps the conflist, so the node keeps accepting pods.
	if _, err := os.Stat(filepath.Join(confDir, agent.ConflistName)); err != nil {
		t.Fatalf("conflist removed on a plain restart: %v", err)
	}
	deleteNode(t, c, "peer-a")
	makeNode(t, c, "peer-c", "192.168.90.4", "10.244.4.0/24")
	start()
	eventually(t, 10*time.Second, "start-up prune", routes("10.244.3.0/24 via 192.168.90.3\n10.244.4.0/24 via 192.168.90.4"))
	if rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: foreign}, netlink.RT_FILTER_DST); len(rs) != 1 {
		t.Fatal("the agent removed a route it does not own")
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestBlockAllocationRace: agents racing for pod ranges on a real
// apiserver each get a distinct block, recorded on their Node; the block
// of a deleted node is released.
func TestBlockAllocationRace(t *testing.T) {
	api := testenv.StartAPIServer(t)
	c := clientFor(t, api)
	const n = 8
	for i := 0; i < n; i++ {
		makeNode(t, c, fmt.Sprintf("racer%d", i), fmt.Sprintf("192.168.5.%d", i+1))
	}
	clusters := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	var wg sync.WaitGroup
	got := make([][]string, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Each racer has its own allocator, as separate agents would.
			b := &agent.BlockAllocator{Client: clientFor(t, api), Namespace: "kube-system", Clusters: clusters, MaskSizes: [2]int{24, 64}}
			got[i], errs[i] = b.Ensure(context.Background(), fmt.Sprintf("racer%d", i))
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("racer%d: %v", i, errs[i])
		}
		for _, b := range got[i] {
			if j, dup := seen[b]; dup {
				t.Fatalf("block %s given to racer%d and racer%d", b, j, i)
			}
			seen[b] = i
		}
		node, _ := c.CoreV1().Nodes().Get(context.Background(), fmt.Sprintf("racer%d", i), metav1.GetOptions{})
		if fmt.Sprint(node.Spec.PodCIDRs) != fmt.Sprint(got[i]) {
			t.Fatalf("racer%d: node says %v, allocator said %v", i, node.Spec.PodCIDRs, got[i])
		}
	}
	if len(seen) != 2*n {
		t.Fatalf("%d blocks for %d nodes", len(seen), n)
	}
	deleteNode(t, c, "racer0")
	nodes, _ := c.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	var live []*corev1.Node
	for i := range nodes.Items {
		live = append(live, &nodes.Items[i])
	}
	b := &agent.BlockAllocator{Client: c, Namespace: "kube-system", Clusters: clusters, MaskSizes: [2]int{24, 64}}
	if released, err := b.ReleaseOrphans(context.Background(), live); err != nil || released != 2 {
		t.Fatalf("release orphans: %d %v, want 2 (one per family)", released, err)
	}
}

// TestDeployManifests creates everything in deploy/ in a real apiserver,
// so the server's validation checks every object, and checks that the
// ConfigMap's agent config parses as the agent parses it.
func TestDeployManifests(t *testing.T) {
	api := testenv.StartAPIServer(t)
	c := clientFor(t, api)
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "deploy", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/")
	}
	ctx := context.Background()
	kinds := map[string]int{}
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for _, doc := range strings.Split(string(data), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", filepath.Base(f), err)
			}
			kinds[gvk.Kind]++
			switch o := obj.(type) {
			case *corev1.ServiceAccount:
				_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			case *corev1.ConfigMap:
				if perr := cli.ParseAgentConfig([]byte(o.Data["config.yaml"])); perr != nil {
					t.Fatalf("agent config in %s: %v", o.Name, perr)
				}
				_, err = c.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			case *rbacv1.ClusterRole:
				_, err = c.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
			case *rbacv1.ClusterRoleBinding:
				_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
			case *rbacv1.Role:
				_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			case *rbacv1.RoleBinding:
				_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			case *appsv1.DaemonSet:
				_, err = c.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			default:
				t.Fatalf("%s: unexpected kind %s", filepath.Base(f), gvk.Kind)
			}
			if err != nil {
				t.Fatalf("create %s from %s: %v", gvk.Kind, filepath.Base(f), err)
			}
		}
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "DaemonSet"} {
		if kinds[k] == 0 {
			t.Errorf("deploy/ has no %s", k)
		}
	}
	// RBAC is what the agent needs: the podnet ServiceAccount may watch
	// nodes and create leases, and may not read secrets.
	for _, tc := range []struct {
		verb, resource, group, ns string
		want                      bool
	}{
		{"watch", "nodes", "", "", true},
		{"patch", "nodes", "", "", true},
		{"create", "leases", "coordination.k8s.io", "kube-system", true},
		{"get", "secrets", "", "kube-system", false},
		{"delete", "nodes", "", "", false},
	} {
		if got := can(t, c, "system:serviceaccount:kube-system:podnet", tc.verb, tc.resource, tc.group, tc.ns); got != tc.want {
			t.Errorf("podnet can %s %s: %v, want %v", tc.verb, tc.resource, got, tc.want)
		}
	}
}

func can(t *testing.T, c kubernetes.Interface, user, verb, resource, group, ns string) bool {
	t.Helper()
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:               user,
		Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Resource: resource, Group: group, Namespace: ns},
	}}
	res, err := c.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Status.Allowed
}
