package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cgroup"
	"github.com/podnet/podnet/internal/cni"
	"github.com/podnet/podnet/internal/dataplane/ebpf"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
)

// The eBPF dataplane (Config.Dataplane "ebpf") adds the socket-level
// balancer of bpf/socklb.c in front of the Service rules: a connect() or
// sendmsg() from a local socket to a ClusterIP is sent straight to a
// backend, chosen exactly as the rules would choose it. Everything else,
// and whatever the balancer leaves out (see proxy.SocketBackends), goes
// through the nftables rules as before, so the two never disagree on
// which endpoints are usable.

// Dataplanes podnet can program.
const (
	DataplaneNftables = "nftables"
	DataplaneEBPF     = "ebpf"
)

type sockLB struct {
	lb *ebpf.SockLB

	mu     sync.Mutex
	scoped bool
	netns  map[string]uint64 // namespaces served, by path (scoped only)
	perSvc map[string]map[proxy.Frontend]proxy.SocketTarget
	// pending are the frontends changed since the last sync (no
	// backends: remove); synced says the maps were reconciled once.
	pending map[proxy.Frontend]proxy.SocketTarget
	synced  bool

	// np is the tc balancer for traffic entering from outside the node
	// (node ports, external and load-balancer IPs), npPer its frontends
	// per Service, and attached the uplinks it is on.
	np       *ebpf.NodePort
	npPer    map[string]map[proxy.Frontend]proxy.NodePortTarget
	npDirty  bool
	attached map[string]bool
	// nodeAddrs and podRanges are what the tc balancer was last told.
	nodeAddrs []netip.Addr
	podRanges []netip.Prefix
	warned    map[string]bool
}

// warnOnce reports whether msg is new, so a lasting problem is logged
// once, not on every resync.
func (s *sockLB) warnOnce(msg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.warned[msg] {
		return false
	}
	if s.warned == nil {
		s.warned = map[string]bool{}
	}
	s.warned[msg] = true
	return true
}

// openSockLB loads and attaches the balancer, or says plainly why this
// machine cannot run it.
func openSockLB(cfg Config) (*sockLB, error) {
	if !cfg.Proxy {
		return nil, errors.New("the eBPF dataplane balances Services: it needs the service proxy (--proxy)")
	}
	cg := cfg.BPFCgroup
	if cg == "" {
		root, err := cgroup.Root()
		if err != nil {
			return nil, fmt.Errorf("the eBPF dataplane needs cgroup v2: %w", err)
		}
		cg = root
	}
	lb, err := ebpf.Open(cg, cfg.BPFPinDir)
	if err != nil {
		return nil, fmt.Errorf("the eBPF dataplane cannot run on this kernel or machine (it needs BPF cgroup sock_addr programs, netns cookies and a BPF file system at %s): %w",
			filepath.Dir(cfg.BPFPinDir), err)
	}
	np, err := ebpf.OpenNodePort(cfg.BPFPinDir)
	if err != nil {
		lb.Close()
		return nil, fmt.Errorf("the eBPF dataplane cannot run on this kernel (its node port balancer needs tc TCX links and the nf_conntrack kfuncs): %w", err)
	}
	s := &sockLB{lb: lb, scoped: cfg.ScopedSockets, netns: map[string]uint64{}, perSvc: map[string]map[proxy.Frontend]proxy.SocketTarget{},
		np: np, npPer: map[string]map[proxy.Frontend]proxy.NodePortTarget{}, npDirty: true, attached: map[string]bool{}}
	if !s.scoped {
		err = lb.AllowNetNS(0)
	} else {
		err = s.allow(nsPath(cfg.NetNS))
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// removeSockLB takes away what an earlier agent's eBPF dataplane left
// pinned, when this one runs another dataplane. Removing the pins
// detaches the programs and frees the maps.
func removeSockLB(pinDir string) error {
	if pinDir == "" {
		return nil
	}
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return os.RemoveAll(pinDir)
}

// allow serves the namespace at path (a lab node's, or one of its pods').
func (s *sockLB) allow(path string) error {
	var cookie uint64
	if err := netns.Do(path, func() (err error) { cookie, err = ebpf.NetNSCookie(); return err }); err != nil {
		return fmt.Errorf("netns cookie of %s: %w", path, err)
	}
	s.mu.Lock()
	s.netns[path] = cookie
	s.mu.Unlock()
	return s.lb.AllowNetNS(cookie)
}

func (s *sockLB) forget(path string) error {
	s.mu.Lock()
	cookie, ok := s.netns[path]
	delete(s.netns, path)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return s.lb.ForgetNetNS(cookie)
}

// set records one Service's frontends (nil: the Service is gone).
func (s *sockLB) set(key string, fs map[proxy.Frontend]proxy.SocketTarget) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		s.pending = map[proxy.Frontend]proxy.SocketTarget{}
	}
	for f := range s.perSvc[key] {
		if _, ok := fs[f]; !ok {
			s.pending[f] = proxy.SocketTarget{}
		}
	}
	for f, t := range fs {
		s.pending[f] = t
	}
	if len(fs) == 0 {
		delete(s.perSvc, key)
	} else {
		s.perSvc[key] = fs
	}
}

