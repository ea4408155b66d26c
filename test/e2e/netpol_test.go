package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/lab"
)

// The truth-table tests: for each scenario (a set of policies, sometimes a
// relabelling), real packets between every pair of pods on every port and
// protocol must agree with the independent model in netpolmodel_test.go.

var npNamespaces = []string{"nx", "ny", "nz"}

// npPorts are what every pod serves, with the names rules refer to.
var npPorts = []struct {
	port  int
	proto string
}{{80, "TCP"}, {81, "TCP"}, {80, "UDP"}, {81, "UDP"}}

func npPortName(port int, proto string) string {
	return fmt.Sprintf("serve-%d-%s", port, strings.ToLower(proto))
}

// npPodsYAML makes pods a, b, c in each namespace, spread over 3 nodes.
func npPodsYAML() string {
	var b strings.Builder
	i := 0
	for _, ns := range npNamespaces {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {ns: \"%s\"}}\n", ns, ns[1:])
		for _, p := range []string{"a", "b", "c"} {
			var ports []string
			for _, pp := range npPorts {
				ports = append(ports, fmt.Sprintf("{name: %s, containerPort: %d, protocol: %s}", npPortName(pp.port, pp.proto), pp.port, pp.proto))
			}
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: {pod: %s}}\nspec:\n  nodeName: node%d\n  containers: [{name: c, image: x, ports: [%s]}]\n",
				p, ns, p, i%3+1, strings.Join(ports, ", "))
			i++
		}
	}
	return b.String()
}

type npScenario struct {
	name     string
	policies []networkingv1.NetworkPolicy
	// relabel, when set, is applied after the policies (pods and
	// namespaces with new labels) and checked again.
	relabel string
}

func npPolicy(ns, name string, spec networkingv1.NetworkPolicySpec) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       spec,
	}
}

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func tcp(port int) networkingv1.NetworkPolicyPort {
	p := corev1.ProtocolTCP
	v := intstr.FromInt32(int32(port))
	return networkingv1.NetworkPolicyPort{Protocol: &p, Port: &v}
}

func udp(port int) networkingv1.NetworkPolicyPort {
	p := corev1.ProtocolUDP
	v := intstr.FromInt32(int32(port))
	return networkingv1.NetworkPolicyPort{Protocol: &p, Port: &v}
}

func named(name string, proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	bothTypes   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

// wellKnown are the cases every NetworkPolicy implementation is checked
// against; addrs maps "ns/pod" to its address, for ipBlock cases.
func wellKnown(addrs map[string]netip.Addr) []npScenario {
	end81 := int32(81)
	udpProto := corev1.ProtocolUDP
	yb := addrs["ny/b"]
	return []npScenario{
		{name: "deny-all-ingress", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "deny", networkingv1.NetworkPolicySpec{})}},
		{name: "deny-all-egress", policies: []networkingv1.NetworkPolicy{npPolicy("ny", "deny", networkingv1.NetworkPolicySpec{PolicyTypes: egressOnly})}},
		{name: "allow-same-namespace", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "same", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}}})}},
		{name: "allow-other-namespace-by-label", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "from-y", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("pod", "a"),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}})}},
		{name: "namespace-and-pod-in-one-peer", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "from-yb", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("pod", "a"),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("ns", "y"), PodSelector: sel("pod", "b")}}}}})}},
		{name: "namespace-or-pod-in-two-peers", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "from-y-or-b", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("pod", "a"),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("ns", "y")}, {PodSelector: sel("pod", "b")}}}}})}},
		{name: "ipblock-except", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "cidr", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("pod", "a"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
				CIDR: "10.244.0.0/16", Except: []string{netip.PrefixFrom(yb, 32).String()}}}}}}})}},
		{name: "egress-to-port", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "eg80", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("pod", "b"), PolicyTypes: egressOnly,
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcp(80)}}}})}},
		{name: "named-ports", policies: []networkingv1.NetworkPolicy{
			npPolicy("nx", "named-in", networkingv1.NetworkPolicySpec{PodSelector: *sel("pod", "a"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{named("serve-81-tcp", corev1.ProtocolTCP), named("serve-80-udp", corev1.ProtocolUDP)}}}}),
			npPolicy("ny", "named-out", networkingv1.NetworkPolicySpec{PodSelector: *sel("pod", "c"), PolicyTypes: egressOnly,
				Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
					Ports: []networkingv1.NetworkPolicyPort{named("serve-80-tcp", corev1.ProtocolTCP)}}}})}},
		{name: "endport-range", policies: []networkingv1.NetworkPolicy{npPolicy("nz", "range", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{func() networkingv1.NetworkPolicyPort {
				p := tcp(80)
				p.EndPort = &end81
				return p
			}()}}}})}},
		{name: "mixed-protocols", policies: []networkingv1.NetworkPolicy{npPolicy("ny", "mixed", networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{udp(80), tcp(81)}},
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("pod", "c")}}, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udpProto}}}}})}},
		{name: "match-expressions", policies: []networkingv1.NetworkPolicy{npPolicy("nx", "exprs", networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pod", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"c"}}}},
			PolicyTypes: bothTypes,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpIn, Values: []string{"x", "z"}}}},
				PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pod", Operator: metav1.LabelSelectorOpExists}}}}}}},
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "env", Operator: metav1.LabelSelectorOpDoesNotExist}}}}}}}})}},
		{name: "stacked-and-relabelled", policies: []networkingv1.NetworkPolicy{
			npPolicy("nx", "deny", networkingv1.NetworkPolicySpec{}),
			npPolicy("nx", "allow-team", networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", "blue"), PodSelector: sel("role", "client")}}}}})},
			relabel: "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: nz, labels: {ns: \"z\", team: blue}}\n" +
				"---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: nz, labels: {pod: b, role: client}}\n"},
	}
}

