package netpol

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/model"
)

// member reports whether addr (and proto/port, for port elements) falls
// in one of the rendered elements, the way the kernel's interval lookup
// would.
func member(elems []string, a netip.Addr, proto string, port uint16) bool {
	n := 0
	for _, e := range elems {
		parts := strings.Split(e, " . ")
		if !inAddr(parts[0], a) {
			continue
		}
		if len(parts) == 3 {
			if parts[1] != proto || !inPort(parts[2], port) {
				continue
			}
		}
		n++
	}
	if n > 1 {
		panic(fmt.Sprintf("%s %s/%d matches %d elements: intervals overlap", a, proto, port, n))
	}
	return n == 1
}

func inAddr(s string, a netip.Addr) bool {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		hi = lo
	}
	l, h := netip.MustParseAddr(lo), netip.MustParseAddr(hi)
	return l.Compare(a) <= 0 && a.Compare(h) <= 0
}

func inPort(s string, p uint16) bool {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		hi = lo
	}
	l, _ := strconv.Atoi(lo)
	h, _ := strconv.Atoi(hi)
	return l <= int(p) && int(p) <= h
}

func TestDecomposeDisjointAndExact(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	base := netip.MustParseAddr("10.0.0.0")
	addr := func(n int) netip.Addr {
		b := base.As4()
		b[3] = byte(n)
		return netip.AddrFrom4(b)
	}
	for iter := 0; iter < 200; iter++ {
		var gs []grant
		for i := r.Intn(6); i >= 0; i-- {
			var rs []addrRange
			for j := r.Intn(3); j >= 0; j-- {
				lo := r.Intn(40)
				rs = append(rs, addrRange{addr(lo), addr(lo + r.Intn(10))})
			}
			g := grant{addrs: rs}
			if r.Intn(4) != 0 {
				lo := uint16(r.Intn(20))
				g.port = portRange{[]string{"tcp", "udp"}[r.Intn(2)], lo, lo + uint16(r.Intn(8))}
			}
			gs = append(gs, g)
		}
		anyE, portE := decompose(gs)
		for a := 0; a < 55; a++ {
			for _, proto := range []string{"tcp", "udp"} {
				for p := uint16(0); p < 30; p++ {
					want := false
					for _, g := range gs {
						inA := false
						for _, rg := range g.addrs {
							inA = inA || (rg.lo.Compare(addr(a)) <= 0 && addr(a).Compare(rg.hi) <= 0)
						}
						if inA && (g.port.proto == "" || (g.port.proto == proto && g.port.lo <= p && p <= g.port.hi)) {
							want = true
						}
					}
					got := member(anyE, addr(a), proto, p) || member(portE, addr(a), proto, p)
					if got != want {
						t.Fatalf("iteration %d: %s %s/%d: got %t want %t\ngrants %+v\nany %v\nports %v", iter, addr(a), proto, p, got, want, gs, anyE, portE)
					}
				}
			}
		}
	}
}

func TestSubtractAndMerge(t *testing.T) {
	rs := []addrRange{prefixRange(netip.MustParsePrefix("10.0.0.0/24"))}
	rs = subtract(rs, prefixRange(netip.MustParsePrefix("10.0.0.16/28")))
	rs = subtract(rs, prefixRange(netip.MustParsePrefix("10.0.0.0/32")))
	got := fmt.Sprint(rs)
	if got != "[10.0.0.1-10.0.0.15 10.0.0.32-10.0.0.255]" {
		t.Fatalf("got %s", got)
	}
	m := mergeRanges([]addrRange{{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.9")}, {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.4")}})
	if fmt.Sprint(m) != "[10.0.0.1-10.0.0.9]" {
		t.Fatalf("adjacent ranges not merged: %v", m)
	}
	if r := prefixRange(netip.MustParsePrefix("fd00::/64")); r.hi.String() != "fd00::ffff:ffff:ffff:ffff" {
		t.Fatalf("v6 range end %s", r.hi)
	}
}

