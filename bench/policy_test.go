package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/dataplane/nft"
	"github.com/podnet/podnet/internal/k8s"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/netpol"
	"github.com/podnet/podnet/internal/testenv"
)

// BenchmarkPolicy measures NetworkPolicy at scale, through the agent's own
// steps (API objects → netpol.World → Compile → nft.Policy.Sync into a
// real kernel table in a throwaway namespace):
//
//   - compile and apply 1,000 policies over 5,000 pods in 100 namespaces,
//     for a node holding a tenth of the pods, and the Go heap it takes;
//   - one pod's label change at that scale: recompute and the incremental
//     transaction;
//   - connect latency through a node whose target pod is selected by 0,
//     100 and 10,000 policies;
//   - a policy change in effect for real packets, end to end through a
//     real kube-apiserver.
//
// It writes the "policy" section of RESULTS.md.
//
//	go test ./bench -run '^$' -bench 'Policy$' -benchtime 1x -timeout 30m
func BenchmarkPolicy(b *testing.B) {
	testenv.RequireRoot(b)
	var s strings.Builder
	s.WriteString(runMeta())
	s.WriteString("## NetworkPolicy at scale\n\n`go test ./bench -run '^$' -bench 'Policy$' -benchtime 1x -timeout 30m`\n\n")
	s.WriteString(policyScale(b))
	s.WriteString(policyLatency(b))
	s.WriteString(policyInEffect(b))
	if err := updateSection("RESULTS.md", "policy", s.String()); err != nil {
		b.Fatal(err)
	}
}

// scaleObjects makes 100 namespaces of 50 pods (labels app=a0..a9,
// tier=t0..t4) on 10 nodes, and 10 policies per namespace: each selects
// one app and admits two other apps of its namespace, a tier from
// namespaces with a matching label, and an ipBlock, on numeric and named
// ports.
func scaleObjects() ([]*corev1.Pod, []*corev1.Namespace, []*networkingv1.NetworkPolicy) {
	var pods []*corev1.Pod
	var nss []*corev1.Namespace
	var pols []*networkingv1.NetworkPolicy
	n := 0
	for i := 0; i < 100; i++ {
		ns := fmt.Sprintf("ns%d", i)
		nss = append(nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"env": []string{"prod", "dev"}[i%2], "team": fmt.Sprint("team", i%7)}}})
		for j := 0; j < 50; j++ {
			n++
			pods = append(pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("p", j), Labels: map[string]string{"app": fmt.Sprint("a", j%10), "tier": fmt.Sprint("t", j%5)}},
				Spec:       corev1.PodSpec{NodeName: fmt.Sprint("node", n%10), Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(8080 + j%3)}}}}},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.%d.%d.%d", 100+n/65536, (n/256)%256, n%256)}}},
			})
		}
		for k := 0; k < 10; k++ {
			tcpP, named := intstr.FromInt32(int32(80+k)), intstr.FromString("http")
			pols = append(pols, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("pol", k)},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint("a", k)}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From: []networkingv1.NetworkPolicyPeer{
							{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{fmt.Sprint("a", (k+1)%10), fmt.Sprint("a", (k+2)%10)}}}}},
							{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprint("team", k%7)}}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprint("t", k%5)}}},
							{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{fmt.Sprintf("192.168.%d.0/24", k)}}},
						},
						Ports: []networkingv1.NetworkPolicyPort{{Port: &tcpP}, {Port: &named}},
					}},
					Egress: []networkingv1.NetworkPolicyEgressRule{{
						To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}},
					}},
				}})
		}
	}
	return pods, nss, pols
}

func benchNS(b *testing.B, tag string) (string, func()) {
	name := fmt.Sprintf("pnt-bpol-%s-%d", tag, time.Now().UnixNano()%1e6)
	path, err := netns.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	return path, func() { netns.Delete(name) }
}

func heapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

