package nft

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
)

// Proxy keeps the proxy's table (inet podnet-proxy) equal to the skeleton
// plus one fragment per Service.
//
// It remembers what it committed. An incremental sync diffs each changed
// Service's new fragment against its committed one and sends only the
// difference, in one transaction; it never reads the table back. A full
// sync (the first one, any after a failure, and whenever the caller asks)
// lists only the names of the table's chains and sets, to delete the ones
// nobody wants, and rewrites everything else.
//
// Map and set elements are reference-counted by owner: two Services may
// legitimately render the same element (a pod backing both wants one
// hairpin entry), and two may conflict (the same external IP and port).
// The element goes away with its last owner, and of conflicting values the
// owner that sorts first wins, deterministically, until it leaves.
type Proxy struct {
	nsPath string
	nft    knftables.Interface

	needFull bool
	skel     *proxy.Skeleton
	frags    map[string]proxy.Fragment
	elems    map[elemKey]*elemEntry
	isMap    map[string]bool
	// shared counts the fragments holding each shared chain.
	shared map[string]int
}

type elemKey struct{ set, key string }

// elemEntry is one element of a set or map. Nearly every element has one
// owner, and a table holds hundreds of thousands of them, so the owners
// are a small slice sorted by owner rather than a map (a map per element
// cost about half of the proxy's memory at 30,000 Services).
type elemEntry struct {
	owners []owned
	// held and present are what the kernel holds.
	held    content
	present bool
}

type owned struct {
	owner string
	content
}

// content is what an element carries besides its key.
type content struct {
	value   string
	comment string
}

// set records owner's value for the element.
func (e *elemEntry) set(owner, value, comment string) {
	c := content{value, comment}
	i, found := slices.BinarySearchFunc(e.owners, owner, func(o owned, k string) int { return strings.Compare(o.owner, k) })
	if found {
		e.owners[i].content = c
		return
	}
	e.owners = slices.Insert(e.owners, i, owned{owner, c})
}

// drop forgets owner's claim on the element.
func (e *elemEntry) drop(owner string) {
	i, found := slices.BinarySearchFunc(e.owners, owner, func(o owned, k string) int { return strings.Compare(o.owner, k) })
	if found {
		e.owners = slices.Delete(e.owners, i, i+1)
	}
}

// winner is what the element should carry: the first owner's.
func (e *elemEntry) winner() (content, bool) {
	if len(e.owners) == 0 {
		return content{}, false
	}
	return e.owners[0].content, true
}

func (e *elemEntry) clone() *elemEntry {
	c := *e
	c.owners = slices.Clone(e.owners)
	return &c
}

// skeletonOwner owns the skeleton's elements; it cannot clash with a
// Service key, which always holds a slash.
const skeletonOwner = "\x00skeleton"

