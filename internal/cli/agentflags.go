package cli

import (
	"strings"

	"github.com/spf13/pflag"
)

type pflagFlag = pflag.Flag

// applyFlag copies one explicitly given flag from the flag-bound config
// into the effective config.
func applyFlag(cfg, flags *agentConfig, name, clusterCIDRs, serviceCIDRs, chain string) {
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, ",")
	}
	switch name {
	case "node-name":
		cfg.NodeName = flags.NodeName
	case "netns":
		cfg.NetNS = flags.NetNS
	case "kubeconfig":
		cfg.Kubeconfig = flags.Kubeconfig
	case "mode":
		cfg.Mode = flags.Mode
	case "cluster-cidr":
		cfg.ClusterCIDRs = split(clusterCIDRs)
	case "service-cidr":
		cfg.ServiceCIDRs = split(serviceCIDRs)
	case "allocate-pod-cidrs":
		cfg.AllocatePodCIDRs = flags.AllocatePodCIDRs
	case "node-cidr-mask-size-ipv4":
		cfg.NodeCIDRMaskV4 = flags.NodeCIDRMaskV4
	case "node-cidr-mask-size-ipv6":
		cfg.NodeCIDRMaskV6 = flags.NodeCIDRMaskV6
	case "lease-namespace":
		cfg.LeaseNamespace = flags.LeaseNamespace
	case "vxlan-vni":
		cfg.VXLANVNI = flags.VXLANVNI
	case "vxlan-port":
		cfg.VXLANPort = flags.VXLANPort
	case "mtu":
		cfg.MTU = flags.MTU
	case "cni-conf-dir":
		cfg.CNIConfDir = flags.CNIConfDir
	case "cni-bin-dir":
		cfg.CNIBinDir = flags.CNIBinDir
	case "cni-data-dir":
		cfg.CNIDataDir = flags.CNIDataDir
	case "cni-chain":
		cfg.CNIChain = split(chain)
	case "remove-cni-config-on-exit":
		cfg.RemoveConfOnExit = flags.RemoveConfOnExit
	case "health-addr":
		cfg.HealthAddr = flags.HealthAddr
	case "resync":
		cfg.ResyncPeriod = flags.ResyncPeriod
	case "proxy":
		cfg.Proxy = flags.Proxy
	case "proxy-min-sync-interval":
		cfg.ProxyMinSyncInterval = flags.ProxyMinSyncInterval
	case "proxy-full-sync-period":
		cfg.ProxyFullSyncPeriod = flags.ProxyFullSyncPeriod
	case "policy":
		cfg.Policy = flags.Policy
	case "nflog-group":
		cfg.NflogGroup = flags.NflogGroup
	case "flow-log":
		cfg.FlowLog = flags.FlowLog
	case "flow-log-max-mb":
		cfg.FlowLogMaxMB = flags.FlowLogMaxMB
	case "flow-log-keep":
		cfg.FlowLogKeep = flags.FlowLogKeep
	case "flow-events":
		cfg.FlowEvents = flags.FlowEvents
	case "dataplane":
		cfg.Dataplane = flags.Dataplane
	case "bpf-pin-dir":
		cfg.BPFPinDir = flags.BPFPinDir
	case "bpf-cgroup":
		cfg.BPFCgroup = flags.BPFCgroup
	case "bpf-scoped":
		cfg.BPFScoped = flags.BPFScoped
	case "log-level":
		cfg.LogLevel = flags.LogLevel
	case "profiling":
		cfg.Profiling = flags.Profiling
	}
}
