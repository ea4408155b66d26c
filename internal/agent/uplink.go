package agent

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/model"
)

// uplink is what the agent reads from the kernel about the node's own
// underlay: its addresses with prefix lengths (which decide "same subnet"
// for the auto mode), the interfaces that carry them (where masquerade
// applies), and the smallest of their MTUs (the base of the pod MTU).
type uplink struct {
	local []netip.Prefix
	names []string
	mtu   int
}

func readUplink(h *netlink.Handle, me model.Node) (uplink, error) {
	var u uplink
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return u, err
	}
	seen := map[int]bool{}
	for _, want := range me.Addrs {
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || ip.Unmap() != want {
				continue
			}
			bits, _ := a.Mask.Size()
			u.local = append(u.local, netip.PrefixFrom(want, bits))
			if seen[a.LinkIndex] {
				continue
			}
			seen[a.LinkIndex] = true
			l, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return u, err
			}
			u.names = append(u.names, l.Attrs().Name)
			if u.mtu == 0 || l.Attrs().MTU < u.mtu {
				u.mtu = l.Attrs().MTU
			}
		}
	}
	if len(u.names) == 0 {
		return u, fmt.Errorf("none of the node's addresses %v is on an interface here", me.Addrs)
	}
	return u, nil
}
