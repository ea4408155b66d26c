package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Pod range allocation for clusters whose controller-manager does not
// assign Node.spec.podCIDRs (no --allocate-node-cidrs).
//
// Agents race for blocks of the cluster range. Writing a Node is no lock:
// two agents writing their own Nodes never conflict, so both could take the
// same block. Instead each block is claimed by creating a Lease named after
// it; the apiserver lets exactly one create succeed. The winner then
// records the block in its Node's spec.podCIDRs, where every other
// component (kube-proxy's NodeCIDR mode included) expects it. A restarted
// agent finds its own Leases again, and Leases whose holder Node is gone
// are released by whichever agent notices.

// BlockAllocator claims per-node pod ranges.
type BlockAllocator struct {
	Client    kubernetes.Interface
	Namespace string
	// Clusters are the cluster ranges, at most one per family, and
	// MaskSizes the block size per family (index: 0 IPv4, 1 IPv6).
	Clusters  []netip.Prefix
	MaskSizes [2]int
}

const leasePrefix = "podnet-block-"

// LeaseName names the Lease that claims block.
// IPv6 blocks use the expanded form, so that no two blocks share a name.
func LeaseName(block netip.Prefix) string {
	a := block.Addr().String()
	if block.Addr().Is6() {
		a = block.Addr().StringExpanded()
	}
	return leasePrefix + strings.NewReplacer(".", "-", ":", "-").Replace(a) + "-" + fmt.Sprint(block.Bits())
}

// Ensure makes sure node has a pod range from every cluster range, and
// returns the node's ranges.
func (b *BlockAllocator) Ensure(ctx context.Context, node string) ([]string, error) {
	n, err := b.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if len(n.Spec.PodCIDRs) > 0 {
		return n.Spec.PodCIDRs, nil
	}
	var blocks []string
	for _, c := range b.Clusters {
		blk, err := b.claim(ctx, node, c)
		if err != nil {
			return nil, err
		}
		blocks = append(blocks, blk.String())
	}
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%s]}}`, blocks[0], quoteJoin(blocks))
	if _, err := b.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return nil, fmt.Errorf("record pod ranges on node %s: %w", node, err)
	}
	return blocks, nil
}

func quoteJoin(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ",")
}

func (b *BlockAllocator) maskFor(c netip.Prefix) int {
	if c.Addr().Is4() {
		return b.MaskSizes[0]
	}
	return b.MaskSizes[1]
}

// claim returns a block of cluster that node holds, claiming a free one if
// it holds none.
func (b *BlockAllocator) claim(ctx context.Context, node string, cluster netip.Prefix) (netip.Prefix, error) {
	mask := b.maskFor(cluster)
	if mask < cluster.Bits() || mask > cluster.Addr().BitLen()-2 {
		return netip.Prefix{}, fmt.Errorf("block size /%d does not fit cluster range %s", mask, cluster)
	}
	leases, err := b.Client.CoordinationV1().Leases(b.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list leases: %w", err)
	}
	nodes, err := b.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return netip.Prefix{}, err
	}
	taken := map[string]bool{}
	for _, l := range leases.Items {
		if !strings.HasPrefix(l.Name, leasePrefix) {
			continue
		}
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == node && l.Annotations[blockAnnotation] != "" {
			if p, err := netip.ParsePrefix(l.Annotations[blockAnnotation]); err == nil && cluster.Contains(p.Addr()) {
				return p, nil // ours, from before a restart
			}
		}
		taken[l.Name] = true
	}
	for _, n := range nodes.Items {
		for _, c := range n.Spec.PodCIDRs {
			if p, err := netip.ParsePrefix(c); err == nil {
				taken[LeaseName(p.Masked())] = true
			}
		}
	}
	size := uint64(1) << uint(mask-cluster.Bits())
	if size > 1<<20 {
		size = 1 << 20
	}
	blk := netip.PrefixFrom(cluster.Masked().Addr(), mask)
	for i := uint64(0); i < size; i++ {
		if !taken[LeaseName(blk)] {
			lease := &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: LeaseName(blk), Namespace: b.Namespace,
					Annotations: map[string]string{blockAnnotation: blk.String()},
					Labels:      map[string]string{"app.kubernetes.io/managed-by": "podnet"}},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &node},
			}
			_, err := b.Client.CoordinationV1().Leases(b.Namespace).Create(ctx, lease, metav1.CreateOptions{})
			if err == nil {
				return blk, nil
			}
			if !apierrors.IsAlreadyExists(err) {
				return netip.Prefix{}, fmt.Errorf("claim %s: %w", blk, err)
			}
			// Someone else won this one; try the next.
		}
		next, ok := nextBlock(blk)
		if !ok || !cluster.Contains(next.Addr()) {
			break
		}
		blk = next
	}
	return netip.Prefix{}, fmt.Errorf("cluster range %s has no free /%d block", cluster, mask)
}

const blockAnnotation = "podnet.io/block"

// nextBlock returns the block of the same size that follows p.
func nextBlock(p netip.Prefix) (netip.Prefix, bool) {
	b := p.Addr().AsSlice()
	bit := p.Bits() - 1
	for i := bit; i >= 0; i-- {
		byteI, mask := i/8, byte(0x80>>(i%8))
		if b[byteI]&mask == 0 {
			b[byteI] |= mask
			a, _ := netip.AddrFromSlice(b)
			return netip.PrefixFrom(a, p.Bits()), true
		}
		b[byteI] &^= mask
	}
	return netip.Prefix{}, false
}

// ReleaseOrphans deletes block Leases whose holder Node no longer exists.
func (b *BlockAllocator) ReleaseOrphans(ctx context.Context, nodes []*corev1.Node) (int, error) {
	live := map[string]bool{}
	for _, n := range nodes {
		live[n.Name] = true
	}
	leases, err := b.Client.CoordinationV1().Leases(b.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=podnet"})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range leases.Items {
		if !strings.HasPrefix(l.Name, leasePrefix) || l.Spec.HolderIdentity == nil || live[*l.Spec.HolderIdentity] {
			continue
		}
		err := b.Client.CoordinationV1().Leases(b.Namespace).Delete(ctx, l.Name, metav1.DeleteOptions{})
		if err == nil {
			n++
		} else if !apierrors.IsNotFound(err) {
			return n, err
		}
	}
	return n, nil
}
