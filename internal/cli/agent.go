package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/cni"
	"github.com/podnet/podnet/internal/routing"
)

// agentConfig is the agent's configuration. It is read from a YAML file
// (--config) and then overridden by any flag given on the command line.
// The keys are documented in docs/agent.md.
type agentConfig struct {
	NodeName         string   `json:"nodeName"`
	NetNS            string   `json:"netns"`
	Kubeconfig       string   `json:"kubeconfig"`
	Mode             string   `json:"mode"`
	ClusterCIDRs     []string `json:"clusterCIDRs"`
	ServiceCIDRs     []string `json:"serviceCIDRs"`
	AllocatePodCIDRs bool     `json:"allocatePodCIDRs"`
	NodeCIDRMaskV4   int      `json:"nodeCIDRMaskSizeIPv4"`
	NodeCIDRMaskV6   int      `json:"nodeCIDRMaskSizeIPv6"`
	LeaseNamespace   string   `json:"leaseNamespace"`
	VXLANVNI         uint32   `json:"vxlanVNI"`
	VXLANPort        uint16   `json:"vxlanPort"`
	MTU              int      `json:"mtu"`
	CNIConfDir       string   `json:"cniConfDir"`
	CNIBinDir        string   `json:"cniBinDir"`
	CNIDataDir       string   `json:"cniDataDir"`
	CNIChain         []string `json:"cniChain"`
	RemoveConfOnExit bool     `json:"removeCNIConfigOnExit"`
	HealthAddr       string   `json:"healthAddr"`
	ResyncPeriod     string   `json:"resyncPeriod"`
	// Proxy runs podnet's service proxy; leave it off while kube-proxy
	// runs on the node.
	Proxy                bool   `json:"proxy"`
	ProxyMinSyncInterval string `json:"proxyMinSyncInterval"`
	ProxyFullSyncPeriod  string `json:"proxyFullSyncPeriod"`
	// Policy enforces NetworkPolicy; NflogGroup is where its drops are
	// logged (pick another if something else on the node uses 100).
	Policy     bool `json:"policy"`
	NflogGroup int  `json:"nflogGroup"`
	// FlowLog appends the node's flows to this file as JSON lines,
	// rotated at FlowLogMaxMB keeping FlowLogKeep old files.
	FlowLog      string `json:"flowLog"`
	FlowLogMaxMB int    `json:"flowLogMaxMB"`
	FlowLogKeep  int    `json:"flowLogKeep"`
	// Dataplane is nftables (default) or ebpf; BPFPinDir is where the
	// eBPF dataplane pins its maps and links (a BPF file system).
	// FlowEvents records forwarded flows from conntrack events.
	FlowEvents bool   `json:"flowEvents"`
	Dataplane  string `json:"dataplane"`
	BPFPinDir  string `json:"bpfPinDir"`
	// BPFCgroup is the cgroup v2 directory the eBPF balancer attaches
	// to (default: the root); BPFScoped limits it to the node's own
	// namespace (benchmarks and labs that share one machine).
	BPFCgroup string `json:"bpfCgroup"`
	BPFScoped bool   `json:"bpfScoped"`
	// LogLevel is debug, info, warn or error; debug adds a line per
	// Service and policy sync, with its size and timings.
	LogLevel string `json:"logLevel"`
	// Profiling serves Go's pprof handlers under /debug/pprof/ on the
	// health address, as kube-proxy's --profiling does.
	Profiling bool `json:"profiling"`
}

func defaultAgentConfig() agentConfig {
	return agentConfig{
		Mode: "auto", NodeCIDRMaskV4: 24, NodeCIDRMaskV6: 64, LeaseNamespace: "kube-system",
		VXLANVNI: routing.DefaultVXLAN.VNI, VXLANPort: routing.DefaultVXLAN.Port,
		CNIConfDir: "/etc/cni/net.d", CNIDataDir: cni.DefaultDataDir, CNIChain: []string{"portmap"},
		HealthAddr: "0.0.0.0:9941", ResyncPeriod: "30s",
		ProxyMinSyncInterval: "50ms", ProxyFullSyncPeriod: "5m", NflogGroup: 100,
		FlowLogMaxMB: 100, FlowLogKeep: 3, Dataplane: "nftables", BPFPinDir: "/sys/fs/bpf/podnet", FlowEvents: true,
		LogLevel: "info",
	}
}

