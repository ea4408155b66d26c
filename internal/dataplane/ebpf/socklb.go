// Package ebpf applies podnet's eBPF dataplane: the socket-level Service
// load balancer of bpf/socklb.c, attached to a cgroup, and the maps it
// reads, reconciled from the desired state the agent computes.
//
// Why the socket layer: a connect() or sendmsg() to a ClusterIP is
// rewritten to a backend once, before the socket routes anything, so
// east-west traffic to a Service costs nothing per packet afterwards (no
// DNAT, no NAT entry in conntrack, no lookup on every packet). Traffic
// that does not come from a local socket (NodePort and LoadBalancer
// traffic arriving from outside) needs a per-packet hook instead.
//
// Restarts: the maps and the cgroup links are pinned in a BPF file
// system. An agent that stops leaves them in place, so translation goes
// on without it; the next agent opens the pinned maps, swaps its programs
// into the pinned links, and reconciles the maps from the desired state.
// Remove takes everything away (for switching dataplanes).
package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/proxy"
)

// Frontend is a Service address as a socket names it.
type Frontend = proxy.Frontend

// SockLB is the socket load balancer attached to one cgroup.
type SockLB struct {
	objs   socklbObjects
	links  []link.Link
	pinDir string

	// committed is what the maps hold: each frontend's id and backends.
	committed map[Frontend]entry
	used      map[uint32]bool
	next      uint32
}

type entry struct {
	id uint32
	proxy.SocketTarget
}

// attachments are the programs and where they attach, with the names of
// their pinned links.
func (l *SockLB) attachments() []struct {
	name string
	typ  cebpf.AttachType
	prog *cebpf.Program
} {
	p := l.objs.socklbPrograms
	return []struct {
		name string
		typ  cebpf.AttachType
		prog *cebpf.Program
	}{
		{"connect4", cebpf.AttachCGroupInet4Connect, p.PodnetConnect4},
		{"connect6", cebpf.AttachCGroupInet6Connect, p.PodnetConnect6},
		{"sendmsg4", cebpf.AttachCGroupUDP4Sendmsg, p.PodnetSendmsg4},
		{"sendmsg6", cebpf.AttachCGroupUDP6Sendmsg, p.PodnetSendmsg6},
		{"recvmsg4", cebpf.AttachCGroupUDP4Recvmsg, p.PodnetRecvmsg4},
		{"recvmsg6", cebpf.AttachCGroupUDP6Recvmsg, p.PodnetRecvmsg6},
		{"getpeername4", cebpf.AttachCgroupInet4GetPeername, p.PodnetGetpeername4},
		{"getpeername6", cebpf.AttachCgroupInet6GetPeername, p.PodnetGetpeername6},
		{"sockops", cebpf.AttachCGroupSockOps, p.PodnetSockops},
	}
}

