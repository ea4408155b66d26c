package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/ti-mo/conntrack"
	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/cgroup"
	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// servicesYAML is the Service zoo of TestServices: web pods w1 (node1) and
// w2 (node2), clients c1-c3 (one per node), and a Service of every kind
// the proxy handles. Node ports are explicit so the test can dial them.
const servicesYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: svc}
---
apiVersion: v1
kind: Pod
metadata: {name: w1, namespace: svc, labels: {app: web, role: one}}
spec:
  nodeName: node1
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: w2, namespace: svc, labels: {app: web}}
spec:
  nodeName: node2
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: c1, namespace: svc, labels: {app: client}}
spec: {nodeName: node1, containers: [{name: c, image: x, ports: [{containerPort: 9000}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c2, namespace: svc, labels: {app: client}}
spec: {nodeName: node2, containers: [{name: c, image: x, ports: [{containerPort: 9000}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c3, namespace: svc, labels: {app: client}}
spec: {nodeName: node3, containers: [{name: c, image: x, ports: [{containerPort: 9000}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: svc}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, targetPort: dns, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: web6, namespace: svc}
spec:
  ipFamilies: [IPv6]
  selector: {app: web}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: np-cluster, namespace: svc}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: np-local, namespace: svc}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  healthCheckNodePort: 30500
  selector: {role: one}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: svc}
spec:
  type: LoadBalancer
  externalIPs: [203.0.113.50]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30082}]
status:
  loadBalancer: {ingress: [{ip: 203.0.113.60}]}
---
apiVersion: v1
kind: Service
metadata: {name: itp, namespace: svc}
spec:
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: svc}
spec:
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: close, namespace: svc}
spec:
  trafficDistribution: PreferClose
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: svc}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: svc}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: extname, namespace: svc}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: svc}
spec:
  externalIPs: [300.1.2.3]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`

// svcLab wraps a lab with the Service helpers.
type svcLab struct {
	*labRun
	svcs map[string]corev1.Service
}

func (l *svcLab) netns(query string) string {
	l.t.Helper()
	var m map[string]string
	if err := lab.NewClient(l.name).Do("GET", "/v1/netns?"+query, nil, &m); err != nil {
		l.t.Fatalf("netns %s: %v", query, err)
	}
	return m["path"]
}

func (l *svcLab) pod(name string) string      { return l.netns("namespace=svc&pod=" + name) }
func (l *svcLab) router() string              { return netns.Path(lab.Prefix(l.name) + "router") }
func (l *svcLab) node(name string) string     { return l.netns("node=" + name) }
func (l *svcLab) clusterIP(svc string) string { return l.svcs[svc].Spec.ClusterIP }

func (l *svcLab) refresh() {
	var list corev1.ServiceList
	if err := json.Unmarshal([]byte(l.run("get", "services", "-o", "json")), &list); err != nil {
		l.t.Fatal(err)
	}
	l.svcs = map[string]corev1.Service{}
	for _, s := range list.Items {
		l.svcs[s.Name] = s
	}
}

// call makes one request and returns who answered and the source address
// the server saw.
func call(nsPath, proto, dst string, srcPort uint16, timeout time.Duration) (who, src string, err error) {
	ans, err := lab.Dial(context.Background(), nsPath, proto, srcPort, netip.MustParseAddrPort(dst), timeout)
	if err != nil {
		return "", "", err
	}
	who, rest, _ := strings.Cut(ans, "\n")
	return strings.TrimSpace(who), strings.TrimPrefix(strings.TrimSpace(rest), "src "), nil
}

// answers makes n requests and counts the answering pods; errors count
// under "error: ...".
func answers(nsPath, proto, dst string, n int) map[string]int {
	out := map[string]int{}
	for range n {
		who, _, err := call(nsPath, proto, dst, 0, time.Second)
		if err != nil {
			who = "error: " + err.Error()
		}
		out[who]++
	}
	return out
}

func hostPort(ip string, port int) string {
	return net.JoinHostPort(ip, fmt.Sprint(port))
}

// TestServices checks every Service semantic the proxy implements with
// real packets in a dual-stack, three-node lab with podnet as the proxy.
//
// It runs once per dataplane: every semantic must hold under both. Under
// ebpf the test process joins the lab's cgroup, so that its own
// connections (made from inside the pods' namespaces) go through the
// socket balancer as the pods' would.
func TestServices(t *testing.T) {
	for _, dp := range []string{"nftables", "ebpf"} {
		t.Run(dp, func(t *testing.T) { testServices(t, dp) })
	}
}

// tcCounters reads a lab node's tc balancer counters (pinned): first
// packets translated, and dropped for want of a local endpoint.
func tcCounters(t *testing.T, labName, node string) [2]uint64 {
	t.Helper()
	m, err := cebpf.LoadPinnedMap(filepath.Join(lab.Dir(labName), "bpf", node, "podnet_np_counters"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var sums [2]uint64
	for i := range sums {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			t.Fatal(err)
		}
		for _, c := range per {
			sums[i] += c
		}
	}
	return sums
}

func testServices(t *testing.T, dataplane string) {
	if dataplane == "ebpf" {
		if _, err := cgroup.Root(); err != nil {
			t.Skipf("skipped: the eBPF dataplane needs cgroup v2: %v", err)
		}
	}
	l := &svcLab{labRun: startLab(t, "--nodes", "3", "--dual-stack", "--dataplane", dataplane)}
	if dataplane == "ebpf" {
		joinLabCgroup(t, l.name)
	}
	l.apply(servicesYAML)
	l.refresh()
	waitFor(t, "web answers on its ClusterIP", func() bool {
		_, _, err := call(l.pod("c1"), "TCP", hostPort(l.clusterIP("web"), 80), 0, time.Second)
		return err == nil
	})

	t.Run("clusterip-from-pods-and-nodes", func(t *testing.T) {
		// Every client pod and every node, both families, TCP and UDP,
		// with named target ports resolved per endpoint.
		for _, fam := range []string{"ipv4", "ipv6"} {
			res := l.probe("--to-services", "--from-nodes", "--family", fam)
			n := 0
			for _, r := range res {
				if r.To != "svc/svc/web" && r.To != "svc/svc/web6" {
					continue
				}
				n++
				if !r.Connected || (r.AnsweredBy != "svc/w1" && r.AnsweredBy != "svc/w2") {
					t.Errorf("%s → %s %s %s: connected=%v answeredBy=%q err=%s", r.From, r.To, r.Target, r.Protocol, r.Connected, r.AnsweredBy, r.Error)
				}
			}
			// 5 pods + 3 nodes as sources; web has 2 ports per family, web6 one port in IPv6.
			want := 8 * 2
			if fam == "ipv6" {
				want += 8
			}
			if n != want {
				t.Errorf("%s: %d service connections tried, want %d", fam, n, want)
			}
		}
	})

	if dataplane == "ebpf" {
		t.Run("socket-balancer-translates-at-connect", func(t *testing.T) {
			// The connection leaves the pod already addressed to the
			// endpoint: the node's conntrack has it with no NAT.
			who, _, err := call(l.pod("c1"), "TCP", hostPort(l.clusterIP("web"), 80), 40111, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			flows := conntrackFlows(t, l.node("node1"))
			found := false
			for _, f := range flows {
				if f.srcPort != 40111 {
					continue
				}
				found = true
				if f.origDst.String() == l.clusterIP("web") || f.nat {
					t.Errorf("answered by %s, but the flow was translated per packet: %+v", who, f)
				}
			}
			if !found {
				t.Errorf("no conntrack entry for the connection from c1 (source port 40111): %+v", flows)
			}
			// The flow log still names the Service: the balancer's ring
			// buffer event joined with conntrack's record.
			eventually(t, 5*time.Second, "the flow names the Service", func() (bool, string) {
				var page agent.FlowPage
				if err := lab.NewClient(l.name).Do("GET", "/v1/flows?node=node1&from=svc/c1", nil, &page); err != nil {
					return false, err.Error()
				}
				for _, r := range page.Flows {
					if r.SrcPort == 40111 && r.Service == "svc/web" && (r.DstName == "svc/w1" || r.DstName == "svc/w2") {
						return true, ""
					}
				}
				return false, fmt.Sprintf("%+v", page.Flows)
			})
		})
	}

	t.Run("load-balancing", func(t *testing.T) {
		got := answers(l.pod("c3"), "TCP", hostPort(l.clusterIP("web"), 80), 40)
		if got["svc/w1"] == 0 || got["svc/w2"] == 0 || len(got) != 2 {
			t.Errorf("40 connections from c3 spread as %v, want both endpoints and nothing else", got)
		}
	})

	t.Run("no-endpoints-rejects", func(t *testing.T) {
		t0 := time.Now()
		_, _, err := call(l.pod("c1"), "TCP", hostPort(l.clusterIP("empty"), 80), 0, 3*time.Second)
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("connect to a Service without endpoints: %v, want connection refused (ICMP reject)", err)
		}
		if d := time.Since(t0); d > time.Second {
			t.Errorf("reject took %s: the packet was dropped, not rejected", d)
		}
	})

	t.Run("hairpin", func(t *testing.T) {
		// itp sends node1's clients to node1's endpoint only: w1 reaches
		// itself through its own Service.
		for range 3 {
			who, _, err := call(l.pod("w1"), "TCP", hostPort(l.clusterIP("itp"), 80), 0, time.Second)
			if err != nil || who != "svc/w1" {
				t.Fatalf("w1 → itp: %q %v, want w1 itself", who, err)
			}
		}
	})

	t.Run("nodeport-cluster", func(t *testing.T) {
		for i, node := range []string{"192.168.77.11", "192.168.77.12", "192.168.77.13"} {
			who, src, err := call(l.router(), "TCP", hostPort(node, 30080), 0, time.Second)
			if err != nil {
				t.Errorf("external → node%d:30080: %v", i+1, err)
				continue
			}
			// Masqueraded to a node address, so replies go back the way
			// they came whichever node the endpoint is on.
			if !strings.HasPrefix(src, "192.168.77.1") || src == "192.168.77.1" {
				t.Errorf("external → node%d:30080 answered by %s from %s, want a node's address", i+1, who, src)
			}
		}
	})

	t.Run("nodeport-local", func(t *testing.T) {
		who, src, err := call(l.router(), "TCP", hostPort("192.168.77.11", 30081), 0, time.Second)
		if err != nil || who != "svc/w1" || src != "192.168.77.1" {
			t.Errorf("external → node1:30081 = %q from %q (%v), want w1 seeing the client's own address 192.168.77.1", who, src, err)
		}
		if _, _, err := call(l.router(), "TCP", hostPort("192.168.77.12", 30081), 0, 1500*time.Millisecond); err == nil {
			t.Errorf("external → node2:30081 connected, but node2 has no local endpoint")
		}
		// The drop is in node2's flow log with its reason and Service,
		// under either dataplane (nflog, or the tc balancer's ring).
		waitFor(t, "node2's flow log names the policy-Local drop", func() bool {
			for _, r := range parseFlows(t, l.flows("-o", "json", "--verdict", "dropped")) {
				if r.Node == "node2" && r.Reason == flow.ReasonNoLocalEndpoints && r.DstPort == 30081 && r.Service == "svc/np-local" {
					return true
				}
			}
			return false
		})
		// Pods may use any endpoint: only external clients are limited.
		if _, _, err := call(l.pod("c2"), "TCP", hostPort("192.168.77.12", 30081), 0, time.Second); err != nil {
			t.Errorf("pod c2 → node2:30081: %v", err)
		}
		for node, want := range map[string]int{"192.168.77.11": 200, "192.168.77.12": 503} {
			code, body := httpGet(t, l.router(), "http://"+hostPort(node, 30500)+"/")
			if code != want {
				t.Errorf("health check on %s: %d %s, want %d", node, code, body, want)
			}
			wantCount := map[int]string{200: `"localEndpoints":1`, 503: `"localEndpoints":0`}[want]
			if !strings.Contains(body, wantCount) {
				t.Errorf("health check on %s: body %s lacks %s", node, body, wantCount)
			}
		}
	})

	t.Run("external-and-loadbalancer-ips", func(t *testing.T) {
		// The router plays the load balancer and the upstream network:
		// it routes the Service's external addresses to node2.
		for _, ip := range []string{"203.0.113.50", "203.0.113.60"} {
			out, err := exec.Command("ip", "netns", "exec", lab.Prefix(l.name)+"router", "ip", "route", "replace", ip+"/32", "via", "192.168.77.12").CombinedOutput()
			if err != nil {
				t.Fatalf("route %s: %v %s", ip, err, out)
			}
			who, _, err := call(l.router(), "TCP", hostPort(ip, 80), 0, time.Second)
			if err != nil || (who != "svc/w1" && who != "svc/w2") {
				t.Errorf("external → %s:80 = %q %v", ip, who, err)
			}
		}
	})

	if dataplane == "ebpf" {
		t.Run("tc-balancer-set-up-external-connections", func(t *testing.T) {
			// The node port and external connections above were set up
			// by the tc balancer on each node's uplink, not by the
			// nftables rules behind it: its counters say so, and node2
			// dropped the policy-Local connection it has no endpoint for.
			for node, min := range map[string][2]uint64{"node1": {1, 0}, "node2": {1, 1}} {
				if got := tcCounters(t, l.name, node); got[0] < min[0] || got[1] < min[1] {
					t.Errorf("%s: tc balancer translated %d and dropped %d first packets, want at least %d and %d", node, got[0], got[1], min[0], min[1])
				}
			}
			// On the pods' devices too: c3 reaching its own node's port.
			before := tcCounters(t, l.name, "node3")[0]
			if _, _, err := call(l.pod("c3"), "TCP", hostPort("192.168.77.13", 30080), 0, time.Second); err != nil {
				t.Fatalf("pod c3 → node3:30080: %v", err)
			}
			if after := tcCounters(t, l.name, "node3")[0]; after != before+1 {
				t.Errorf("pod c3 → node3:30080: tc balancer translated %d connections, want 1", after-before)
			}
		})
	}

	t.Run("internal-traffic-policy-local", func(t *testing.T) {
		for client, want := range map[string]string{"c1": "svc/w1", "c2": "svc/w2"} {
			got := answers(l.pod(client), "TCP", hostPort(l.clusterIP("itp"), 80), 6)
			if got[want] != 6 {
				t.Errorf("%s → itp: %v, want only %s", client, got, want)
			}
		}
		// node3 has no endpoint: dropped, not sent to another node.
		if _, _, err := call(l.pod("c3"), "TCP", hostPort(l.clusterIP("itp"), 80), 0, time.Second); err == nil {
			t.Errorf("c3 → itp connected, but node3 has no local endpoint")
		}
	})

	t.Run("session-affinity", func(t *testing.T) {
		for _, c := range []string{"c1", "c2", "c3"} {
			got := answers(l.pod(c), "TCP", hostPort(l.clusterIP("sticky"), 80), 10)
			if len(got) != 1 {
				t.Errorf("%s → sticky: %v, want one endpoint throughout", c, got)
			}
		}
	})

	t.Run("prefer-close", func(t *testing.T) {
		for client, want := range map[string]string{"c1": "svc/w1", "c2": "svc/w2"} {
			got := answers(l.pod(client), "TCP", hostPort(l.clusterIP("close"), 80), 8)
			if got[want] != 8 {
				t.Errorf("%s → close: %v, want only the same-zone %s", client, got, want)
			}
		}
		// zone-c has no endpoint: every endpoint is used.
		if got := answers(l.pod("c3"), "TCP", hostPort(l.clusterIP("close"), 80), 30); len(got) != 2 {
			t.Errorf("c3 → close: %v, want both endpoints", got)
		}
	})

	t.Run("headless-externalname-and-bad-objects-are-skipped", func(t *testing.T) {
		out, err := exec.Command("ip", "netns", "exec", lab.Prefix(l.name)+"node1", "nft", "list", "table", "inet", "podnet-proxy").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v %s", err, out)
		}
		for _, s := range []string{"svc/headless/", "svc/extname/", "svc/bad/"} {
			if strings.Contains(string(out), s) {
				t.Errorf("the proxy programmed %s", s)
			}
		}
		if !strings.Contains(string(out), "svc/web/http") {
			t.Errorf("table lacks svc/web/http:\n%s", out)
		}
	})

	t.Run("terminating-endpoints", func(t *testing.T) {
		// A Service without a selector, with hand-made EndpointSlices:
		// a terminating endpoint is used only when no ready one is left.
		ips := map[string]string{}
		for _, p := range l.pods() {
			ips[p.Name] = p.Status.PodIP
		}
		slice := func(eps string) string {
			return fmt.Sprintf(`---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: manual-1, namespace: svc, labels: {kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{name: "", port: 8080, protocol: TCP}]