// NewProxy binds to the namespace at nsPath ("" for the current one).
func NewProxy(nsPath string) (*Proxy, error) {
	p := &Proxy{nsPath: nsPath}
	err := p.do(func() (err error) {
		p.nft, err = newNFT(knftables.InetFamily, proxy.Table)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	p.reset()
	return p, nil
}

// NewProxyWith uses a given knftables interface, for tests with its Fake.
func NewProxyWith(nft knftables.Interface) *Proxy {
	p := &Proxy{nft: nft}
	p.reset()
	return p
}

func (p *Proxy) reset() {
	p.needFull = true
	p.frags = map[string]proxy.Fragment{}
	p.elems = map[elemKey]*elemEntry{}
	p.isMap = map[string]bool{}
	p.shared = map[string]int{}
}

func (p *Proxy) do(fn func() error) error {
	if p.nsPath == "" {
		return fn()
	}
	return netns.Do(p.nsPath, fn)
}

// RequestFull makes the next sync a full one.
func (p *Proxy) RequestFull() { p.needFull = true }

// Stats counts what the table holds, for metrics.
type Stats struct {
	Chains, Rules, Elements, Operations int
	Full                                bool
}

// Sync applies changes (Service key → new fragment, nil for removed) on
// top of the committed state, or rewrites the whole table when a full
// sync is due or the skeleton changed. On error nothing is committed and
// the next sync is a full one.
func (p *Proxy) Sync(ctx context.Context, skel proxy.Skeleton, changes map[string]*proxy.Fragment) (Stats, error) {
	if p.needFull || p.skel == nil || !sameSkeleton(*p.skel, skel) {
		frags := make(map[string]proxy.Fragment, len(p.frags)+len(changes))
		for k, f := range p.frags {
			frags[k] = f
		}
		for k, f := range changes {
			if f == nil {
				delete(frags, k)
			} else {
				frags[k] = *f
			}
		}
		return p.full(ctx, skel, frags)
	}
	return p.incremental(ctx, changes)
}

func (p *Proxy) stats(ops int, full bool) Stats {
	s := Stats{Operations: ops, Full: full}
	for _, c := range p.skel.Base {
		s.Chains++
		s.Rules += len(c.Rules)
	}
	for _, c := range p.skel.Chains {
		s.Chains++
		s.Rules += len(c.Rules)
	}
	seen := map[string]bool{}
	for _, f := range p.frags {
		for _, c := range f.Chains {
			if c.Shared {
				if seen[c.Name] {
					continue
				}
				seen[c.Name] = true
			}
			s.Chains++
			s.Rules += len(c.Rules)
		}
	}
	for _, e := range p.elems {
		if e.present {
			s.Elements++
		}
	}
	return s
}

func (p *Proxy) full(ctx context.Context, skel proxy.Skeleton, frags map[string]proxy.Fragment) (Stats, error) {
	existing := map[string]map[string]bool{"chain": {}, "set": {}, "map": {}}
	err := p.do(func() error {
		// One listing of the table's objects (one run of nft), not one per
		// kind: at start-up each run is a noticeable share of a small
		// cluster's first sync.
		all, err := p.nft.ListAll(ctx)
		if err != nil && !knftables.IsNotFound(err) {
			return fmt.Errorf("list the table: %w", err)
		}
		for kind, names := range all {
			if existing[kind] == nil {
				continue // counters: added, never deleted
			}
			for _, n := range names {
				existing[kind][n] = true
			}
		}
		return nil
	})
	if err != nil {
		p.needFull = true
		return Stats{}, err
	}
	tx := p.nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("podnet: Services (kube-proxy replacement); see docs/nftables.md")})
	for _, c := range skel.Counters {
		// add, not create: an existing counter keeps its value.
		tx.Add(&knftables.Counter{Name: c})
	}
	isMap := map[string]bool{}
	wantSets := map[string]bool{}
	addSet := func(s proxy.Set) {
		wantSets[s.Name] = true
		isMap[s.Name] = s.IsMap()
		p.addSet(tx, s)
		p.flushSet(tx, s.Name, s.IsMap())
	}
	for _, s := range skel.Sets {
		addSet(s)
	}
	wantChains := map[string]bool{}
	for _, c := range skel.Base {
		wantChains[c.Name] = true
		tx.Add(&knftables.Chain{Name: c.Name, Type: knftables.PtrTo(knftables.BaseChainType(c.Type)),
			Hook: knftables.PtrTo(knftables.BaseChainHook(c.Hook)), Priority: knftables.PtrTo(knftables.BaseChainPriority(c.Priority))})
		tx.Flush(&knftables.Chain{Name: c.Name})
	}
	addChain := func(c proxy.Chain) {
		wantChains[c.Name] = true
		tx.Add(&knftables.Chain{Name: c.Name})
		tx.Flush(&knftables.Chain{Name: c.Name})
	}
	keys := sortedKeys(frags)
	for _, c := range skel.Chains {
		addChain(c)
	}
	shared := map[string]int{}
	for _, k := range keys {
		for _, s := range frags[k].Sets {
			if !wantSets[s.Name] {
				addSet(s)
			}
		}
		for _, c := range frags[k].Chains {
			if c.Shared {
				shared[c.Name]++
				if shared[c.Name] > 1 {
					continue
				}
			}
			addChain(c)
		}
	}
	// Rules go in once every chain exists, as they jump between them.
	for _, c := range skel.Base {
		addRules(tx, c.Chain)
	}
	for _, c := range skel.Chains {
		addRules(tx, c)
	}
	ruled := map[string]bool{}
	for _, k := range keys {
		for _, c := range frags[k].Chains {
			if c.Shared {
				if ruled[c.Name] {
					continue
				}
				ruled[c.Name] = true
			}
			addRules(tx, c)
		}
	}
	elems := map[elemKey]*elemEntry{}
	own := func(owner string, es []proxy.Element) {
		for _, e := range es {
			k := elemKey{e.Set, e.Key}
			en := elems[k]
			if en == nil {
				en = &elemEntry{}
				elems[k] = en
			}
			en.set(owner, e.Value, e.Comment)
		}
	}
	own(skeletonOwner, skel.Elements)
	for _, k := range keys {
		own(k, frags[k].Elements)
	}
	// With the nft binary, the elements go as text after the rest of the
	// transaction, in the same batch (see elementWriter).
	tr, direct := p.nft.(textRunner)
	ew := &elementWriter{family: string(knftables.InetFamily), table: proxy.Table}
	for _, k := range sortedElemKeys(elems) {
		en := elems[k]
		en.held, en.present = en.winner()
		if direct {
			ew.add(k.set, k.key, en.held.value, en.held.comment)
		} else {
			tx.Add(element(k.set, isMap[k.set], k.key, en.held))
		}
	}
	// Whatever else is in the table is stale: empty the chains first, so
	// that deleting one does not trip over a jump from another.
	var stale []string
	for n := range existing["chain"] {
		if !wantChains[n] {
			stale = append(stale, n)
		}
	}
	sort.Strings(stale)
	for _, n := range stale {
		tx.Flush(&knftables.Chain{Name: n})
	}
	for _, n := range stale {
		tx.Delete(&knftables.Chain{Name: n})
	}
	for _, kind := range []string{"set", "map"} {
		for n := range existing[kind] {
			if !wantSets[n] {
				if kind == "map" {
					tx.Delete(&knftables.Map{Name: n})
				} else {
					tx.Delete(&knftables.Set{Name: n})
				}
			}
		}
	}
	run := func() error { return p.nft.Run(ctx, tx) }
	if direct {
		run = func() error { return tr.RunWithText(ctx, tx, ew.String()) }
	}
	if err := p.do(run); err != nil {
		p.needFull = true
		return Stats{}, fmt.Errorf("full sync: %w", err)
	}
	p.needFull = false
	p.skel = &skel
	p.frags = frags
	p.elems = elems
	p.isMap = isMap
	p.shared = shared
	return p.stats(tx.NumOperations()+ew.total, true), nil
}

