package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/podnet/podnet/internal/ipam"
)

// DefaultDataDir is where allocations live when the config names no dataDir.
const DefaultDataDir = "/var/lib/cni/podnet"

// DefaultMTU is used when the config names no mtu.
const DefaultMTU = 1500

// NetConf is podnet's network configuration. Every key is documented in
// docs/cni-config.md; podCIDRs, mtu and dataDir are a stable contract.
type NetConf struct {
	types.PluginConf

	// PodCIDRs are the node's pod ranges: at most one IPv4 and one IPv6.
	PodCIDRs []string `json:"podCIDRs"`
	// MTU of the pod interface and its host-side peer.
	MTU int `json:"mtu,omitempty"`
	// DataDir holds the allocation store, one directory per network name.
	DataDir string `json:"dataDir,omitempty"`

	// ValidAttachments is injected by the runtime for GC.
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`

	ranges []netip.Prefix
}

// Ranges returns the parsed pod ranges, IPv4 first.
func (c *NetConf) Ranges() []netip.Prefix { return c.ranges }

// StoreDir is the allocation store of this network.
func (c *NetConf) StoreDir() string { return filepath.Join(c.DataDir, c.Name) }

// ParseConfig decodes and validates a network config. Errors carry the CNI
// code that names the problem: 6 for undecodable JSON, 7 for a config that
// decodes but is wrong.
func ParseConfig(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	if conf.Name == "" {
		return nil, invalid("network config has no name")
	}
	if conf.MTU == 0 {
		conf.MTU = DefaultMTU
	}
	if conf.MTU < 1280 || conf.MTU > 65535 {
		// 1280 is the IPv6 minimum; below it an IPv6 pod cannot work and an
		// IPv4 one would be crippled.
		return nil, invalid(fmt.Sprintf("mtu %d out of range 1280-65535", conf.MTU))
	}
	if conf.DataDir == "" {
		conf.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(conf.DataDir) {
		return nil, invalid(fmt.Sprintf("dataDir %q must be an absolute path", conf.DataDir))
	}
	var have4, have6 bool
	for _, s := range conf.PodCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, invalid(fmt.Sprintf("podCIDRs: %q is not a CIDR", s))
		}
		if err := ipam.ValidateRange(p); err != nil {
			return nil, invalid(fmt.Sprintf("podCIDRs: %v", err))
		}
		if p.Addr().Is4() {
			if have4 {
				return nil, invalid("podCIDRs: more than one IPv4 range")
			}
			have4 = true
		} else {
			if have6 {
				return nil, invalid("podCIDRs: more than one IPv6 range")
			}
			have6 = true
		}
		conf.ranges = append(conf.ranges, p)
	}
	if len(conf.ranges) == 2 && conf.ranges[0].Addr().Is6() {
		conf.ranges[0], conf.ranges[1] = conf.ranges[1], conf.ranges[0]
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode prevResult: %v", err), "")
		}
	}
	return conf, nil
}

func invalid(msg string) error {
	return types.NewError(types.ErrInvalidNetworkConfig, msg, "")
}
