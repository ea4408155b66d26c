package cni

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/ipam"
)

// Check implements CNI CHECK: it compares the interface, addresses, routes
// and allocations against prevResult and reports every difference at once.
func Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult in the network config", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("convert prevResult: %v", err), "")
	}
	problems := checkAttachment(conf, args, prev)
	if len(problems) > 0 {
		return types.NewError(types.ErrInternal, fmt.Sprintf("check %s in %s: %s", args.IfName, args.Netns, strings.Join(problems, "; ")), "")
	}
	return nil
}

func checkAttachment(conf *NetConf, args *skel.CmdArgs, prev *current.Result) []string {
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }

	podIdx := -1
	for i, itf := range prev.Interfaces {
		if itf.Name == args.IfName && itf.Sandbox == args.Netns {
			podIdx = i
		}
	}
	if podIdx < 0 {
		return []string{fmt.Sprintf("prevResult names no interface %s in sandbox %s", args.IfName, args.Netns)}
	}
	var want []netip.Addr
	for _, ipc := range prev.IPs {
		if ipc.Interface == nil || *ipc.Interface != podIdx {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			want = append(want, a.Unmap())
		}
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Less(want[j]) })

	podNS, err := openNS(args.Netns)
	if err != nil {
		return []string{fmt.Sprintf("netns: %v", err)}
	}
	defer podNS.Close()
	link, err := podNS.LinkByName(args.IfName)
	if err != nil {
		return []string{fmt.Sprintf("interface %s is missing", args.IfName)}
	}
	if link.Type() != "veth" {
		bad("interface %s is a %s, not a veth", args.IfName, link.Type())
	}
	if link.Attrs().MTU != conf.MTU {
		bad("interface %s has mtu %d, want %d", args.IfName, link.Attrs().MTU, conf.MTU)
	}
	if link.Attrs().Flags&1 == 0 { // net.FlagUp
		bad("interface %s is down", args.IfName)
	}
	if mac := prev.Interfaces[podIdx].Mac; mac != "" && !strings.EqualFold(mac, link.Attrs().HardwareAddr.String()) {
		bad("interface %s has mac %s, prevResult says %s", args.IfName, link.Attrs().HardwareAddr, mac)
	}
	have := map[netip.Addr]bool{}
	if addrs, err := podNS.AddrList(link, netlink.FAMILY_ALL); err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				have[ip.Unmap()] = true
			}
		}
	}
	for _, a := range want {
		if !have[a] {
			bad("address %s is missing from %s", a, args.IfName)
		}
	}
	routes, _ := podNS.RouteList(link, netlink.FAMILY_ALL)
	for _, r := range prev.Routes {
		if !hasRoute(routes, r) {
			bad("route %s via %s is missing", r.Dst.String(), r.GW)
		}
	}

	host, err := netlink.NewHandle()
	if err != nil {
		return append(problems, err.Error())
	}
	defer host.Close()
	hostIf := HostIfName(args.ContainerID, args.IfName)
	hl, err := host.LinkByName(hostIf)
	if err != nil {
		bad("host interface %s is missing", hostIf)
	} else {
		hr, _ := host.RouteList(hl, netlink.FAMILY_ALL)
		for _, a := range want {
			found := false
			for _, r := range hr {
				if r.Dst != nil && r.Dst.String() == hostPrefix(a).String() {
					found = true
				}
			}
			if !found {
				bad("host route to %s via %s is missing", a, hostIf)
			}
		}
	}

	store, err := ipam.Open(conf.StoreDir())
	if err != nil {
		return append(problems, err.Error())
	}
	held, err := store.Get(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return append(problems, err.Error())
	}
	if fmt.Sprint(held) != fmt.Sprint(want) {
		bad("allocation store holds %v for this attachment, prevResult says %v", held, want)
	}
	return problems
}

func hasRoute(routes []netlink.Route, want *types.Route) bool {
	for _, r := range routes {
		dst := "0.0.0.0/0"
		if r.Family == netlink.FAMILY_V6 {
			dst = "::/0"
		}
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		if dst != want.Dst.String() {
			continue
		}
		if want.GW == nil || want.GW.Equal(r.Gw) {
			return true
		}
	}
	return false
}