endpoints: [%s]
`, eps)
		}
		terminating := fmt.Sprintf(`{addresses: [%s], conditions: {ready: false, serving: true, terminating: true}}`, ips["w1"])
		ready := fmt.Sprintf(`{addresses: [%s], conditions: {ready: true, serving: true, terminating: false}}`, ips["w2"])
		l.apply(`
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: svc}
spec:
  ipFamilies: [IPv4]
  ports: [{port: 80, targetPort: 8080}]
` + slice(terminating+", "+ready))
		l.refresh()
		dst := hostPort(l.clusterIP("manual"), 80)
		if got := answers(l.pod("c3"), "TCP", dst, 10); got["svc/w2"] != 10 {
			t.Errorf("ready w2 and terminating w1: %v, want only w2", got)
		}
		l.apply(slice(terminating))
		if got := answers(l.pod("c3"), "TCP", dst, 5); got["svc/w1"] != 5 {
			t.Errorf("only terminating w1 left: %v, want w1 (graceful drain)", got)
		}
		l.apply(slice(strings.Replace(terminating, "serving: true", "serving: false", 1)))
		if _, _, err := call(l.pod("c3"), "TCP", dst, 0, time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("only a terminating, not serving endpoint: %v, want connection refused", err)
		}
	})

	t.Run("sctp", func(t *testing.T) {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
		if err != nil {
			t.Skipf("skipped: this kernel has no SCTP sockets (%v); SCTP Services are rendered like TCP and UDP ones (internal/proxy)", err)
		}
		syscall.Close(fd)
		t.Skip("skipped: the lab's workloads serve TCP and UDP only, so SCTP cannot be probed end to end yet")
	})

	t.Run("stale-udp-conntrack", func(t *testing.T) {
		// A client that keeps its source port (as a resolver does) must
		// reach the new endpoint at once when the old one goes away.
		l.apply(`
