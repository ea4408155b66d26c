// Package lab builds a multi-node podnet cluster out of network namespaces
// on one Linux machine: a fabric namespace with a bridge as the underlay,
// one namespace per node ("the node's host network"), and one per pod,
// created through the real CNI path (libcni calling the podnet binary).
//
// The control plane speaks the Kubernetes object model through a client-go
// interface. By default it is embedded (client-go's in-memory object
// tracker, which supports list+watch); with a kubeconfig it is a real
// kube-apiserver. Either way the lab plays the controllers' parts: it
// assigns node pod ranges and ClusterIPs, runs pods like a kubelet, and
// maintains EndpointSlices. The node agents are the production agent code,
// one per node, each bound to its node's namespace.
package lab

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/routing"
)

// Options configure a lab.
type Options struct {
	Name   string
	Nodes  int
	Family Family
	Mode   routing.Mode
	// Subnets spreads the nodes over this many subnets, joined by a
	// router namespace. Only vxlan and auto connect nodes across them.
	Subnets    int
	Kubeconfig string
	// Exe is the podnet binary the lab installs as its CNI plugin.
	Exe string
	// Dataplane is "nftables" (default) or "ebpf" (see ebpf.go).
	Dataplane string
	Log       *slog.Logger
}

type labNode struct {
	name    string
	index   int
	nsPath  string
	confDir string
	agent   *agent.Agent
}

// Lab is a running lab.
type Lab struct {
	opt      Options
	dir      string
	client   kubernetes.Interface
	embedded bool
	nodes    []*labNode
	cni      *libcni.CNIConfig
	binDir   string
	factory  informers.SharedInformerFactory
	log      *slog.Logger

	mu        sync.Mutex
	sandboxes map[string]*sandbox // by namespace/name
	nextNode  int

	cancel context.CancelFunc
	done   sync.WaitGroup
	// leaveEBPF undoes the eBPF dataplane's cgroup and file system.
	leaveEBPF func()
}

// StateRoot is where labs keep their state, sockets and logs.
const StateRoot = "/run/podnet/lab"

// Dir returns the state directory of the lab called name.
func Dir(name string) string { return filepath.Join(StateRoot, name) }

// Prefix starts the name of every namespace the lab called name creates.
func Prefix(name string) string { return "pnl-" + name + "-" }

// Up builds the lab and starts its control plane and agents. On error
// everything made so far is removed.
func Up(ctx context.Context, opt Options) (_ *Lab, err error) {
	if opt.Nodes < 1 || opt.Nodes > 200 {
		return nil, fmt.Errorf("lab: --nodes must be 1-200, not %d", opt.Nodes)
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Mode == "" {
		opt.Mode = routing.ModeDirect
	}
	if opt.Subnets < 1 || opt.Subnets > 50 {
		return nil, fmt.Errorf("lab: --subnets must be 1-50, not %d", opt.Subnets)
	}
	if opt.Mode == routing.ModeDirect && opt.Subnets > 1 {
		return nil, fmt.Errorf("lab: direct mode needs every node on one L2 segment; use --mode vxlan or --mode auto with --subnets %d", opt.Subnets)
	}
	// Every error return below leaves the result nil, so the cleanup
	// must hold its own reference to the partly built lab.
	l := &Lab{opt: opt, dir: Dir(opt.Name), sandboxes: map[string]*sandbox{}, log: opt.Log}
	if err := writeState(l.dir, state{Name: opt.Name, PID: os.Getpid(), Prefix: Prefix(opt.Name)}); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if err := l.installCNI(); err != nil {
		return nil, err
	}
	topo, err := BuildTopology(Prefix(opt.Name), opt.Nodes, opt.Subnets, opt.Family)
	if err != nil {
		return nil, err
	}
	for _, tn := range topo.Nodes {
		l.nodes = append(l.nodes, &labNode{name: tn.Name, index: tn.Index, nsPath: tn.NetNS, confDir: filepath.Join(l.dir, "nodes", tn.Name, "net.d")})
	}

	if opt.Kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", opt.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		if l.client, err = kubernetes.NewForConfig(cfg); err != nil {
			return nil, err
		}
	} else {
		l.client = fake.NewClientset()
		l.embedded = true
	}
	if err := l.registerNodes(ctx); err != nil {
		return nil, err
	}

	ebpf := opt.Dataplane == agent.DataplaneEBPF
	if ebpf {
		if l.leaveEBPF, err = l.enterEBPF(); err != nil {
			return nil, err
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for _, n := range l.nodes {
		var cg string
		if ebpf {
			cg, _ = cgroupDir(opt.Name)
		}
		a, err := agent.New(agent.Config{
			Dataplane: opt.Dataplane, BPFCgroup: cg, BPFPinDir: filepath.Join(bpfDir(opt.Name), n.name), ScopedSockets: true,
			NodeName:     n.name,
			Client:       l.client,
			NetNS:        n.nsPath,
			Mode:         opt.Mode,
			ClusterCIDRs: clusterCIDRs(opt.Family),
			ServiceCIDRs: serviceCIDRs(opt.Family),
			CNIConfDir:   n.confDir,
			CNIDataDir:   filepath.Join(l.dir, "nodes", n.name, "ipam"),
			Proxy:        true,
			Policy:       true,
			CNIBinDir:    filepath.Join(l.dir, "cni", "bin"),
			// Each node's flows also go to a file, as an operator's log
			// pipeline would read them.
			FlowLog: filepath.Join(l.dir, "nodes", n.name, "flows.json"), FlowLogMaxBytes: 10 << 20, FlowLogKeep: 2,
			Log: l.log.With("component", "agent"),
		})
		if err != nil {
			return nil, err
		}
		n.agent = a
		l.done.Add(1)
		go func() { defer l.done.Done(); a.Run(runCtx) }()
	}
	if err := l.startControllers(runCtx); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range l.nodes {
		for !n.agent.Ready() {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("lab: agent on %s not ready after 30s", n.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return l, nil
}

// installCNI links the podnet binary into the lab's CNI bin directory, as
// an operator (or the agent's init step) would install it on a node.
func (l *Lab) installCNI() error {
	l.binDir = filepath.Join(l.dir, "cni", "bin")
	if err := os.MkdirAll(l.binDir, 0o755); err != nil {
		return err
	}
	link := filepath.Join(l.binDir, "podnet")
	os.Remove(link)
	if err := os.Symlink(l.opt.Exe, link); err != nil {
		return err
	}
	l.cni = libcni.NewCNIConfigWithCacheDir([]string{l.binDir}, filepath.Join(l.dir, "cni", "cache"), nil)
	return nil
}

func (l *Lab) registerNodes(ctx context.Context) error {
	if err := l.ensureNamespace(ctx, "default"); err != nil {
		return err
	}
	for _, n := range l.nodes {
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{
				"kubernetes.io/hostname":      n.name,
				"kubernetes.io/os":            "linux",
				"topology.kubernetes.io/zone": zoneOf(n.index),
			}},
		}
		for _, c := range nodePodCIDRs(l.opt.Family, n.index) {
			obj.Spec.PodCIDRs = append(obj.Spec.PodCIDRs, c.String())
		}
		obj.Spec.PodCIDR = obj.Spec.PodCIDRs[0]
		obj.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
		for _, a := range nodeAddrs(l.opt.Family, l.opt.Subnets, n.index) {
			obj.Status.Addresses = append(obj.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.Addr().String()})
		}
		obj.Status.Addresses = append(obj.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.name})
		// A node left over from an earlier lab on a real apiserver is
		// replaced, so its stale addresses and ranges go away.
		err := l.client.CoreV1().Nodes().Delete(ctx, n.name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("node %s: %w", n.name, err)
		}
		created, err := l.client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("node %s: %w", n.name, err)
		}
		created.Status = obj.Status
		if _, err := l.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("node %s status: %w", n.name, err)
		}
	}
	return nil
}

