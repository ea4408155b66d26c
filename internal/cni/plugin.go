// Package cni is podnet's CNI plugin: ADD, DEL, CHECK, STATUS, GC and
// VERSION of CNI spec 1.1, on top of github.com/containernetworking/cni.
//
// # Why routed veths and not a bridge
//
// Each pod gets a veth pair. The pod end carries the pod's addresses as
// /32 and /128 and a default route to a fixed link-local gateway
// (169.254.1.1, fe80::1); the node end carries no address at all, and the
// node holds one /32 (/128) route per pod pointing at that veth. Static,
// permanent neighbour entries on both ends replace ARP and NDP.
//
// A bridge would switch same-node pod traffic at L2, where the node's
// routing table, nftables' inet hooks and tc on the node end do not see it
// without br_netfilter. With routed veths every packet between two pods,
// even on the same node, crosses the node's IP stack exactly once, so
// services, policy and flow logging hook into a single place, and there is
// no shared broadcast domain, no MAC learning and no ARP flooding between
// pods. The cost is one route per pod, which the kernel's FIB handles in
// O(1) lookups. Cilium and Calico make the same choice.
package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/ipam"
	"github.com/podnet/podnet/internal/netns"
)

// ErrPluginNotAvailable is CNI 1.1's STATUS code for "cannot serve ADD".
const ErrPluginNotAvailable uint = 50

// RouteProtocol marks every route podnet installs, so that podnet can find
// and prune its own routes without touching anyone else's.
const RouteProtocol netlink.RouteProtocol = 152

// HostIfPrefix starts the name of every node-side veth podnet makes.
const HostIfPrefix = "pn"

// Gateways the pod routes through. They are never assigned to anything:
// the pod reaches them through a permanent neighbour entry that resolves
// them to the node-side veth's MAC address.
var (
	Gateway4 = netip.MustParseAddr("169.254.1.1")
	Gateway6 = netip.MustParseAddr("fe80::1")
)

// CrashEnv names an environment variable for fault-injection tests: set to
// "allocate", ADD kills its own process right after recording the
// allocation, so tests can prove that GC reclaims what a crash leaves.
const CrashEnv = "PODNET_CNI_TEST_CRASH_AFTER"

// Versions lists the spec versions (and result types) podnet speaks.
var Versions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// Funcs returns the plugin's verbs for skel.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: measured("ADD", Add), Del: measured("DEL", Del), Check: Check, Status: Status, GC: GC}
}

// HostIfName is the node-side veth name of an attachment. It is derived
// from the attachment alone so DEL and GC can find the link even when the
// pod's namespace is already gone.
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostIfPrefix + hex.EncodeToString(sum[:])[:11]
}

func gatewayFor(a netip.Addr) netip.Addr {
	if a.Is4() {
		return Gateway4
	}
	return Gateway6
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func defaultRoute(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return netip.MustParsePrefix("0.0.0.0/0")
	}
	return netip.MustParsePrefix("::/0")
}

// openNS returns a netlink handle bound to the netns at path.
func openNS(path string) (*netlink.Handle, error) {
	h, err := vns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}

// Add implements CNI ADD.
func Add(args *skel.CmdArgs) (err error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pod, err := ParseArgs(args.Args)
	if err != nil {
		return err
	}
	if len(conf.Ranges()) == 0 {
		return types.NewError(types.ErrTryAgainLater, "no pod range known for this node yet: podCIDRs is empty", "")
	}
	nsFile, err := vns.GetFromPath(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	}
	defer nsFile.Close()
	podNS, err := netlink.NewHandleAt(nsFile)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", args.Netns, err)
	}
	defer podNS.Close()
	if _, err := podNS.LinkByName(args.IfName); err == nil {
		return fmt.Errorf("interface %s already exists in %s", args.IfName, args.Netns)
	}
	host, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer host.Close()

	hostIf := HostIfName(args.ContainerID, args.IfName)
	store, err := ipam.Open(conf.StoreDir())
	if err != nil {
		return err
	}
	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	addrs, fresh, err := store.Allocate(att, ipam.Meta{HostIf: hostIf, Pod: pod.String()}, conf.Ranges())
	if err != nil {
		return fmt.Errorf("container %s: allocate: %w", args.ContainerID, err)
	}
	if os.Getenv(CrashEnv) == "allocate" {
		// Fault injection for tests: die the hard way, as an OOM kill or a
		// node reboot would, with the allocation already on disk.
		unix.Kill(os.Getpid(), unix.SIGKILL)
	}
	// Every step below is undone if a later one fails.
	defer func() {
		if err != nil && fresh {
			store.Release(att)
		}
	}()

	// A link of our name can only be left over from an ADD of this very
	// attachment that crashed part-way: it is ours to replace.
	if old, lerr := host.LinkByName(hostIf); lerr == nil {
		host.LinkDel(old)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostIf, MTU: conf.MTU},
		PeerName:      args.IfName,
		PeerMTU:       uint32(conf.MTU),
		PeerNamespace: netlink.NsFd(int(nsFile)),
	}
	if err := host.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", hostIf, args.IfName, err)
	}
	defer func() {
		if err != nil {
			host.LinkDel(veth)
		}
	}()
	hostLink, err := host.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("veth %s: %w", hostIf, err)
	}
	podLink, err := podNS.LinkByName(args.IfName)
	if err != nil {
		return fmt.Errorf("veth %s in pod: %w", args.IfName, err)
	}
	if err := configurePod(podNS, podLink, hostLink.Attrs().HardwareAddr, addrs); err != nil {
		return fmt.Errorf("pod interface %s: %w", args.IfName, err)
	}
	if err := configureHost(host, hostLink, podLink.Attrs().HardwareAddr, addrs); err != nil {
		return fmt.Errorf("host interface %s: %w", hostIf, err)
	}
	if err := enableForwarding(addrs); err != nil {
		return err
	}

	result := buildResult(conf, args, hostLink, podLink, addrs)
	return types.PrintResult(result, conf.CNIVersion)
}

