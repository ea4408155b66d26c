package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

type workQueue = workqueue.TypedRateLimitingInterface[string]

const managedBy = "podnet-lab"

func newQueue() workQueue {
	return workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
}

// startControllers runs the lab's kubelet and EndpointSlice controller.
func (l *Lab) startControllers(ctx context.Context) error {
	l.factory = newFactory(l.client)
	pods := l.factory.Core().V1().Pods().Informer()
	svcs := l.factory.Core().V1().Services().Informer()
	slices := l.factory.Discovery().V1().EndpointSlices().Informer()

	podQ, epQ := newQueue(), newQueue()
	pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { podQ.Add(keyOf(o)); epQ.Add(nsOf(o)) },
		UpdateFunc: func(_, o any) { podQ.Add(keyOf(o)); epQ.Add(nsOf(o)) },
		DeleteFunc: func(o any) { podQ.Add(keyOf(o)); epQ.Add(nsOf(o)) },
	})
	nsHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { epQ.Add(nsOf(o)) },
		UpdateFunc: func(_, o any) { epQ.Add(nsOf(o)) },
		DeleteFunc: func(o any) { epQ.Add(nsOf(o)) },
	}
	svcs.AddEventHandler(nsHandler)
	slices.AddEventHandler(nsHandler)
	l.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), pods.HasSynced, svcs.HasSynced, slices.HasSynced) {
		return fmt.Errorf("lab: informers did not sync")
	}
	logErr := func(what string) func(string, error) {
		return func(key string, err error) { l.log.Warn(what+" failed, will retry", "key", key, "err", err) }
	}
	runQueue(ctx, podQ, 4, l.syncPod, logErr("pod sync"))
	runQueue(ctx, epQ, 1, l.syncEndpoints, logErr("endpointslice sync"))
	return nil
}

func nsOf(o any) string {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	if m, ok := o.(metav1.Object); ok {
		return m.GetNamespace()
	}
	return ""
}

// syncEndpoints makes the EndpointSlices of every Service in a namespace
// match its selector and the pods' readiness, as the EndpointSlice
// controller does.
func (l *Lab) syncEndpoints(ctx context.Context, ns string) error {
	svcs, err := l.factory.Core().V1().Services().Lister().Services(ns).List(labels.Everything())
	if err != nil {
		return err
	}
	pods, err := l.factory.Core().V1().Pods().Lister().Pods(ns).List(labels.Everything())
	if err != nil {
		return err
	}
	existing, err := l.factory.Discovery().V1().EndpointSlices().Lister().EndpointSlices(ns).List(
		labels.SelectorFromSet(labels.Set{discoveryv1.LabelManagedBy: managedBy}))
	if err != nil {
		return err
	}
	zones := map[string]string{}
	for _, n := range l.nodes {
		zones[n.name] = zoneOf(n.index)
	}
	want := map[string]*discoveryv1.EndpointSlice{}
	for _, s := range svcs {
		for _, es := range DesiredSlices(s, pods, zones) {
			want[es.Name] = es
		}
	}
	have := map[string]*discoveryv1.EndpointSlice{}
	for _, es := range existing {
		have[es.Name] = es
	}
	api := l.client.DiscoveryV1().EndpointSlices(ns)
	// The proxy measures network programming latency from this stamp.
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for name, es := range want {
		es.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: now}
		old, ok := have[name]
		switch {
		case !ok:
			if _, err := api.Create(ctx, es, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		case !sameSlice(old, es):
			es.ResourceVersion = old.ResourceVersion
			if _, err := api.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
				return err
			}
		}
	}
	for name := range have {
		if _, ok := want[name]; !ok {
			if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	return nil
}

func sameSlice(a, b *discoveryv1.EndpointSlice) bool {
	return equality.Semantic.DeepEqual(a.Endpoints, b.Endpoints) &&
		equality.Semantic.DeepEqual(a.Ports, b.Ports) &&
		equality.Semantic.DeepEqual(a.Labels, b.Labels)
}

// portsSignature identifies a resolved port list by value.
func portsSignature(ports []discoveryv1.EndpointPort) string {
	var b strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&b, "%s/%d/%s;", *p.Name, *p.Port, *p.Protocol)
	}
	return b.String()
}

