// Package model holds podnet's plain data types: what the control plane
// says, in net/netip terms, with no client-go or kernel types in sight.
package model

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Node is a cluster node as the dataplane needs it.
type Node struct {
	Name string
	// Addrs are the node's underlay (InternalIP) addresses, at most one per
	// family.
	Addrs []netip.Addr
	// PodCIDRs are the node's pod ranges, at most one per family.
	PodCIDRs []netip.Prefix
}

// Addr returns the node's address of the same family as p, if any.
func (n Node) Addr(is4 bool) (netip.Addr, bool) {
	for _, a := range n.Addrs {
		if a.Is4() == is4 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (n Node) String() string {
	var a, c []string
	for _, x := range n.Addrs {
		a = append(a, x.String())
	}
	for _, x := range n.PodCIDRs {
		c = append(c, x.String())
	}
	return fmt.Sprintf("%s addrs=%s podCIDRs=%s", n.Name, strings.Join(a, ","), strings.Join(c, ","))
}

// SortNodes orders nodes by name, for stable output.
func SortNodes(ns []Node) {
	sort.Slice(ns, func(i, j int) bool { return ns[i].Name < ns[j].Name })
}