// ParseAgentConfig checks an agent config file the way `podnet agent
// --config` reads it.
func ParseAgentConfig(b []byte) error {
	cfg := defaultAgentConfig()
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return err
	}
	if _, err := routing.ParseMode(cfg.Mode); err != nil {
		return err
	}
	if _, err := parseCIDRs(cfg.ClusterCIDRs); err != nil {
		return err
	}
	if _, err := parseLogLevel(cfg.LogLevel); err != nil {
		return err
	}
	_, err := parseCIDRs(cfg.ServiceCIDRs)
	return err
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func agentCmd() *cobra.Command {
	c := defaultAgentConfig()
	var configFile, clusterCIDRs, serviceCIDRs, chain string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the per-node agent (in a cluster: as a DaemonSet pod on the host network)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := defaultAgentConfig()
			if configFile != "" {
				b, err := os.ReadFile(configFile)
				if err != nil {
					return err
				}
				if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
					return fmt.Errorf("config %s: %w", configFile, err)
				}
			}
			// Flags given on the command line win over the file.
			cmd.Flags().Visit(func(f *pflagFlag) { applyFlag(&cfg, &c, f.Name, clusterCIDRs, serviceCIDRs, chain) })
			return runAgent(cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file (flags override it)")
	f.StringVar(&c.NodeName, "node-name", "", "this node's name (default $NODE_NAME, from the downward API)")
	f.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	f.StringVar(&c.NetNS, "netns", "", "manage the network namespace at this path instead of the agent's own (the lab and tests run node namespaces this way)")
	f.StringVar(&c.Mode, "mode", c.Mode, "how to reach other nodes: direct, vxlan or auto")
	f.StringVar(&clusterCIDRs, "cluster-cidr", "", "the cluster's pod ranges, comma-separated (enables masquerade and block allocation)")
	f.StringVar(&serviceCIDRs, "service-cidr", "", "the cluster's service ranges, comma-separated (never masqueraded)")
	f.BoolVar(&c.AllocatePodCIDRs, "allocate-pod-cidrs", false, "claim a block of --cluster-cidr for this node when the cluster assigns none")
	f.IntVar(&c.NodeCIDRMaskV4, "node-cidr-mask-size-ipv4", c.NodeCIDRMaskV4, "IPv4 block size for --allocate-pod-cidrs")
	f.IntVar(&c.NodeCIDRMaskV6, "node-cidr-mask-size-ipv6", c.NodeCIDRMaskV6, "IPv6 block size for --allocate-pod-cidrs")
	f.StringVar(&c.LeaseNamespace, "lease-namespace", c.LeaseNamespace, "namespace of the Leases that claim blocks")
	f.Uint32Var(&c.VXLANVNI, "vxlan-vni", c.VXLANVNI, "VXLAN network identifier")
	f.Uint16Var(&c.VXLANPort, "vxlan-port", c.VXLANPort, "VXLAN UDP port")
	f.IntVar(&c.MTU, "mtu", 0, "pod MTU (0: the uplink's, less the overlay's overhead)")
	f.StringVar(&c.CNIConfDir, "cni-conf-dir", c.CNIConfDir, "where to write the CNI conflist")
	f.StringVar(&c.CNIBinDir, "cni-bin-dir", "", "install the podnet binary here as the CNI plugin (empty: skip)")
	f.StringVar(&c.CNIDataDir, "cni-data-dir", c.CNIDataDir, "the plugin's allocation store")
	f.StringVar(&chain, "cni-chain", strings.Join(c.CNIChain, ","), "reference plugins to chain after podnet (portmap, bandwidth, tuning)")
	f.BoolVar(&c.RemoveConfOnExit, "remove-cni-config-on-exit", false, "remove the conflist when the agent exits (an uninstall, not a restart)")
	f.StringVar(&c.HealthAddr, "health-addr", c.HealthAddr, "address for /healthz, /readyz and /metrics (empty: off)")
	f.StringVar(&c.ResyncPeriod, "resync", c.ResyncPeriod, "full resync period")
	f.BoolVar(&c.Proxy, "proxy", false, "implement Services (replaces kube-proxy; do not run both)")
	f.StringVar(&c.ProxyMinSyncInterval, "proxy-min-sync-interval", c.ProxyMinSyncInterval, "minimum time between service syncs")
	f.StringVar(&c.ProxyFullSyncPeriod, "proxy-full-sync-period", c.ProxyFullSyncPeriod, "period of the safety-net full rewrite of the service rules")
	f.BoolVar(&c.Policy, "policy", false, "enforce NetworkPolicy")
	f.IntVar(&c.NflogGroup, "nflog-group", c.NflogGroup, "nflog group for drop and reject reports (1-65535)")
	f.StringVar(&c.FlowLog, "flow-log", "", "append flows to this file as JSON lines (empty: off)")
	f.IntVar(&c.FlowLogMaxMB, "flow-log-max-mb", c.FlowLogMaxMB, "rotate the flow log at this size")
	f.IntVar(&c.FlowLogKeep, "flow-log-keep", c.FlowLogKeep, "rotated flow logs to keep")
	f.BoolVar(&c.FlowEvents, "flow-events", c.FlowEvents, "record forwarded flows from conntrack events (costs each new connection some connect time; drops are recorded either way)")
	f.StringVar(&c.Dataplane, "dataplane", c.Dataplane, "nftables, or ebpf (adds the socket-level Service balancer; needs --proxy, cgroup v2 and a BPF file system)")
	f.StringVar(&c.BPFPinDir, "bpf-pin-dir", c.BPFPinDir, "where the eBPF dataplane pins its maps and links")
	f.StringVar(&c.BPFCgroup, "bpf-cgroup", "", "cgroup v2 directory the eBPF balancer attaches to (default: the hierarchy's root)")
	f.BoolVar(&c.Profiling, "profiling", false, "serve pprof under /debug/pprof/ on the health address")
	f.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error (debug logs every Service and policy sync with its timings)")
	f.BoolVar(&c.BPFScoped, "bpf-scoped", false, "balance only sockets in the node's own network namespace (for several nodes on one machine)")
	return cmd
}