// randomScenario draws policies from a small vocabulary of selectors,
// peers and ports, so that combinations no one wrote down get checked.
func randomScenario(r *rand.Rand, addrs map[string]netip.Addr) npScenario {
	pick := func(xs ...string) string { return xs[r.Intn(len(xs))] }
	podSel := func() *metav1.LabelSelector {
		switch r.Intn(4) {
		case 0:
			return &metav1.LabelSelector{}
		case 1:
			return sel("pod", pick("a", "b", "c"))
		case 2:
			return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pod", Operator: metav1.LabelSelectorOperator(pick("In", "NotIn")), Values: []string{pick("a", "b"), pick("b", "c")}}}}
		}
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: pick("pod", "nolabel"), Operator: metav1.LabelSelectorOperator(pick("Exists", "DoesNotExist"))}}}
	}
	peer := func() networkingv1.NetworkPolicyPeer {
		switch r.Intn(5) {
		case 0:
			return networkingv1.NetworkPolicyPeer{PodSelector: podSel()}
		case 1:
			return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("ns", pick("x", "y", "z"))}
		case 2:
			return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("ns", pick("x", "y", "z")), PodSelector: podSel()}
		case 3:
			a := addrs[pick(npNamespaces...)+"/"+pick("a", "b", "c")]
			return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: netip.PrefixFrom(a, 32).String()}}
		}
		a := addrs[pick(npNamespaces...)+"/"+pick("a", "b", "c")]
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16", Except: []string{netip.PrefixFrom(a, 32).String()}}}
	}
	ports := func() []networkingv1.NetworkPolicyPort {
		if r.Intn(3) == 0 {
			return nil
		}
		end := int32(81)
		udpProto := corev1.ProtocolUDP
		all := []networkingv1.NetworkPolicyPort{tcp(80), tcp(81), udp(80), udp(81), named("serve-81-tcp", corev1.ProtocolTCP), named("serve-80-udp", corev1.ProtocolUDP), {Protocol: &udpProto}, func() networkingv1.NetworkPolicyPort {
			p := tcp(80)
			p.EndPort = &end
			return p
		}()}
		var out []networkingv1.NetworkPolicyPort
		for n := 1 + r.Intn(2); n > 0; n-- {
			out = append(out, all[r.Intn(len(all))])
		}
		return out
	}
	peers := func() []networkingv1.NetworkPolicyPeer {
		if r.Intn(4) == 0 {
			return nil
		}
		var out []networkingv1.NetworkPolicyPeer
		for n := 1 + r.Intn(2); n > 0; n-- {
			out = append(out, peer())
		}
		return out
	}
	var sc npScenario
	for i, n := 0, 1+r.Intn(3); i < n; i++ {
		spec := networkingv1.NetworkPolicySpec{PodSelector: *podSel()}
		switch r.Intn(4) {
		case 1:
			spec.PolicyTypes = ingressOnly
		case 2:
			spec.PolicyTypes = egressOnly
		case 3:
			spec.PolicyTypes = bothTypes
		}
		for j := r.Intn(3); j > 0; j-- {
			spec.Ingress = append(spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers(), Ports: ports()})
		}
		for j := r.Intn(3); j > 0; j-- {
			spec.Egress = append(spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers(), Ports: ports()})
		}
		sc.policies = append(sc.policies, npPolicy(pick(npNamespaces...), "rand-"+strconv.Itoa(i), spec))
	}
	return sc
}

