package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/internal/dataplane/nft"
	"github.com/podnet/podnet/internal/k8s"
	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
)

// The service proxy is the agent's second loop. Informers feed a change
// tracker that only records which Services changed (a Service event, or an
// event on one of its EndpointSlices); the loop renders those Services
// again and hands the fragments to the nft backend, which applies the
// difference in one transaction. Every FullSyncPeriod, and after any
// failure, everything is rendered and rewritten as a safety net.

const sliceServiceIndex = "service"

// proxyNameLabel names the proxy that should implement a Service; podnet
// implements only Services without it, like the default kube-proxy.
const proxyNameLabel = "service.kubernetes.io/service-proxy-name"

// svcProxy implements Services on one node.
type svcProxy struct {
	a        *Agent
	backend  *nft.Proxy
	services cache.SharedIndexInformer
	slices   cache.SharedIndexInformer
	svcReg   cache.ResourceEventHandlerRegistration
	sliceReg cache.ResourceEventHandlerRegistration
	trigger  chan struct{}
	ready    atomic.Bool
	health   *healthServers
	ct       *conntrackCleaner

	mu       sync.Mutex
	syncing  bool
	dirty    map[string]bool
	triggers map[string]time.Time // oldest pending EndpointSlice change per Service

	self     *proxy.Self
	lastFull time.Time
	// used remembers, per Service, what the conntrack cleaner needs to
	// compare against after the next render.
	used map[string]udpUse
	// slots places each Service port's endpoints in the shared maps;
	// slotsOf remembers which slots each Service held at its last render.
	slots   *proxy.Slots
	slotsOf map[string][]string

	// vips indexes Service addresses ("addr:port/proto" → "ns/name") for
	// naming flows; rebuilt lazily after a Service changes.
	vipsMu    sync.Mutex
	vips      map[string]string
	vipsDirty bool
}

func newSvcProxy(a *Agent, backend *nft.Proxy) *svcProxy {
	return &svcProxy{
		a: a, backend: backend, trigger: make(chan struct{}, 1),
		dirty: map[string]bool{}, triggers: map[string]time.Time{}, used: map[string]udpUse{},
		slots: proxy.NewSlots(), slotsOf: map[string][]string{},
		health: newHealthServers(a.cfg.NetNS, a.cfg.Log),
		ct:     &conntrackCleaner{h: a.h, log: a.cfg.Log},
	}
}

func (p *svcProxy) kick() {
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

func (p *svcProxy) mark(key string, trigger time.Time) {
	p.mu.Lock()
	p.dirty[key] = true
	if !trigger.IsZero() {
		if t, ok := p.triggers[key]; !ok || trigger.Before(t) {
			p.triggers[key] = trigger
		}
	}
	p.mu.Unlock()
	p.kick()
}

func sliceService(o any) (string, bool) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	es, ok := o.(*discoveryv1.EndpointSlice)
	if !ok || es.Labels[discoveryv1.LabelServiceName] == "" {
		return "", false
	}
	return es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName], true
}

func triggerTime(o any) time.Time {
	es, ok := o.(*discoveryv1.EndpointSlice)
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, es.Annotations[corev1.EndpointsLastChangeTriggerTime])
	if err != nil {
		return time.Time{}
	}
	return t
}

