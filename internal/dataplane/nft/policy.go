package nft

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/netpol"
)

// PolicyTable is NetworkPolicy's table (inet podnet-policy).
const PolicyTable = "podnet-policy"

// PolicyLogPrefix starts the nflog prefix of every policy drop; the group
// chain's ID and direction follow it.
const PolicyLogPrefix = "podnet-policy "

// CounterPolicyDropped counts every packet policy drops. A full sync
// re-creates the table and so restarts it from zero; readers keep their
// own monotonic totals.
const CounterPolicyDropped = "dropped"

// Counters reads the table's named counters.
func (p *Policy) Counters(ctx context.Context) (map[string]Count, error) {
	return listCounters(ctx, p.nft, p.do)
}

// Policy keeps the policy table equal to a netpol.Desired.
//
// The table's one base chain sits on the forward hook, after the proxy's
// DNAT (prerouting) and so on real pod addresses. Established traffic
// passes first; then the source address (if it is an isolated local pod)
// jumps through the egress map to its group's chain, and the destination
// through the ingress map. A group chain returns when its sets admit the
// packet, and otherwise logs it to nflog and drops it. Traffic between a
// pod and its own node never crosses the forward hook (it is input or
// output), which is how that traffic always passes.
//
// Groups are content-addressed (see netpol.Group), so an incremental sync
// only adds whole new groups, repoints map entries and removes unused
// groups, from the committed state held here: the table is never read back.
type Policy struct {
	nsPath   string
	nft      knftables.Interface
	group    int // nflog group
	needFull bool

	groups          map[string]*netpol.Group
	ingress, egress map[netip.Addr]string
	local           map[netip.Addr]bool
}

// NewPolicy binds to the namespace at nsPath ("" for the current one);
// drops are logged to nflog group nflogGroup.
func NewPolicy(nsPath string, nflogGroup int) (*Policy, error) {
	p := &Policy{nsPath: nsPath, group: nflogGroup, needFull: true}
	err := p.do(func() (err error) {
		p.nft, err = newNFT(knftables.InetFamily, PolicyTable)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return p, nil
}

// NewPolicyWith uses a given knftables interface, for tests with its Fake.
func NewPolicyWith(nft knftables.Interface, nflogGroup int) *Policy {
	return &Policy{nft: nft, group: nflogGroup, needFull: true}
}

func (p *Policy) do(fn func() error) error {
	if p.nsPath == "" {
		return fn()
	}
	return netns.Do(p.nsPath, fn)
}

// RequestFull makes the next sync a full one.
func (p *Policy) RequestFull() { p.needFull = true }

// Sync makes the table match d. A full sync replaces the table in one
// transaction (deleting and re-creating it atomically, so no packet sees
// it half-built); an incremental one sends only the difference. After a
// failure the next sync is a full one.
func (p *Policy) Sync(ctx context.Context, d *netpol.Desired) (Stats, error) {
	tx := p.nft.NewTransaction()
	full := p.needFull || p.groups == nil
	if full {
		p.fullTx(tx, d)
	} else {
		p.incrementalTx(tx, d)
	}
	ops := tx.NumOperations()
	if ops > 0 {
		if err := p.do(func() error { return p.nft.Run(ctx, tx) }); err != nil {
			p.needFull = true
			return Stats{}, fmt.Errorf("policy table: %w", err)
		}
	}
	p.needFull = false
	p.groups = d.Groups
	p.ingress, p.egress = d.Ingress, d.Egress
	p.local = map[netip.Addr]bool{}
	for _, a := range d.Local {
		p.local[a] = true
	}
	st := Stats{Operations: ops, Full: full, Chains: 1 + len(d.Groups), Rules: 8}
	for _, g := range d.Groups {
		st.Rules += len(groupRules(g, p.group))
		for fam := range g.Any {
			st.Elements += len(g.Any[fam]) + len(g.Ports[fam])
		}
	}
	st.Elements += len(d.Ingress) + len(d.Egress) + len(d.Local)
	return st, nil
}

// Delete removes the table (policy turned off).
func (p *Policy) Delete(ctx context.Context) error {
	tx := p.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	p.groups, p.needFull = nil, true
	return p.do(func() error { return p.nft.Run(ctx, tx) })
}

func (p *Policy) fullTx(tx *knftables.Transaction, d *netpol.Desired) {
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("podnet: NetworkPolicy; see docs/nftables.md")})
	tx.Add(&knftables.Counter{Name: CounterPolicyDropped})
	for _, fam := range []string{"4", "6"} {
		addr := "ipv" + fam + "_addr"
		tx.Add(&knftables.Set{Name: "self" + fam, Type: addr + " . " + addr})
		tx.Add(&knftables.Map{Name: "ingress" + fam, Type: addr + " : verdict"})
		tx.Add(&knftables.Map{Name: "egress" + fam, Type: addr + " : verdict"})
	}
	tx.Add(&knftables.Chain{Name: "forward", Type: knftables.PtrTo(knftables.FilterType), Hook: knftables.PtrTo(knftables.ForwardHook),
		Priority: knftables.PtrTo(knftables.FilterPriority + "-5"), Policy: knftables.PtrTo(knftables.AcceptPolicy)})
	for _, r := range []string{
		"ct state established,related accept",
		"ip saddr . ip daddr @self4 accept",
		"ip6 saddr . ip6 daddr @self6 accept",
		"ip saddr vmap @egress4",
		"ip6 saddr vmap @egress6",
		"ip daddr vmap @ingress4",
		"ip6 daddr vmap @ingress6",
	} {
		tx.Add(&knftables.Rule{Chain: "forward", Rule: r})
	}
	for _, g := range sortedGroups(d.Groups) {
		p.addGroup(tx, g)
	}
	for _, a := range d.Local {
		tx.Add(selfElem(a))
	}
	for _, a := range sortedAddrs(d.Ingress) {
		tx.Add(mapElem(true, a, d.Ingress[a]))
	}
	for _, a := range sortedAddrs(d.Egress) {
		tx.Add(mapElem(false, a, d.Egress[a]))
	}
}

