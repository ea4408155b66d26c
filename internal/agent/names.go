package agent

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// names turns addresses into the names people use: "namespace/pod" for a
// pod's address, "node/NAME" for a node's. It is backed by one pod
// informer, which NetworkPolicy shares.
type names struct {
	a    *Agent
	pods cache.SharedIndexInformer
}

const podIPIndex = "ip"

func newNames(a *Agent) *names {
	f := informers.NewSharedInformerFactory(a.cfg.Client, 0)
	pods := f.Core().V1().Pods().Informer()
	_ = pods.SetTransform(stripManagedFields)
	_ = pods.AddIndexers(cache.Indexers{podIPIndex: func(o any) ([]string, error) {
		p, ok := o.(*corev1.Pod)
		if !ok || p.Spec.HostNetwork {
			return nil, nil
		}
		var ips []string
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		return ips, nil
	}})
	return &names{a: a, pods: pods}
}

func (n *names) name(addr netip.Addr) string {
	if n == nil || !addr.IsValid() {
		return ""
	}
	if objs, err := n.pods.GetIndexer().ByIndex(podIPIndex, addr.String()); err == nil {
		for _, o := range objs {
			p := o.(*corev1.Pod)
			if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				return p.Namespace + "/" + p.Name
			}
		}
	}
	if n.a.nodes == nil {
		return ""
	}
	nodes, err := n.a.nodes()
	if err != nil {
		return ""
	}
	for _, node := range nodes {
		for _, na := range node.Status.Addresses {
			if na.Address == addr.String() {
				return "node/" + node.Name
			}
		}
	}
	return ""
}