// setNodePorts records one Service's external entry points for the tc
// balancer (nil: none, or the Service is gone).
func (s *sockLB) setNodePorts(key string, fs map[proxy.Frontend]proxy.NodePortTarget) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(fs) == 0 && s.npPer[key] == nil {
		return
	}
	if len(fs) == 0 {
		delete(s.npPer, key)
	} else {
		s.npPer[key] = fs
	}
	s.npDirty = true
}

// uplinks puts the tc balancer on the node's uplinks (once each) and
// tells it the node's addresses and the pod ranges.
func (s *sockLB) uplinks(nsPath string, names []string, addrs []netip.Addr, podRanges []netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range names {
		if s.attached[n] {
			continue
		}
		if err := s.np.Attach(nsPath, n); err != nil {
			return err
		}
		s.attached[n] = true
	}
	if slices.Equal(addrs, s.nodeAddrs) && slices.Equal(podRanges, s.podRanges) {
		return nil
	}
	if err := s.np.SetNode(addrs, podRanges); err != nil {
		return err
	}
	s.nodeAddrs, s.podRanges = slices.Clone(addrs), slices.Clone(podRanges)
	return nil
}

// sync writes the changes since the last sync to the maps; the first one
// reconciles them whole with what an earlier agent left.
func (s *sockLB) sync() (ebpf.Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.npDirty {
		// External entry points are few next to ClusterIPs: the tc
		// balancer's whole set goes each time it changed, and Sync
		// writes only what differs.
		all := map[proxy.Frontend]proxy.NodePortTarget{}
		for _, fs := range s.npPer {
			for f, t := range fs {
				all[f] = t
			}
		}
		if _, err := s.np.Sync(all); err != nil {
			return ebpf.Stats{}, fmt.Errorf("node port balancer: %w", err)
		}
		s.npDirty = false
	}
	if !s.synced {
		all := map[proxy.Frontend]proxy.SocketTarget{}
		for _, fs := range s.perSvc {
			for f, t := range fs {
				all[f] = t
			}
		}
		st, err := s.lb.Sync(all)
		if err == nil {
			s.synced, s.pending = true, nil
		}
		return st, err
	}
	st, err := s.lb.Update(s.pending)
	if err == nil {
		s.pending = nil
	} else {
		s.synced = false // reconcile whole next time
	}
	return st, err
}

func (s *sockLB) close() {
	if s != nil {
		s.lb.Close()
		s.np.Close()
	}
}

// AllowSocketNetNS makes the eBPF balancer serve sockets in the network
// namespace at path. Only a scoped agent (the lab, where every node lives
// in one process) needs it; elsewhere the balancer serves the machine.
func (a *Agent) AllowSocketNetNS(path string) error {
	if a.sock == nil || !a.sock.scoped {
		return nil
	}
	return a.sock.allow(path)
}

// ForgetSocketNetNS undoes AllowSocketNetNS.
func (a *Agent) ForgetSocketNetNS(path string) error {
	if a.sock == nil || !a.sock.scoped {
		return nil
	}
	return a.sock.forget(path)
}

// watchPodLinks puts the tc balancer on each pod's host-side device as it
// appears, so that pods reaching a node port or a load-balancer IP are
// set up by it too, and drops the pins of devices that went away (also
// those that went while no agent ran).
func (a *Agent) watchPodLinks(ctx context.Context) {
	s := a.sock
	var opts netlink.LinkSubscribeOptions
	if a.cfg.NetNS != "" {
		h, err := vns.GetFromPath(a.cfg.NetNS)
		if err != nil {
			a.cfg.Log.Warn("pods will reach node ports through the nftables rules only", "err", err)
			return
		}
		defer h.Close()
		opts.Namespace = &h
	}
	opts.ListExisting = true
	opts.ErrorCallback = func(err error) { a.cfg.Log.Debug("link updates", "err", err) }
	updates := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(updates, ctx.Done(), opts); err != nil {
		a.cfg.Log.Warn("pods will reach node ports through the nftables rules only", "err", err)
		return
	}
	present := map[string]bool{}
	for _, name := range a.podLinks() {
		present[name] = true
	}
	s.mu.Lock()
	for _, name := range s.np.Attached() {
		if strings.HasPrefix(name, cni.HostIfPrefix) && !present[name] {
			s.np.Detach(name)
		}
	}
	s.mu.Unlock()
	seen := map[string]int{} // device name → index it was attached at
	for u := range updates {
		name := u.Attrs().Name
		if !strings.HasPrefix(name, cni.HostIfPrefix) {
			continue
		}
		s.mu.Lock()
		switch {
		case u.Header.Type == unix.RTM_DELLINK:
			s.np.Detach(name)
			delete(seen, name)
		case seen[name] != u.Attrs().Index:
			if err := s.np.Attach(a.cfg.NetNS, name); err != nil {
				a.cfg.Log.Debug("node port balancer on a pod device", "device", name, "err", err)
			} else {
				seen[name] = u.Attrs().Index
			}
		}
		s.mu.Unlock()
	}
}
