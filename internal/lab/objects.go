package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// Decode splits multi-document YAML (or JSON) into typed objects.
func Decode(data []byte) ([]runtime.Object, error) {
	var out []runtime.Object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || bytes.Equal(bytes.TrimSpace(doc), []byte("---")) {
			continue
		}
		obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		switch obj.(type) {
		case *corev1.Namespace, *corev1.Pod, *corev1.Service, *networkingv1.NetworkPolicy, *discoveryv1.EndpointSlice:
		default:
			return nil, fmt.Errorf("document %d: kind %s is not supported by the lab (Namespace, Pod, Service, EndpointSlice, NetworkPolicy)", i, gvk.Kind)
		}
		out = append(out, obj)
	}
}

func nsDefault(m *metav1.ObjectMeta) {
	if m.Namespace == "" {
		m.Namespace = "default"
	}
}

// Apply creates or updates objects, in order. Pods without spec.nodeName
// are spread over the nodes; Services get ClusterIPs from the lab when the
// control plane is embedded (a real apiserver allocates its own). With
// wait, Apply returns once every applied pod is running.
func (l *Lab) Apply(ctx context.Context, objs []runtime.Object, wait bool) ([]string, error) {
	var done []string
	var pods []string
	for _, o := range objs {
		var err error
		var what string
		switch x := o.(type) {
		case *corev1.Namespace:
			what = "namespace/" + x.Name
			err = l.applyNamespace(ctx, x)
		case *corev1.Pod:
			nsDefault(&x.ObjectMeta)
			what = "pod/" + x.Namespace + "/" + x.Name
			err = l.applyPod(ctx, x)
			pods = append(pods, x.Namespace+"/"+x.Name)
		case *corev1.Service:
			nsDefault(&x.ObjectMeta)
			what = "service/" + x.Namespace + "/" + x.Name
			err = l.applyService(ctx, x)
		case *networkingv1.NetworkPolicy:
			nsDefault(&x.ObjectMeta)
			what = "networkpolicy/" + x.Namespace + "/" + x.Name
			err = l.applyPolicy(ctx, x)
		case *discoveryv1.EndpointSlice:
			nsDefault(&x.ObjectMeta)
			what = "endpointslice/" + x.Namespace + "/" + x.Name
			err = l.applySlice(ctx, x)
		}
		if err != nil {
			return done, fmt.Errorf("%s: %w", what, err)
		}
		done = append(done, what)
	}
	if wait {
		if err := l.waitPods(ctx, pods, true); err != nil {
			return done, err
		}
		return done, l.waitServices(ctx, pods, objs)
	}
	return done, nil
}