// randomWorld makes pods in three namespaces over two nodes, dual-stack,
// and random policies from a small vocabulary.
func randomWorld(r *rand.Rand) *World {
	var pods []model.PolicyPod
	nss := []model.PolicyNamespace{}
	pick := func(xs ...string) string { return xs[r.Intn(len(xs))] }
	n := 0
	for _, ns := range []string{"a", "b", "c"} {
		nss = append(nss, model.PolicyNamespace{Name: ns, Labels: map[string]string{"kubernetes.io/metadata.name": ns, "team": pick("x", "y")}})
		for i := 0; i < 3; i++ {
			n++
			p := model.PolicyPod{Namespace: ns, Name: fmt.Sprint("p", i), Node: pick("n1", "n2"),
				Labels: map[string]string{"app": pick("web", "db", "cache")},
				IPs:    []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 0, byte(n)}), netip.MustParseAddr(fmt.Sprintf("fd00::%x", n))}}
			if r.Intn(2) == 0 {
				p.Ports = []model.NamedPort{{Name: "http", Protocol: model.TCP, Port: uint16(8080 + r.Intn(2))}}
			}
			pods = append(pods, p)
		}
	}
	sel := func() *model.Selector {
		switch r.Intn(3) {
		case 0:
			return &model.Selector{}
		case 1:
			return &model.Selector{Labels: map[string]string{"app": pick("web", "db", "cache")}}
		}
		return &model.Selector{Exprs: []model.SelectorExpr{{Key: "app", Op: model.SelectorOp(pick("In", "NotIn")), Values: []string{pick("web", "db")}}}}
	}
	rule := func() model.PolicyRule {
		var rl model.PolicyRule
		for i := r.Intn(3); i > 0; i-- {
			switch r.Intn(4) {
			case 0:
				rl.Peers = append(rl.Peers, model.PolicyPeer{Pods: sel()})
			case 1:
				rl.Peers = append(rl.Peers, model.PolicyPeer{Namespaces: &model.Selector{Labels: map[string]string{"team": pick("x", "y")}}, Pods: sel()})
			case 2:
				rl.Peers = append(rl.Peers, model.PolicyPeer{Block: &model.IPBlock{CIDR: netip.MustParsePrefix("10.244.0.0/28"), Except: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.244.0.%d/31", 2*r.Intn(5)))}}})
			default:
				rl.Peers = append(rl.Peers, model.PolicyPeer{Block: &model.IPBlock{CIDR: netip.MustParsePrefix("fd00::/120")}})
			}
		}
		for i := r.Intn(3); i > 0; i-- {
			switch r.Intn(4) {
			case 0:
				rl.Ports = append(rl.Ports, model.PolicyPort{Protocol: model.TCP, Port: 8080})
			case 1:
				rl.Ports = append(rl.Ports, model.PolicyPort{Protocol: model.TCP, Named: "http"})
			case 2:
				rl.Ports = append(rl.Ports, model.PolicyPort{Protocol: model.UDP})
			default:
				rl.Ports = append(rl.Ports, model.PolicyPort{Protocol: model.TCP, Port: 8000, EndPort: 8080})
			}
		}
		return rl
	}
	var pols []model.Policy
	for i := r.Intn(5); i >= 0; i-- {
		p := model.Policy{PolicyName: model.PolicyName{Namespace: pick("a", "b", "c"), Name: fmt.Sprint("pol", i)}, Pods: *sel(),
			Ingress: r.Intn(3) > 0, Egress: r.Intn(2) == 0}
		for j := r.Intn(3); j > 0; j-- {
			p.IngressRules = append(p.IngressRules, rule())
		}
		for j := r.Intn(3); j > 0; j-- {
			p.EgressRules = append(p.EgressRules, rule())
		}
		pols = append(pols, p)
	}
	return NewWorld(pods, nss, pols)
}

// TestCompileAgreesWithDecide checks that what the dataplane would do with
// the compiled groups (emulating its map and set lookups) is what Decide
// answers, for every pair of pods, both families, and several ports.
func TestCompileAgreesWithDecide(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for iter := 0; iter < 300; iter++ {
		w := randomWorld(r)
		compiled := map[string]*Desired{"n1": Compile(w, "n1"), "n2": Compile(w, "n2")}
		admits := func(g *Group, peer netip.Addr, proto model.Protocol, port uint16) bool {
			fam := family(peer)
			return member(g.Any[fam], peer, string(proto), port) || member(g.Ports[fam], peer, string(proto), port)
		}
		for _, src := range w.Pods {
			for _, dst := range w.Pods {
				if src.Key() == dst.Key() {
					continue
				}
				for fam := 0; fam < 2; fam++ {
					for _, c := range []struct {
						proto model.Protocol
						port  uint16
					}{{model.TCP, 8080}, {model.TCP, 8081}, {model.TCP, 8000}, {model.UDP, 53}} {
						conn := Conn{Src: src.IPs[fam], Dst: dst.IPs[fam], Protocol: c.proto, Port: c.port}
						d := w.Decide(conn)
						eg, in := true, true
						if id, ok := compiled[src.Node].Egress[conn.Src]; ok {
							eg = admits(compiled[src.Node].Groups[id], conn.Dst, c.proto, c.port)
						}
						if id, ok := compiled[dst.Node].Ingress[conn.Dst]; ok {
							in = admits(compiled[dst.Node].Groups[id], conn.Src, c.proto, c.port)
						}
						if eg != d.Egress.Allowed || in != d.Ingress.Allowed {
							t.Fatalf("iteration %d: %s -> %s %s/%d: dataplane egress %t ingress %t, Decide:\n%s\npolicies: %+v",
								iter, src.Key(), dst.Key(), c.proto, c.port, eg, in, d, w.Policies)
						}
					}
				}
			}
		}
	}
}

func TestDecideExplains(t *testing.T) {
	w := NewWorld([]model.PolicyPod{
		{Namespace: "prod", Name: "web-1", Node: "n1", Labels: map[string]string{"app": "web"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		{Namespace: "prod", Name: "db", Node: "n2", Labels: map[string]string{"app": "db"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")},
			Ports: []model.NamedPort{{Name: "pg", Protocol: model.TCP, Port: 5432}}},
	}, []model.PolicyNamespace{{Name: "prod"}}, []model.Policy{{
		PolicyName: model.PolicyName{Namespace: "prod", Name: "db-allow-app"}, Pods: model.Selector{Labels: map[string]string{"app": "db"}}, Ingress: true,
		IngressRules: []model.PolicyRule{{Peers: []model.PolicyPeer{{Pods: &model.Selector{Labels: map[string]string{"app": "api"}}}}, Ports: []model.PolicyPort{{Protocol: model.TCP, Named: "pg"}}}},
	}})
	d := w.Decide(Conn{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Protocol: model.TCP, Port: 5432})
	if d.Allowed || d.Egress.Isolating != nil || len(d.Ingress.Isolating) != 1 {
		t.Fatalf("decision %+v", d)
	}
	if want := "ingress of prod/db: dropped: isolated by policy prod/db-allow-app; no rule matched"; !strings.Contains(d.String(), want) {
		t.Fatalf("explanation %q lacks %q", d.String(), want)
	}
	// The node's own traffic is exempt.
	d = w.Decide(Conn{Src: netip.MustParseAddr("192.168.0.2"), SrcNode: "n2", Dst: netip.MustParseAddr("10.0.0.2"), Protocol: model.TCP, Port: 1})
	if !d.Allowed || d.Ingress.Exempt == "" {
		t.Fatalf("own node not exempt: %s", d)
	}
}

// TestCompilerReusesUnchangedGroups checks the cache: compiling the same
// world again reuses every group, and a changed world gives exactly what a
// fresh compile gives.
func TestCompilerReusesUnchangedGroups(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	c := NewCompiler()
	for iter := 0; iter < 100; iter++ {
		w := randomWorld(r)
		got := c.Compile(w, "n1")
		again := c.Compile(w, "n1")
		for id, g := range got.Groups {
			if again.Groups[id] != g {
				t.Fatalf("iteration %d: group %s recomputed for an unchanged world", iter, id)
			}
		}
		fresh := Compile(w, "n1")
		if fmt.Sprint(sortedIDs(fresh.Groups)) != fmt.Sprint(sortedIDs(got.Groups)) || fmt.Sprint(fresh.Ingress) != fmt.Sprint(got.Ingress) || fmt.Sprint(fresh.Egress) != fmt.Sprint(got.Egress) {
			t.Fatalf("iteration %d: cached compile differs from a fresh one", iter)
		}
	}
}

func sortedIDs(m map[string]*Group) []string {
	var out []string
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}
