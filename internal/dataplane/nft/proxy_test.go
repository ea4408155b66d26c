package nft

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/proxy"
)

var testSelf = proxy.Self{
	Name:         "n1",
	NodeIPs:      []netip.Addr{netip.MustParseAddr("192.168.77.10"), netip.MustParseAddr("fd77::10")},
	ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")},
}

// world is a random set of Services for the diff tests.
type world struct {
	// slots is shared by every render of the world, so a fresh full sync
	// and the step-by-step one agree on where endpoints go.
	slots *proxy.Slots
	rng   *rand.Rand
	svcs  map[string]model.Service
	eps   map[string]map[model.PortKey][]model.Endpoint
}

func (w *world) randomService(i int) (model.Service, map[model.PortKey][]model.Endpoint) {
	r := w.rng
	s := model.Service{
		ServiceName: model.ServiceName{Namespace: "ns", Name: fmt.Sprintf("s%d", i)},
		ClusterIPs:  []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
		Ports:       []model.ServicePort{{Name: "p", Protocol: model.TCP, Port: 80}},
	}
	if r.IntN(3) == 0 {
		s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr(fmt.Sprintf("fd00:96::%x", i)))
	}
	if r.IntN(2) == 0 {
		s.Ports = append(s.Ports, model.ServicePort{Name: "u", Protocol: model.UDP, Port: 53})
	}
	if r.IntN(3) == 0 {
		s.Ports[0].NodePort = uint16(30000 + i)
		s.ExternalLocal = r.IntN(2) == 0
	}
	if r.IntN(4) == 0 {
		// A shared external IP: several Services may claim the same one.
		s.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.50")}
	}
	s.InternalLocal = r.IntN(5) == 0
	if r.IntN(4) == 0 {
		s.Affinity = time.Duration(1+r.IntN(3)) * time.Minute
	}
	eps := map[model.PortKey][]model.Endpoint{}
	for _, p := range s.Ports {
		k := model.PortKey{ServiceName: s.ServiceName, Port: p.Name, Protocol: p.Protocol}
		for j := range r.IntN(4) {
			node := fmt.Sprintf("n%d", 1+r.IntN(2))
			// Few distinct pod addresses, so Services share hairpin entries.
			eps[k] = append(eps[k], model.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, 1, byte(j + r.IntN(3))}), Port: 8080, Ready: r.IntN(5) > 0, Serving: true, Terminating: r.IntN(5) == 0, NodeName: node})
			if len(s.ClusterIPs) == 2 {
				eps[k] = append(eps[k], model.Endpoint{Addr: netip.MustParseAddr(fmt.Sprintf("fd00:244:1::%x", j+1)), Port: 8080, Ready: true, Serving: true, NodeName: node})
			}
		}
	}
	return s, eps
}

// step adds, changes or deletes a few random Services and returns their
// keys.
func (w *world) step() []string {
	var changed []string
	for range 1 + w.rng.IntN(6) {
		i := w.rng.IntN(25)
		k := fmt.Sprintf("ns/s%d", i)
		if _, ok := w.svcs[k]; ok && w.rng.IntN(3) == 0 {
			delete(w.svcs, k)
			delete(w.eps, k)
		} else {
			w.svcs[k], w.eps[k] = w.randomService(i)
		}
		changed = append(changed, k)
	}
	return changed
}

func fragments(w *world, keys []string) map[string]*proxy.Fragment {
	out := map[string]*proxy.Fragment{}
	for _, k := range keys {
		s, ok := w.svcs[k]
		if !ok {
			out[k] = nil
			continue
		}
		f, _ := proxy.Render(testSelf, s, w.eps[k], w.slots)
		out[k] = &f
	}
	return out
}

// TestIncrementalEqualsFull drives a sequence of random Service changes
// through incremental syncs and checks, after each, that the table equals
// what one full sync of the same Services produces on an empty table.
func TestIncrementalEqualsFull(t *testing.T) {
	ctx := context.Background()
	w := &world{slots: proxy.NewSlots(), rng: rand.New(rand.NewPCG(1, 2)), svcs: map[string]model.Service{}, eps: map[string]map[model.PortKey][]model.Endpoint{}}
	fake := knftables.NewFake(knftables.InetFamily, proxy.Table)
	p := NewProxyWith(fake)
	sk := proxy.NewSkeleton(testSelf)
	for step := range 60 {
		changed := w.step()
		st, err := p.Sync(ctx, sk, fragments(w, changed))
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if step > 0 && st.Full {
			t.Fatalf("step %d: incremental sync expected", step)
		}
		fresh := knftables.NewFake(knftables.InetFamily, proxy.Table)
		var all []string
		for k := range w.svcs {
			all = append(all, k)
		}
		if _, err := NewProxyWith(fresh).Sync(ctx, sk, fragments(w, all)); err != nil {
			t.Fatalf("step %d: full: %v", step, err)
		}
		if got, want := sortedDump(fake), sortedDump(fresh); got != want {
			t.Fatalf("step %d: incremental table differs from a full sync\n%s", step, diffLines(got, want))
		}
	}
}

// TestFullSyncRemovesStaleObjects starts from a table holding chains and
// sets of Services that no longer exist (an agent restarted after they
// were deleted) and checks one full sync removes them.
func TestFullSyncRemovesStaleObjects(t *testing.T) {
	ctx := context.Background()
	fake := knftables.NewFake(knftables.InetFamily, proxy.Table)
	w := &world{slots: proxy.NewSlots(), rng: rand.New(rand.NewPCG(3, 4)), svcs: map[string]model.Service{}, eps: map[string]map[model.PortKey][]model.Endpoint{}}
	sk := proxy.NewSkeleton(testSelf)
	var keys []string
	for i := range 10 {
		k := fmt.Sprintf("ns/s%d", i)
		s, eps := w.randomService(i)
		s.Affinity = time.Minute
		w.svcs[k], w.eps[k] = s, eps
		keys = append(keys, k)
	}
	if _, err := NewProxyWith(fake).Sync(ctx, sk, fragments(w, keys)); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys[3:] {
		delete(w.svcs, k)
	}
	restarted := NewProxyWith(fake)
	if _, err := restarted.Sync(ctx, sk, fragments(w, keys[:3])); err != nil {
		t.Fatal(err)
	}
	fresh := knftables.NewFake(knftables.InetFamily, proxy.Table)
	if _, err := NewProxyWith(fresh).Sync(ctx, sk, fragments(w, keys[:3])); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedDump(fake), sortedDump(fresh); got != want {
		t.Fatalf("stale objects survive a full sync\n%s", diffLines(got, want))
	}
}

// sortedDump is the fake's table as sorted lines: the order the fake
// prints objects in follows their creation, which differs between a table
// built up step by step and one built at once.
func sortedDump(f *knftables.Fake) string {
	lines := strings.Split(f.Dump(), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func diffLines(got, want string) string {
	g, wn := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(got, "\n") {
		g[l] = true
	}
	for _, l := range strings.Split(want, "\n") {
		wn[l] = true
	}
	var b strings.Builder
	for l := range g {
		if !wn[l] {
			b.WriteString("+ " + l + "\n")
		}
	}
	for l := range wn {
		if !g[l] {
			b.WriteString("- " + l + "\n")
		}
	}
	return b.String()
}
