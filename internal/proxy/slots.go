package proxy

import "sort"

// SlotSize is the number of endpoints one Service port (in one family)
// can balance over: its slot is a block of that many keys in the shared
// endpoints map.
const SlotSize = 1 << 12

// Slots hands out blocks of keys in the endpoints maps, one per Service
// port and family that has more than one endpoint. A slot is stable for
// as long as its owner exists, so an endpoint change rewrites only the
// owner's elements and its one rule.
type Slots struct {
	byID map[string]uint32
	free []uint32
	next uint32
}

// NewSlots makes an empty allocator.
func NewSlots() *Slots { return &Slots{byID: map[string]uint32{}} }

// Get returns the base key of id's slot, allocating one if needed.
func (s *Slots) Get(id string) uint32 {
	if b, ok := s.byID[id]; ok {
		return b
	}
	var idx uint32
	if n := len(s.free); n > 0 {
		idx, s.free = s.free[n-1], s.free[:n-1]
	} else {
		idx = s.next
		s.next++
	}
	s.byID[id] = idx * SlotSize
	return idx * SlotSize
}

// Release returns id's slot, if it has one.
func (s *Slots) Release(id string) {
	b, ok := s.byID[id]
	if !ok {
		return
	}
	delete(s.byID, id)
	s.free = append(s.free, b/SlotSize)
	// Reuse low slots first, for a compact map.
	sort.Slice(s.free, func(i, j int) bool { return s.free[i] > s.free[j] })
}