apiVersion: v1
kind: Pod
metadata: {name: u1, namespace: svc, labels: {udp: "on"}}
spec: {nodeName: node1, containers: [{name: c, image: x, ports: [{containerPort: 5353, protocol: UDP}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: udp, namespace: svc}
spec:
  selector: {udp: "on"}
  ports: [{port: 53, targetPort: 5353, protocol: UDP}]
`)
		l.refresh()
		dst := hostPort(l.clusterIP("udp"), 53)
		waitFor(t, "udp answers", func() bool {
			who, _, _ := call(l.pod("c3"), "UDP", dst, 40053, time.Second)
			return who == "svc/u1"
		})
		l.run("delete", "-f", writeTemp(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: u1, namespace: svc}\n"))
		l.apply(`
apiVersion: v1
kind: Pod
metadata: {name: u2, namespace: svc, labels: {udp: "on"}}
spec: {nodeName: node2, containers: [{name: c, image: x, ports: [{containerPort: 5353, protocol: UDP}]}]}
`)
		deadline := time.Now().Add(5 * time.Second)
		for {
			who, _, err := call(l.pod("c3"), "UDP", dst, 40053, time.Second)
			if who == "svc/u2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the same UDP flow still does not reach the new endpoint after 5s: %q %v", who, err)
			}
		}
	})
}

func httpGet(t *testing.T, nsPath, url string) (int, string) {
	t.Helper()
	// The transport dials on a goroutine of its own: open the socket
	// inside the namespace there.
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = netns.Do(nsPath, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dial}}
	resp, err := c.Get(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// joinLabCgroup moves the test process into the cgroup of a lab run with
// the eBPF dataplane (where its socket balancer is attached), and back
// out before the lab goes away.
func joinLabCgroup(t *testing.T, name string) {
	t.Helper()
	root, err := cgroup.Root()
	if err != nil {
		t.Fatal(err)
	}
	leave, err := cgroup.Join(filepath.Join(root, "pnl-"+name))
	if err != nil {
		t.Fatalf("join the lab's cgroup: %v", err)
	}
	t.Cleanup(leave)
}

type ctFlow struct {
	srcPort uint16
	origDst netip.Addr
	nat     bool
}

// conntrackFlows lists the TCP connections in a namespace's conntrack
// table.
func conntrackFlows(t *testing.T, nsPath string) []ctFlow {
	t.Helper()
	var out []ctFlow
	eachConntrack(t, nsPath, func(_ *conntrack.Conn, f conntrack.Flow) {
		if f.TupleOrig.Proto.Protocol == 6 {
			out = append(out, ctFlow{srcPort: f.TupleOrig.Proto.SourcePort, origDst: f.TupleOrig.IP.DestinationAddress, nat: f.Status.DstNAT() || f.Status.SrcNAT()})
		}
	})
	return out
}

// eachConntrack calls fn with every entry of a namespace's conntrack
// table (and the connection, to act on it).
func eachConntrack(t *testing.T, nsPath string, fn func(*conntrack.Conn, conntrack.Flow)) {
	t.Helper()
	err := netns.Do(nsPath, func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		flows, err := c.Dump(nil)
		if err != nil {
			return err
		}
		for _, f := range flows {
			fn(c, f)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("conntrack in %s: %v", nsPath, err)
	}
}
