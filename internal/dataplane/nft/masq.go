// Package nft programs podnet's nftables tables. Each component owns one
// private table and rewrites it in one atomic transaction; see
// docs/nftables.md for the hooks and priorities, so that other software can
// coexist with it.
package nft

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/netns"
)

// RoutingTable is the table that holds the node's masquerade rules.
const RoutingTable = "podnet-routing"

// MasqConfig says which traffic leaves the cluster: traffic from a pod
// range to anything outside the cluster's pod and service ranges, going out
// through one of the uplinks, is masqueraded to the node's address.
// Pod-to-pod traffic, in any mode, keeps its source address.
type MasqConfig struct {
	Uplinks   []string
	PodRanges []netip.Prefix
	// Internal are the destinations that are never masqueraded: the
	// cluster's pod ranges and service ranges.
	Internal []netip.Prefix
}

// Equal reports whether two configs render the same rules.
func (c MasqConfig) Equal(o MasqConfig) bool { return c.key() == o.key() }

func (c MasqConfig) key() string {
	return fmt.Sprint(c.Uplinks, c.PodRanges, c.Internal)
}

// Masq owns the routing table in one network namespace.
type Masq struct {
	nsPath string
	nft    knftables.Interface
}

// NewMasq binds to the namespace at nsPath ("" for the current one). nft
// runs as a child process, so it is started inside that namespace.
func NewMasq(nsPath string) (*Masq, error) {
	m := &Masq{nsPath: nsPath}
	err := m.do(func() (err error) {
		m.nft, err = newNFT(knftables.InetFamily, RoutingTable)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return m, nil
}

// NewMasqWith uses a given knftables interface, for tests with its Fake.
func NewMasqWith(nft knftables.Interface) *Masq { return &Masq{nft: nft} }

func (m *Masq) do(fn func() error) error {
	if m.nsPath == "" {
		return fn()
	}
	return netns.Do(m.nsPath, fn)
}

// CounterForwarded counts the packets the node forwards.
const CounterForwarded = "forwarded"

// Counters reads the table's named counters.
func (m *Masq) Counters(ctx context.Context) (map[string]Count, error) {
	return listCounters(ctx, m.nft, m.do)
}

// Sync rewrites the table to match c, atomically.
func (m *Masq) Sync(ctx context.Context, c MasqConfig) error {
	tx := m.nft.NewTransaction()
	Render(tx, c)
	return m.do(func() error { return m.nft.Run(ctx, tx) })
}

// Delete removes the table, if present.
func (m *Masq) Delete(ctx context.Context) error {
	tx := m.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	return m.do(func() error { return m.nft.Run(ctx, tx) })
}

// Render writes the whole table into tx: it creates the skeleton if
// missing, then flushes and refills it, so the result does not depend on
// what was there before.
func Render(tx *knftables.Transaction, c MasqConfig) {
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("podnet: masquerade of pod traffic leaving the cluster")})
	chain := "nat-postrouting"
	tx.Add(&knftables.Chain{
		Name: chain, Type: knftables.PtrTo(knftables.NATType),
		Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority),
	})
	tx.Flush(&knftables.Chain{Name: chain})
	// Packets the node forwarded, counted after every filter of podnet's
	// (policy at -5, the proxy's at -10) has had its say.
	tx.Add(&knftables.Counter{Name: CounterForwarded})
	tx.Add(&knftables.Chain{
		Name: "forward-count", Type: knftables.PtrTo(knftables.FilterType),
		Hook: knftables.PtrTo(knftables.ForwardHook), Priority: knftables.PtrTo(knftables.FilterPriority + "+100"),
	})
	tx.Flush(&knftables.Chain{Name: "forward-count"})
	tx.Add(&knftables.Rule{Chain: "forward-count", Rule: fmt.Sprintf("counter name %q", CounterForwarded)})
	for _, fam := range []struct{ v, ip, typ string }{{"4", "ip", "ipv4_addr"}, {"6", "ip6", "ipv6_addr"}} {
		for _, set := range []struct {
			name  string
			elems []netip.Prefix
		}{{"pod-ranges-v" + fam.v, c.PodRanges}, {"internal-v" + fam.v, c.Internal}} {
			tx.Add(&knftables.Set{Name: set.name, Type: fam.typ, Flags: []knftables.SetFlag{knftables.IntervalFlag}})
			tx.Flush(&knftables.Set{Name: set.name})
			for _, p := range set.elems {
				if p.Addr().Is4() == (fam.v == "4") {
					tx.Add(&knftables.Element{Set: set.name, Key: []string{p.String()}})
				}
			}
		}
		if len(c.Uplinks) == 0 {
			continue
		}
		tx.Add(&knftables.Rule{Chain: chain, Rule: knftables.Concat(
			"oifname", "{", strings.Join(quote(c.Uplinks), ", "), "}",
			fam.ip, "saddr", "@pod-ranges-v"+fam.v,
			fam.ip, "daddr", "!=", "@internal-v"+fam.v,
			"masquerade",
		)})
	}
}

func quote(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	sort.Strings(out)
	return out
}
