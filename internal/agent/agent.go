// Package agent is the per-node podnet daemon: it watches Nodes, writes the
// node's CNI config once its pod ranges are known, and keeps routes to
// every peer's pod ranges exact. It is wired by hand in New.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/internal/dataplane/link"
	"github.com/podnet/podnet/internal/dataplane/nft"
	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/k8s"
	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/routing"
)

// Config is what one agent needs to know.
type Config struct {
	NodeName string
	Client   kubernetes.Interface
	// PodNetNSDirs are where the runtime names pods' network namespaces,
	// for live probes (nil: DefaultPodNetNSDirs).
	PodNetNSDirs []string
	// NetNS is the path of the node's network namespace; empty means the
	// agent's own (the production case: a hostNetwork pod).
	NetNS string
	Mode  routing.Mode
	// VXLAN sets the overlay's VNI and port (zero: the defaults).
	VXLAN routing.VXLANConfig
	// ClusterCIDRs are the cluster's pod ranges and ServiceCIDRs its
	// service ranges: pod traffic to anything else that leaves through
	// the uplink is masqueraded. Empty ClusterCIDRs turns masquerade off.
	ClusterCIDRs []netip.Prefix
	ServiceCIDRs []netip.Prefix
	CNIConfDir   string
	// CNIBinDir, when the agent installs the plugin there, lets doctor
	// check the installed binary is the agent's own.
	CNIBinDir string
	// CNIDataDir is the allocation store's directory, written into the
	// conflist.
	CNIDataDir string
	// MTU of pod interfaces; 0 detects it from the uplink and the mode.
	MTU int
	// Chain lists reference plugins to chain after podnet in the conflist.
	Chain        []string
	ResyncPeriod time.Duration
	// Proxy turns on the service proxy (the kube-proxy replacement).
	Proxy bool
	// ProxyMinSyncInterval spaces service syncs (default 50ms);
	// ProxyFullSyncPeriod is the safety-net full rewrite (default 5m).
	ProxyMinSyncInterval time.Duration
	ProxyFullSyncPeriod  time.Duration
	// Policy turns on NetworkPolicy enforcement. Dropped packets are
	// logged to nflog group NflogGroup (default 100), where the agent
	// reads them to count and explain drops.
	Policy     bool
	NflogGroup int
	// FlowLog, when set, is a file flows are appended to as JSON lines,
	// rotated at FlowLogMaxBytes keeping FlowLogKeep old files.
	FlowLog         string
	FlowLogMaxBytes int64
	FlowLogKeep     int
	// NoConntrackFlows turns off the forwarded-flow records that come
	// from conntrack events. Listening for them costs every new
	// connection through the node about 100 µs of connect time on a
	// 2-CPU machine (bench/RESULTS.md); drops are still recorded.
	NoConntrackFlows bool
	// Dataplane is DataplaneNftables (the default) or DataplaneEBPF, which
	// adds the socket-level Service balancer (see socklb.go). BPFCgroup is
	// the cgroup v2 directory it attaches to (default: the hierarchy's
	// root), BPFPinDir where its maps and links are pinned, in a BPF file
	// system (default /sys/fs/bpf/podnet). ScopedSockets limits it to the
	// node's namespace and those given to AllowSocketNetNS (the lab).
	Dataplane     string
	BPFCgroup     string
	BPFPinDir     string
	ScopedSockets bool
	// Allocator, when set, claims pod ranges for this node if the cluster
	// assigns none.
	Allocator *BlockAllocator
	Log       *slog.Logger
}

// Agent is one node's podnet daemon.
type Agent struct {
	cfg     Config
	h       *netlink.Handle
	routes  *link.Routes
	overlay *link.Overlay
	masq    *nft.Masq
	proxy   *svcProxy
	sock    *sockLB
	// sockFlows joins the balancer's flow events with conntrack's.
	sockFlows *sockFlows
	policy    *netPolicy
	names     *names
	flows     *flow.Ring
	// nodesSynced reports whether the node store has its first list.
	nodesSynced func() bool
	flowLog     *flow.Exporter
	trigger     chan struct{}
	ready       atomic.Bool
	nodes       func() ([]*corev1.Node, error)

	configured  bool // the conflist has been written
	lastMasq    *nft.MasqConfig
	lastMasqRun time.Time
	metrics     *metrics
}

