package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/model"
)

var self = Self{
	Name: "n1", Zone: "a",
	NodeIPs:      []netip.Addr{netip.MustParseAddr("192.168.77.10")},
	ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
}

func ep(addr string, port uint16, node string) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, Ready: true, Serving: true, NodeName: node}
}

func svc(name string, mut func(*model.Service)) model.Service {
	s := model.Service{
		ServiceName: model.ServiceName{Namespace: "default", Name: name},
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:       []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80}},
	}
	if mut != nil {
		mut(&s)
	}
	return s
}

func key(s model.Service, port string) model.PortKey {
	return model.PortKey{ServiceName: s.ServiceName, Port: port, Protocol: model.TCP}
}

// dump renders a fragment as text, one line per element and rule.
func dump(f Fragment) string {
	var b strings.Builder
	for _, e := range f.Elements {
		b.WriteString("element " + e.Set + " " + e.Key)
		if e.Value != "" {
			b.WriteString(" : " + e.Value)
		}
		b.WriteString("\n")
	}
	for _, c := range f.Chains {
		for _, r := range c.Rules {
			b.WriteString("rule " + c.Name + " " + r + "\n")
		}
	}
	for _, s := range f.Sets {
		b.WriteString("set " + s.Name + " " + s.Type + " " + s.Timeout.String() + "\n")
	}
	return b.String()
}

func has(t *testing.T, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("missing %q in:\n%s", w, text)
		}
	}
}

func hasNot(t *testing.T, text string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(text, w) {
			t.Errorf("unexpected %q in:\n%s", w, text)
		}
	}
}

func TestClusterIPBalancesOverReadyEndpoints(t *testing.T) {
	s := svc("web", nil)
	f, info := Render(self, s, map[model.PortKey][]model.Endpoint{key(s, "http"): {
		ep("10.244.1.5", 8080, "n1"), ep("10.244.2.5", 8080, "n2"),
		{Addr: netip.MustParseAddr("10.244.3.5"), Port: 8080, NodeName: "n3"}, // not ready
	}}, NewSlots())
	d := dump(f)
	// A ClusterIP-only port: map elements and the shared chain for two
	// endpoints, nothing of its own.
	has(t, d,
		"element cluster-ips4 10.96.0.10\n",
		"element services4 10.96.0.10 . tcp . 80 : goto lb4-tcp-2\n",
		"element hairpin4 10.244.1.5 . 10.244.1.5\n",
		"rule lb4-tcp-2 meta l4proto tcp dnat ip to ip daddr . tcp dport . numgen random mod 2 map @cluster-endpoints4-tcp\n",
		"element cluster-endpoints4-tcp 10.96.0.10 . 80 . 0 : 10.244.1.5 . 8080\n",
		"element cluster-endpoints4-tcp 10.96.0.10 . 80 . 1 : 10.244.2.5 . 8080\n",
	)
	hasNot(t, d, "10.244.3.5", "no-endpoints", "svc4-")
	if len(f.Chains) != 1 || !f.Chains[0].Shared || len(f.Slots) != 0 {
		t.Errorf("want only the shared chain and no slot, got chains %+v slots %v", f.Chains, f.Slots)
	}
	if info.Endpoints != 2 || info.LocalEndpoints != 1 {
		t.Errorf("info %+v", info)
	}
}

// TestNodePortPortBalancesInItsSlot: a port with a node port has its own
// chain, balancing over its slot of the shared endpoints maps, which the
// ClusterIP uses too.
func TestNodePortPortBalancesInItsSlot(t *testing.T) {
	s := svc("web", func(s *model.Service) { s.Ports[0].NodePort = 30080 })
	f, _ := Render(self, s, map[model.PortKey][]model.Endpoint{key(s, "http"): {
		ep("10.244.1.5", 8080, "n1"), ep("10.244.2.5", 8080, "n2"),
	}}, NewSlots())
	d := dump(f)
	has(t, d,
		"element services4 10.96.0.10 . tcp . 80 : goto svc4-",
		"default/web/http meta l4proto tcp dnat ip to numgen random mod 2 offset 0 map @endpoints4-tcp-00",
		"element endpoints4-tcp-00 0 : 10.244.1.5 . 8080\n",
		"element endpoints4-tcp-00 1 : 10.244.2.5 . 8080\n",
	)
	hasNot(t, d, "lb4-", "cluster-endpoints4")
	if len(f.Slots) != 1 {
		t.Errorf("slots %v, want one", f.Slots)
	}
}