func policyScale(b *testing.B) string {
	pods, nss, pols := scaleObjects()
	const node = "node3"
	var fulls, compiles, incs, incApply []float64
	var heap float64
	var st nft.Stats
	for run := 0; run < 3; run++ {
		path, done := benchNS(b, "scale")
		backend, err := nft.NewPolicy(path, 100)
		if err != nil {
			b.Fatal(err)
		}
		before := heapMiB()
		t0 := time.Now()
		comp := netpol.NewCompiler()
		w := k8s.PolicyWorld(pods, nss, pols, nil)
		d := comp.Compile(w, node)
		tc := time.Since(t0)
		st, err = backend.Sync(context.Background(), d)
		if err != nil {
			b.Fatal(err)
		}
		fulls = append(fulls, ms(time.Since(t0)))
		compiles = append(compiles, ms(tc))
		heap = heapMiB() - before
		runtime.KeepAlive(w)
		runtime.KeepAlive(d)
		// Label changes: a peer pod of several policies flips app label.
		for i := 0; i < 10; i++ {
			p := pods[(i*97)%len(pods)]
			old := p.Labels["app"]
			p.Labels = map[string]string{"app": fmt.Sprint("a", (i+3)%10), "tier": p.Labels["tier"]}
			t1 := time.Now()
			d = comp.Compile(k8s.PolicyWorld(pods, nss, pols, nil), node)
			t2 := time.Now()
			ist, err := backend.Sync(context.Background(), d)
			if err != nil || ist.Full {
				b.Fatalf("incremental sync: %v (full %t)", err, ist.Full)
			}
			incs = append(incs, ms(time.Since(t1)))
			incApply = append(incApply, ms(time.Since(t2)))
			p.Labels = map[string]string{"app": old, "tier": p.Labels["tier"]}
		}
		done()
	}
	local := 0
	for _, p := range pods {
		if p.Spec.NodeName == node {
			local++
		}
	}
	var s strings.Builder
	fmt.Fprintf(&s, "### Compile and apply: 1,000 policies, 5,000 pods, 100 namespaces\n\n")
	fmt.Fprintf(&s, "The node holds %d of the pods (10 nodes). Each policy selects one app, admits two apps of its namespace, a tier from namespaces picked by label, and an ipBlock with an except, on a numeric and a named port, and limits egress to namespaces picked by label. Medians of 3 runs (label changes: of 30).\n\n", local)
	s.WriteString("| what | median | note |\n|---|---|---|\n")
	fmt.Fprintf(&s, "| full: convert + compile + apply (new table) | %s | compile alone %s; %d chains, %d rules, %d elements |\n", fmtMS(median(fulls)), fmtMS(median(compiles)), st.Chains, st.Rules, st.Elements)
	fmt.Fprintf(&s, "| Go heap held by the world and the desired state | %.1f MiB | |\n", heap)
	fmt.Fprintf(&s, "| one pod label change: convert + compile + incremental apply | %s | p90 %s; the kernel transaction alone %s |\n\n", fmtMS(median(incs)), fmtMS(percentile(incs, 90)), fmtMS(median(incApply)))
	s.WriteString("Target: an incremental update applied in under 100 ms.\n\n")
	return s.String()
}

