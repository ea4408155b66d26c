// Package cluster brings up a real multi-node Kubernetes cluster inside
// network namespaces on one machine, installs podnet the production way
// (kubectl apply -f deploy/), and runs the upstream network e2e suite
// against it. Every node is a lab topology node (internal/lab) with its own
// mount namespace, containerd, kubelet and cgroup root; the control plane
// runs on node1. Everything it makes is named pnc-<name>-... or lives under
// Dir, and Down removes it all, working from the state on disk.
package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/test/cluster/images"
)

// Config describes a cluster.
type Config struct {
	Name  string
	Nodes int
	// BinDir holds kas (apiserver, controller-manager, scheduler, kubelet,
	// kubectl, kube-proxy), the reference CNI plugins (loopback, portmap)
	// and podnet.
	BinDir string
	// Images holds the OCI archives to import into every node.
	Images string
	// DeployDir is podnet's deploy/ directory.
	DeployDir string
	// Proxy is kube-proxy or podnet; Policy is none or podnet.
	Proxy, Policy string
	Log           func(format string, args ...any)
}

// Cluster is a running cluster.
type Cluster struct {
	Config
	Dir  string
	topo *lab.Topology
	st   state
	// apiIP is the apiserver's address (node1's).
	apiIP string
}

// Prefix starts the name of every namespace of the cluster called name.
func Prefix(name string) string { return "pnc-" + name + "-" }

// StateDir is where the cluster called name keeps its files.
func StateDir(name string) string { return filepath.Join("/var/lib/podnet-cluster", name) }

// Kubeconfig is the admin kubeconfig (usable from node namespaces).
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.Dir, "admin.kubeconfig") }

// Node1 is the network namespace to run clients in.
func (c *Cluster) Node1() string { return c.topo.Nodes[0].NetNS }

const (
	clusterCIDR = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/16"
	dnsIP       = "10.96.0.10"
	pauseImage  = images.PauseRef
)

// Up builds the cluster. On error, what was built is left for Down.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	c := &Cluster{Config: cfg, Dir: StateDir(cfg.Name)}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := c.saveState(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	topo, err := lab.BuildTopology(Prefix(cfg.Name), cfg.Nodes, 1, lab.IPv4)
	if err != nil {
		return c, err
	}
	c.topo = topo
	apiIP := topo.Nodes[0].Addrs[0].Addr().String()
	c.apiIP = apiIP
	var names []string
	for _, n := range topo.Nodes {
		names = append(names, n.Name)
	}
	tokens, err := writePKI(c.Dir, []net.IP{net.ParseIP(apiIP), net.ParseIP("10.96.0.1")}, names)
	if err != nil {
		return c, err
	}
	server := "https://" + apiIP + ":6443"
	ca := filepath.Join(c.Dir, "ca.crt")
	for name, tok := range tokens {
		if err := os.WriteFile(filepath.Join(c.Dir, name+".kubeconfig"), []byte(kubeconfig(server, ca, tok)), 0o600); err != nil {
			return c, err
		}
	}
	c.Log("topology and certificates ready (%s)", time.Since(t0).Round(time.Millisecond))
	if err := c.startControlPlane(ctx, apiIP); err != nil {
		return c, err
	}
	c.Log("control plane ready (%s)", time.Since(t0).Round(time.Millisecond))
	for _, n := range topo.Nodes {
		if err := c.startNode(ctx, n); err != nil {
			return c, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	c.Log("nodes started (%s)", time.Since(t0).Round(time.Millisecond))
	if err := c.installAddons(ctx); err != nil {
		return c, err
	}
	c.Log("cluster ready (%s)", time.Since(t0).Round(time.Millisecond))
	return c, nil
}

func (c *Cluster) kas(args ...string) []string {
	return append([]string{filepath.Join(c.BinDir, "kas")}, args...)
}

func (c *Cluster) startControlPlane(ctx context.Context, apiIP string) error {
	node1 := c.topo.Nodes[0].NetNS
	d := c.Dir
	_, err := c.start("kube-apiserver", node1, 0, c.kas("apiserver",
		"--etcd-dir="+filepath.Join(d, "etcd"), "--etcd-client-port=2379", "--etcd-peer-port=2380",
		"--bind-address=0.0.0.0", "--advertise-address="+apiIP, "--secure-port=6443",
		"--tls-cert-file="+filepath.Join(d, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(d, "apiserver.key"),
		"--client-ca-file="+filepath.Join(d, "ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(d, "sa.key"), "--service-account-signing-key-file="+filepath.Join(d, "sa.key"),
		"--service-cluster-ip-range="+serviceCIDR, "--token-auth-file="+filepath.Join(d, "tokens.csv"),
		"--authorization-mode=Node,RBAC", "--allow-privileged=true", "--profiling=false",
		"--enable-priority-and-fairness=false",
		// Reach kubelets by address: node names do not resolve here.
		"--kubelet-preferred-address-types=InternalIP")...)
	if err != nil {
		return err
	}
	if err := c.waitAPI(ctx, 90*time.Second); err != nil {
		return err
	}
	if _, err := c.start("kube-controller-manager", node1, 0, c.kas("controller-manager",
		"--kubeconfig="+filepath.Join(d, "admin.kubeconfig"), "--allocate-node-cidrs", "--cluster-cidr="+clusterCIDR,
		"--node-cidr-mask-size=24", "--service-cluster-ip-range="+serviceCIDR,
		"--service-account-private-key-file="+filepath.Join(d, "sa.key"), "--root-ca-file="+filepath.Join(d, "ca.crt"),
		"--leader-elect=false", "--use-service-account-credentials=true", "--bind-address=127.0.0.1")...); err != nil {
		return err
	}
	_, err = c.start("kube-scheduler", node1, 0, c.kas("scheduler",
		"--kubeconfig="+filepath.Join(d, "admin.kubeconfig"), "--leader-elect=false", "--bind-address=127.0.0.1")...)
	return err
}

// kubectl runs kubectl as admin from node1.
func (c *Cluster) kubectl(args ...string) (string, error) {
	return c.run(c.Node1(), append(c.kas("kubectl", "--kubeconfig="+c.Kubeconfig()), args...)...)
}

func (c *Cluster) waitAPI(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		out, err := c.kubectl("get", "--raw=/readyz")
		if err == nil && strings.TrimSpace(out) == "ok" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("apiserver not ready after %s: %v (see %s)", limit, err, filepath.Join(c.Dir, "logs", "kube-apiserver.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Down stops and removes everything the cluster called name made.
func Down(name string) error {
	dir := StateDir(name)
	st, _ := loadState(dir)
	stopAll(st.Procs)
	// Pod sandboxes' shims run in their own sessions: find them by the
	// containerd sockets under our directory.
	killMatching(dir)
	for i := len(st.Mounts) - 1; i >= 0; i-- {
		unmountAll(st.Mounts[i])
	}
	unmountAll(dir)
	for _, cg := range st.Cgroup {
		removeCgroup(cg)
	}
	nss, _ := netns.List(Prefix(name))
	for _, n := range nss {
		netns.Delete(n)
	}
	return os.RemoveAll(dir)
}