// start registers the informers; run waits for them.
func (p *svcProxy) start(ctx context.Context) {
	// As kube-proxy does, leave alone Services another proxy claims
	// (service.kubernetes.io/service-proxy-name) and headless ones; the
	// EndpointSlice controller copies these labels onto the slices.
	sel := "!" + proxyNameLabel + ",!" + corev1.IsHeadlessService
	f := informers.NewSharedInformerFactoryWithOptions(p.a.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel }))
	p.services = f.Core().V1().Services().Informer()
	p.slices = f.Discovery().V1().EndpointSlices().Informer()
	p.services.SetTransform(stripManagedFields)
	p.slices.SetTransform(stripManagedFields)
	p.slices.AddIndexers(cache.Indexers{sliceServiceIndex: func(o any) ([]string, error) {
		if k, ok := sliceService(o); ok {
			return []string{k}, nil
		}
		return nil, nil
	}})
	svcKey := func(o any) {
		p.vipsMu.Lock()
		p.vipsDirty = true
		p.vipsMu.Unlock()
		if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o); err == nil {
			p.mark(k, time.Time{})
		}
	}
	// The registrations' HasSynced, unlike the informers', waits until
	// every object of the first list has reached the handlers, which
	// deliver asynchronously: the first sync then covers them all, rather
	// than leaving tens of thousands of late marks for a second sync that
	// renders every Service again (seen as a long add-one at 30,000).
	var err error
	p.svcReg, err = p.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: svcKey,
		UpdateFunc: func(old, cur any) {
			o, c := old.(*corev1.Service), cur.(*corev1.Service)
			if reflect.DeepEqual(o.Spec, c.Spec) && reflect.DeepEqual(o.Status, c.Status) {
				return // no-op: nothing the proxy reads changed
			}
			svcKey(cur)
		},
		DeleteFunc: svcKey,
	})
	if err != nil {
		p.a.cfg.Log.Error("service informer", "err", err)
	}
	sliceKey := func(o any) {
		if k, ok := sliceService(o); ok {
			p.mark(k, triggerTime(o))
		}
	}
	p.sliceReg, err = p.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: sliceKey,
		UpdateFunc: func(old, cur any) {
			o, c := old.(*discoveryv1.EndpointSlice), cur.(*discoveryv1.EndpointSlice)
			if reflect.DeepEqual(o.Endpoints, c.Endpoints) && reflect.DeepEqual(o.Ports, c.Ports) && reflect.DeepEqual(o.Labels, c.Labels) {
				return
			}
			sliceKey(cur)
		},
		DeleteFunc: sliceKey,
	})
	if err != nil {
		p.a.cfg.Log.Error("endpointslice informer", "err", err)
	}
	f.Start(ctx.Done())
}

// run syncs until ctx ends. Requests that arrive during a sync merge into
// one; minInterval spaces syncs so that a burst of changes (a rollout, or
// start-up) is applied in few transactions.
func (p *svcProxy) run(ctx context.Context) {
	synced := []func() bool{p.services.HasSynced, p.slices.HasSynced, p.a.nodesSynced}
	for _, r := range []cache.ResourceEventHandlerRegistration{p.svcReg, p.sliceReg} {
		if r != nil {
			synced = append(synced, r.HasSynced)
		}
	}
	if !waitSynced(ctx, synced...) {
		return
	}
	p.a.cfg.Log.Debug("service informers synced", "since start", time.Since(processStart).Round(time.Millisecond))
	defer p.health.closeAll()
	cfg := p.a.cfg
	p.conntrackTimeouts()
	p.kick()
	syncLoop{
		name: "service", trigger: p.trigger, period: cfg.ProxyFullSyncPeriod, log: cfg.Log,
		onPeriod:    p.backend.RequestFull,
		sync:        func() error { return p.sync(ctx) },
		minInterval: cfg.ProxyMinSyncInterval,
	}.run(ctx)
}

// conntrackTimeouts sets the node's TCP conntrack timeouts as kube-proxy
// does by default: established entries live a day (not the kernel's five),
// and CLOSE_WAIT ones an hour, so that a half-closed connection through a
// Service is not forgotten while one side still writes.
func (p *svcProxy) conntrackTimeouts() {
	for key, v := range map[string]string{
		"net/netfilter/nf_conntrack_tcp_timeout_established": "86400",
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  "3600",
	} {
		if err := netns.Sysctl(p.a.cfg.NetNS, key, v); err != nil {
			p.a.cfg.Log.Warn("conntrack timeout", "sysctl", key, "err", err)
		}
	}
}

// idle reports whether every change seen so far is in the kernel.
func (p *svcProxy) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready.Load() && !p.syncing && len(p.dirty) == 0
}

// currentSelf describes this node for the renderer, from its Node object.
func (p *svcProxy) currentSelf() (proxy.Self, error) {
	cfg := p.a.cfg
	s := proxy.Self{Name: cfg.NodeName, ClusterCIDRs: cfg.ClusterCIDRs, NflogGroup: cfg.NflogGroup}
	objs, err := p.a.nodes()
	if err != nil {
		return s, err
	}
	for _, o := range objs {
		if o.Name != cfg.NodeName {
			continue
		}
		s.Zone = o.Labels[corev1.LabelTopologyZone]
		if n, err := k8s.Node(o); err == nil {
			s.NodeIPs = n.Addrs
		}
		return s, nil
	}
	return s, errors.New("own Node not in the API yet")
}