func (p *Policy) incrementalTx(tx *knftables.Transaction, d *netpol.Desired) {
	for _, g := range sortedGroups(d.Groups) {
		if _, ok := p.groups[g.ID]; !ok {
			p.addGroup(tx, g)
		}
	}
	local := map[netip.Addr]bool{}
	for _, a := range d.Local {
		local[a] = true
		if !p.local[a] {
			tx.Add(selfElem(a))
		}
	}
	for a := range p.local {
		if !local[a] {
			tx.Delete(selfElem(a))
		}
	}
	for _, ingress := range []bool{true, false} {
		old, cur := p.egress, d.Egress
		if ingress {
			old, cur = p.ingress, d.Ingress
		}
		for _, a := range sortedAddrs(old) {
			if g, ok := cur[a]; !ok || g != old[a] {
				tx.Delete(mapElem(ingress, a, old[a]))
			}
		}
		for _, a := range sortedAddrs(cur) {
			if g, ok := old[a]; !ok || g != cur[a] {
				tx.Add(mapElem(ingress, a, cur[a]))
			}
		}
	}
	for _, g := range sortedGroups(p.groups) {
		if _, ok := d.Groups[g.ID]; !ok {
			p.deleteGroup(tx, g)
		}
	}
}

func chainName(g *netpol.Group) string {
	if g.Ingress {
		return "in-" + g.ID
	}
	return "eg-" + g.ID
}

func setName(g *netpol.Group, kind string, fam int) string {
	return fmt.Sprintf("%s-%s%d", chainName(g), kind, 4+2*fam)
}

// groupRules renders a group's chain: one lookup per non-empty set, then
// the log and the drop.
func groupRules(g *netpol.Group, nflogGroup int) []string {
	var rules []string
	for fam, ip := range []string{"ip", "ip6"} {
		peer := ip + " daddr"
		if g.Ingress {
			peer = ip + " saddr"
		}
		if len(g.Any[fam]) > 0 {
			rules = append(rules, fmt.Sprintf("%s @%s return", peer, setName(g, "any", fam)))
		}
		if len(g.Ports[fam]) > 0 {
			rules = append(rules, fmt.Sprintf("%s . meta l4proto . th dport @%s return", peer, setName(g, "ports", fam)))
		}
	}
	return append(rules,
		fmt.Sprintf("log prefix %q group %d", PolicyLogPrefix+chainName(g)+" ", nflogGroup),
		fmt.Sprintf("counter name %q drop", CounterPolicyDropped))
}

func (p *Policy) addGroup(tx *knftables.Transaction, g *netpol.Group) {
	chain := chainName(g)
	for fam, addr := range []string{"ipv4_addr", "ipv6_addr"} {
		if len(g.Any[fam]) > 0 {
			name := setName(g, "any", fam)
			tx.Add(&knftables.Set{Name: name, Type: addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}})
			for _, e := range g.Any[fam] {
				tx.Add(&knftables.Element{Set: name, Key: []string{e}})
			}
		}
		if len(g.Ports[fam]) > 0 {
			name := setName(g, "ports", fam)
			tx.Add(&knftables.Set{Name: name, Type: addr + " . inet_proto . inet_service", Flags: []knftables.SetFlag{knftables.IntervalFlag}})
			for _, e := range g.Ports[fam] {
				tx.Add(&knftables.Element{Set: name, Key: []string{e}})
			}
		}
	}
	comment := g.Dir() + " of pods isolated by"
	for _, pn := range g.Policies {
		comment += " " + pn.String()
	}
	if len(comment) > 120 {
		comment = comment[:117] + "..."
	}
	tx.Add(&knftables.Chain{Name: chain, Comment: &comment})
	for _, r := range groupRules(g, p.group) {
		tx.Add(&knftables.Rule{Chain: chain, Rule: r})
	}
}

func (p *Policy) deleteGroup(tx *knftables.Transaction, g *netpol.Group) {
	chain := chainName(g)
	tx.Flush(&knftables.Chain{Name: chain})
	tx.Delete(&knftables.Chain{Name: chain})
	for fam := range g.Any {
		if len(g.Any[fam]) > 0 {
			tx.Delete(&knftables.Set{Name: setName(g, "any", fam)})
		}
		if len(g.Ports[fam]) > 0 {
			tx.Delete(&knftables.Set{Name: setName(g, "ports", fam)})
		}
	}
}

func selfElem(a netip.Addr) *knftables.Element {
	set := "self6"
	if a.Is4() {
		set = "self4"
	}
	return &knftables.Element{Set: set, Key: []string{a.String(), a.String()}}
}

func mapElem(ingress bool, a netip.Addr, id string) *knftables.Element {
	m, chain := "egress", "eg-"+id
	if ingress {
		m, chain = "ingress", "in-"+id
	}
	if a.Is4() {
		m += "4"
	} else {
		m += "6"
	}
	return &knftables.Element{Map: m, Key: []string{a.String()}, Value: []string{"jump " + chain}}
}

func sortedGroups(m map[string]*netpol.Group) []*netpol.Group {
	out := make([]*netpol.Group, 0, len(m))
	for _, g := range m {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *netpol.Group) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func sortedAddrs(m map[netip.Addr]string) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}
