package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus series, registered on a registry of
// the agent's own (the lab runs several agents in one process).
type metrics struct {
	registry     *prometheus.Registry
	syncDuration prometheus.Histogram
	syncs        *prometheus.CounterVec
	peers        prometheus.Gauge
	routes       prometheus.Gauge
	overlay      *prometheus.GaugeVec
	skipped      prometheus.Gauge
	changes      *prometheus.CounterVec

	proxySyncDuration prometheus.Histogram
	programming       prometheus.Histogram
	proxySyncs        *prometheus.CounterVec
	proxyFullSyncs    prometheus.Counter
	proxyChains       prometheus.Gauge
	proxyRules        prometheus.Gauge
	proxyElements     prometheus.Gauge
	proxyServices     prometheus.Gauge

	policySyncDuration prometheus.Histogram
	policySyncs        *prometheus.CounterVec
	policyFullSyncs    prometheus.Counter
	policyChains       prometheus.Gauge
	policyRules        prometheus.Gauge
	policyElements     prometheus.Gauge
	policies           prometheus.Gauge
	policyDrops        *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podnet_routing_sync_duration_seconds",
			Help:    "Time to compute the routing state from the API and apply it to the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podnet_routing_syncs_total",
			Help: "Routing syncs by result (success or error).",
		}, []string{"result"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_routing_peers",
			Help: "Peer nodes known from the API.",
		}),
		routes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_routing_routes",
			Help: "Routes to peer pod ranges programmed in the kernel.",
		}),
		overlay: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_routing_overlay_entries",
			Help: "Overlay objects programmed in the kernel, by kind (device, neighbour, fdb).",
		}, []string{"kind"}),
		skipped: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_routing_skipped_ranges",
			Help: "Peer pod ranges that cannot be routed (see the agent log for why).",
		}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podnet_routing_kernel_changes_total",
			Help: "Kernel objects added or changed, and removed, by the routing syncs.",
		}, []string{"op"}),
	}
	// The proxy's series mean what kube-proxy's of the same name mean, so
	// dashboards carry over.
	m.proxySyncDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "podnet_proxy_sync_proxy_rules_duration_seconds",
		Help:    "Time to render changed Services and apply them to nftables, per sync.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
	})
	m.programming = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "podnet_proxy_network_programming_duration_seconds",
		Help:    "Time from an endpoint change (the EndpointSlice's last-change-trigger-time) to its rules being in the kernel.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
	})
	m.proxySyncs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podnet_proxy_syncs_total",
		Help: "Service syncs by result (success or error).",
	}, []string{"result"})
	m.proxyFullSyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podnet_proxy_full_syncs_total",
		Help: "Service syncs that rewrote the whole table (start, after a failure, periodic).",
	})
	m.proxyChains = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_proxy_nftables_chains", Help: "Chains in the proxy's nftables table."})
	m.proxyRules = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_proxy_nftables_rules", Help: "Rules in the proxy's nftables table."})
	m.proxyElements = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_proxy_nftables_elements", Help: "Set and map elements in the proxy's nftables table."})
	m.proxyServices = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_proxy_services", Help: "Services known to the proxy."})
	m.registry.MustRegister(m.proxySyncDuration, m.programming, m.proxySyncs, m.proxyFullSyncs, m.proxyChains, m.proxyRules, m.proxyElements, m.proxyServices)
	m.policySyncDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "podnet_policy_sync_duration_seconds",
		Help:    "Time to compile NetworkPolicy for this node and apply the difference to nftables, per sync.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	m.policySyncs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podnet_policy_syncs_total",
		Help: "NetworkPolicy syncs by result (success or error).",
	}, []string{"result"})
	m.policyFullSyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podnet_policy_full_syncs_total",
		Help: "NetworkPolicy syncs that rewrote the whole table (start, after a failure, periodic).",
	})
	m.policyChains = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_policy_nftables_chains", Help: "Chains in the policy's nftables table."})
	m.policyRules = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_policy_nftables_rules", Help: "Rules in the policy's nftables table."})
	m.policyElements = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_policy_nftables_elements", Help: "Set and map elements in the policy's nftables table."})
	m.policies = prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_policy_policies", Help: "NetworkPolicies known to the agent (valid ones)."})
	m.policyDrops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podnet_policy_drops_total",
		Help: "Packets dropped by NetworkPolicy on this node, by isolating policy (namespace/name) and direction, as reported through nflog.",
	}, []string{"policy", "direction"})
	m.registry.MustRegister(m.policySyncDuration, m.policySyncs, m.policyFullSyncs, m.policyChains, m.policyRules, m.policyElements, m.policies, m.policyDrops)
	m.registry.MustRegister(m.syncDuration, m.syncs, m.peers, m.routes, m.overlay, m.skipped, m.changes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