func policiesYAML(t *testing.T, ps []networkingv1.NetworkPolicy) string {
	var docs []string
	for _, p := range ps {
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	return strings.Join(docs, "\n---\n")
}

func TestNetworkPolicyTruthTable(t *testing.T) {
	l := startLab(t)
	l.apply(npPodsYAML())
	base := l.pods()
	addrs := map[string]netip.Addr{}
	for _, p := range base {
		addrs[p.Namespace+"/"+p.Name] = netip.MustParseAddr(p.Status.PodIP)
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("PODNET_NETPOL_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("random scenarios: seed %d (PODNET_NETPOL_SEED=%d reproduces them)", seed, seed)
	r := rand.New(rand.NewSource(seed))
	scenarios := wellKnown(addrs)
	for i := 0; i < 6; i++ {
		sc := randomScenario(r, addrs)
		sc.name = fmt.Sprintf("random-%d", i)
		scenarios = append(scenarios, sc)
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			file := writeTemp(t, policiesYAML(t, sc.policies))
			l.run("apply", "-f", file)
			defer l.run("delete", "-f", file)
			l.checkMatrix(t, sc.policies)
			if sc.relabel != "" {
				l.apply(sc.relabel)
				defer l.apply(npPodsYAML()) // restore the labels
				l.checkMatrix(t, sc.policies)
			}
		})
	}
}

// npWorld reads the lab's pods and namespaces into the model's world.
func (l *labRun) npWorld(t *testing.T, pols []networkingv1.NetworkPolicy) (npWorld, map[string]*corev1.Pod) {
	pods := l.pods()
	var nsList corev1.NamespaceList
	if err := json.Unmarshal([]byte(l.run("get", "namespaces", "-o", "json")), &nsList); err != nil {
		t.Fatal(err)
	}
	w := npWorld{pods: pods, namespaces: map[string]map[string]string{}, policies: pols}
	for _, ns := range nsList.Items {
		w.namespaces[ns.Name] = ns.Labels
	}
	byKey := map[string]*corev1.Pod{}
	for i := range pods {
		byKey[pods[i].Namespace+"/"+pods[i].Name] = &pods[i]
	}
	return w, byKey
}

// podAddr is a pod's address of one family.
func podAddr(p *corev1.Pod, is4 bool) netip.Addr {
	for _, ip := range p.Status.PodIPs {
		if a := netip.MustParseAddr(ip.IP); a.Is4() == is4 {
			return a
		}
	}
	return netip.Addr{}
}

// checkMatrix probes every pod pair on every port and compares with the
// model, failing with both matrices side by side where they differ.
func (l *labRun) checkMatrix(t *testing.T, pols []networkingv1.NetworkPolicy, probeArgs ...string) {
	t.Helper()
	w, byKey := l.npWorld(t, pols)
	// A UDP probe that happens to reuse the source port of an earlier
	// allowed probe (random ports, a 30 s conntrack timeout) would belong
	// to that flow, which a policy change does not cut, as with every
	// conntrack-based enforcer. Each matrix starts from fresh flows.
	nodes := map[string]bool{}
	for _, p := range w.pods {
		nodes[p.Spec.NodeName] = true
	}
	for n := range nodes {
		flushUDPConntrack(t, l.nodeNS(n))
	}
	res := l.probe(append([]string{"--timeout", "700ms"}, probeArgs...)...)
	type cell struct{ want, got bool }
	grid := map[string]map[string]map[string]cell{} // port → from → to
	var keys []string
	mismatches := 0
	for _, pr := range res {
		from, to := byKey[pr.From], byKey[pr.To]
		if from == nil || to == nil {
			continue
		}
		want := w.allowed(npConn{from: from, to: to, fromAddr: netip.MustParseAddr(from.Status.PodIP), toAddr: netip.MustParseAddr(to.Status.PodIP),
			port: pr.Port, protocol: protoOf(pr.Protocol)})
		if a, err := netip.ParseAddrPort(pr.Target); err == nil && a.Addr().Is6() {
			want = w.allowed(npConn{from: from, to: to, fromAddr: podAddr(from, false), toAddr: a.Addr(), port: pr.Port, protocol: protoOf(pr.Protocol)})
		}
		pk := fmt.Sprintf("%s/%d", pr.Protocol, pr.Port)
		if grid[pk] == nil {
			grid[pk] = map[string]map[string]cell{}
			keys = append(keys, pk)
		}
		if grid[pk][pr.From] == nil {
			grid[pk][pr.From] = map[string]cell{}
		}
		grid[pk][pr.From][pr.To] = cell{want, pr.Connected}
		if want != pr.Connected {
			mismatches++
		}
	}
	if len(keys) != len(npPorts) {
		t.Fatalf("probe covered %d port/protocol pairs, want %d", len(keys), len(npPorts))
	}
	if mismatches == 0 {
		return
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%d connections disagree with the model (cell: model/real, ✓ allowed, ✗ denied, ! marks a mismatch)\npolicies:\n%s\n", mismatches, policiesYAML(t, pols))
	var names []string
	for k := range byKey {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, pk := range keys {
		fmt.Fprintf(&b, "%s (rows: from, columns: to)\n%6s", pk, "")
		for _, n := range names {
			fmt.Fprintf(&b, " %-6s", n)
		}
		b.WriteString("\n")
		for _, from := range names {
			fmt.Fprintf(&b, "%-6s", from)
			for _, to := range names {
				c := grid[pk][from][to]
				mark := func(v bool) string {
					if v {
						return "✓"
					}
					return "✗"
				}
				bad := " "
				if c.want != c.got {
					bad = "!"
				}
				fmt.Fprintf(&b, " %s/%s%s  ", mark(c.want), mark(c.got), bad)
			}
			b.WriteString("\n")
		}
	}
	t.Error(b.String())
}

const explainYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  nodeName: node1
  containers: [{name: c, image: x, ports: [{name: pg, containerPort: 5432}, {name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: prod, labels: {app: web}}
spec:
  nodeName: node2
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: prod, labels: {app: batch}}
spec:
  nodeName: node1
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-allow-app, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: pg}]
`

// TestNetworkPolicyExplainAndDrops checks what a user sees: explain names
// the isolating policy and the allowing rule and agrees with a real probe;
// a dropped packet is logged with pods, port and policy, and counted per
// policy in the node agent's metrics.
func TestNetworkPolicyExplainAndDrops(t *testing.T) {
	l := startLab(t)
	l.apply(explainYAML)
	bin := l.bin
	explain := func(from, to, port string) (string, error) {
		out, err := exec.Command(bin, "policy", "explain", "--lab", l.name, "--from", from, "--to", to, "--port", port, "--probe").CombinedOutput()
		return string(out), err
	}
	out, err := explain("prod/batch", "prod/db", "5432")
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, out)
	}
	for _, want := range []string{"DENIED", "ingress of prod/db: dropped: isolated by policy prod/db-allow-app; no rule matched", "egress of prod/batch: allowed (no policy isolates it", "probe: did not connect, as predicted"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain batch -> db lacks %q:\n%s", want, out)
		}
	}
	out, err = explain("prod/web-1", "prod/db", "5432")
	if err != nil || !strings.Contains(out, "allowed by prod/db-allow-app rule 0") || !strings.Contains(out, "probe: connected, as predicted") {
		t.Errorf("explain web-1 -> db: %v\n%s", err, out)
	}
	// A port the rule does not name is dropped even from web.
	out, _ = explain("prod/web-1", "prod/db", "8080")
	if !strings.Contains(out, "DENIED") || !strings.Contains(out, "probe: did not connect, as predicted") {
		t.Errorf("explain web-1 -> db:8080:\n%s", out)
	}
	if out, err := explain("prod/nope", "prod/db", "1"); err == nil || !strings.Contains(out, "pod prod/nope not found") {
		t.Errorf("unknown pod: %v %s", err, out)
	}

	// The probes above dropped packets on node1: the agent explains them.
	want := "dropped: ingress of prod/db isolated by policy prod/db-allow-app; no rule matched (prod/batch -> prod/db:5432/tcp)"
	eventually(t, 5*time.Second, "drop in the flow log", func() (bool, string) {
		out := l.flows("--verdict", "dropped", "--to", "prod/db")
		return strings.Contains(out, "prod/batch") && strings.Contains(out, "DROPPED (policy: ingress isolated by prod/db-allow-app)"), out
	})
	if b, err := os.ReadFile(lab.LogPath(l.name)); err != nil || !strings.Contains(string(b), want) {
		t.Errorf("lab log lacks %q (err %v)", want, err)
	}
	fams := l.metricsOf(t, "node1")
	// batch:5432 and web-1:8080, each at least one SYN.
	if drops := value(fams, "podnet_policy_drops_total", "policy", "prod/db-allow-app", "direction", "ingress"); drops < 2 {
		t.Errorf("podnet_policy_drops_total{policy=prod/db-allow-app,direction=ingress} = %v, want >= 2", drops)
	}
	if fams["podnet_policy_policies"].GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("podnet_policy_policies: %v", fams["podnet_policy_policies"])
	}
}

// TestNetworkPolicyDualStackAndServices checks the same semantics over
// IPv6 in a dual-stack lab, and through a Service: policy applies to the
// real pod addresses after the proxy's DNAT, on egress and on ingress.
func TestNetworkPolicyDualStackAndServices(t *testing.T) {
	l := startLab(t, "--dual-stack")
	l.apply(npPodsYAML() + `
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: nx}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {pod: a}
  ports: [{name: http, port: 80, targetPort: serve-81-tcp}]
`)
	addrs := map[string]netip.Addr{}
	for _, p := range l.pods() {
		addrs[p.Namespace+"/"+p.Name] = netip.MustParseAddr(p.Status.PodIP)
	}
	var pols []networkingv1.NetworkPolicy
	for _, sc := range wellKnown(addrs) {
		if sc.name == "named-ports" || sc.name == "match-expressions" {
			pols = append(pols, sc.policies...)
		}
	}
	file := writeTemp(t, policiesYAML(t, pols))
	l.run("apply", "-f", file)
	for _, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) { l.checkMatrix(t, pols, "--family", fam) })
	}
	// Through the Service: the answer is the model's for the one backend,
	// nx/a, on its target port 81.
	w, byKey := l.npWorld(t, pols)
	backend := byKey["nx/a"]
	for _, fam := range []string{"ipv4", "ipv6"} {
		res := l.probe("--to-services", "--family", fam, "--timeout", "700ms")
		if len(res) != len(byKey) {
			t.Fatalf("%s: %d service probes, want %d", fam, len(res), len(byKey))
		}
		for _, pr := range res {
			from := byKey[pr.From]
			want := w.allowed(npConn{from: from, to: backend, fromAddr: podAddr(from, fam == "ipv4"), toAddr: podAddr(backend, fam == "ipv4"), port: 81, protocol: corev1.ProtocolTCP})
			if pr.Connected != want {
				t.Errorf("%s: %s -> %s (backend nx/a:81): connected %t, model says %t (%s)", fam, pr.From, pr.To, pr.Connected, want, pr.Error)
			}
		}
	}
}

// flushUDPConntrack deletes a lab node's UDP conntrack entries.
func flushUDPConntrack(t *testing.T, nsPath string) {
	t.Helper()
	eachConntrack(t, nsPath, func(c *conntrack.Conn, f conntrack.Flow) {
		if f.TupleOrig.Proto.Protocol == unix.IPPROTO_UDP {
			c.Delete(f)
		}
	})
}
