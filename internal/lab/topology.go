package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// Family selects the lab's IP families.
type Family string

// Families.
const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
	Dual Family = "dual"
)

func (f Family) has4() bool { return f != IPv6 }
func (f Family) has6() bool { return f != IPv4 }

// Address plan. Every address lives only inside the lab's namespaces.
var (
	fabric4 = netip.MustParsePrefix("192.168.77.0/24")
	fabric6 = netip.MustParsePrefix("fd77::/64")
)

// nodeAddrs returns node i's (1-based) underlay addresses.
func nodeAddrs(f Family, i int) []netip.Prefix {
	var out []netip.Prefix
	if f.has4() {
		b := fabric4.Addr().As4()
		b[3] = byte(10 + i)
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(b), fabric4.Bits()))
	}
	if f.has6() {
		// fd77::11 for node1: the same last digits as its IPv4 address.
		a := netip.MustParseAddr(fmt.Sprintf("fd77::%d", 10+i))
		out = append(out, netip.PrefixFrom(a, fabric6.Bits()))
	}
	return out
}

// nodePodCIDRs returns node i's pod ranges: the lab plays the part of the
// controller-manager's node IPAM here.
func nodePodCIDRs(f Family, i int) []netip.Prefix {
	var out []netip.Prefix
	if f.has4() {
		out = append(out, netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)))
	}
	if f.has6() {
		out = append(out, netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i)))
	}
	return out
}

// makeFabric creates the fabric namespace with its bridge.
func makeFabric(name string) (string, error) {
	p, err := netns.Create(name)
	if err != nil {
		return "", err
	}
	h, err := netns.Handle(p)
	if err != nil {
		return "", err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return "", fmt.Errorf("fabric bridge: %w", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return "", fmt.Errorf("fabric bridge up: %w", err)
	}
	return p, nil
}

// makeNode creates a node namespace wired to the fabric by a veth whose
// node end is called eth0, as a host's uplink would be.
func makeNode(fabricPath, nsName, port string, addrs []netip.Prefix) (string, error) {
	p, err := netns.Create(nsName)
	if err != nil {
		return "", err
	}
	fh, err := netns.Handle(fabricPath)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	nodeFd, err := vns.GetFromPath(p)
	if err != nil {
		return "", err
	}
	defer nodeFd.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(nodeFd))}
	if err := fh.LinkAdd(v); err != nil {
		return "", fmt.Errorf("node %s uplink: %w", nsName, err)
	}
	br, err := fh.LinkByName("br0")
	if err != nil {
		return "", err
	}
	fl, err := fh.LinkByName(port)
	if err != nil {
		return "", err
	}
	if err := fh.LinkSetMaster(fl, br); err != nil {
		return "", err
	}
	if err := fh.LinkSetUp(fl); err != nil {
		return "", err
	}
	nh, err := netns.Handle(p)
	if err != nil {
		return "", err
	}
	defer nh.Close()
	eth0, err := nh.LinkByName("eth0")
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := nh.AddrAdd(eth0, addr); err != nil {
			return "", fmt.Errorf("node %s address %s: %w", nsName, a, err)
		}
	}
	for _, kv := range [][2]string{
		// Without DAD the uplink's link-local address is usable at once;
		// with it, neighbour solicitations for forwarded pod traffic wait
		// a second or more for a source address.
		{"net/ipv6/conf/eth0/accept_dad", "0"},
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv6/conf/all/forwarding", "1"},
	} {
		if err := netns.Sysctl(p, kv[0], kv[1]); err != nil {
			return "", fmt.Errorf("node %s sysctl %s: %w", nsName, kv[0], err)
		}
	}
	if err := nh.LinkSetUp(eth0); err != nil {
		return "", err
	}
	return p, nil
}
