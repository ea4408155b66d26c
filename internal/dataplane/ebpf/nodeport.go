package ebpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
)

// NodePort is the tc balancer of bpf/nodeport.c: a TCX ingress program on
// the node's uplink that sets up the first packet of a connection to a
// node port, an external IP or a load-balancer IP as a conntrack entry
// with its NAT, which the kernel then applies. Its maps and links are
// pinned next to the socket balancer's, so a restart disturbs nothing.
//
// The kernel applies a conntrack entry's NAT only where NAT hooks are
// registered, that is, where some nftables NAT chain exists: the proxy's
// table provides them under both dataplanes.
type NodePort struct {
	objs   nodeportObjects
	pinDir string
	links  map[string]link.Link // by device name

	// committed is what the maps hold; an entry read back from a previous
	// agent has no target, so the first Sync rewrites it.
	committed map[Frontend]npEntry
	next      uint32
	// garbage are backend sets no frontend points at any more, deleted
	// once a Sync has completed (a failed one leaves them for the next).
	garbage []npEntry
}

type npEntry struct {
	target    *proxy.NodePortTarget
	id, local uint32
}

// OpenNodePort loads the program, reusing the maps pinned in pinDir.
func OpenNodePort(pinDir string) (*NodePort, error) {
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	n := &NodePort{pinDir: pinDir, committed: map[Frontend]npEntry{}, links: map[string]link.Link{}}
	opts := &cebpf.CollectionOptions{Maps: cebpf.MapOptions{PinPath: pinDir}}
	err := loadNodeportObjects(&n.objs, opts)
	if errors.Is(err, cebpf.ErrMapIncompatible) {
		// Pins of an older layout: drop them. Until the maps are filled
		// again the nftables rules serve every entry point.
		n.unpinMaps()
		err = loadNodeportObjects(&n.objs, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("load node port balancer: %w", err)
	}
	var k nodeportNpKey
	var v nodeportNpVal
	it := n.objs.PodnetNpFrontends.Iterate()
	for it.Next(&k, &v) {
		f := Frontend{Addr: fromWords(k.Addr), Port: netOrder(k.Port), Protocol: protoName(k.Proto)}
		n.committed[f] = npEntry{id: v.Id, local: v.LocalId}
		n.next = max(n.next, v.Id+1, v.LocalId+1)
	}
	if err := it.Err(); err != nil {
		n.Close()
		return nil, fmt.Errorf("read node port frontends: %w", err)
	}
	return n, nil
}

func (n *NodePort) mapsPinned() []string {
	var out []string
	for _, name := range []string{"podnet_np_frontends", "podnet_np_backends", "podnet_np_node_addrs", "podnet_np_cluster", "podnet_np_counters", "podnet_np_drops", "podnet_np_affinity"} {
		out = append(out, filepath.Join(n.pinDir, name))
	}
	return out
}

func (n *NodePort) unpinMaps() {
	for _, p := range n.mapsPinned() {
		os.Remove(p)
	}
}

// Attach puts the program on the ingress of device ifname in the network
// namespace at nsPath ("" for the current one), or swaps it into the link
// a previous agent pinned there for that same device.
func (n *NodePort) Attach(nsPath, ifname string) error {
	in := func(fn func() error) error {
		if nsPath == "" {
			return fn()
		}
		return netns.Do(nsPath, fn)
	}
	var ifindex int
	if err := in(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err == nil {
			ifindex = ifc.Index
		}
		return err
	}); err != nil {
		return fmt.Errorf("attach node port balancer to %s: %w", ifname, err)
	}
	if prev := n.links[ifname]; prev != nil {
		// Our own handle; the pin keeps the link, and is looked at next.
		prev.Close()
		delete(n.links, ifname)
	}
	pin := n.linkPin(ifname)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		// A pod's device name comes back with a new pod: the pinned link
		// is the old device's (detached, or on another index) unless the
		// index matches.
		if info, err := old.Info(); err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			if err := old.Update(n.objs.PodnetNodeport); err == nil {
				n.links[ifname] = old
				return nil
			}
		}
		old.Unpin()
		old.Close()
	}
	var lk link.Link
	err := in(func() (err error) {
		lk, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: n.objs.PodnetNodeport, Attach: cebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		return fmt.Errorf("attach node port balancer to %s: %w", ifname, err)
	}
	if err := lk.Pin(pin); err != nil {
		lk.Close()
		return fmt.Errorf("pin node port link: %w", err)
	}
	n.links[ifname] = lk
	return nil
}