// Registry is the agent's Prometheus registry, for /metrics.
func (a *Agent) Registry() *prometheus.Registry { return a.metrics.registry }

// New builds an agent. It opens a netlink handle in the node's namespace.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, fmt.Errorf("agent: node name is required")
	}
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Log = cfg.Log.With("node", cfg.NodeName)
	h, err := netns.Handle(nsPath(cfg.NetNS))
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, h: h, routes: link.NewRoutes(h), overlay: link.NewOverlay(h), trigger: make(chan struct{}, 1), metrics: newMetrics()}
	if (cfg.Proxy || cfg.Policy) && a.cfg.NflogGroup == 0 {
		a.cfg.NflogGroup = 100
	}
	// Each nftables backend checks the nft binary as it opens (two runs
	// of nft, some 25 ms): opened together, start-up waits for one check
	// rather than three.
	var proxyBackend *nft.Proxy
	var policyBackend *nft.Policy
	var opening sync.WaitGroup
	var errs [3]error
	if len(cfg.ClusterCIDRs) > 0 {
		opening.Go(func() { a.masq, errs[0] = nft.NewMasq(cfg.NetNS) })
	}
	if cfg.Proxy {
		opening.Go(func() { proxyBackend, errs[1] = nft.NewProxy(cfg.NetNS) })
	}
	if cfg.Policy {
		opening.Go(func() { policyBackend, errs[2] = nft.NewPolicy(cfg.NetNS, a.cfg.NflogGroup) })
	}
	opening.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		h.Close()
		return nil, err
	}
	if cfg.Proxy {
		if a.cfg.ProxyMinSyncInterval == 0 {
			a.cfg.ProxyMinSyncInterval = 50 * time.Millisecond
		}
		if a.cfg.ProxyFullSyncPeriod == 0 {
			a.cfg.ProxyFullSyncPeriod = 5 * time.Minute
		}
		a.proxy = newSvcProxy(a, proxyBackend)
	}
	if a.cfg.BPFPinDir == "" {
		a.cfg.BPFPinDir = "/sys/fs/bpf/podnet"
	}
	switch cfg.Dataplane {
	case "", DataplaneNftables:
		// Switching back from eBPF leaves nothing of it behind.
		if err := removeSockLB(a.cfg.BPFPinDir); err != nil {
			h.Close()
			return nil, fmt.Errorf("remove the eBPF dataplane's pins: %w", err)
		}
	case DataplaneEBPF:
		if a.sock, err = openSockLB(a.cfg); err != nil {
			h.Close()
			return nil, err
		}
	default:
		h.Close()
		return nil, fmt.Errorf("agent: unknown dataplane %q (nftables or ebpf)", cfg.Dataplane)
	}
	if cfg.Policy {
		if a.cfg.ProxyMinSyncInterval == 0 {
			a.cfg.ProxyMinSyncInterval = 50 * time.Millisecond
		}
		if a.cfg.ProxyFullSyncPeriod == 0 {
			a.cfg.ProxyFullSyncPeriod = 5 * time.Minute
		}
		a.policy = newNetPolicy(a, policyBackend)
	}
	a.metrics.registry.MustRegister(newStatsCollector(a))
	a.flows = flow.NewRing(4096)
	if cfg.FlowLog != "" {
		a.flowLog = &flow.Exporter{Path: cfg.FlowLog, MaxBytes: cfg.FlowLogMaxBytes, Keep: cfg.FlowLogKeep}
	}
	if cfg.Proxy || cfg.Policy {
		a.names = newNames(a)
	}
	return a, nil
}

func nsPath(p string) string {
	if p == "" {
		return "/proc/self/ns/net"
	}
	return p
}

