// Package netpol computes what NetworkPolicy allows: for explanation, a
// pure decision per connection (Decide), and for the dataplane, the
// desired nftables state of one node (Compile). Both read the same World,
// so what `podnet policy explain` says is what the kernel enforces.
package netpol

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/podnet/podnet/internal/model"
)

// World is everything policy depends on: pods, namespaces and policies.
// Build one with NewWorld; it is read-only afterwards.
type World struct {
	Pods       []model.PolicyPod
	Namespaces map[string]model.PolicyNamespace
	Policies   []model.Policy

	podsByNS   map[string][]int
	policiesNS map[string][]int
	byIP       map[netip.Addr]int
}

// NewWorld indexes pods and policies by namespace and pods by address.
// Policies are ordered by name, so explanations and group contents are
// stable.
func NewWorld(pods []model.PolicyPod, nss []model.PolicyNamespace, pols []model.Policy) *World {
	// Sorted pods make every derived list (peers, grants) come out in the
	// same order for the same world, which the compiler's cache relies on.
	pods = slices.Clone(pods)
	slices.SortFunc(pods, func(a, b model.PolicyPod) int {
		if a.Namespace != b.Namespace {
			return strings.Compare(a.Namespace, b.Namespace)
		}
		return strings.Compare(a.Name, b.Name)
	})
	w := &World{Pods: pods, Namespaces: map[string]model.PolicyNamespace{}, Policies: slices.Clone(pols),
		podsByNS: map[string][]int{}, policiesNS: map[string][]int{}, byIP: map[netip.Addr]int{}}
	for _, n := range nss {
		w.Namespaces[n.Name] = n
	}
	slices.SortFunc(w.Policies, func(a, b model.Policy) int {
		if a.Namespace != b.Namespace {
			return strings.Compare(a.Namespace, b.Namespace)
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i, p := range pods {
		w.podsByNS[p.Namespace] = append(w.podsByNS[p.Namespace], i)
		for _, ip := range p.IPs {
			w.byIP[ip] = i
		}
	}
	for i, p := range w.Policies {
		w.policiesNS[p.Namespace] = append(w.policiesNS[p.Namespace], i)
	}
	return w
}

// PodByIP finds the pod that holds an address.
func (w *World) PodByIP(a netip.Addr) (model.PolicyPod, bool) {
	i, ok := w.byIP[a.Unmap()]
	if !ok {
		return model.PolicyPod{}, false
	}
	return w.Pods[i], true
}

// PodByName finds a pod by namespace and name.
func (w *World) PodByName(ns, name string) (model.PolicyPod, bool) {
	for _, i := range w.podsByNS[ns] {
		if w.Pods[i].Name == name {
			return w.Pods[i], true
		}
	}
	return model.PolicyPod{}, false
}

// isolating returns the policies that select pod and isolate it in the
// given direction.
func (w *World) isolating(pod model.PolicyPod, ingress bool) []*model.Policy {
	var out []*model.Policy
	for _, i := range w.policiesNS[pod.Namespace] {
		p := &w.Policies[i]
		if (ingress && !p.Ingress) || (!ingress && !p.Egress) {
			continue
		}
		if p.Pods.Matches(pod.Labels) {
			out = append(out, p)
		}
	}
	return out
}

// peerNamespaces lists the namespaces a selector peer draws pods from.
func (w *World) peerNamespaces(pol *model.Policy, peer model.PolicyPeer) []string {
	if peer.Namespaces == nil {
		return []string{pol.Namespace}
	}
	var out []string
	for name, ns := range w.Namespaces {
		if peer.Namespaces.Matches(ns.Labels) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// peerPods lists the pods a selector peer selects.
func (w *World) peerPods(pol *model.Policy, peer model.PolicyPeer) []int {
	var out []int
	for _, ns := range w.peerNamespaces(pol, peer) {
		for _, i := range w.podsByNS[ns] {
			if peer.Pods == nil || peer.Pods.Matches(w.Pods[i].Labels) {
				out = append(out, i)
			}
		}
	}
	return out
}

// peerMatches reports whether a peer admits the remote end of a
// connection: its address, and the pod holding it if any.
func (w *World) peerMatches(pol *model.Policy, peer model.PolicyPeer, addr netip.Addr, pod *model.PolicyPod) bool {
	if peer.Block != nil {
		if !peer.Block.CIDR.Contains(addr) {
			return false
		}
		for _, e := range peer.Block.Except {
			if e.Contains(addr) {
				return false
			}
		}
		return true
	}
	if pod == nil {
		return false
	}
	if peer.Namespaces == nil {
		if pod.Namespace != pol.Namespace {
			return false
		}
	} else {
		ns, ok := w.Namespaces[pod.Namespace]
		if !ok || !peer.Namespaces.Matches(ns.Labels) {
			return false
		}
	}
	return peer.Pods == nil || peer.Pods.Matches(pod.Labels)
}