func configurePod(h *netlink.Handle, link netlink.Link, gwMAC net.HardwareAddr, addrs []netip.Addr) error {
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: ipNet(hostPrefix(a))}
		if a.Is6() {
			// The address is unique by construction; skipping duplicate
			// address detection makes it usable the moment ADD returns.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", a, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	done := map[netip.Addr]bool{}
	for _, a := range addrs {
		gw := gatewayFor(a)
		if done[gw] {
			continue
		}
		done[gw] = true
		if err := h.NeighSet(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: family(gw), State: netlink.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: gwMAC,
		}); err != nil {
			return fmt.Errorf("gateway neighbour %s: %w", gw, err)
		}
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index, Dst: ipNet(defaultRoute(a)), Gw: gw.AsSlice(),
		}
		if a.Is4() {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

func configureHost(h *netlink.Handle, link netlink.Link, podMAC net.HardwareAddr, addrs []netip.Addr) error {
	// The node end's link-local address is what the node speaks from when
	// it has no global IPv6 address of its own; without DAD it is usable
	// at once instead of a second or two later. (Absent when IPv6 is off.)
	netns.Sysctl("", "net/ipv6/conf/"+link.Attrs().Name+"/accept_dad", "0")
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	for _, a := range addrs {
		if err := h.NeighSet(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: family(a), State: netlink.NUD_PERMANENT,
			IP: a.AsSlice(), HardwareAddr: podMAC,
		}); err != nil {
			return fmt.Errorf("pod neighbour %s: %w", a, err)
		}
		if err := h.RouteReplace(&netlink.Route{
			LinkIndex: link.Attrs().Index, Dst: ipNet(hostPrefix(a)),
			Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol,
		}); err != nil {
			return fmt.Errorf("route to pod %s: %w", a, err)
		}
	}
	return nil
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// enableForwarding makes sure the node forwards the families the pod uses.
// Only a value that is off is written.
func enableForwarding(addrs []netip.Addr) error {
	for _, a := range addrs {
		key := "net/ipv4/ip_forward"
		if a.Is6() {
			key = "net/ipv6/conf/all/forwarding"
		}
		if b, err := readSysctl(key); err == nil && b == "1" {
			continue
		}
		if err := netns.Sysctl("", key, "1"); err != nil {
			return fmt.Errorf("enable forwarding (%s): %w", key, err)
		}
	}
	return nil
}

func buildResult(conf *NetConf, args *skel.CmdArgs, hostLink, podLink netlink.Link, addrs []netip.Addr) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostLink.Attrs().Name, Mac: hostLink.Attrs().HardwareAddr.String(), Mtu: conf.MTU},
			{Name: args.IfName, Mac: podLink.Attrs().HardwareAddr.String(), Mtu: conf.MTU, Sandbox: args.Netns},
		},
		DNS: conf.DNS,
	}
	for _, a := range addrs {
		gw := gatewayFor(a)
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: current.Int(1),
			Address:   *ipNet(hostPrefix(a)),
			Gateway:   gw.AsSlice(),
		})
		res.Routes = append(res.Routes, &types.Route{Dst: *ipNet(defaultRoute(a)), GW: gw.AsSlice()})
	}
	return res
}

// Del implements CNI DEL. It is idempotent: an unknown container, a netns
// that is gone and a link that is gone are all success.
func Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	hostIf := HostIfName(args.ContainerID, args.IfName)
	host, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer host.Close()
	if l, err := host.LinkByName(hostIf); err == nil {
		// Deleting one end of a veth deletes both, and the kernel drops
		// the routes and neighbours that point at it.
		if err := host.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s: %w", hostIf, err)
		}
	}
	if args.Netns != "" {
		if podNS, err := openNS(args.Netns); err == nil {
			if l, err := podNS.LinkByName(args.IfName); err == nil && l.Type() == "veth" {
				podNS.LinkDel(l)
			}
			podNS.Close()
		}
	}
	store, err := ipam.Open(conf.StoreDir())
	if err != nil {
		return err
	}
	if _, err := store.Release(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return fmt.Errorf("container %s: release: %w", args.ContainerID, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// Status implements CNI STATUS: 50 when ADD could not be served.
func Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if len(conf.Ranges()) == 0 {
		return types.NewError(ErrPluginNotAvailable, "not ready: no pod range known for this node yet (podCIDRs is empty)", "")
	}
	store, err := ipam.Open(conf.StoreDir())
	if err != nil {
		return types.NewError(ErrPluginNotAvailable, fmt.Sprintf("not ready: %v", err), "")
	}
	if _, err := store.List(); err != nil {
		return types.NewError(ErrPluginNotAvailable, fmt.Sprintf("not ready: %v", err), "")
	}
	return nil
}

// GC implements CNI GC: every allocation whose attachment the runtime does
// not list as valid is released, and its node-side veth is removed.
func GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	keep := map[ipam.Attachment]bool{}
	for _, a := range conf.ValidAttachments {
		keep[ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	store, err := ipam.Open(conf.StoreDir())
	if err != nil {
		return err
	}
	freed, err := store.ReleaseExcept(keep)
	if err != nil {
		return err
	}
	host, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer host.Close()
	for _, a := range freed {
		name := a.HostIf
		if name == "" {
			name = HostIfName(a.ContainerID, a.IfName)
		}
		if l, err := host.LinkByName(name); err == nil {
			host.LinkDel(l)
		}
	}
	return nil
}