func (n *NodePort) linkPin(ifname string) string {
	return filepath.Join(n.pinDir, "np-link-"+ifname)
}

// Detach takes the program off ifname (a pod's device that went away:
// the kernel detached it with the device, the pin is what is left).
func (n *NodePort) Detach(ifname string) {
	if lk := n.links[ifname]; lk != nil {
		lk.Close()
		delete(n.links, ifname)
	}
	if lk, err := link.LoadPinnedLink(n.linkPin(ifname), nil); err == nil {
		lk.Unpin()
		lk.Close()
	}
}

// Attached lists the devices the program has pinned links on.
func (n *NodePort) Attached() []string {
	pins, _ := filepath.Glob(filepath.Join(n.pinDir, "np-link-*"))
	var out []string
	for _, p := range pins {
		out = append(out, strings.TrimPrefix(filepath.Base(p), "np-link-"))
	}
	return out
}

// SetNode tells the program the node's own addresses (a node port answers
// on these; the first of each family is what clients are masqueraded to)
// and the cluster's pod ranges (whose clients a Local entry point treats
// as Cluster).
func (n *NodePort) SetNode(addrs []netip.Addr, podRanges []netip.Prefix) error {
	want := map[[4]uint32]nodeportNpBackend{}
	// Each family's unspecified address holds its primary address, and
	// every address of the node maps to its family's primary.
	for _, a := range addrs {
		if _, ok := want[words(proxy.Unspecified(a))]; !ok {
			want[words(proxy.Unspecified(a))] = nodeportNpBackend{Addr: words(a)}
		}
	}
	for _, a := range addrs {
		want[words(a)] = want[words(proxy.Unspecified(a))]
	}
	var k, v nodeportNpBackend
	var stale []nodeportNpBackend
	it := n.objs.PodnetNpNodeAddrs.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k.Addr]; !ok {
			stale = append(stale, k)
		}
	}
	for w, val := range want {
		if err := n.objs.PodnetNpNodeAddrs.Update(nodeportNpBackend{Addr: w}, val, cebpf.UpdateAny); err != nil {
			return fmt.Errorf("node address: %w", err)
		}
	}
	for _, s := range stale {
		n.objs.PodnetNpNodeAddrs.Delete(s)
	}
	for _, p := range podRanges {
		bits := p.Bits()
		if p.Addr().Is4() {
			bits += 96
		}
		if err := n.objs.PodnetNpCluster.Update(nodeportLpmKey{Prefixlen: uint32(bits), Addr: words(p.Masked().Addr())}, uint8(1), cebpf.UpdateAny); err != nil {
			return fmt.Errorf("pod range %s: %w", p, err)
		}
	}
	return nil
}

// Sync makes the maps hold exactly desired. A frontend whose target
// changed gets its backends under new ids before it points at them, and
// the old ones go after: a first packet racing with Sync always finds a
// complete set.
func (n *NodePort) Sync(desired map[Frontend]proxy.NodePortTarget) (Stats, error) {
	st := Stats{}
	for f, t := range desired {
		old, had := n.committed[f]
		if had && old.target != nil && sameTarget(*old.target, t) {
			continue
		}
		e := npEntry{target: &t, id: n.newID(), local: n.newID()}
		if err := n.put(f, e); err != nil {
			n.garbage = append(n.garbage, e) // whatever of it was written
			return st, err
		}
		if had {
			n.garbage = append(n.garbage, old)
		}
		n.committed[f] = e
		st.Changed++
	}
	for f, e := range n.committed {
		if _, ok := desired[f]; ok {
			continue
		}
		if err := n.objs.PodnetNpFrontends.Delete(npKey(f)); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
			return st, fmt.Errorf("frontend %s: %w", f, err)
		}
		n.garbage = append(n.garbage, e)
		delete(n.committed, f)
		st.Changed++
	}
	for _, e := range n.garbage {
		n.deleteBackends(e.id)
		n.deleteBackends(e.local)
	}
	n.garbage = nil
	st.Frontends = len(n.committed)
	for _, e := range n.committed {
		st.Backends += len(e.target.Cluster) + len(e.target.Local)
	}
	return st, nil
}