// latencyTopology is client ─ node ─ server, routed through the node's
// forward hook, where the policy table sits.
func latencyTopology(b *testing.B) (client, node, server string, done func()) {
	prefix := fmt.Sprintf("pnt-bpl-%d-", time.Now().UnixNano()%1e6)
	mk := func(n string) string {
		p, err := netns.Create(prefix + n)
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	client, node, server = mk("c"), mk("n"), mk("s")
	done = func() {
		names, _ := netns.List(prefix)
		for _, n := range names {
			netns.Delete(n)
		}
	}
	hn, err := netns.Handle(node)
	if err != nil {
		b.Fatal(err)
	}
	defer hn.Close()
	for i, peer := range []string{client, server} {
		fd, err := os.Open(peer)
		if err != nil {
			b.Fatal(err)
		}
		name := fmt.Sprint("v", i)
		err = hn.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(fd.Fd()))})
		fd.Close()
		if err != nil {
			b.Fatal(err)
		}
		l, _ := hn.LinkByName(name)
		hn.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 77, byte(i), 1), Mask: net.CIDRMask(24, 32)}})
		hn.LinkSetUp(l)
		hp, err := netns.Handle(peer)
		if err != nil {
			b.Fatal(err)
		}
		pl, _ := hp.LinkByName("eth0")
		hp.AddrAdd(pl, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 77, byte(i), 2), Mask: net.CIDRMask(24, 32)}})
		hp.LinkSetUp(pl)
		lo, _ := hp.LinkByName("lo")
		hp.LinkSetUp(lo)
		hp.RouteAdd(&netlink.Route{Gw: net.IPv4(10, 77, byte(i), 1)})
		hp.Close()
	}
	if err := netns.Do(node, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		b.Fatal(err)
	}
	return client, node, server, done
}

// latencyPolicies makes n policies that all select the server pod; each
// admits its own /32 on its own port, and the first also admits the
// client on 8080, so the client's connection is allowed by one of n.
func latencyPolicies(n int) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for i := 0; i < n; i++ {
		port := intstr.FromInt32(int32(10000 + i%50000))
		cidr := fmt.Sprintf("10.%d.%d.%d/32", 200+i/65536, (i/256)%256, i%256)
		peers := []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}}
		ports := []networkingv1.NetworkPolicyPort{{Port: &port}}
		if i == 0 {
			p8080 := intstr.FromInt32(8080)
			peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.77.0.2/32"}})
			ports = append(ports, networkingv1.NetworkPolicyPort{Port: &p8080})
		}
		out = append(out, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprint("pol", i)},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}}})
	}
	return out
}

func policyLatency(b *testing.B) string {
	client, node, server, done := latencyTopology(b)
	defer done()
	var ln net.Listener
	if err := netns.Do(server, func() (err error) { ln, err = net.Listen("tcp", "10.77.1.2:8080"); return err }); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	backend, err := nft.NewPolicy(node, 100)
	if err != nil {
		b.Fatal(err)
	}
	defer backend.Delete(context.Background())
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "server"}, Spec: corev1.PodSpec{NodeName: "n"}, Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.77.1.2"}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "client"}, Spec: corev1.PodSpec{NodeName: "n"}, Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.77.0.2"}}}},
	}
	nss := []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}}
	counts := []int{0, 100, 10000}
	got := map[int][]float64{}
	// Interleave the counts over rounds, so drift hits all alike.
	for round := 0; round < 5; round++ {
		for _, n := range counts {
			d := netpol.Compile(k8s.PolicyWorld(pods, nss, latencyPolicies(n), nil), "n")
			backend.RequestFull()
			if _, err := backend.Sync(context.Background(), d); err != nil {
				b.Fatal(err)
			}
			for i := 0; i < 200; i++ {
				t := connectTime(client, "10.77.1.2:8080")
				if t <= 0 {
					b.Fatalf("%d policies: connect failed", n)
				}
				got[n] = append(got[n], float64(t)/float64(time.Microsecond))
			}
		}
	}
	var s strings.Builder
	s.WriteString("### Connect latency with policies selecting the target pod\n\n")
	s.WriteString("TCP connect from a client namespace through a node namespace (forward hook, policy table) to a server pod that N policies select; each policy admits its own /32 on its own port, one of them the client. 1,000 connects per count, interleaved in 5 rounds.\n\n")
	s.WriteString("| policies selecting the target | median | p90 | ratio to 0 |\n|---|---|---|---|\n")
	base := median(got[0])
	for _, n := range counts {
		xs := got[n]
		fmt.Fprintf(&s, "| %d | %.0f µs | %.0f µs | %.2f |\n", n, median(xs), percentile(xs, 90), median(xs)/base)
	}
	s.WriteString("\nTarget: the ratio between 10,000 policies and 0 stays ≤ 1.2.\n\n")
	return s.String()
}
