package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// nftables refuses overlapping intervals in one set, and a set of
// concatenations (address . protocol . port) is no exception. Everything a
// group allows is therefore decomposed here into disjoint pieces: address
// ranges are merged, and port ranges are cut at every boundary any rule
// uses, so that each (port piece, address piece) pair appears once.

// addrRange is an inclusive range of one family.
type addrRange struct{ lo, hi netip.Addr }

func (r addrRange) String() string {
	if r.lo == r.hi {
		return r.lo.String()
	}
	return r.lo.String() + "-" + r.hi.String()
}

func prefixRange(p netip.Prefix) addrRange {
	p = p.Masked()
	lo := p.Addr()
	b := lo.AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	hi, _ := netip.AddrFromSlice(b)
	return addrRange{lo, hi}
}

func allRange(is4 bool) addrRange {
	if is4 {
		return prefixRange(netip.MustParsePrefix("0.0.0.0/0"))
	}
	return prefixRange(netip.MustParsePrefix("::/0"))
}

// mergeRanges sorts and merges ranges of one family into disjoint,
// non-adjacent ones.
func mergeRanges(rs []addrRange) []addrRange {
	if len(rs) <= 1 {
		return rs
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b addrRange) int { return a.lo.Compare(b.lo) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if next := last.hi.Next(); r.lo.Compare(last.hi) <= 0 || (next.IsValid() && next == r.lo) {
			if r.hi.Compare(last.hi) > 0 {
				last.hi = r.hi
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtract removes cut from the disjoint sorted ranges rs.
func subtract(rs []addrRange, cut addrRange) []addrRange {
	var out []addrRange
	for _, r := range rs {
		if cut.hi.Compare(r.lo) < 0 || cut.lo.Compare(r.hi) > 0 {
			out = append(out, r)
			continue
		}
		if cut.lo.Compare(r.lo) > 0 {
			out = append(out, addrRange{r.lo, cut.lo.Prev()})
		}
		if cut.hi.Compare(r.hi) < 0 {
			out = append(out, addrRange{cut.hi.Next(), r.hi})
		}
	}
	return out
}

// portRange is an inclusive range of ports of one protocol.
type portRange struct {
	proto  string
	lo, hi uint16
}

// grant allows addrs on the given port range; a zero proto (any) allows
// every protocol and port.
type grant struct {
	addrs []addrRange
	port  portRange
}

// decompose turns grants of one family into disjoint set elements: any
// holds address ranges allowed on everything; ports holds "addr . proto .
// port" elements. Both are sorted, for stable output and comparison.
func decompose(grants []grant) (any, ports []string) {
	var anyAddrs []addrRange
	byProto := map[string][]grant{}
	for _, g := range grants {
		if g.port.proto == "" {
			anyAddrs = append(anyAddrs, g.addrs...)
		} else {
			byProto[g.port.proto] = append(byProto[g.port.proto], g)
		}
	}
	for _, r := range mergeRanges(anyAddrs) {
		any = append(any, r.String())
	}
	protos := make([]string, 0, len(byProto))
	for p := range byProto {
		protos = append(protos, p)
	}
	slices.Sort(protos)
	for _, proto := range protos {
		gs := mergeSamePorts(byProto[proto])
		// Cut the port line at every range boundary.
		var cuts []int
		for _, g := range gs {
			cuts = append(cuts, int(g.port.lo), int(g.port.hi)+1)
		}
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)
		var prevAddrs []addrRange
		prevLo, prevHi := -1, -1
		flush := func() {
			if prevLo < 0 {
				return
			}
			ps := fmt.Sprint(prevLo)
			if prevHi != prevLo {
				ps = fmt.Sprintf("%d-%d", prevLo, prevHi)
			}
			for _, r := range prevAddrs {
				ports = append(ports, r.String()+" . "+proto+" . "+ps)
			}
		}
		for i := 0; i+1 < len(cuts); i++ {
			lo, hi := cuts[i], cuts[i+1]-1
			var addrs []addrRange
			for _, g := range gs {
				if int(g.port.lo) <= lo && hi <= int(g.port.hi) {
					addrs = append(addrs, g.addrs...)
				}
			}
			addrs = mergeRanges(addrs)
			if prevLo >= 0 && prevHi+1 == lo && slices.Equal(addrs, prevAddrs) {
				prevHi = hi
				continue
			}
			flush()
			prevLo, prevHi, prevAddrs = lo, hi, addrs
			if len(addrs) == 0 {
				prevLo = -1
			}
		}
		flush()
	}
	slices.Sort(ports)
	return any, ports
}

// mergeSamePorts folds grants on the same port range together, so the cut
// below costs per distinct range, not per rule.
func mergeSamePorts(gs []grant) []grant {
	idx := map[portRange]int{}
	var out []grant
	for _, g := range gs {
		if i, ok := idx[g.port]; ok {
			out[i].addrs = append(out[i].addrs, g.addrs...)
			continue
		}
		idx[g.port] = len(out)
		out = append(out, grant{addrs: slices.Clone(g.addrs), port: g.port})
	}
	return out
}

func joinElems(xs []string) string { return strings.Join(xs, ", ") }