func (p *Proxy) incremental(ctx context.Context, changes map[string]*proxy.Fragment) (Stats, error) {
	tx := p.nft.NewTransaction()
	staged := map[elemKey]*elemEntry{}
	stage := func(k elemKey) *elemEntry {
		if e, ok := staged[k]; ok {
			return e
		}
		e, ok := p.elems[k]
		if ok {
			e = e.clone()
		} else {
			e = &elemEntry{}
		}
		staged[k] = e
		return e
	}
	isMap := map[string]bool{}
	var goneChains []string
	var goneSets []proxy.Set
	// Holders of shared chains, staged: a chain one Service leaves and
	// another takes in the same sync stays.
	refs := map[string]int{}
	sharedDef := map[string]proxy.Chain{}
	hold := func(c proxy.Chain, d int) {
		n, ok := refs[c.Name]
		if !ok {
			n = p.shared[c.Name]
		}
		refs[c.Name] = n + d
		if d > 0 {
			sharedDef[c.Name] = c
		}
	}
	keys := make([]string, 0, len(changes))
	for k := range changes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Pass 1: new sets and chains, and rules of new or changed chains.
	for _, k := range keys {
		old, nf := p.frags[k], changes[k]
		var next proxy.Fragment
		if nf != nil {
			next = *nf
		}
		oldSets := map[string]bool{}
		for _, s := range old.Sets {
			oldSets[s.Name] = true
		}
		newSets := map[string]bool{}
		for _, s := range next.Sets {
			newSets[s.Name] = true
			isMap[s.Name] = s.IsMap()
			if !oldSets[s.Name] {
				p.addSet(tx, s)
			}
		}
		for _, s := range old.Sets {
			if !newSets[s.Name] {
				goneSets = append(goneSets, s)
			}
		}
		oldChains := map[string][]string{}
		oldShared := map[string]bool{}
		for _, c := range old.Chains {
			if c.Shared {
				oldShared[c.Name] = true
			} else {
				oldChains[c.Name] = c.Rules
			}
		}
		newChains := map[string]bool{}
		for _, c := range next.Chains {
			if c.Shared {
				newChains[c.Name] = true
				if !oldShared[c.Name] {
					hold(c, +1)
				}
				continue
			}
			newChains[c.Name] = true
			if _, ok := oldChains[c.Name]; !ok {
				tx.Add(&knftables.Chain{Name: c.Name})
			}
		}
		for _, c := range next.Chains {
			if c.Shared {
				continue
			}
			rules, ok := oldChains[c.Name]
			switch {
			case !ok:
				addRules(tx, c)
			case !slices.Equal(rules, c.Rules):
				tx.Flush(&knftables.Chain{Name: c.Name})
				addRules(tx, c)
			}
		}
		for _, c := range old.Chains {
			switch {
			case newChains[c.Name]:
			case c.Shared:
				hold(c, -1)
			default:
				goneChains = append(goneChains, c.Name)
			}
		}
		for _, e := range old.Elements {
			k2 := elemKey{e.Set, e.Key}
			stage(k2).drop(k)
		}
		for _, e := range next.Elements {
			k2 := elemKey{e.Set, e.Key}
			stage(k2).set(k, e.Value, e.Comment)
		}
	}
	// Shared chains gaining their first holder are added before the
	// elements that jump to them; those losing their last go with the
	// other unused chains, after the elements.
	for _, n := range sortedKeys(refs) {
		before, after := p.shared[n], refs[n]
		switch {
		case before == 0 && after > 0:
			tx.Add(&knftables.Chain{Name: n})
			addRules(tx, sharedDef[n])
		case before > 0 && after == 0:
			goneChains = append(goneChains, n)
		}
	}
	// Pass 2: elements, deletions before additions, so that a changed
	// value is a delete and an add of the same key.
	ekeys := sortedElemKeys(staged)
	mapOf := func(set string) bool {
		if m, ok := isMap[set]; ok {
			return m
		}
		return p.isMap[set]
	}
	for _, k := range ekeys {
		e := staged[k]
		v, want := e.winner()
		if e.present && (!want || v != e.held) {
			tx.Delete(element(k.set, mapOf(k.set), k.key, content{}))
		}
	}
	for _, k := range ekeys {
		e := staged[k]
		v, want := e.winner()
		if want && (!e.present || v != e.held) {
			tx.Add(element(k.set, mapOf(k.set), k.key, v))
		}
		e.held, e.present = v, want
	}
	// Pass 3: chains and sets nobody refers to any more.
	for _, n := range goneChains {
		tx.Flush(&knftables.Chain{Name: n})
	}
	for _, n := range goneChains {
		tx.Delete(&knftables.Chain{Name: n})
	}
	for _, s := range goneSets {
		if s.IsMap() {
			tx.Delete(&knftables.Map{Name: s.Name})
		} else {
			tx.Delete(&knftables.Set{Name: s.Name})
		}
	}
	if tx.NumOperations() > 0 {
		if err := p.do(func() error { return p.nft.Run(ctx, tx) }); err != nil {
			p.needFull = true
			return Stats{}, fmt.Errorf("incremental sync: %w", err)
		}
	}
	for _, k := range keys {
		if changes[k] == nil {
			delete(p.frags, k)
		} else {
			p.frags[k] = *changes[k]
		}
	}
	for k, e := range staged {
		if len(e.owners) == 0 && !e.present {
			delete(p.elems, k)
		} else {
			p.elems[k] = e
		}
	}
	for n, m := range isMap {
		p.isMap[n] = m
	}
	for n, c := range refs {
		if c > 0 {
			p.shared[n] = c
		} else {
			delete(p.shared, n)
		}
	}
	return p.stats(tx.NumOperations(), false), nil
}