// put writes e's backends, then points f at them.
func (n *NodePort) put(f Frontend, e npEntry) error {
	t := e.target
	if err := n.writeBackends(e.id, t.Cluster); err != nil {
		return err
	}
	if err := n.writeBackends(e.local, t.Local); err != nil {
		return err
	}
	val := nodeportNpVal{Id: e.id, Count: uint32(len(t.Cluster)), LocalId: e.local, LocalCount: uint32(len(t.Local))}
	if t.LocalPolicy {
		val.Flags = 1
	}
	val.Affinity = uint32(t.Affinity / time.Second)
	if err := n.objs.PodnetNpFrontends.Update(npKey(f), val, cebpf.UpdateAny); err != nil {
		return fmt.Errorf("frontend %s: %w", f, err)
	}
	return nil
}

func sameTarget(a, b proxy.NodePortTarget) bool {
	return a.LocalPolicy == b.LocalPolicy && a.Affinity == b.Affinity && slices.Equal(a.Cluster, b.Cluster) && slices.Equal(a.Local, b.Local)
}

func (n *NodePort) writeBackends(id uint32, bs []netip.AddrPort) error {
	for i, b := range bs {
		v := nodeportNpBackend{Addr: words(b.Addr()), Port: netOrder(b.Port())}
		if err := n.objs.PodnetNpBackends.Update(nodeportNpBackendKey{Id: id, Index: uint32(i)}, v, cebpf.UpdateAny); err != nil {
			return fmt.Errorf("node port backend: %w", err)
		}
	}
	return nil
}

// deleteBackends removes every backend under id: a set read back from a
// previous agent has no known size, so this walks until the first gap.
func (n *NodePort) deleteBackends(id uint32) {
	for i := uint32(0); ; i++ {
		if err := n.objs.PodnetNpBackends.Delete(nodeportNpBackendKey{Id: id, Index: i}); err != nil {
			return
		}
	}
}

func (n *NodePort) newID() uint32 {
	id := n.next
	n.next++
	return id
}

func npKey(f Frontend) nodeportNpKey {
	return nodeportNpKey{Addr: words(f.Addr), Port: netOrder(f.Port), Proto: protoNumber(f.Protocol)}
}

// NodePortCounters are what the program did with first packets, summed
// over CPUs.
type NodePortCounters struct {
	Translated, DroppedLocal, Passed, Errors uint64
}

func (n *NodePort) Counters() (NodePortCounters, error) {
	var out [4]uint64
	for i := range out {
		var per []uint64
		if err := n.objs.PodnetNpCounters.Lookup(uint32(i), &per); err != nil {
			return NodePortCounters{}, err
		}
		for _, c := range per {
			out[i] += c
		}
	}
	return NodePortCounters{Translated: out[0], DroppedLocal: out[1], Passed: out[2], Errors: out[3]}, nil
}

// Close releases this process's handles; pins and translation stay.
func (n *NodePort) Close() error {
	for _, lk := range n.links {
		lk.Close()
	}
	n.links = nil
	return n.objs.Close()
}

// RemoveNodePort detaches the program from every device and deletes its
// pins in pinDir, whether or not an agent has them open.
func RemoveNodePort(pinDir string) error {
	links, _ := filepath.Glob(filepath.Join(pinDir, "np-link-*"))
	var errs []error
	for _, pin := range links {
		if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
			errs = append(errs, lk.Unpin(), lk.Close())
		} else {
			errs = append(errs, os.Remove(pin))
		}
	}
	n := &NodePort{pinDir: pinDir}
	n.unpinMaps()
	return errors.Join(errs...)
}