func parseCIDRs(s []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, x := range s {
		x = strings.TrimSpace(x)
		if x == "" {
			continue
		}
		p, err := netip.ParsePrefix(x)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", x)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func runAgent(c agentConfig) error {
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		return fmt.Errorf("the node name is required: --node-name, nodeName in the config, or NODE_NAME from the downward API")
	}
	mode, err := routing.ParseMode(c.Mode)
	if err != nil {
		return err
	}
	clusters, err := parseCIDRs(c.ClusterCIDRs)
	if err != nil {
		return fmt.Errorf("cluster CIDRs: %w", err)
	}
	services, err := parseCIDRs(c.ServiceCIDRs)
	if err != nil {
		return fmt.Errorf("service CIDRs: %w", err)
	}
	resync, err := time.ParseDuration(c.ResyncPeriod)
	if err != nil || resync <= 0 {
		return fmt.Errorf("resync period %q: want a positive duration", c.ResyncPeriod)
	}
	if c.NflogGroup < 1 || c.NflogGroup > 65535 {
		return fmt.Errorf("nflog group %d: want 1-65535", c.NflogGroup)
	}
	minSync, err := time.ParseDuration(c.ProxyMinSyncInterval)
	if err != nil || minSync < 0 {
		return fmt.Errorf("proxy min sync interval %q: want a duration", c.ProxyMinSyncInterval)
	}
	fullSync, err := time.ParseDuration(c.ProxyFullSyncPeriod)
	if err != nil || fullSync <= 0 {
		return fmt.Errorf("proxy full sync period %q: want a positive duration", c.ProxyFullSyncPeriod)
	}
	var rc *rest.Config
	if c.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	listFirst()
	// Protobuf decodes several times faster than JSON, which matters when
	// the first list holds tens of thousands of Services and slices.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	level, err := parseLogLevel(c.LogLevel)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if c.CNIBinDir != "" {
		if err := installBinary(c.CNIBinDir); err != nil {
			return fmt.Errorf("install CNI binary: %w", err)
		}
		log.Info("installed CNI plugin", "dir", c.CNIBinDir)
	}
	var alloc *agent.BlockAllocator
	if c.AllocatePodCIDRs {
		if len(clusters) == 0 {
			return fmt.Errorf("--allocate-pod-cidrs needs --cluster-cidr")
		}
		alloc = &agent.BlockAllocator{Client: client, Namespace: c.LeaseNamespace, Clusters: clusters, MaskSizes: [2]int{c.NodeCIDRMaskV4, c.NodeCIDRMaskV6}}
	}
	a, err := agent.New(agent.Config{
		NodeName: c.NodeName, Client: client, Mode: mode, NetNS: c.NetNS,
		VXLAN:        routing.VXLANConfig{VNI: c.VXLANVNI, Port: c.VXLANPort},
		ClusterCIDRs: clusters, ServiceCIDRs: services,
		CNIConfDir: c.CNIConfDir, CNIBinDir: c.CNIBinDir, CNIDataDir: c.CNIDataDir, MTU: c.MTU, Chain: c.CNIChain,
		ResyncPeriod: resync, Allocator: alloc, Log: log,
		Proxy: c.Proxy, ProxyMinSyncInterval: minSync, ProxyFullSyncPeriod: fullSync,
		Policy: c.Policy, NflogGroup: c.NflogGroup,
		FlowLog: c.FlowLog, FlowLogMaxBytes: int64(c.FlowLogMaxMB) << 20, FlowLogKeep: c.FlowLogKeep,
		NoConntrackFlows: !c.FlowEvents,
		Dataplane:        c.Dataplane, BPFPinDir: c.BPFPinDir, BPFCgroup: c.BPFCgroup, ScopedSockets: c.BPFScoped,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if c.HealthAddr != "" {
		go serveHealth(c.HealthAddr, a, log, c.Profiling)
	}
	err = a.Run(ctx)
	if c.RemoveConfOnExit {
		// An uninstall: the runtime must stop using a config nobody
		// maintains. A plain restart keeps it, so pods keep starting.
		if rerr := a.RemoveConflist(); rerr != nil {
			log.Error("remove conflist", "err", rerr)
		}
	}
	if err == context.Canceled {
		return nil
	}
	return err
}

// listFirst has the agent's informers start with a plain list, not a
// watch that streams the initial objects (client-go's WatchListClient).
// Streaming saves the apiserver memory on huge lists, but first waits
// for a consistent point from etcd: here, with 1,000 Services and their
// slices, the informers synced in about 25 ms by list against 65 ms by
// stream, a large share of a small cluster's first sync.
// KUBE_FEATURE_WatchListClient=true still turns streaming on.
func listFirst() {
	if _, set := os.LookupEnv("KUBE_FEATURE_WatchListClient"); set {
		return
	}
	if g, ok := clientfeatures.FeatureGates().(interface {
		Set(clientfeatures.Feature, bool) error
	}); ok {
		g.Set(clientfeatures.WatchListClient, false)
	}
}

func serveHealth(addr string, a *agent.Agent, log *slog.Logger, profiling bool) {
	mux := http.NewServeMux()
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "first sync not applied yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.Registry(), promhttp.HandlerOpts{}))
	mux.Handle("/flows", agent.FlowsHandler(a))
	mux.Handle("/route", agent.RouteHandler(a))
	mux.Handle("/probe", agent.ProbeHandler(a))
	mux.HandleFunc("/doctor", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Doctor(r.Context()))
	})
	if err := http.ListenAndServe(addr, mux); err != nil {
		log.Error("health endpoint", "addr", addr, "err", err)
	}
}

// installBinary copies the running binary to dir/podnet atomically, as a
// DaemonSet's install step does.
func installBinary(dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(self)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".podnet.tmp")
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "podnet"))
}