// Delete removes the table, if present.
func (p *Proxy) Delete(ctx context.Context) error {
	tx := p.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	err := p.do(func() error { return p.nft.Run(ctx, tx) })
	p.reset()
	return err
}

func (p *Proxy) addSet(tx *knftables.Transaction, s proxy.Set) {
	var flags []knftables.SetFlag
	for _, f := range s.Flags {
		flags = append(flags, knftables.SetFlag(f))
	}
	var timeout *time.Duration
	if s.Timeout > 0 {
		timeout = knftables.PtrTo(s.Timeout)
	}
	if s.IsMap() {
		tx.Add(&knftables.Map{Name: s.Name, Type: s.Type, TypeOf: s.TypeOf, Flags: flags, Timeout: timeout})
	} else {
		tx.Add(&knftables.Set{Name: s.Name, Type: s.Type, TypeOf: s.TypeOf, Flags: flags, Timeout: timeout})
	}
}

func (p *Proxy) flushSet(tx *knftables.Transaction, name string, isMap bool) {
	if isMap {
		tx.Flush(&knftables.Map{Name: name})
	} else {
		tx.Flush(&knftables.Set{Name: name})
	}
}

func element(set string, isMap bool, key string, c content) *knftables.Element {
	e := &knftables.Element{Key: []string{key}}
	if c.value != "" {
		e.Value = []string{c.value}
	}
	if c.comment != "" {
		e.Comment = &c.comment
	}
	if isMap {
		e.Map = set
	} else {
		e.Set = set
	}
	return e
}

func addRules(tx *knftables.Transaction, c proxy.Chain) {
	for _, r := range c.Rules {
		tx.Add(&knftables.Rule{Chain: c.Name, Rule: r})
	}
}

func sameSkeleton(a, b proxy.Skeleton) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedElemKeys(m map[elemKey]*elemEntry) []elemKey {
	out := make([]elemKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].set != out[j].set {
			return out[i].set < out[j].set
		}
		return out[i].key < out[j].key
	})
	return out
}

// Counters reads the table's named counters.
func (p *Proxy) Counters(ctx context.Context) (map[string]Count, error) {
	return listCounters(ctx, p.nft, p.do)
}