// Open loads the programs, reusing the maps pinned in pinDir (a directory
// in a BPF file system) if a previous agent left them, and attaches the
// programs to the cgroup v2 directory cgroupPath, swapping them into
// pinned links where those exist so that translation never stops.
func Open(cgroupPath, pinDir string) (*SockLB, error) {
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	l := &SockLB{pinDir: pinDir, committed: map[Frontend]entry{}, used: map[uint32]bool{}}
	opts := &cebpf.CollectionOptions{Maps: cebpf.MapOptions{PinPath: pinDir}}
	err := loadSocklbObjects(&l.objs, opts)
	if errors.Is(err, cebpf.ErrMapIncompatible) {
		// Pins of an older layout: start afresh. Until the maps are
		// filled again the nftables rules serve every Service, so
		// nothing is disrupted.
		if err := os.RemoveAll(pinDir); err != nil {
			return nil, fmt.Errorf("remove incompatible pins: %w", err)
		}
		if err := os.MkdirAll(pinDir, 0o700); err != nil {
			return nil, err
		}
		err = loadSocklbObjects(&l.objs, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("load socket load balancer: %w", err)
	}
	for _, a := range l.attachments() {
		pin := filepath.Join(pinDir, "link-"+a.name)
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := old.Update(a.prog); err != nil {
				old.Close()
				l.Close()
				return nil, fmt.Errorf("replace program in pinned %s link: %w", a.name, err)
			}
			l.links = append(l.links, old)
			continue
		}
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: a.typ, Program: a.prog})
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("attach %s to %s: %w", a.name, cgroupPath, err)
		}
		if err := lk.Pin(pin); err != nil {
			lk.Close()
			l.Close()
			return nil, fmt.Errorf("pin %s link: %w", a.name, err)
		}
		l.links = append(l.links, lk)
	}
	if err := l.readBack(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// readBack learns what a previous agent left in the pinned maps, so the
// first Sync changes only what differs.
func (l *SockLB) readBack() error {
	var k socklbSvcKey
	var v socklbSvcVal
	it := l.objs.PodnetServices.Iterate()
	for it.Next(&k, &v) {
		f := Frontend{Addr: fromWords(k.Addr), Port: netOrder(k.Port), Protocol: protoName(k.Proto)}
		e := entry{id: v.Id, SocketTarget: proxy.SocketTarget{Affinity: time.Duration(v.Affinity) * time.Second}}
		for i := range v.Count {
			var b socklbBackendVal
			if err := l.objs.PodnetBackends.Lookup(socklbBackendKey{Id: v.Id, Index: i}, &b); err != nil {
				break
			}
			e.Backends = append(e.Backends, netip.AddrPortFrom(fromWords(b.Addr), netOrder(b.Port)))
		}
		l.committed[f] = e
		l.used[v.Id] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read services map: %w", err)
	}
	return nil
}

// Close releases this process's handles. The pinned maps and links stay,
// and so does the translation.
func (l *SockLB) Close() error {
	for _, lk := range l.links {
		lk.Close()
	}
	l.links = nil
	return l.objs.Close()
}

// Remove detaches the programs and deletes the pinned maps and links.
func (l *SockLB) Remove() error {
	var errs []error
	for _, a := range l.attachments() {
		pin := filepath.Join(l.pinDir, "link-"+a.name)
		if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
			errs = append(errs, lk.Unpin(), lk.Close())
		}
	}
	for _, m := range []*cebpf.Map{l.objs.PodnetServices, l.objs.PodnetBackends, l.objs.PodnetUdpRev, l.objs.PodnetNetns, l.objs.PodnetAffinity, l.objs.PodnetEvents} {
		if m != nil && m.IsPinned() {
			errs = append(errs, m.Unpin())
		}
	}
	errs = append(errs, l.Close(), os.Remove(l.pinDir))
	return errors.Join(errs...)
}

// AllowNetNS makes the balancer translate for sockets in the network
// namespace with this cookie (see NetNSCookie). Cookie 0 means every
// namespace: the setting of a node that is a whole machine.
func (l *SockLB) AllowNetNS(cookie uint64) error {
	return l.objs.PodnetNetns.Update(cookie, uint8(1), cebpf.UpdateAny)
}

