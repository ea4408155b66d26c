package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// ConflistName is the file the agent writes into the CNI config directory.
// The 10- prefix puts it ahead of most other networks, since runtimes pick
// the first file in lexical order.
const ConflistName = "10-podnet.conflist"

// Conflist renders the node's CNI network configuration list.
func Conflist(podCIDRs []netip.Prefix, mtu int, dataDir string, chain []string) ([]byte, error) {
	cidrs := []string{}
	for _, p := range podCIDRs {
		cidrs = append(cidrs, p.String())
	}
	plugins := []map[string]any{{
		"type":     "podnet",
		"podCIDRs": cidrs,
		"mtu":      mtu,
		"dataDir":  dataDir,
	}}
	for _, c := range chain {
		switch c {
		case "portmap":
			plugins = append(plugins, map[string]any{"type": "portmap", "snat": true, "capabilities": map[string]bool{"portMappings": true}})
		case "bandwidth":
			plugins = append(plugins, map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}})
		case "tuning":
			plugins = append(plugins, map[string]any{"type": "tuning"})
		default:
			return nil, fmt.Errorf("unknown chained plugin %q (supported: portmap, bandwidth, tuning)", c)
		}
	}
	// cniVersion 1.0.0 for runtimes whose libcni predates 1.1 (containerd
	// 1.6 rejects a 1.1.0 result); runtimes that know the 1.1 conflist key
	// cniVersions pick the highest they support, and get GC and STATUS.
	return json.MarshalIndent(map[string]any{
		"cniVersion":  "1.0.0",
		"cniVersions": []string{"1.0.0", "1.1.0"},
		"name":        "podnet",
		"plugins":     plugins,
	}, "", "  ")
}

// writeIfChanged writes data to path atomically (temp file and rename), so
// a runtime never reads a half-written config. It reports whether it wrote.
func writeIfChanged(path string, data []byte) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return false, err
	}
	return true, os.Rename(tmp, path)
}
