package cluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/lab"
)

// Per-node directories that a real node has at fixed paths. Each node's
// kubelet and containerd share one mount namespace in which these paths
// are bind mounts of the node's own directories, so DaemonSets that use
// hostPath (podnet's /etc/cni/net.d and /opt/cni/bin among them) see that
// node's files, exactly as on separate machines. kubelet and containerd
// must share the namespace: kubelet's volume mounts have to be visible to
// the runtime.
//
// /run/netns, where containerd names pods' network namespaces, is one of
// them and is made shared (as on a systemd host, whose / is shared):
// podnet's DaemonSet mounts it with HostToContainer propagation, to see
// pods' namespaces as they are made (for podnet trace --live), which the
// kubelet refuses on a private mount.
var nodePaths = []string{"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/run/containerd", "/run/netns"}

func hostDir(p string) string { return strings.ReplaceAll(strings.TrimPrefix(p, "/"), "/", "-") }

func (c *Cluster) startNode(ctx context.Context, n lab.TopologyNode) error {
	nd := filepath.Join(c.Dir, "nodes", n.Name)
	var binds []string
	for _, p := range nodePaths {
		src := filepath.Join(nd, hostDir(p))
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		binds = append(binds, fmt.Sprintf("mount --bind %q %q", src, p))
	}
	// The node's base CNI plugins, as a node image ships them: loopback
	// for every sandbox, portmap for hostPort (chained by podnet's conflist).
	for _, p := range []string{"loopback", "portmap"} {
		if err := copyFile(filepath.Join(c.BinDir, p), filepath.Join(nd, hostDir("/opt/cni/bin"), p), 0o755); err != nil {
			return err
		}
	}
	script := "set -e; mount --make-rprivate /; " + strings.Join(binds, "; ") + "; mount --make-shared /run/netns; exec sleep infinity"
	holder, err := c.start(n.Name+"-mounts", n.NetNS, 0, "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script)
	if err != nil {
		return err
	}
	// Wait for the binds to be in place.
	for i := 0; ; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", holder))
		if strings.Contains(string(b), " /run/containerd ") {
			break
		}
		if i > 200 {
			return fmt.Errorf("mount namespace of %s not ready", n.Name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cg, err := makeCgroupRoot(Prefix(c.Name) + n.Name)
	if err != nil {
		return err
	}
	c.st.Cgroup = append(c.st.Cgroup, cg)
	c.saveState()

	sock := filepath.Join(nd, "containerd.sock")
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
`, filepath.Join(nd, "containerd-root"), filepath.Join(nd, "containerd-state"), sock, sock+".ttrpc", pauseImage)
	if err := os.WriteFile(filepath.Join(nd, "containerd.toml"), []byte(conf), 0o644); err != nil {
		return err
	}
	if _, err := c.start(n.Name+"-containerd", n.NetNS, holder, "containerd", "--config", filepath.Join(nd, "containerd.toml")); err != nil {
		return err
	}
	if err := waitFile(sock, 30*time.Second); err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	if err := c.importImages(n, sock); err != nil {
		return err
	}
	resolv := filepath.Join(nd, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 192.168.77.1\n"), 0o644)
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
failSwapOn: false
containerRuntimeEndpoint: unix://%s
podLogsDir: /var/log/pods
resolvConf: %s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDNS: [%s]
clusterDomain: cluster.local
oomScoreAdj: 0
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
protectKernelDefaults: false
makeIPTablesUtilChains: false
localStorageCapacityIsolation: false
`, filepath.Base(cg), sock, resolv, dnsIP)
	if err := os.WriteFile(filepath.Join(nd, "kubelet.yaml"), []byte(kcfg), 0o644); err != nil {
		return err
	}
	if _, err := c.start(n.Name+"-kubelet", n.NetNS, holder, c.kas("kubelet", "--config="+filepath.Join(nd, "kubelet.yaml"),
		"--kubeconfig="+filepath.Join(c.Dir, n.Name+".kubeconfig"), "--hostname-override="+n.Name,
		"--node-ip="+n.Addrs[0].Addr().String(), "--node-labels=topology.kubernetes.io/zone=zone-"+string(rune('a'+n.Index-1)))...); err != nil {
		return err
	}
	if c.Proxy == "kube-proxy" {
		if _, err := c.start(n.Name+"-kube-proxy", n.NetNS, 0, c.kas("proxy", "--proxy-mode=nftables",
			"--hostname-override="+n.Name, "--cluster-cidr="+clusterCIDR, "--kubeconfig="+filepath.Join(c.Dir, "kube-proxy.kubeconfig"),
			"--conntrack-max-per-core=0", "--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256")...); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) importImages(n lab.TopologyNode, sock string) error {
	archives, _ := filepath.Glob(filepath.Join(c.Images, "*.tar"))
	if len(archives) == 0 {
		return fmt.Errorf("no image archives in %s", c.Images)
	}
	for _, a := range archives {
		if out, err := exec.Command("ctr", "-n", "k8s.io", "--address", sock, "images", "import", "--all-platforms", a).CombinedOutput(); err != nil {
			return fmt.Errorf("import %s into %s: %v\n%s", filepath.Base(a), n.Name, err, out)
		}
	}
	return nil
}

func waitFile(p string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear in %s", p, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// makeCgroupRoot creates /sys/fs/cgroup/<controller>/NAME for every cgroup
// v1 controller (copying cpuset's cpus and mems from the parent, which a
// new cpuset needs before any task can join it), so each kubelet has a root
// of its own instead of fighting over /kubepods.
func makeCgroupRoot(name string) (string, error) {
	ctrls, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return "", err
	}
	for _, e := range ctrls {
		base := filepath.Join("/sys/fs/cgroup", e.Name())
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			continue
		}
		d := filepath.Join(base, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
		if e.Name() == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, _ := os.ReadFile(filepath.Join(base, f))
				os.WriteFile(filepath.Join(d, f), b, 0o644)
			}
		}
	}
	return "/" + name, nil
}

// removeCgroup removes a cgroup root and everything under it, deepest
// first, in every controller.
func removeCgroup(root string) {
	ctrls, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ctrls {
		top := filepath.Join("/sys/fs/cgroup", e.Name(), root)
		var dirs []string
		filepath.Walk(top, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if b, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil {
				for _, pid := range strings.Fields(string(b)) {
					var n int
					fmt.Sscan(pid, &n)
					syscall.Kill(n, syscall.SIGKILL)
				}
			}
			for try := 0; try < 20 && os.Remove(dirs[i]) != nil; try++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
}

// unmountAll lazily unmounts every mount at or below dir.
func unmountAll(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var targets []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			targets = append(targets, f[4])
		}
	}
	for i := len(targets) - 1; i >= 0; i-- {
		syscall.Unmount(targets[i], syscall.MNT_DETACH)
	}
}

// killMatching kills processes whose command line mentions dir (container
// shims and leftovers that ran in their own sessions).
func killMatching(dir string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