// ForgetNetNS stops translating for a namespace (a pod that went away).
func (l *SockLB) ForgetNetNS(cookie uint64) error {
	err := l.objs.PodnetNetns.Delete(cookie)
	if errors.Is(err, cebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// NetNSCookie is the kernel's cookie for the network namespace the
// calling thread is in.
func NetNSCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}

// Stats counts what the maps hold.
type Stats struct {
	Frontends, Backends, Changed int
}

// Sync makes the maps hold exactly desired: frontend → backends. A
// frontend with no backends is left out (the nftables rules reject it).
// It is the reconcile at start; later changes go through Update.
func (l *SockLB) Sync(desired map[Frontend]proxy.SocketTarget) (Stats, error) {
	st, err := l.Update(desired)
	if err != nil {
		return st, err
	}
	for f := range l.committed {
		if len(desired[f].Backends) == 0 {
			if err := l.remove(f); err != nil {
				return st, err
			}
			st.Changed++
		}
	}
	return st, nil
}

// Update applies changed frontends only: each is set to its backends, or
// removed when it has none. Changes are ordered so that a connect racing
// with them always finds a valid backend: new backends are written before
// the count that exposes them, and a shrunk count before the backends it
// hides are deleted.
func (l *SockLB) Update(changes map[Frontend]proxy.SocketTarget) (Stats, error) {
	st := Stats{}
	for f, t := range changes {
		var err error
		changed := false
		if len(t.Backends) == 0 {
			_, changed = l.committed[f]
			err = l.remove(f)
		} else {
			changed, err = l.put(f, t)
		}
		if err != nil {
			return st, err
		}
		if changed {
			st.Changed++
		}
	}
	st.Frontends = len(l.committed)
	for _, e := range l.committed {
		st.Backends += len(e.Backends)
	}
	return st, nil
}

func (l *SockLB) put(f Frontend, t proxy.SocketTarget) (bool, error) {
	bs := t.Backends
	old, had := l.committed[f]
	if had && old.Affinity == t.Affinity && slices.Equal(old.Backends, bs) {
		return false, nil
	}
	e := old
	if !had {
		e.id = l.newID()
	}
	for i, b := range bs {
		if i < len(old.Backends) && old.Backends[i] == b {
			continue
		}
		if err := l.objs.PodnetBackends.Update(socklbBackendKey{Id: e.id, Index: uint32(i)}, backendVal(b), cebpf.UpdateAny); err != nil {
			return false, fmt.Errorf("backend %d of %s: %w", i, f, err)
		}
	}
	val := socklbSvcVal{Id: e.id, Count: uint32(len(bs)), Affinity: uint32(t.Affinity / time.Second)}
	if err := l.objs.PodnetServices.Update(svcKey(f), val, cebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("service %s: %w", f, err)
	}
	for i := len(bs); i < len(old.Backends); i++ {
		if err := l.deleteBackend(e.id, i); err != nil {
			return false, err
		}
	}
	e.Backends = slices.Clone(bs)
	e.Affinity = t.Affinity
	l.committed[f] = e
	return true, nil
}

func (l *SockLB) remove(f Frontend) error {
	e, ok := l.committed[f]
	if !ok {
		return nil
	}
	if err := l.objs.PodnetServices.Delete(svcKey(f)); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
		return fmt.Errorf("service %s: %w", f, err)
	}
	for i := range e.Backends {
		if err := l.deleteBackend(e.id, i); err != nil {
			return err
		}
	}
	delete(l.committed, f)
	delete(l.used, e.id)
	return nil
}

func (l *SockLB) deleteBackend(id uint32, i int) error {
	err := l.objs.PodnetBackends.Delete(socklbBackendKey{Id: id, Index: uint32(i)})
	if err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
		return fmt.Errorf("backend %d of service id %d: %w", i, id, err)
	}
	return nil
}

func (l *SockLB) newID() uint32 {
	for l.used[l.next] {
		l.next++
	}
	id := l.next
	l.used[id] = true
	l.next++
	return id
}

// words is an address as the program stores it: IPv6, or IPv4-mapped,
// in network byte order, as four 32-bit words in host memory.
func words(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func fromWords(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		binary.NativeEndian.PutUint32(b[4*i:], x)
	}
	return netip.AddrFrom16(b).Unmap()
}

// netOrder swaps a port between host and network byte order (the same
// operation both ways).
func netOrder(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func svcKey(f Frontend) socklbSvcKey {
	return socklbSvcKey{Addr: words(f.Addr), Port: netOrder(f.Port), Proto: protoNumber(f.Protocol)}
}

func backendVal(b netip.AddrPort) socklbBackendVal {
	return socklbBackendVal{Addr: words(b.Addr()), Port: netOrder(b.Port())}
}

func protoNumber(p model.Protocol) uint8 {
	switch p {
	case model.TCP:
		return unix.IPPROTO_TCP
	case model.UDP:
		return unix.IPPROTO_UDP
	}
	return 0
}

func protoName(n uint8) model.Protocol {
	switch n {
	case unix.IPPROTO_TCP:
		return model.TCP
	case unix.IPPROTO_UDP:
		return model.UDP
	}
	return model.Protocol(fmt.Sprint(n))
}
