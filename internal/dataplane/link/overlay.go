package link

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/routing"
)

// Overlay makes the node's VXLAN devices, their neighbour entries and their
// FDB entries match routing.State. Everything on a device whose name starts
// with routing.DevicePrefix is podnet's; nothing else is touched.
type Overlay struct {
	h *netlink.Handle
}

// NewOverlay returns an overlay backend working through h.
func NewOverlay(h *netlink.Handle) *Overlay { return &Overlay{h: h} }

// EnsureDevices creates or corrects every wanted device (VNI, port, local
// address, MAC, MTU, VTEP addresses, up).
func (o *Overlay) EnsureDevices(want []routing.Device) error {
	var errs []error
	for _, d := range want {
		if err := o.ensure(d); err != nil {
			errs = append(errs, fmt.Errorf("device %s: %w", d.Name, err))
		}
	}
	return errors.Join(errs...)
}

// PruneDevices removes podnet's devices that are not wanted, taking their
// routes, neighbours and FDB entries with them.
func (o *Overlay) PruneDevices(want []routing.Device) (int, error) {
	keep := map[string]bool{}
	for _, d := range want {
		keep[d.Name] = true
	}
	links, err := o.h.LinkList()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range links {
		name := l.Attrs().Name
		if strings.HasPrefix(name, routing.DevicePrefix) && !keep[name] {
			if err := o.h.LinkDel(l); err != nil && !isGone(err) {
				return n, fmt.Errorf("delete %s: %w", name, err)
			}
			n++
		}
	}
	return n, nil
}

func (o *Overlay) ensure(d routing.Device) error {
	l, err := o.h.LinkByName(d.Name)
	if err == nil {
		vx, ok := l.(*netlink.Vxlan)
		if !ok || vx.VxlanId != int(d.VNI) || vx.Port != int(d.Port) || !vx.SrcAddr.Equal(d.Local.AsSlice()) || vx.Learning {
			// Identity attributes cannot be changed in place.
			if err := o.h.LinkDel(l); err != nil {
				return err
			}
			l = nil
		}
	} else {
		l = nil
	}
	if l == nil {
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: d.Name, MTU: d.MTU, HardwareAddr: d.MAC},
			VxlanId:   int(d.VNI), SrcAddr: d.Local.AsSlice(), Port: int(d.Port), Learning: false,
		}
		if err := o.h.LinkAdd(vx); err != nil {
			return fmt.Errorf("create: %w", err)
		}
		if l, err = o.h.LinkByName(d.Name); err != nil {
			return err
		}
	}
	if l.Attrs().MTU != d.MTU {
		if err := o.h.LinkSetMTU(l, d.MTU); err != nil {
			return fmt.Errorf("mtu: %w", err)
		}
	}
	if !bytes.Equal(l.Attrs().HardwareAddr, d.MAC) {
		if err := o.h.LinkSetHardwareAddr(l, d.MAC); err != nil {
			return fmt.Errorf("mac: %w", err)
		}
	}
	if err := o.syncAddrs(l, d.Addrs); err != nil {
		return err
	}
	return o.h.LinkSetUp(l)
}

