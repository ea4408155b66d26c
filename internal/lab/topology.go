package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

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
//
// Subnet s (1-based) is 192.168.(76+s).0/24 and fd77:(s-1)::/64, so the
// first subnet is 192.168.77.0/24 and fd77::/64. The router namespace has
// the first address of every subnet and is every node's default gateway;
// it also holds the "outside world" addresses, which are not in any
// cluster range.
var (
	External4 = netip.MustParseAddr("203.0.113.1")
	External6 = netip.MustParseAddr("2001:db8:ffff::1")
)

func subnetOf(i, subnets int) int { return (i-1)%subnets + 1 }

func subnetAddr(f bool, s, host int) netip.Prefix {
	if f {
		return netip.MustParsePrefix(fmt.Sprintf("192.168.%d.%d/24", 76+s, host))
	}
	return netip.MustParsePrefix(fmt.Sprintf("fd77:%x::%d/64", s-1, host))
}

// nodeAddrs returns node i's (1-based) underlay addresses: host number
// 10+i in its subnet (node1 is 192.168.77.11 and fd77::11).
func nodeAddrs(f Family, subnets, i int) []netip.Prefix {
	var out []netip.Prefix
	s := subnetOf(i, subnets)
	if f.has4() {
		out = append(out, subnetAddr(true, s, 10+i))
	}
	if f.has6() {
		out = append(out, subnetAddr(false, s, 10+i))
	}
	return out
}

// gateways returns the router's addresses on subnet s.
func gateways(f Family, s int) []netip.Addr {
	var out []netip.Addr
	if f.has4() {
		out = append(out, subnetAddr(true, s, 1).Addr())
	}
	if f.has6() {
		out = append(out, subnetAddr(false, s, 1).Addr())
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
	// No multicast snooping: with it, and no MLD querier on the fabric,
	// the bridge can withhold IPv6 neighbour solicitations from a port
	// for the first second or so after it joins, and the first packets
	// across subnets get lost. A plain switch floods them.
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}, MulticastSnooping: &off}
	if err := h.LinkAdd(br); err != nil {
		return "", fmt.Errorf("fabric bridge: %w", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return "", fmt.Errorf("fabric bridge up: %w", err)
	}
	return p, nil
}

// makeRouter creates the router namespace and plugs it into each subnet's
// fabric with the subnet's first addresses.
func makeRouter(nsName string, fabrics []string, f Family) (string, error) {
	p, err := netns.Create(nsName)
	if err != nil {
		return "", err
	}
	if err := hostSysctls(p); err != nil {
		return "", fmt.Errorf("router: %w", err)
	}
	for s, fab := range fabrics {
		var addrs []netip.Prefix
		if f.has4() {
			addrs = append(addrs, subnetAddr(true, s+1, 1))
		}
		if f.has6() {
			addrs = append(addrs, subnetAddr(false, s+1, 1))
		}
		if err := plug(fab, p, fmt.Sprintf("router%d", s+1), fmt.Sprintf("s%d", s+1), addrs, nil); err != nil {
			return "", fmt.Errorf("router: %w", err)
		}
	}
	h, err := netns.Handle(p)
	if err != nil {
		return "", err
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	for _, a := range []netip.Addr{External4, External6} {
		if (a.Is4() && !f.has4()) || (a.Is6() && !f.has6()) {
			continue
		}
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}); err != nil {
			return "", fmt.Errorf("router: external address %s: %w", a, err)
		}
	}
	return p, nil
}

// hostSysctls makes a fresh namespace a router whose interfaces are usable
// the moment they come up. Forwarding is switched on, and duplicate
// address detection off by default, before any interface exists: an
// interface that comes up with DAD on, or that switches to router mode
// later, ignores and delays neighbour discovery for its first second or
// so, and the first packets across the fabric are lost.
func hostSysctls(p string) error {
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv6/conf/all/forwarding", "1"},
		{"net/ipv6/conf/default/forwarding", "1"},
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_dad", "0"},
	} {
		if err := netns.Sysctl(p, kv[0], kv[1]); err != nil {
			return fmt.Errorf("sysctl %s: %w", kv[0], err)
		}
	}
	return nil
}

// makeNode creates a node namespace wired to its subnet's fabric by a veth
// whose node end is called eth0, as a host's uplink would be, with a
// default route through the router.
func makeNode(fabricPath, nsName, port string, addrs []netip.Prefix, gws []netip.Addr) (string, error) {
	p, err := netns.Create(nsName)
	if err != nil {
		return "", err
	}
	if err := hostSysctls(p); err != nil {
		return "", fmt.Errorf("node %s: %w", nsName, err)
	}
	if err := plug(fabricPath, p, port, "eth0", addrs, gws); err != nil {
		return "", fmt.Errorf("node %s: %w", nsName, err)
	}
	return p, nil
}

