package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	promodel "github.com/prometheus/common/model"

	"github.com/podnet/podnet/internal/netns"
)

// metricsOf scrapes one lab agent and parses the exposition with the
// Prometheus text parser.
func (l *labRun) metricsOf(t *testing.T, node string) map[string]*dto.MetricFamily {
	t.Helper()
	text := l.run("metrics", "--node", node)
	parser := expfmt.NewTextParser(promodel.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("metrics of %s do not parse: %v", node, err)
	}
	return fams
}

// value finds a sample by labels (all given must match) and returns its
// counter, gauge or histogram count.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if got[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// TestAgentMetricsMatchTraffic generates each kind of traffic the agent
// counts and checks the scraped values move accordingly: forwarded
// packets, drops by policy, rejects for a Service without endpoints,
// no-route drops, CNI ADD counts and latencies, and IPAM use.
func TestAgentMetricsMatchTraffic(t *testing.T) {
	l := startLab(t)
	l.apply(explainYAML + `
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: prod}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
`)
	before := l.metricsOf(t, "node1")
	for _, name := range []string{"podnet_forwarded_packets_total", "podnet_dropped_packets_total", "podnet_cni_operations_total", "podnet_ipam_allocated_addresses", "podnet_policy_sync_duration_seconds", "podnet_proxy_sync_proxy_rules_duration_seconds", "podnet_routing_sync_duration_seconds"} {
		if before[name] == nil || before[name].GetHelp() == "" {
			t.Errorf("metric %s missing or without help", name)
		}
	}
	// node1 holds prod/db and prod/batch: two ADDs, two addresses.
	if v := value(before, "podnet_cni_operations_total", "op", "ADD", "result", "success"); v != 2 {
		t.Errorf("CNI ADD successes on node1 = %v, want 2", v)
	}
	if v := value(before, "podnet_cni_operation_duration_seconds", "op", "ADD"); v != 2 {
		t.Errorf("CNI ADD latency samples on node1 = %v, want 2", v)
	}
	if v := value(before, "podnet_ipam_allocated_addresses", "range", "10.244.1.0/24"); v != 2 {
		t.Errorf("IPAM allocated in 10.244.1.0/24 = %v, want 2", v)
	}
	if v := value(before, "podnet_ipam_capacity_addresses", "range", "10.244.1.0/24"); v < 250 || v > 254 {
		t.Errorf("IPAM capacity of a /24 = %v", v)
	}

	// Traffic: web-1 (node2) → db:5432 is allowed and crosses node1's
	// forward hook; batch → db:5432 is dropped by policy on node1; every
	// pod → the empty Service is rejected on its own node; node1 itself
	// tries an IPv6 address it has no route to.
	l.probe("--from", "prod/web-1", "--to", "prod/db", "--port", "5432")
	l.probe("--from", "prod/batch", "--to", "prod/db", "--port", "5432", "--timeout", "300ms")
	l.probe("--to-services", "--timeout", "300ms")
	netns.Do(l.nodeNS("node1"), func() error {
		c, err := net.DialTimeout("tcp6", "[fd99::1]:80", 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	})
	after := l.metricsOf(t, "node1")
	grew := func(name string, min float64, labels ...string) {
		t.Helper()
		b, a := value(before, name, labels...), value(after, name, labels...)
		if b < 0 {
			b = 0
		}
		if a-b < min {
			t.Errorf("%s%v grew by %v (from %v to %v), want at least %v", name, labels, a-b, b, a, min)
		}
	}
	grew("podnet_forwarded_packets_total", 3)
	grew("podnet_forwarded_bytes_total", 100)
	grew("podnet_dropped_packets_total", 1, "reason", "policy")
	grew("podnet_dropped_bytes_total", 40, "reason", "policy")
	grew("podnet_dropped_packets_total", 1, "reason", "no_endpoints")
	grew("podnet_dropped_packets_total", 1, "reason", "no_route")
	// The per-policy count comes from the nflog report, which trails the
	// packet by a moment.
	eventually(t, 5*time.Second, "per-policy drop counted", func() (bool, string) {
		v := value(l.metricsOf(t, "node1"), "podnet_policy_drops_total", "policy", "prod/db-allow-app", "direction", "ingress")
		return v >= 1, fmt.Sprint(v)
	})
}