func (o *Overlay) syncAddrs(l netlink.Link, want []netip.Prefix) error {
	have, err := o.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p] = true
	}
	present := map[netip.Prefix]bool{}
	for _, a := range have {
		p, ok := prefix(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if !wanted[p] {
			if err := o.h.AddrDel(l, &a); err != nil && !isGone(err) {
				return fmt.Errorf("remove address %s: %w", p, err)
			}
			continue
		}
		present[p] = true
	}
	for _, p := range want {
		if present[p] {
			continue
		}
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := o.h.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	return nil
}

// SyncNeighbours makes the permanent neighbour entries and FDB entries on
// podnet's devices equal to the wanted ones. Returns (changed, removed).
func (o *Overlay) SyncNeighbours(neigh []routing.Neighbour, fdb []routing.FDBEntry) (int, int, error) {
	links, err := o.h.LinkList()
	if err != nil {
		return 0, 0, err
	}
	byName := map[string]netlink.Link{}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, routing.DevicePrefix) {
			byName[l.Attrs().Name] = l
		}
	}
	wantN := map[string]routing.Neighbour{}
	for _, n := range neigh {
		wantN[n.Dev+"|"+n.IP.String()] = n
	}
	wantF := map[string]routing.FDBEntry{}
	for _, f := range fdb {
		wantF[f.Dev+"|"+f.MAC.String()] = f
	}
	var errs []error
	changed, removed := 0, 0
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		l := byName[name]
		idx := l.Attrs().Index
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			have, err := o.h.NeighList(idx, fam)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, h := range have {
				ip, _ := netip.AddrFromSlice(h.IP)
				ip = ip.Unmap()
				if ip.IsLinkLocalUnicast() || ip.IsMulticast() {
					continue
				}
				key := name + "|" + ip.String()
				if w, ok := wantN[key]; ok && bytes.Equal(w.MAC, h.HardwareAddr) && h.State == netlink.NUD_PERMANENT {
					delete(wantN, key)
					continue
				}
				if _, ok := wantN[key]; ok {
					continue // replaced below
				}
				if err := o.h.NeighDel(&h); err != nil && !isGone(err) {
					errs = append(errs, fmt.Errorf("delete neighbour %s on %s: %w", ip, name, err))
					continue
				}
				removed++
			}
		}
		fdbs, err := o.h.NeighList(idx, unix.AF_BRIDGE)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, h := range fdbs {
			key := name + "|" + h.HardwareAddr.String()
			dst, _ := netip.AddrFromSlice(h.IP)
			if w, ok := wantF[key]; ok && w.Dst == dst.Unmap() {
				delete(wantF, key)
				continue
			}
			if _, ok := wantF[key]; ok {
				continue
			}
			if err := o.h.NeighDel(&h); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("delete fdb %s on %s: %w", h.HardwareAddr, name, err))
				continue
			}
			removed++
		}
	}
	for _, n := range wantN {
		l, ok := byName[n.Dev]
		if !ok {
			errs = append(errs, fmt.Errorf("neighbour %s: device %s missing", n, n.Dev))
			continue
		}
		fam := netlink.FAMILY_V4
		if n.IP.Is6() {
			fam = netlink.FAMILY_V6
		}
		if err := o.h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: n.MAC}); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s: %w", n, err))
			continue
		}
		changed++
	}
	for _, f := range wantF {
		l, ok := byName[f.Dev]
		if !ok {
			errs = append(errs, fmt.Errorf("fdb %s: device %s missing", f, f.Dev))
			continue
		}
		if err := o.h.NeighSet(&netlink.Neigh{
			LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT, IP: f.Dst.AsSlice(), HardwareAddr: f.MAC,
		}); err != nil {
			errs = append(errs, fmt.Errorf("fdb %s: %w", f, err))
			continue
		}
		changed++
	}
	return changed, removed, errors.Join(errs...)
}

// Dump renders podnet's overlay state in the kernel as sorted text lines.
func (o *Overlay) Dump() (string, error) {
	links, err := o.h.LinkList()
	if err != nil {
		return "", err
	}
	var lines []string
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, routing.DevicePrefix) {
			continue
		}
		if vx, ok := l.(*netlink.Vxlan); ok {
			lines = append(lines, fmt.Sprintf("device %s vni %d port %d local %s mac %s mtu %d", name, vx.VxlanId, vx.Port, vx.SrcAddr, l.Attrs().HardwareAddr, l.Attrs().MTU))
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ns, _ := o.h.NeighList(l.Attrs().Index, fam)
			for _, n := range ns {
				if n.State == netlink.NUD_PERMANENT {
					lines = append(lines, fmt.Sprintf("neigh %s lladdr %s dev %s", n.IP, n.HardwareAddr, name))
				}
			}
		}
		fdb, _ := o.h.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
		for _, f := range fdb {
			if f.IP != nil {
				lines = append(lines, fmt.Sprintf("fdb %s dst %s dev %s", f.HardwareAddr, f.IP, name))
			}
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

func isGone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// Installed lists the permanent neighbour and FDB entries on podnet's
// overlay devices, for comparison with the desired state.
func (o *Overlay) Installed() ([]routing.Neighbour, []routing.FDBEntry, error) {
	links, err := o.h.LinkList()
	if err != nil {
		return nil, nil, err
	}
	var neigh []routing.Neighbour
	var fdb []routing.FDBEntry
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, routing.DevicePrefix) {
			continue
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			have, err := o.h.NeighList(l.Attrs().Index, fam)
			if err != nil {
				return nil, nil, err
			}
			for _, h := range have {
				ip, _ := netip.AddrFromSlice(h.IP)
				if h.State != netlink.NUD_PERMANENT || ip.Unmap().IsLinkLocalUnicast() || ip.IsMulticast() {
					continue
				}
				neigh = append(neigh, routing.Neighbour{Dev: name, IP: ip.Unmap(), MAC: h.HardwareAddr})
			}
		}
		fdbs, err := o.h.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			return nil, nil, err
		}
		for _, h := range fdbs {
			dst, _ := netip.AddrFromSlice(h.IP)
			if h.State&netlink.NUD_PERMANENT == 0 || !dst.IsValid() {
				continue
			}
			fdb = append(fdb, routing.FDBEntry{Dev: name, MAC: h.HardwareAddr, Dst: dst.Unmap()})
		}
	}
	return neigh, fdb, nil
}
