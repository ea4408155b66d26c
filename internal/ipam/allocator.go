// Package ipam hands out pod addresses from a node's pod ranges and keeps
// the allocations in a crash-safe file store.
//
// The allocator itself is pure: it picks the next free address of a range
// given what is in use and where the previous search stopped. Searching from
// the last handed-out address (as host-local does) rotates through the range,
// so an address that was just released is the last one to be reused. That
// keeps a new pod from inheriting a deleted pod's address while peers still
// hold conntrack entries or cached endpoints for it.
package ipam

import (
	"fmt"
	"net/netip"
)

// reservedHead is the number of addresses at the start of each range that
// are never handed to pods: the network address, and the first host
// address, which the node keeps for itself (for example as the source
// address of an overlay device).
const reservedHead = 2

// ErrExhausted is returned (wrapped) when a range has no free address.
type ErrExhausted struct{ Range netip.Prefix }

func (e *ErrExhausted) Error() string {
	return fmt.Sprintf("range %s exhausted: no free address", e.Range)
}

// First returns the first address of r that may be given to a pod.
func First(r netip.Prefix) netip.Addr {
	a := r.Masked().Addr()
	for i := 0; i < reservedHead; i++ {
		a = a.Next()
	}
	return a
}

// Last returns the last address of r that may be given to a pod. For IPv4
// the broadcast address is excluded.
func Last(r netip.Prefix) netip.Addr {
	a := lastAddr(r)
	if r.Addr().Is4() {
		a = a.Prev()
	}
	return a
}

// Size is the number of addresses of r that may be given to pods, capped
// at 1<<62 so it fits an int64 for large IPv6 ranges.
func Size(r netip.Prefix) int64 {
	hostBits := r.Addr().BitLen() - r.Bits()
	if hostBits >= 62 {
		return 1 << 62
	}
	n := int64(1)<<hostBits - reservedHead
	if r.Addr().Is4() {
		n--
	}
	if n < 0 {
		return 0
	}
	return n
}

func lastAddr(r netip.Prefix) netip.Addr {
	b := r.Masked().Addr().AsSlice()
	bits := r.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// ValidateRange checks that r can serve at least one pod.
func ValidateRange(r netip.Prefix) error {
	if !r.IsValid() {
		return fmt.Errorf("invalid range")
	}
	if r != r.Masked() {
		return fmt.Errorf("range %s has host bits set (did you mean %s?)", r, r.Masked())
	}
	if Size(r) < 1 {
		return fmt.Errorf("range %s is too small to hold a pod address", r)
	}
	return nil
}

// Next returns the first free address of r strictly after last (wrapping
// around), skipping every address for which inUse reports true. A zero or
// out-of-range last starts the search at the beginning of the range.
func Next(r netip.Prefix, last netip.Addr, inUse func(netip.Addr) bool) (netip.Addr, error) {
	first, end := First(r), Last(r)
	if first.Compare(end) > 0 {
		return netip.Addr{}, &ErrExhausted{Range: r}
	}
	start := first
	if last.IsValid() && r.Contains(last) && last.Compare(first) >= 0 && last.Compare(end) < 0 {
		start = last.Next()
	}
	// Walk from start to the end of the range, then wrap to first. The walk
	// is bounded by the number of addresses in use, so a huge IPv6 range
	// costs no more than a small one.
	a := start
	for {
		if !inUse(a) {
			return a, nil
		}
		if a == end {
			a = first
		} else {
			a = a.Next()
		}
		if a == start {
			return netip.Addr{}, &ErrExhausted{Range: r}
		}
	}
}
