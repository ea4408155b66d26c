package cni_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// TestCNIToolDrivesPodnet drives the plugin with cnitool, the reference
// CNI client, exactly as an operator would from the node's namespace.
func TestCNIToolDrivesPodnet(t *testing.T) {
	e := newEnv(t)
	confDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podnet","plugins":[{"type":"podnet","podCIDRs":["10.244.7.0/24","fd00:7::/64"],"dataDir":%q}]}`, e.dataDir)
	if err := os.WriteFile(filepath.Join(confDir, "10-podnet.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	pod := testenv.NetNS(t, "tool")
	cnitool := func(verb string) ([]byte, error) {
		var out []byte
		err := netns.Do(e.node, func() error {
			cmd := exec.Command(filepath.Join(e.bin, "cnitool"), verb, "podnet", pod)
			cmd.Env = append(os.Environ(), "CNI_PATH="+e.bin, "NETCONFPATH="+confDir, "CNI_IFNAME=eth0")
			var err error
			out, err = cmd.CombinedOutput()
			return err
		})
		return out, err
	}
	out, err := cnitool("add")
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var res current.Result
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) != 2 {
		t.Fatalf("cnitool add result: %v\n%s", err, out)
	}
	if got := res.IPs[0].Address.String(); got != "10.244.7.2/32" {
		t.Fatalf("first address %s, want 10.244.7.2/32", got)
	}
	if out, err := cnitool("check"); err != nil {
		t.Fatalf("cnitool check: %v\n%s", err, out)
	}
	if out, err := cnitool("status"); err != nil {
		t.Fatalf("cnitool status: %v\n%s", err, out)
	}
	if out, err := cnitool("del"); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	if n := e.allocations(); n != 0 {
		t.Fatalf("%d allocations left after cnitool del", n)
	}
}