// plug connects the namespace at p to the fabric's bridge with a veth
// (port on the fabric side, ifName inside p), addresses it, and adds
// default routes via gws.
func plug(fabricPath, p, port, ifName string, addrs []netip.Prefix, gws []netip.Addr) error {
	fh, err := netns.Handle(fabricPath)
	if err != nil {
		return err
	}
	defer fh.Close()
	nodeFd, err := vns.GetFromPath(p)
	if err != nil {
		return err
	}
	defer nodeFd.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: ifName, PeerNamespace: netlink.NsFd(int(nodeFd))}
	if err := fh.LinkAdd(v); err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	br, err := fh.LinkByName("br0")
	if err != nil {
		return err
	}
	fl, err := fh.LinkByName(port)
	if err != nil {
		return err
	}
	if err := fh.LinkSetMaster(fl, br); err != nil {
		return err
	}
	if err := fh.LinkSetUp(fl); err != nil {
		return err
	}
	nh, err := netns.Handle(p)
	if err != nil {
		return err
	}
	defer nh.Close()
	eth0, err := nh.LinkByName(ifName)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := nh.AddrAdd(eth0, addr); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
	}
	// Without DAD the link-local address is usable at once; with it,
	// neighbour solicitations for forwarded traffic wait a second or more
	// for a source address.
	if err := netns.Sysctl(p, "net/ipv6/conf/"+ifName+"/accept_dad", "0"); err != nil {
		return err
	}
	if err := nh.LinkSetUp(eth0); err != nil {
		return err
	}
	for _, gw := range gws {
		dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if gw.Is6() {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if err := nh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// waitReady waits until ifName in the namespace at p is operationally up
// and, when IPv6 is in use, has a usable (non-tentative) link-local
// address. The kernel reports carrier changes through its link watcher,
// which batches events for up to a second; until then IPv6 neighbour
// discovery on the interface is silently off, and the first packets
// forwarded through it are lost. A lab is not ready before its wires are.
func waitReady(p, ifName string, v6 bool) error {
	h, err := netns.Handle(p)
	if err != nil {
		return err
	}
	defer h.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := h.LinkByName(ifName)
		if err != nil {
			return err
		}
		ready := l.Attrs().OperState == netlink.OperUp
		if ready && v6 {
			ready = false
			addrs, _ := h.AddrList(l, netlink.FAMILY_V6)
			for _, a := range addrs {
				if a.IP.IsLinkLocalUnicast() && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
					ready = true
				}
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s is not up after 10s (state %s)", ifName, p, l.Attrs().OperState)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Topology is the wiring of a lab: fabrics (one bridge namespace per
// subnet), a router joining them, and the node namespaces.
type Topology struct {
	Fabrics []string
	Router  string
	Nodes   []TopologyNode
}

// TopologyNode is one node namespace and its underlay addresses.
type TopologyNode struct {
	Name  string // node1, node2, ...
	Index int    // 1-based
	NetNS string // mount path of its network namespace
	Addrs []netip.Prefix
}

// BuildTopology creates the fabrics, the router and the node namespaces,
// every name starting with prefix, and returns once every wire is up.
// Removing every namespace with the prefix undoes it.
func BuildTopology(prefix string, nodes, subnets int, f Family) (*Topology, error) {
	t := &Topology{}
	for s := 1; s <= subnets; s++ {
		p, err := makeFabric(fmt.Sprintf("%sfabric%d", prefix, s))
		if err != nil {
			return nil, err
		}
		t.Fabrics = append(t.Fabrics, p)
	}
	var err error
	if t.Router, err = makeRouter(prefix+"router", t.Fabrics, f); err != nil {
		return nil, err
	}
	for i := 1; i <= nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		s := subnetOf(i, subnets)
		addrs := nodeAddrs(f, subnets, i)
		p, err := makeNode(t.Fabrics[s-1], prefix+name, name, addrs, gateways(f, s))
		if err != nil {
			return nil, err
		}
		t.Nodes = append(t.Nodes, TopologyNode{Name: name, Index: i, NetNS: p, Addrs: addrs})
	}
	return t, t.waitWires(f)
}

// waitWires waits, in parallel, until every uplink is up.
func (t *Topology) waitWires(f Family) error {
	type wire struct{ ns, ifName string }
	var wires []wire
	for s := range t.Fabrics {
		wires = append(wires, wire{t.Router, fmt.Sprintf("s%d", s+1)})
	}
	for _, n := range t.Nodes {
		wires = append(wires, wire{n.NetNS, "eth0"})
	}
	errs := make(chan error, len(wires))
	for _, w := range wires {
		go func() { errs <- waitReady(w.ns, w.ifName, f.has6()) }()
	}
	var all []error
	for range wires {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}