func TestNoEndpointsRejects(t *testing.T) {
	s := svc("empty", func(s *model.Service) { s.Ports[0].NodePort = 30080 })
	d := dump(mustRender(s, nil))
	has(t, d,
		"element no-endpoints4 10.96.0.10 . tcp . 80 : goto reject-chain",
		"element no-endpoint-nodeports4 tcp . 30080 : goto reject-chain",
	)
	hasNot(t, d, "rule ", "services4")
}

func mustRender(s model.Service, eps map[model.PortKey][]model.Endpoint) Fragment {
	f, _ := Render(self, s, eps, NewSlots())
	return f
}

func TestTerminatingEndpointsOnlyWhenNoneReady(t *testing.T) {
	term := model.Endpoint{Addr: netip.MustParseAddr("10.244.2.9"), Port: 80, Serving: true, Terminating: true, NodeName: "n2"}
	s := svc("web", nil)
	d := dump(mustRender(s, map[model.PortKey][]model.Endpoint{key(s, "http"): {ep("10.244.1.5", 80, "n1"), term}}))
	hasNot(t, d, "10.244.2.9")
	d = dump(mustRender(s, map[model.PortKey][]model.Endpoint{key(s, "http"): {term}}))
	has(t, d, "cluster-endpoints4-tcp 10.96.0.10 . 80 . 0 : 10.244.2.9 . 80\n")
	// Terminating and not serving: nothing usable, so reject.
	term.Serving = false
	d = dump(mustRender(s, map[model.PortKey][]model.Endpoint{key(s, "http"): {term}}))
	has(t, d, "no-endpoints4 10.96.0.10 . tcp . 80 : goto reject-chain")
}

func TestExternalTrafficPolicy(t *testing.T) {
	eps := func(s model.Service) map[model.PortKey][]model.Endpoint {
		return map[model.PortKey][]model.Endpoint{key(s, "http"): {ep("10.244.1.5", 80, "n1"), ep("10.244.2.5", 80, "n2")}}
	}
	cluster := svc("np", func(s *model.Service) {
		s.Ports[0].NodePort = 30080
		s.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.50")}
	})
	d := dump(mustRender(cluster, eps(cluster)))
	has(t, d,
		"element nodeports4 tcp . 30080 : goto ext4-",
		"element services4 203.0.113.50 . tcp . 80 : goto ext4-",
		"default/np/http jump mark-for-masquerade\n",
	)
	local := cluster
	local.ExternalLocal = true
	d = dump(mustRender(local, eps(local)))
	has(t, d,
		"ip saddr @cluster-ranges4 goto svc4-",
		"fib saddr type local jump mark-for-masquerade",
		"goto loc4-",
		"default/np/http meta l4proto tcp dnat ip to 10.244.1.5:80",
	)
	hasNot(t, d, "default/np/http jump mark-for-masquerade\n")
	// A node with no local endpoint drops external traffic.
	other := self
	other.Name = "n9"
	f, info := Render(other, local, eps(local), NewSlots())
	d = dump(f)
	has(t, d, "rule ext4-")
	// The drop goes through the chain that reports it (nflog, counter).
	if !strings.Contains(d, "default/np/http goto drop-no-local-chain\n") {
		t.Errorf("no drop for a node without local endpoints:\n%s", d)
	}
	assertDropsNoLocal(t)
	if info.LocalEndpoints != 0 {
		t.Errorf("local endpoints %d", info.LocalEndpoints)
	}
}