// zoneOf spreads nodes over three zones, round-robin.
func zoneOf(index int) string {
	return []string{"zone-a", "zone-b", "zone-c"}[(index-1)%3]
}

func (l *Lab) ensureNamespace(ctx context.Context, name string) error {
	_, err := l.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/metadata.name": name}}}
		if _, err := l.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("namespace %s: %w", name, err)
		}
	}
	if l.embedded {
		return nil
	}
	// A real apiserver admits pods only with an existing ServiceAccount;
	// the lab plays the controller-manager, which would create "default".
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if _, err := l.client.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: default service account: %w", name, err)
	}
	return nil
}

func (l *Lab) node(name string) *labNode {
	for _, n := range l.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// Close stops everything and removes every namespace, link and file the
// lab made. It is safe to call on a partly built lab.
func (l *Lab) Close() error {
	if l.cancel != nil {
		l.cancel()
	}
	l.done.Wait()
	if l.factory != nil {
		l.factory.Shutdown()
	}
	l.mu.Lock()
	for _, sb := range l.sandboxes {
		if sb.work != nil {
			sb.work.Close()
		}
	}
	l.sandboxes = map[string]*sandbox{}
	l.mu.Unlock()
	if !l.embedded && l.client != nil {
		// Leave a shared apiserver as it was: the lab's pods and nodes go.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		zero := int64(0)
		for _, n := range l.nodes {
			pods, _ := l.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.name})
			if pods != nil {
				for _, p := range pods.Items {
					l.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
				}
			}
			l.client.CoreV1().Nodes().Delete(ctx, n.name, metav1.DeleteOptions{})
		}
	}
	if l.leaveEBPF != nil {
		l.leaveEBPF()
	}
	return Cleanup(l.opt.Name)
}

// clusterCIDRs are the cluster-wide pod ranges the lab carves node ranges
// from.
func clusterCIDRs(f Family) []netip.Prefix {
	var out []netip.Prefix
	if f.has4() {
		out = append(out, netip.MustParsePrefix("10.244.0.0/16"))
	}
	if f.has6() {
		out = append(out, netip.MustParsePrefix("fd00:10:244::/56"))
	}
	return out
}

func serviceCIDRs(f Family) []netip.Prefix {
	var out []netip.Prefix
	if f.has4() {
		out = append(out, serviceRange4)
	}
	if f.has6() {
		out = append(out, serviceRange6)
	}
	return out
}