func (p *svcProxy) sync(ctx context.Context) error {
	m := p.a.metrics
	self, err := p.currentSelf()
	if err != nil {
		return err
	}
	p.mu.Lock()
	dirty, triggers := p.dirty, p.triggers
	p.dirty, p.triggers = map[string]bool{}, map[string]time.Time{}
	p.syncing = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.syncing = false
		p.mu.Unlock()
	}()
	t0 := time.Now()
	// A changed node (its zone, addresses) or a due full sync renders
	// every Service again: endpoint choice depends on the node.
	if p.self == nil || !reflect.DeepEqual(*p.self, self) || time.Since(p.lastFull) > p.a.cfg.ProxyFullSyncPeriod {
		p.backend.RequestFull()
		for _, k := range p.services.GetIndexer().ListKeys() {
			dirty[k] = true
		}
		for k := range p.used {
			dirty[k] = true
		}
	}
	changes := map[string]*proxy.Fragment{}
	nextUse := map[string]udpUse{}
	socks := map[string]bpfShare{}
	for key := range dirty {
		frag, use, hc, sock := p.render(self, key)
		changes[key] = frag
		nextUse[key] = use
		socks[key] = sock
		p.health.set(key, hc)
	}
	t1 := time.Now()
	st, err := p.backend.Sync(ctx, proxy.NewSkeleton(self), changes)
	if err != nil {
		// Put the work back: the next attempt is a full sync anyway.
		p.mu.Lock()
		for k := range dirty {
			p.dirty[k] = true
		}
		for k, t := range triggers {
			if old, ok := p.triggers[k]; !ok || t.Before(old) {
				p.triggers[k] = t
			}
		}
		p.mu.Unlock()
		m.proxySyncs.WithLabelValues("error").Inc()
		return err
	}
	if sock := p.a.sock; sock != nil {
		// After the rules: a Service the balancer starts to serve is
		// already reachable through them, and one it stops serving still
		// is.
		for key, fs := range socks {
			sock.set(key, fs.sock)
			sock.setNodePorts(key, fs.nodePorts)
		}
		if _, err := sock.sync(); err != nil {
			p.backend.RequestFull()
			p.mu.Lock()
			for k := range dirty {
				p.dirty[k] = true
			}
			p.mu.Unlock()
			m.proxySyncs.WithLabelValues("error").Inc()
			return fmt.Errorf("socket balancer: %w", err)
		}
	}
	now := time.Now()
	p.a.cfg.Log.Debug("service sync", "services", len(changes), "full", st.Full, "operations", st.Operations,
		"render", t1.Sub(t0).Round(time.Microsecond), "apply", now.Sub(t1).Round(time.Microsecond))
	m.proxySyncDuration.Observe(now.Sub(t0).Seconds())
	m.proxySyncs.WithLabelValues("success").Inc()
	for _, t := range triggers {
		m.programming.Observe(now.Sub(t).Seconds())
	}
	m.proxyChains.Set(float64(st.Chains))
	m.proxyRules.Set(float64(st.Rules))
	m.proxyElements.Set(float64(st.Elements))
	m.proxyServices.Set(float64(len(p.services.GetIndexer().ListKeys())))
	if st.Full {
		p.lastFull = now
		m.proxyFullSyncs.Inc()
	}
	p.self = &self
	// Slots the new rules no longer use are free for reuse, now that the
	// elements in them are gone from the kernel.
	for key, f := range changes {
		var now []string
		if f != nil {
			now = f.Slots
		}
		for _, id := range p.slotsOf[key] {
			if !slices.Contains(now, id) {
				p.slots.Release(id)
			}
		}
		if len(now) == 0 {
			delete(p.slotsOf, key)
		} else {
			p.slotsOf[key] = now
		}
	}
	// Conntrack entries for UDP go stale once the rules changed: clean up
	// after the new rules are in, so no new entry can re-form behind us.
	for key, use := range nextUse {
		p.ct.cleanup(p.used[key], use)
		if use.empty() {
			delete(p.used, key)
		} else {
			p.used[key] = use
		}
	}
	if !p.ready.Load() {
		p.a.cfg.Log.Info("services programmed", "services", len(dirty), "chains", st.Chains, "elements", st.Elements, "took", now.Sub(t0).Round(time.Millisecond))
	}
	p.ready.Store(true)
	return nil
}

