package agent

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/internal/dataplane/nft"
	"github.com/podnet/podnet/internal/k8s"
	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netpol"
)

// NetworkPolicy is the agent's third loop. Any change to a pod, namespace
// or policy marks the state dirty; a sync converts the informer caches into
// a netpol.World, compiles this node's desired state from it (pure, a few
// milliseconds for thousands of pods) and lets the nft backend apply the
// difference. Recompiling everything keeps the loop level-triggered and
// simple; what reaches the kernel is still only what changed.

type netPolicy struct {
	a        *Agent
	backend  *nft.Policy
	compiler *netpol.Compiler
	trigger  chan struct{}
	ready    atomic.Bool

	pods, namespaces, policies cache.SharedIndexInformer

	// seq counts changes seen; applied is the seq of the last applied sync.
	seq, applied atomic.Int64

	mu      sync.Mutex
	current *netpol.World
	desired *netpol.Desired
	badSeen map[string]string // policy key → resourceVersion already logged
}

func newNetPolicy(a *Agent, backend *nft.Policy) *netPolicy {
	return &netPolicy{a: a, backend: backend, compiler: netpol.NewCompiler(), trigger: make(chan struct{}, 1), badSeen: map[string]string{}}
}

func (p *netPolicy) kick() {
	p.seq.Add(1)
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

func (p *netPolicy) start(ctx context.Context) {
	f := informers.NewSharedInformerFactory(p.a.cfg.Client, 0)
	// Pods come from the agent's shared pod informer (names.go).
	p.pods = p.a.names.pods
	p.namespaces = f.Core().V1().Namespaces().Informer()
	p.policies = f.Networking().V1().NetworkPolicies().Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.kick() },
		UpdateFunc: func(old, cur any) { p.onUpdate(old, cur) },
		DeleteFunc: func(any) { p.kick() },
	}
	for _, inf := range []cache.SharedIndexInformer{p.namespaces, p.policies} {
		_ = inf.SetTransform(stripManagedFields)
	}
	for _, inf := range []cache.SharedIndexInformer{p.pods, p.namespaces, p.policies} {
		_, _ = inf.AddEventHandler(h)
	}
	f.Start(ctx.Done())
}

// onUpdate ignores pod updates that policy cannot see (status churn other
// than addresses and phase), which are most of a cluster's pod events.
func (p *netPolicy) onUpdate(old, cur any) {
	o, ok1 := old.(*corev1.Pod)
	c, ok2 := cur.(*corev1.Pod)
	if ok1 && ok2 {
		po, okO := k8s.PolicyPod(o)
		pc, okC := k8s.PolicyPod(c)
		if okO == okC && samePolicyPod(po, pc) {
			return
		}
	}
	p.kick()
}

func samePolicyPod(a, b model.PolicyPod) bool {
	if a.Node != b.Node || len(a.IPs) != len(b.IPs) || len(a.Labels) != len(b.Labels) || len(a.Ports) != len(b.Ports) {
		return false
	}
	for i := range a.IPs {
		if a.IPs[i] != b.IPs[i] {
			return false
		}
	}
	for k, v := range a.Labels {
		if bv, ok := b.Labels[k]; !ok || bv != v {
			return false
		}
	}
	for i := range a.Ports {
		if a.Ports[i] != b.Ports[i] {
			return false
		}
	}
	return true
}

func (p *netPolicy) run(ctx context.Context) {
	if !waitSynced(ctx, p.pods.HasSynced, p.namespaces.HasSynced, p.policies.HasSynced, p.a.nodesSynced) {
		return
	}
	p.kick()
	syncLoop{
		name: "policy", trigger: p.trigger, period: p.a.cfg.ProxyFullSyncPeriod, log: p.a.cfg.Log,
		minInterval: p.a.cfg.ProxyMinSyncInterval,
		onPeriod:    p.backend.RequestFull,
		sync:        func() error { return p.sync(ctx) },
	}.run(ctx)
}

// World builds the policy world from the informer caches. Policies that do
// not convert are logged (once per version) and left out.
func (p *netPolicy) world() *netpol.World {
	var pods []*corev1.Pod
	for _, o := range p.pods.GetStore().List() {
		pods = append(pods, o.(*corev1.Pod))
	}
	var nss []*corev1.Namespace
	for _, o := range p.namespaces.GetStore().List() {
		nss = append(nss, o.(*corev1.Namespace))
	}
	var pols []*networkingv1.NetworkPolicy
	for _, o := range p.policies.GetStore().List() {
		pols = append(pols, o.(*networkingv1.NetworkPolicy))
	}
	return k8s.PolicyWorld(pods, nss, pols, func(np *networkingv1.NetworkPolicy, err error) {
		key := np.Namespace + "/" + np.Name
		if p.badSeen[key] != np.ResourceVersion {
			p.badSeen[key] = np.ResourceVersion
			p.a.cfg.Log.Error("skipping networkpolicy", "policy", key, "err", err)
		}
	})
}

func (p *netPolicy) sync(ctx context.Context) error {
	seq := p.seq.Load()
	t0 := time.Now()
	p.mu.Lock()
	w := p.world()
	d := p.compiler.Compile(w, p.a.cfg.NodeName)
	p.mu.Unlock()
	t1 := time.Now()
	st, err := p.backend.Sync(ctx, d)
	m := p.a.metrics
	m.policySyncDuration.Observe(time.Since(t0).Seconds())
	if err != nil {
		m.policySyncs.WithLabelValues("error").Inc()
		return err
	}
	m.policySyncs.WithLabelValues("success").Inc()
	if st.Full {
		m.policyFullSyncs.Inc()
	}
	m.policyChains.Set(float64(st.Chains))
	m.policyRules.Set(float64(st.Rules))
	m.policyElements.Set(float64(st.Elements))
	m.policies.Set(float64(len(w.Policies)))
	p.a.cfg.Log.Debug("policy sync", "policies", len(w.Policies), "full", st.Full, "operations", st.Operations,
		"compile", t1.Sub(t0).Round(time.Microsecond), "apply", time.Since(t1).Round(time.Microsecond))
	p.mu.Lock()
	p.current, p.desired = w, d
	p.mu.Unlock()
	p.applied.Store(seq)
	p.ready.Store(true)
	return nil
}

// idle reports whether every change seen has been applied.
func (p *netPolicy) idle() bool { return p.ready.Load() && p.applied.Load() == p.seq.Load() }

// state returns the world and desired state of the last applied sync.
func (p *netPolicy) state() (*netpol.World, *netpol.Desired) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current, p.desired
}