// Ready reports whether the first full sync has been applied, of routes
// and, with the proxy on, of Services.
func (a *Agent) Ready() bool {
	return a.ready.Load() && (a.proxy == nil || a.proxy.ready.Load()) && (a.policy == nil || a.policy.ready.Load())
}

// Idle reports whether the service proxy and NetworkPolicy have applied
// every change they have seen (true for those turned off).
func (a *Agent) Idle() bool {
	return (a.proxy == nil || a.proxy.idle()) && (a.policy == nil || a.policy.idle())
}

// Routes exposes the route backend, for inspection.
func (a *Agent) Routes() *link.Routes { return a.routes }

// kick asks for a sync. Requests merge: the channel holds at most one.
func (a *Agent) kick() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

// Run watches the API and syncs until ctx ends. When it ends for good the
// conflist is removed, so the runtime stops sending pods to a node whose
// network is no longer managed.
func (a *Agent) Run(ctx context.Context) error {
	a.cfg.Log.Debug("agent starting", "since start", time.Since(processStart).Round(time.Millisecond))
	store := &nodeStore{Store: cache.NewStore(cache.MetaNamespaceKeyFunc), onChange: func() {
		a.kick()
		if a.proxy != nil {
			a.proxy.kick() // the node's zone and addresses matter to Services
		}
	}}
	a.nodes = store.nodes
	a.nodesSynced = store.synced.Load
	watchNodes(ctx, a.cfg.Client, store)
	// The proxy's and policy's informers list while the nodes do: at
	// start-up, listing tens of thousands of Services is the long pole.
	// Their loops wait for the nodes too.
	if a.proxy != nil {
		a.proxy.start(ctx)
		go a.proxy.run(ctx)
	}
	if a.policy != nil {
		a.policy.start(ctx)
		go a.policy.run(ctx)
	}
	if !waitSynced(ctx, store.synced.Load) {
		return ctx.Err()
	}
	if a.cfg.Allocator != nil {
		if err := a.claimPodCIDRs(ctx); err != nil {
			return err
		}
	}
	if a.names != nil {
		go a.names.pods.Run(ctx.Done())
		go a.watchNflog(ctx)
		// flowEvents off turns off both sources of forwarded flows:
		// conntrack's events and the socket balancer's.
		if a.sock != nil && !a.cfg.NoConntrackFlows {
			if ev, err := a.sock.lb.Events(); err != nil {
				a.cfg.Log.Warn("the socket balancer's flows will not name their Services", "err", err)
			} else {
				a.sockFlows = newSockFlows(a)
				go a.sockFlows.watch(ctx, ev)
			}
		}
		if !a.cfg.NoConntrackFlows {
			go a.watchConntrack(ctx)
		}
		if a.sock != nil {
			// Drops are always reported, as nflog's are.
			if drops, err := a.sock.np.Drops(); err != nil {
				a.cfg.Log.Warn("the node port balancer's drops will not reach the flow log", "err", err)
			} else {
				go a.watchBPFDrops(ctx, drops)
			}
		}
	}
	if a.flowLog != nil {
		defer a.flowLog.Close()
	}
	if a.sock != nil {
		go a.watchPodLinks(ctx)
	}
	// The balancer's pins stay: translation goes on while no agent runs.
	defer a.sock.close()
	a.loop(ctx)
	return nil
}

// processStart is about when the process started, for debug logs that
// account for the time to a first sync.
var processStart = time.Now()