// render computes one Service's fragment (nil: nothing to program), the
// UDP endpoints and addresses it serves, and its health check.
func (p *svcProxy) render(self proxy.Self, key string) (*proxy.Fragment, udpUse, healthCheck, bpfShare) {
	log := p.a.cfg.Log
	obj, exists, err := p.services.GetIndexer().GetByKey(key)
	if err != nil || !exists {
		return nil, udpUse{}, healthCheck{}, bpfShare{}
	}
	svc, err := k8s.Service(obj.(*corev1.Service))
	if err != nil {
		if !errors.Is(err, k8s.ErrNotProxied) {
			log.Warn("skipping service", "service", key, "err", err)
		}
		return nil, udpUse{}, healthCheck{}, bpfShare{}
	}
	objs, _ := p.slices.GetIndexer().ByIndex(sliceServiceIndex, key)
	slices := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		slices = append(slices, o.(*discoveryv1.EndpointSlice))
	}
	eps, errs := k8s.Endpoints(slices)
	for _, e := range errs {
		log.Warn("skipping endpoint", "service", key, "err", e)
	}
	frag, info := proxy.Render(self, svc, eps, p.slots)
	var hc healthCheck
	if svc.ExternalLocal && svc.HealthCheckNodePort != 0 {
		hc = healthCheck{port: svc.HealthCheckNodePort, name: svc.ServiceName, local: info.LocalEndpoints}
	}
	var share bpfShare
	if p.a.sock != nil {
		share.sock = proxy.SocketBackends(self, svc, eps)
		share.nodePorts = proxy.NodePortBackends(self, svc, eps)
	}
	return &frag, udpUsage(self, svc, eps), hc, share
}

// bpfShare is one Service's share of the eBPF dataplane: what the socket
// balancer and the tc balancer serve.
type bpfShare struct {
	sock      map[proxy.Frontend]proxy.SocketTarget
	nodePorts map[proxy.Frontend]proxy.NodePortTarget
}

// udpUse is what a Service's UDP ports send to and accept on.
type udpUse struct {
	endpoints map[netip.AddrPort]bool
	// vips are addresses and ports (node ports with an invalid address)
	// that had endpoints.
	vips map[netip.AddrPort]bool
}

func (u udpUse) empty() bool { return len(u.endpoints)+len(u.vips) == 0 }

func udpUsage(self proxy.Self, svc model.Service, eps map[model.PortKey][]model.Endpoint) udpUse {
	u := udpUse{endpoints: map[netip.AddrPort]bool{}, vips: map[netip.AddrPort]bool{}}
	for _, sp := range svc.Ports {
		if sp.Protocol != model.UDP {
			continue
		}
		cluster, local := proxy.Categorize(eps[model.PortKey{ServiceName: svc.ServiceName, Port: sp.Name, Protocol: sp.Protocol}], self)
		for _, e := range append(cluster, local...) {
			u.endpoints[netip.AddrPortFrom(e.Addr, e.Port)] = true
		}
		if len(cluster)+len(local) == 0 {
			continue
		}
		for _, a := range append(append(append([]netip.Addr{}, svc.ClusterIPs...), svc.ExternalIPs...), svc.LoadBalancerIPs...) {
			u.vips[netip.AddrPortFrom(a, sp.Port)] = true
		}
		if sp.NodePort != 0 {
			u.vips[netip.AddrPortFrom(netip.Addr{}, sp.NodePort)] = true
		}
	}
	return u
}

// serviceAt names the Service that owns a ClusterIP, external IP or
// load-balancer IP and port ("" if none).
func (p *svcProxy) serviceAt(a netip.Addr, port uint16, proto string) string {
	p.vipsMu.Lock()
	defer p.vipsMu.Unlock()
	if p.vips == nil || p.vipsDirty {
		p.vips = map[string]string{}
		for _, o := range p.services.GetStore().List() {
			s, err := k8s.Service(o.(*corev1.Service))
			if err != nil {
				continue
			}
			for _, ip := range append(append(append([]netip.Addr{}, s.ClusterIPs...), s.ExternalIPs...), s.LoadBalancerIPs...) {
				for _, sp := range s.Ports {
					p.vips[netip.AddrPortFrom(ip, sp.Port).String()+"/"+string(sp.Protocol)] = s.ServiceName.String()
				}
			}
			// Node ports, under the family's unspecified address: they
			// answer on every address of the node.
			for _, cip := range s.ClusterIPs {
				for _, sp := range s.Ports {
					if sp.NodePort != 0 {
						p.vips[netip.AddrPortFrom(proxy.Unspecified(cip), sp.NodePort).String()+"/"+string(sp.Protocol)] = s.ServiceName.String()
					}
				}
			}
		}
		p.vipsDirty = false
	}
	if name, ok := p.vips[netip.AddrPortFrom(a, port).String()+"/"+proto]; ok {
		return name
	}
	return p.vips[netip.AddrPortFrom(proxy.Unspecified(a), port).String()+"/"+proto]
}

// stripManagedFields is an informer transform: managed fields are a large
// share of each cached object, and the agent never reads them.
func stripManagedFields(o any) (any, error) {
	if m, ok := o.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return o, nil
}