// assertDropsNoLocal checks that the skeleton's drop-no-local-chain
// reports and counts, then drops.
func assertDropsNoLocal(t *testing.T) {
	t.Helper()
	reporting := self
	reporting.NflogGroup = 100
	for _, c := range NewSkeleton(reporting).Chains {
		if c.Name == "drop-no-local-chain" {
			r := strings.Join(c.Rules, "\n")
			if !strings.Contains(r, LogPrefixNoLocal) || !strings.Contains(r, CounterNoLocal) || !strings.HasSuffix(r, " drop") {
				t.Errorf("drop-no-local-chain: %q", r)
			}
			return
		}
	}
	t.Error("the skeleton has no drop-no-local-chain")
}

func TestHealthCheckCountsOnlyReadyLocalEndpoints(t *testing.T) {
	s := svc("hc", func(s *model.Service) {
		s.Ports[0].NodePort = 30080
		s.ExternalLocal = true
		s.HealthCheckNodePort = 30500
	})
	term := model.Endpoint{Addr: netip.MustParseAddr("10.244.1.9"), Port: 80, Serving: true, Terminating: true, NodeName: "n1"}
	f, info := Render(self, s, map[model.PortKey][]model.Endpoint{key(s, "http"): {term}}, NewSlots())
	if info.LocalEndpoints != 0 {
		t.Errorf("only a terminating local endpoint counted as %d, want 0 (the node must fail its health check)", info.LocalEndpoints)
	}
	// It still serves what reaches the node.
	has(t, dump(f), "dnat ip to 10.244.1.9:80")
}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	s := svc("itp", func(s *model.Service) { s.InternalLocal = true })
	eps := map[model.PortKey][]model.Endpoint{key(s, "http"): {ep("10.244.2.5", 80, "n2")}}
	d := dump(mustRender(s, eps))
	has(t, d, "element no-endpoints4 10.96.0.10 . tcp . 80 : goto drop-no-local-chain")
	assertDropsNoLocal(t)
	eps[key(s, "http")] = append(eps[key(s, "http")], ep("10.244.1.5", 80, "n1"))
	d = dump(mustRender(s, eps))
	has(t, d, "services4 10.96.0.10 . tcp . 80 : goto lb4-tcp-1\n", "cluster-endpoints4-tcp 10.96.0.10 . 80 . 0 : 10.244.1.5 . 80\n")
	hasNot(t, d, "10.244.2.5 . 80", "dnat ip to 10.244.2.5")
}

func TestSessionAffinity(t *testing.T) {
	s := svc("sticky", func(s *model.Service) { s.Affinity = 30 * time.Second })
	d := dump(mustRender(s, map[model.PortKey][]model.Endpoint{key(s, "http"): {ep("10.244.1.5", 80, "n1"), ep("10.244.2.5", 80, "n2")}}))
	has(t, d, "update @aff4-", "ip saddr @aff4-", "numgen random mod 2 vmap { 0 : goto aep4-", "ipv4_addr 30s")
}

func TestTopologyHints(t *testing.T) {
	s := svc("close", nil)
	a := ep("10.244.1.5", 80, "n1")
	a.HintZones = []string{"a"}
	b := ep("10.244.2.5", 80, "n2")
	b.HintZones = []string{"b"}
	d := dump(mustRender(s, map[model.PortKey][]model.Endpoint{key(s, "http"): {a, b}}))
	has(t, d, "cluster-endpoints4-tcp 10.96.0.10 . 80 . 0 : 10.244.1.5 . 80\n", "goto lb4-tcp-1\n")
	hasNot(t, d, "10.244.2.5 . 80")
	// One ready endpoint without hints: hints are ignored.
	b.HintZones = nil
	d = dump(mustRender(s, map[model.PortKey][]model.Endpoint{key(s, "http"): {a, b}}))
	has(t, d, "numgen random mod 2")
}

