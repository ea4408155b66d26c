// Package agent is the per-node podnet daemon: it watches Nodes, writes the
// node's CNI config once its pod ranges are known, and keeps routes to
// every peer's pod ranges exact. It is wired by hand in New.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/internal/dataplane/link"
	"github.com/podnet/podnet/internal/k8s"
	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/routing"
)

// Config is what one agent needs to know.
type Config struct {
	NodeName string
	Client   kubernetes.Interface
	// NetNS is the path of the node's network namespace; empty means the
	// agent's own (the production case: a hostNetwork pod).
	NetNS      string
	Mode       routing.Mode
	CNIConfDir string
	// CNIDataDir is the allocation store's directory, written into the
	// conflist.
	CNIDataDir string
	MTU        int
	// Chain lists reference plugins to chain after podnet in the conflist.
	Chain        []string
	ResyncPeriod time.Duration
	Log          *slog.Logger
}

// Agent is one node's podnet daemon.
type Agent struct {
	cfg     Config
	routes  *link.Routes
	trigger chan struct{}
	ready   atomic.Bool
	nodes   func() ([]*corev1.Node, error)
}

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
	return &Agent{cfg: cfg, routes: link.NewRoutes(h), trigger: make(chan struct{}, 1)}, nil
}

func nsPath(p string) string {
	if p == "" {
		return "/proc/self/ns/net"
	}
	return p
}

// Ready reports whether the first full sync has been applied.
func (a *Agent) Ready() bool { return a.ready.Load() }

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
	factory := informers.NewSharedInformerFactory(a.cfg.Client, 0)
	inf := factory.Core().V1().Nodes()
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.kick() },
		UpdateFunc: func(any, any) { a.kick() },
		DeleteFunc: func(any) { a.kick() },
	})
	lister := inf.Lister()
	a.nodes = func() ([]*corev1.Node, error) { return lister.List(labels.Everything()) }
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return ctx.Err()
	}
	a.loop(ctx)
	return nil
}

// loop is level-triggered: every wake-up recomputes the whole desired state
// from the informer cache and makes the kernel match it. Failures retry
// with exponential back-off; a periodic resync is the safety net.
func (a *Agent) loop(ctx context.Context) {
	backoff := time.Duration(0)
	resync := time.NewTicker(a.cfg.ResyncPeriod)
	defer resync.Stop()
	a.kick()
	for {
		var retry <-chan time.Time
		if backoff > 0 {
			retry = time.After(backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.trigger:
		case <-resync.C:
		case <-retry:
		}
		if err := a.sync(); err != nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second)
			a.cfg.Log.Error("sync failed", "err", err, "retry", backoff)
			continue
		}
		backoff = 0
	}
}

func (a *Agent) sync() error {
	objs, err := a.nodes()
	if err != nil {
		return err
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
	if self != nil && len(self.PodCIDRs) > 0 {
		if err := a.writeConflist(self.PodCIDRs); err != nil {
			return fmt.Errorf("write conflist: %w", err)
		}
	}
	st := routing.Desired(a.cfg.NodeName, nodes, a.cfg.Mode)
	for _, s := range st.Skipped {
		a.cfg.Log.Warn("peer not routed", "reason", s)
	}
	changed, removed, err := a.routes.Sync(st.Routes)
	if changed+removed > 0 {
		a.cfg.Log.Info("routes synced", "changed", changed, "removed", removed, "total", len(st.Routes))
	}
	if err != nil {
		return err
	}
	if self != nil && len(self.PodCIDRs) > 0 {
		a.ready.Store(true)
	}
	return nil
}

func (a *Agent) writeConflist(cidrs []netip.Prefix) error {
	if a.cfg.CNIConfDir == "" {
		return nil
	}
	data, err := Conflist(cidrs, a.cfg.MTU, a.cfg.CNIDataDir, a.cfg.Chain)
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