// waitServices returns once every node's service proxy has programmed
// what the applied objects changed: the pods' readiness is in the
// informer, the EndpointSlices are written, and every agent's proxy has
// no change pending. Without it a probe right after apply could race the
// proxies by a few hundred milliseconds.
func (l *Lab) waitServices(ctx context.Context, pods []string, objs []runtime.Object) error {
	deadline := time.Now().Add(15 * time.Second)
	indexer := l.factory.Core().V1().Pods().Informer().GetIndexer()
	for _, k := range pods {
		for {
			obj, ok, _ := indexer.GetByKey(k)
			if !ok || podReady(obj.(*corev1.Pod)) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pod %s not ready in the API after 15s", k)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	namespaces := map[string]bool{}
	for _, o := range objs {
		if m, ok := o.(metav1.Object); ok && m.GetNamespace() != "" {
			namespaces[m.GetNamespace()] = true
		}
	}
	for ns := range namespaces {
		if err := l.syncEndpoints(ctx, ns); err != nil {
			return err
		}
	}
	return l.waitAgents(ctx, deadline)
}

// waitAgents gives the API writes time to reach the agents' informers,
// then waits until every agent's proxy and policy loops are idle.
func (l *Lab) waitAgents(ctx context.Context, deadline time.Time) error {
	time.Sleep(200 * time.Millisecond)
	for _, n := range l.nodes {
		for !n.agent.Idle() {
			if time.Now().After(deadline) {
				return fmt.Errorf("node %s: services and policies not programmed after 15s (see %s)", n.name, LogPath(l.opt.Name))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

func (l *Lab) applyNamespace(ctx context.Context, n *corev1.Namespace) error {
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels["kubernetes.io/metadata.name"] = n.Name
	api := l.client.CoreV1().Namespaces()
	old, err := api.Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, n, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	old.Labels = n.Labels
	_, err = api.Update(ctx, old, metav1.UpdateOptions{})
	return err
}

func (l *Lab) applyPod(ctx context.Context, p *corev1.Pod) error {
	if err := l.ensureNamespace(ctx, p.Namespace); err != nil {
		return err
	}
	api := l.client.CoreV1().Pods(p.Namespace)
	old, err := api.Get(ctx, p.Name, metav1.GetOptions{})
	if err == nil {
		// Most of a pod is immutable; labels and annotations are what
		// users change, and what policies and services select on.
		old.Labels, old.Annotations = p.Labels, p.Annotations
		_, err = api.Update(ctx, old, metav1.UpdateOptions{})
		return err
	}
	if !apierrors.IsNotFound(err) {
		return err
	}
	if p.Spec.NodeName == "" {
		l.mu.Lock()
		p.Spec.NodeName = l.nodes[l.nextNode%len(l.nodes)].name
		l.nextNode++
		l.mu.Unlock()
	} else if l.node(p.Spec.NodeName) == nil {
		return fmt.Errorf("spec.nodeName %q is not a node of this lab", p.Spec.NodeName)
	}
	if p.UID == "" {
		p.UID = newUID()
	}
	_, err = api.Create(ctx, p, metav1.CreateOptions{})
	return err
}

func (l *Lab) applyService(ctx context.Context, s *corev1.Service) error {
	if err := l.ensureNamespace(ctx, s.Namespace); err != nil {
		return err
	}
	api := l.client.CoreV1().Services(s.Namespace)
	old, err := api.Get(ctx, s.Name, metav1.GetOptions{})
	if err == nil {
		s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.IPFamilies = old.Spec.ClusterIP, old.Spec.ClusterIPs, old.Spec.IPFamilies
		s.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, s, metav1.UpdateOptions{})
		return err
	}
	if !apierrors.IsNotFound(err) {
		return err
	}
	if l.embedded {
		if err := l.allocateClusterIPs(ctx, s); err != nil {
			return err
		}
		if err := l.allocateNodePorts(ctx, s); err != nil {
			return err
		}
	}
	_, err = api.Create(ctx, s, metav1.CreateOptions{})
	return err
}

func (l *Lab) applyPolicy(ctx context.Context, p *networkingv1.NetworkPolicy) error {
	if err := l.ensureNamespace(ctx, p.Namespace); err != nil {
		return err
	}
	api := l.client.NetworkingV1().NetworkPolicies(p.Namespace)
	old, err := api.Get(ctx, p.Name, metav1.GetOptions{})
	if err == nil {
		p.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, p, metav1.UpdateOptions{})
		return err
	}
	if !apierrors.IsNotFound(err) {
		return err
	}
	_, err = api.Create(ctx, p, metav1.CreateOptions{})
	return err
}

// Service ranges of the embedded control plane.
var (
	serviceRange4 = netip.MustParsePrefix("10.96.0.0/16")
	serviceRange6 = netip.MustParsePrefix("fd00:10:96::/112")
)

// allocateClusterIPs plays the apiserver's ClusterIP allocator: families
// follow the Service's ipFamilyPolicy and the lab's families.
func (l *Lab) allocateClusterIPs(ctx context.Context, s *corev1.Service) error {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	if s.Spec.Type == "" {
		s.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if len(s.Spec.IPFamilies) == 0 {
		switch {
		case l.opt.Family == IPv6:
			s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
		case l.opt.Family == Dual && s.Spec.IPFamilyPolicy != nil && *s.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack:
			s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
		default:
			s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		}
	}
	if s.Spec.ClusterIP == corev1.ClusterIPNone {
		s.Spec.ClusterIPs = []string{corev1.ClusterIPNone}
		return nil
	}
	existing, err := l.client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	used := map[netip.Addr]bool{}
	for _, e := range existing.Items {
		for _, ip := range e.Spec.ClusterIPs {
			if a, err := netip.ParseAddr(ip); err == nil {
				used[a] = true
			}
		}
	}
	s.Spec.ClusterIPs = nil
	for _, fam := range s.Spec.IPFamilies {
		r := serviceRange4
		if fam == corev1.IPv6Protocol {
			r = serviceRange6
		}
		a := r.Addr().Next() // the first address belongs to the kubernetes Service
		for used[a] || a == r.Addr().Next() {
			a = a.Next()
			if !r.Contains(a) {
				return fmt.Errorf("service range %s exhausted", r)
			}
		}
		used[a] = true
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, a.String())
	}
	s.Spec.ClusterIP = s.Spec.ClusterIPs[0]
	return nil
}

// Delete removes objects. Pods are deleted at once (grace period 0), as
// there is no container to stop gracefully.
func (l *Lab) Delete(ctx context.Context, objs []runtime.Object) ([]string, error) {
	var done, pods []string
	zero := int64(0)
	for _, o := range objs {
		var err error
		var what string
		switch x := o.(type) {
		case *corev1.Namespace:
			what = "namespace/" + x.Name
			err = l.client.CoreV1().Namespaces().Delete(ctx, x.Name, metav1.DeleteOptions{})
		case *corev1.Pod:
			nsDefault(&x.ObjectMeta)
			what = "pod/" + x.Namespace + "/" + x.Name
			err = l.client.CoreV1().Pods(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
			pods = append(pods, x.Namespace+"/"+x.Name)
		case *corev1.Service:
			nsDefault(&x.ObjectMeta)
			what = "service/" + x.Namespace + "/" + x.Name
			err = l.client.CoreV1().Services(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
		case *networkingv1.NetworkPolicy:
			nsDefault(&x.ObjectMeta)
			what = "networkpolicy/" + x.Namespace + "/" + x.Name
			err = l.client.NetworkingV1().NetworkPolicies(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
		case *discoveryv1.EndpointSlice:
			nsDefault(&x.ObjectMeta)
			what = "endpointslice/" + x.Namespace + "/" + x.Name
			err = l.client.DiscoveryV1().EndpointSlices(x.Namespace).Delete(ctx, x.Name, metav1.DeleteOptions{})
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return done, fmt.Errorf("%s: %w", what, err)
		}
		done = append(done, what)
	}
	if err := l.waitPods(ctx, pods, false); err != nil {
		return done, err
	}
	return done, l.waitAgents(ctx, time.Now().Add(15*time.Second))
}

// applySlice creates or updates a hand-made EndpointSlice, as for a
// Service without a selector. The lab's controller leaves such slices
// alone: it manages only its own (managed-by podnet-lab).
func (l *Lab) applySlice(ctx context.Context, es *discoveryv1.EndpointSlice) error {
	if es.Labels[discoveryv1.LabelManagedBy] == managedBy {
		return fmt.Errorf("the lab's controller owns slices labelled %s=%s", discoveryv1.LabelManagedBy, managedBy)
	}
	api := l.client.DiscoveryV1().EndpointSlices(es.Namespace)
	old, err := api.Get(ctx, es.Name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, es, metav1.UpdateOptions{})
		return err
	}
	if !apierrors.IsNotFound(err) {
		return err
	}
	_, err = api.Create(ctx, es, metav1.CreateOptions{})
	return err
}

// waitPods waits until each named pod has (running) or has no (!running)
// sandbox.
func (l *Lab) waitPods(ctx context.Context, keys []string, running bool) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var missing []string
		l.mu.Lock()
		for _, k := range keys {
			if _, ok := l.sandboxes[k]; ok != running {
				missing = append(missing, k)
			}
		}
		l.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			state := "running"
			if !running {
				state = "gone"
			}
			return fmt.Errorf("pods not %s after 60s: %v (see %s)", state, missing, LogPath(l.opt.Name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// allocateNodePorts gives NodePort and LoadBalancer Services the node ports
// (and, under externalTrafficPolicy: Local, the health check node port)
// that they leave unset, from 30000-32767, as the apiserver does.
func (l *Lab) allocateNodePorts(ctx context.Context, s *corev1.Service) error {
	if s.Spec.Type != corev1.ServiceTypeNodePort && s.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return nil
	}
	existing, err := l.client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	used := map[int32]bool{}
	for _, o := range existing.Items {
		for _, p := range o.Spec.Ports {
			used[p.NodePort] = true
		}
		used[o.Spec.HealthCheckNodePort] = true
	}
	for _, p := range s.Spec.Ports {
		used[p.NodePort] = true
	}
	next := func() (int32, error) {
		for p := int32(30000); p <= 32767; p++ {
			if !used[p] {
				used[p] = true
				return p, nil
			}
		}
		return 0, fmt.Errorf("service %s/%s: no free node port", s.Namespace, s.Name)
	}
	for i := range s.Spec.Ports {
		if s.Spec.Ports[i].NodePort == 0 {
			if s.Spec.Ports[i].NodePort, err = next(); err != nil {
				return err
			}
		}
	}
	if s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && s.Spec.HealthCheckNodePort == 0 {
		s.Spec.HealthCheckNodePort, err = next()
	}
	return err
}
