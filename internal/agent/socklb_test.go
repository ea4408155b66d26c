package agent

import (
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/podnet/podnet/internal/testenv"
)

// TestEBPFDataplaneRefusesClearly: an agent asked for the eBPF dataplane
// where it cannot run says why instead of starting without it.
func TestEBPFDataplaneRefusesClearly(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NetNS(t, "ebpfcfg")
	base := Config{NodeName: "n1", Client: fake.NewClientset(), NetNS: ns, CNIConfDir: t.TempDir(), CNIDataDir: t.TempDir(), Dataplane: DataplaneEBPF}
	for _, c := range []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"without the proxy", func(c *Config) {}, "needs the service proxy"},
		// A pin directory outside any BPF file system cannot hold pins.
		{"without a BPF file system", func(c *Config) { c.Proxy = true; c.BPFCgroup = t.TempDir(); c.BPFPinDir = t.TempDir() + "/pins" }, "BPF file system"},
		{"an unknown dataplane", func(c *Config) { c.Dataplane = "xdp" }, "unknown dataplane"},
	} {
		cfg := base
		c.mut(&cfg)
		a, err := New(cfg)
		if err == nil {
			a.h.Close()
			t.Errorf("%s: agent started", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want it to say %q", c.name, err, c.want)
		}
	}
}