// DesiredSlices computes the EndpointSlices of one Service: one group per
// address family and per set of resolved ports (a named targetPort may
// resolve to different numbers on different pods). Services without a
// selector, and ExternalName Services, get none: their slices are someone
// else's.
//
// zones maps node names to their zones. Endpoints carry their zone, and
// with trafficDistribution: PreferClose a hint for it, as the upstream
// controller gives them.
func DesiredSlices(svc *corev1.Service, pods []*corev1.Pod, zones map[string]string) []*discoveryv1.EndpointSlice {
	preferClose := svc.Spec.TrafficDistribution != nil && *svc.Spec.TrafficDistribution == corev1.ServiceTrafficDistributionPreferClose
	if svc.Spec.Type == corev1.ServiceTypeExternalName || len(svc.Spec.Selector) == 0 {
		return nil
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	families := svc.Spec.IPFamilies
	if len(families) == 0 {
		families = []corev1.IPFamily{corev1.IPv4Protocol}
	}
	var out []*discoveryv1.EndpointSlice
	for _, fam := range families {
		type group struct {
			ports []discoveryv1.EndpointPort
			eps   []discoveryv1.Endpoint
		}
		groups := map[string]*group{}
		sorted := append([]*corev1.Pod(nil), pods...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
		for _, p := range sorted {
			if !sel.Matches(labels.Set(p.Labels)) || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			ip := podIP(p, fam)
			if ip == "" {
				continue
			}
			ports := resolvePorts(svc, p)
			sig := portsSignature(ports)
			g := groups[sig]
			if g == nil {
				g = &group{ports: ports}
				groups[sig] = g
			}
			ready := podReady(p) && p.DeletionTimestamp == nil
			terminating := p.DeletionTimestamp != nil
			serving := podReady(p)
			node := p.Spec.NodeName
			e := discoveryv1.Endpoint{
				Addresses:  []string{ip},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
				NodeName:   &node,
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID},
			}
			if z, ok := zones[node]; ok {
				e.Zone = &z
				if preferClose {
					e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: z}}}
				}
			}
			g.eps = append(g.eps, e)
		}
		if len(groups) == 0 {
			groups[""] = &group{ports: resolvePorts(svc, nil)}
		}
		for sig, g := range groups {
			sum := sha256.Sum256([]byte(sig))
			at := discoveryv1.AddressTypeIPv4
			if fam == corev1.IPv6Protocol {
				at = discoveryv1.AddressTypeIPv6
			}
			out = append(out, &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Name:      fmt.Sprintf("%s-%s-%s", svc.Name, strings.ToLower(string(at)), hex.EncodeToString(sum[:])[:6]),
					Namespace: svc.Namespace,
					Labels: map[string]string{
						discoveryv1.LabelServiceName: svc.Name,
						discoveryv1.LabelManagedBy:   managedBy,
					},
				},
				AddressType: at,
				Endpoints:   g.eps,
				Ports:       g.ports,
			})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func podIP(p *corev1.Pod, fam corev1.IPFamily) string {
	for _, ip := range p.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			continue
		}
		if a.Is4() == (fam == corev1.IPv4Protocol) {
			return a.String()
		}
	}
	return ""
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// resolvePorts maps each Service port to the pod's port. A named
// targetPort the pod does not declare leaves that port out for this pod,
// as Kubernetes does. With no pod, only numeric target ports resolve.
func resolvePorts(svc *corev1.Service, p *corev1.Pod) []discoveryv1.EndpointPort {
	var out []discoveryv1.EndpointPort
	for _, sp := range svc.Spec.Ports {
		proto := sp.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		var port int32
		switch {
		case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
			if p == nil {
				continue
			}
			port = namedPort(p, sp.TargetPort.StrVal, proto)
		case sp.TargetPort.IntVal != 0:
			port = sp.TargetPort.IntVal
		default:
			port = sp.Port
		}
		if port == 0 {
			continue
		}
		name := sp.Name
		out = append(out, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto, AppProtocol: sp.AppProtocol})
	}
	return out
}

func namedPort(p *corev1.Pod, name string, proto corev1.Protocol) int32 {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			cpProto := cp.Protocol
			if cpProto == "" {
				cpProto = corev1.ProtocolTCP
			}
			if cp.Name == name && cpProto == proto {
				return cp.ContainerPort
			}
		}
	}
	return 0
}