func TestDualStackAndMultiPort(t *testing.T) {
	s := svc("ds", func(s *model.Service) {
		s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr("fd00:96::10"))
		s.Ports = append(s.Ports, model.ServicePort{Name: "dns", Protocol: model.UDP, Port: 53})
	})
	eps := map[model.PortKey][]model.Endpoint{
		key(s, "http"): {ep("10.244.1.5", 8080, "n1"), ep("fd00:244:1::5", 8080, "n1")},
		{ServiceName: s.ServiceName, Port: "dns", Protocol: model.UDP}: {ep("10.244.1.5", 5353, "n1"), ep("fd00:244:1::5", 5353, "n1")},
	}
	d := dump(mustRender(s, eps))
	has(t, d,
		"services4 10.96.0.10 . tcp . 80",
		"services4 10.96.0.10 . udp . 53",
		"services6 fd00:96::10 . tcp . 80",
		"services6 fd00:96::10 . udp . 53",
		"cluster-endpoints6-udp fd00:96::10 . 53 . 0 : fd00:244:1::5 . 5353\n",
		"cluster-endpoints4-tcp 10.96.0.10 . 80 . 0 : 10.244.1.5 . 8080\n",
		"rule lb6-udp-1 meta l4proto udp dnat ip6 to ip6 daddr . udp dport . numgen random mod 1 map @cluster-endpoints6-udp\n",
	)
}

func TestSkeletonMasqueradesOffClusterClients(t *testing.T) {
	sk := NewSkeleton(self)
	var text []string
	for _, c := range sk.Chains {
		text = append(text, c.Rules...)
	}
	for _, c := range sk.Base {
		text = append(text, c.Rules...)
	}
	all := strings.Join(text, "\n")
	has(t, all, "ip daddr @cluster-ips4 ip saddr != @cluster-ranges4 jump mark-for-masquerade", "ct status dnat ip saddr . ip daddr @hairpin4 masquerade")
	// No IPv6 pod range: the v6 off-cluster rule would match everything.
	hasNot(t, all, "ip6 daddr @cluster-ips6 ip6 saddr != @cluster-ranges6")
}

func TestSocketBackendsFollowTheRules(t *testing.T) {
	s := svc("web", nil)
	k := key(s, "http")
	terminating := ep("10.244.3.5", 8080, "n2")
	terminating.Ready, terminating.Terminating = false, true
	eps := map[model.PortKey][]model.Endpoint{k: {ep("10.244.1.5", 8080, "n1"), ep("10.244.2.5", 8080, "n2"), terminating}}
	vip := Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP}
	got := SocketBackends(self, s, eps)
	if len(got) != 1 || len(got[vip].Backends) != 2 || got[vip].Affinity != 0 {
		t.Fatalf("ready endpoints: %v", got)
	}
	// Only terminating ones left: they are used, as the rules do.
	if got := SocketBackends(self, s, map[model.PortKey][]model.Endpoint{k: {terminating}}); len(got[vip].Backends) != 1 {
		t.Errorf("terminating fallback: %v", got)
	}
	// internalTrafficPolicy: Local keeps this node's endpoints only, and
	// leaves the port to the rules (which drop) when there are none.
	local := svc("web", func(s *model.Service) { s.InternalLocal = true })
	if got := SocketBackends(self, local, eps); len(got[vip].Backends) != 1 || got[vip].Backends[0].Addr().String() != "10.244.1.5" {
		t.Errorf("internal Local: %v", got)
	}
	if got := SocketBackends(self, local, map[model.PortKey][]model.Endpoint{k: {ep("10.244.2.5", 8080, "n2")}}); len(got) != 0 {
		t.Errorf("internal Local without a local endpoint: %v", got)
	}
	// Affinity goes with its timeout; no endpoints stay with the rules.
	aff := svc("web", func(s *model.Service) { s.Affinity = time.Minute })
	if got := SocketBackends(self, aff, eps); got[vip].Affinity != time.Minute {
		t.Errorf("session affinity: %v", got)
	}
	if got := SocketBackends(self, s, nil); len(got) != 0 {
		t.Errorf("no endpoints: %v", got)
	}
}