// waitSynced waits until every fn reports synced, or ctx ends (false).
// client-go's WaitForCacheSync looks every 100 ms; at start-up that is a
// noticeable share of a small cluster's first sync, so this looks every
// 5 ms.
func waitSynced(ctx context.Context, fns ...func() bool) bool {
	for {
		done := true
		for _, f := range fns {
			if !f() {
				done = false
				break
			}
		}
		if done {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// loop is level-triggered: every wake-up recomputes the whole desired state
// from the informer cache and makes the kernel match it. Failures retry
// with exponential back-off; a periodic resync is the safety net.
func (a *Agent) loop(ctx context.Context) {
	a.kick()
	syncLoop{
		name: "routing", trigger: a.trigger, period: a.cfg.ResyncPeriod, log: a.cfg.Log,
		onPeriod: func() { a.releaseOrphanBlocks(ctx) },
		sync: func() error {
			t0 := time.Now()
			err := a.sync()
			a.metrics.syncDuration.Observe(time.Since(t0).Seconds())
			if err != nil {
				a.metrics.syncs.WithLabelValues("error").Inc()
				return err
			}
			a.metrics.syncs.WithLabelValues("success").Inc()
			// Ready once a full sync has been applied with the node's own
			// pod ranges known (so the conflist exists).
			if a.configured {
				a.ready.Store(true)
			}
			return nil
		},
	}.run(ctx)
}

func (a *Agent) sync() error {
	st, self, up, nodes, err := a.desired()
	if err != nil {
		return err
	}
	for _, s := range st.Skipped {
		a.cfg.Log.Warn("peer not routed", "reason", s)
	}
	a.metrics.peers.Set(float64(len(nodes) - 1))
	a.metrics.skipped.Set(float64(len(st.Skipped)))
	if err := a.apply(st); err != nil {
		return err
	}
	if err := a.syncMasq(up); err != nil {
		return fmt.Errorf("masquerade: %w", err)
	}
	if a.sock != nil {
		// Not fatal: without the tc balancer (a kernel without TCX links,
		// say) the nftables rules serve node ports as they always do.
		if err := a.sock.uplinks(a.cfg.NetNS, up.names, self.Addrs, a.cfg.ClusterCIDRs); err != nil && a.sock.warnOnce(err.Error()) {
			a.cfg.Log.Warn("node ports stay with the nftables rules", "err", err)
		}
	}
	if len(self.PodCIDRs) > 0 {
		if err := a.writeConflist(self.PodCIDRs, a.podMTU(*self, up)); err != nil {
			return fmt.Errorf("write conflist: %w", err)
		}
		a.configured = true
	}
	return nil
}

// desired computes the routing state this node should have, from the Node
// objects and the node's uplink.
func (a *Agent) desired() (routing.State, *model.Node, uplink, []model.Node, error) {
	objs, err := a.nodes()
	if err != nil {
		return routing.State{}, nil, uplink{}, nil, err
	}
	var nodes []model.Node
	var self *model.Node
	for _, o := range objs {
		n, err := k8s.Node(o)
		if err != nil {
			a.cfg.Log.Warn("skipping node", "err", err)
			continue
		}
		nodes = append(nodes, n)
		if n.Name == a.cfg.NodeName {
			self = &nodes[len(nodes)-1]
		}
	}
	if self == nil {
		return routing.State{}, nil, uplink{}, nil, fmt.Errorf("node %s is not in the API yet", a.cfg.NodeName)
	}
	up, err := readUplink(a.h, *self)
	if err != nil {
		return routing.State{}, nil, uplink{}, nil, fmt.Errorf("uplink: %w", err)
	}
	vx := a.cfg.VXLAN
	vx.UplinkMTU = up.mtu
	st := routing.Desired(routing.Self{Name: a.cfg.NodeName, Local: up.local}, nodes, routing.Config{Mode: a.cfg.Mode, VXLAN: vx})
	return st, self, up, nodes, nil
}

// apply makes the kernel match st: devices first (routes point at them),
// then their neighbour and FDB entries, then routes, and last the removal
// of devices nobody needs any more.
func (a *Agent) apply(st routing.State) error {
	if err := a.overlay.EnsureDevices(st.Devices); err != nil {
		return err
	}
	nc, nr, err := a.overlay.SyncNeighbours(st.Neighbours, st.FDB)
	if err != nil {
		return err
	}
	changed, removed, err := a.routes.Sync(st.Routes)
	if err != nil {
		return err
	}
	pruned, err := a.overlay.PruneDevices(st.Devices)
	if err != nil {
		return err
	}
	a.metrics.routes.Set(float64(len(st.Routes)))
	a.metrics.overlay.WithLabelValues("device").Set(float64(len(st.Devices)))
	a.metrics.overlay.WithLabelValues("neighbour").Set(float64(len(st.Neighbours)))
	a.metrics.overlay.WithLabelValues("fdb").Set(float64(len(st.FDB)))
	a.metrics.changes.WithLabelValues("change").Add(float64(changed + nc))
	a.metrics.changes.WithLabelValues("remove").Add(float64(removed + nr + pruned))
	if changed+removed+nc+nr+pruned > 0 {
		a.cfg.Log.Info("routing synced", "routes", len(st.Routes), "changed", changed, "removed", removed,
			"neighbours+fdb changed", nc, "removed", nr, "devices", len(st.Devices), "devices removed", pruned)
	}
	return nil
}

// podMTU is the configured MTU, or the uplink's less the overlay's cost.
func (a *Agent) podMTU(me model.Node, up uplink) int {
	if a.cfg.MTU > 0 {
		return a.cfg.MTU
	}
	_, has4 := me.Addr(true)
	_, has6 := me.Addr(false)
	v6pods := false
	for _, c := range me.PodCIDRs {
		v6pods = v6pods || c.Addr().Is6()
	}
	return routing.PodMTU(up.mtu, a.cfg.Mode, has4, has6 && (v6pods || !has4))
}

// syncMasq rewrites the masquerade table when its inputs change, and on
// every periodic resync as a safety net.
func (a *Agent) syncMasq(up uplink) error {
	if a.masq == nil {
		return nil
	}
	c := nft.MasqConfig{Uplinks: up.names, PodRanges: a.cfg.ClusterCIDRs, Internal: append(append([]netip.Prefix{}, a.cfg.ClusterCIDRs...), a.cfg.ServiceCIDRs...)}
	if a.lastMasq != nil && a.lastMasq.Equal(c) && time.Since(a.lastMasqRun) < a.cfg.ResyncPeriod {
		return nil
	}
	if err := a.masq.Sync(context.Background(), c); err != nil {
		return err
	}
	a.lastMasq, a.lastMasqRun = &c, time.Now()
	return nil
}

func (a *Agent) writeConflist(cidrs []netip.Prefix, mtu int) error {
	if a.cfg.CNIConfDir == "" {
		return nil
	}
	data, err := Conflist(cidrs, mtu, a.cfg.CNIDataDir, a.cfg.Chain)
	if err != nil {
		return err
	}
	wrote, err := writeIfChanged(filepath.Join(a.cfg.CNIConfDir, ConflistName), data)
	if wrote {
		a.cfg.Log.Info("wrote CNI config", "dir", a.cfg.CNIConfDir, "podCIDRs", cidrs)
	}
	return err
}

// RemoveConflist deletes the conflist, for a shutdown for good.
func (a *Agent) RemoveConflist() error {
	if a.cfg.CNIConfDir == "" {
		return nil
	}
	err := os.Remove(filepath.Join(a.cfg.CNIConfDir, ConflistName))
	if os.IsNotExist(err) {
		return nil
	}
	return err
}

// claimPodCIDRs runs the block allocator until this node has pod ranges,
// retrying with back-off while the API is unhappy.
func (a *Agent) claimPodCIDRs(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for {
		cidrs, err := a.cfg.Allocator.Ensure(ctx, a.cfg.NodeName)
		if err == nil {
			a.cfg.Log.Info("pod ranges", "podCIDRs", cidrs)
			return nil
		}
		a.cfg.Log.Error("claim pod ranges", "err", err, "retry", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (a *Agent) releaseOrphanBlocks(ctx context.Context) {
	if a.cfg.Allocator == nil {
		return
	}
	objs, err := a.nodes()
	if err != nil {
		return
	}
	if n, err := a.cfg.Allocator.ReleaseOrphans(ctx, objs); err != nil {
		a.cfg.Log.Warn("release orphaned blocks", "err", err)
	} else if n > 0 {
		a.cfg.Log.Info("released blocks of deleted nodes", "count", n)
	}
}
