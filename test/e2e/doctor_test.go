package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"

	"github.com/podnet/podnet/internal/doctor"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// doctor runs `podnet doctor --lab NAME --node NODE -o json`.
func (l *labRun) doctor(node string) doctor.Report {
	l.t.Helper()
	out, _ := exec.Command(l.bin, "doctor", "--lab", l.name, "--node", node, "-o", "json").Output()
	var r doctor.Report
	if err := json.Unmarshal(out, &r); err != nil {
		l.t.Fatalf("doctor output %q: %v", out, err)
	}
	return r
}

// fillMark marks the conntrack entries fillConntrack makes, so that
// emptyConntrack removes those and nothing else.
const fillMark = 0x5eed0000

// fillConntrack adds UDP entries to the namespace's conntrack table until
// it holds 92% of the limit. They time out after two minutes if the test
// dies before emptying them.
func fillConntrack(t *testing.T, nsPath string) {
	t.Helper()
	limit, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Skipf("skipped: no conntrack here: %v", err)
	}
	var max int
	fmt.Sscan(string(limit), &max)
	// Two workers, each with its own socket in the namespace: the
	// kernel's work per entry is most of the time.
	n := max * 92 / 100
	errs := make(chan error, 2)
	for w := range 2 {
		go func() {
			errs <- netns.Do(nsPath, func() error {
				c, err := conntrack.Dial(nil)
				if err != nil {
					return err
				}
				defer c.Close()
				for i := w; i < n; i += 2 {
					// A unique tuple per entry, from the benchmarking range.
					src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 16), byte(i >> 8)})
					f := conntrack.NewFlow(17, 0, src, netip.MustParseAddr("198.19.0.1"), uint16(1024+i&0xff), 53, 120, fillMark)
					if err := c.Create(f); err != nil {
						return fmt.Errorf("entry %d: %w", i, err)
					}
				}
				return nil
			})
		}()
	}
	if err := errors.Join(<-errs, <-errs); err != nil {
		emptyConntrack(t, nsPath)
		t.Fatalf("fill conntrack: %v", err)
	}
}

// emptyConntrack removes the entries fillConntrack made.
func emptyConntrack(t *testing.T, nsPath string) {
	t.Helper()
	err := netns.Do(nsPath, func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.FlushFilter(conntrack.NewFilter().Mark(fillMark).MarkMask(0xffffffff))
	})
	if err != nil {
		t.Errorf("empty conntrack: %v", err)
	}
}

// inNode runs a command in a lab node's namespace.
func (l *labRun) inNode(node string, args ...string) {
	l.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + l.nodeNS(node), "--"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// TestDoctorCatchesBreakage breaks each thing doctor checks, one at a
// time, on purpose, and checks that doctor names it with a fix, then
// repairs it and checks doctor is content again. (The clock and the API
// server are broken in internal/agent's TestCheckAPIBreakage, against a
// real apiserver behind a proxy that shifts its clock: a network namespace
// has the host's clock.)
func TestDoctorCatchesBreakage(t *testing.T) {
	l := startLab(t, "--mode", "vxlan")
	l.apply(explainYAML)
	if r := l.doctor("node1"); r.Problems() != 0 {
		t.Fatalf("healthy lab has problems: %+v", r)
	}
	confDir := filepath.Join(lab.Dir(l.name), "nodes", "node1", "net.d")
	cases := []struct {
		check        string
		severity     string
		break_, mend func()
	}{
		{"forwarding", doctor.Error,
			func() { l.inNode("node1", "sysctl", "-qw", "net.ipv4.ip_forward=0") },
			func() { l.inNode("node1", "sysctl", "-qw", "net.ipv4.ip_forward=1") }},
		{"rp_filter", doctor.Error,
			func() { l.inNode("node1", "sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=1") },
			func() { l.inNode("node1", "sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0") }},
		{"mtu", doctor.Error,
			func() { l.inNode("node1", "ip", "link", "set", "dev", "pnvx4", "mtu", "1400") },
			func() { l.inNode("node1", "ip", "link", "set", "dev", "pnvx4", "mtu", "1450") }},
		{"routes", doctor.Error,
			func() { l.inNode("node1", "ip", "route", "del", "10.244.2.0/24") },
			nil}, // the agent restores it on its next resync
		{"overlay", doctor.Error,
			func() { l.inNode("node1", "ip", "neigh", "flush", "dev", "pnvx4", "nud", "permanent") },
			nil},
		{"foreign", doctor.Error,
			func() {
				l.inNode("node1", "nft", "add table ip kube-proxy; add chain ip kube-proxy filter-forward { type filter hook forward priority 0; policy drop; }")
			},
			func() { l.inNode("node1", "nft", "delete", "table", "ip", "kube-proxy") }},
		{"cni", doctor.Error,
			func() {
				os.WriteFile(filepath.Join(confDir, "05-other.conflist"), []byte(`{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}`), 0o644)
			},
			func() { os.Remove(filepath.Join(confDir, "05-other.conflist")) }},
		// The limit is global, but the count is the namespace's own and
		// so is the limit's enforcement: filling the node's table past
		// 90% leaves every other namespace's alone.
		{"conntrack", doctor.Warn,
			func() { fillConntrack(t, l.nodeNS("node1")) },
			func() { emptyConntrack(t, l.nodeNS("node1")) }},
	}
	for _, c := range cases {
		t.Run(c.check, func(t *testing.T) {
			c.break_()
			r := l.doctor("node1")
			if !r.Has(c.check, c.severity) {
				t.Fatalf("doctor missed the broken %s: %+v", c.check, r)
			}
			for _, f := range r.Findings {
				if f.Check == c.check && f.Fix == "" {
					t.Errorf("%s finding has no fix: %+v", c.check, f)
				}
			}
			if c.mend == nil {
				return
			}
			c.mend()
			eventually(t, 10*time.Second, c.check+" repaired", func() (bool, string) {
				r := l.doctor("node1")
				return r.Has(c.check, doctor.OK), strings.TrimSpace(func() string { b, _ := json.Marshal(r); return string(b) }())
			})
		})
	}
	// The plugin binary: a different file than the agent's.
	t.Run("cni-binary", func(t *testing.T) {
		bin := filepath.Join(lab.Dir(l.name), "cni", "bin", "podnet")
		target, _ := os.Readlink(bin)
		os.Remove(bin)
		os.WriteFile(bin, []byte("#!/bin/sh\nexit 1\n"), 0o755)
		defer func() { os.Remove(bin); os.Symlink(target, bin) }()
		r := l.doctor("node1")
		if !r.Has("cni", doctor.Error) {
			t.Fatalf("doctor missed a foreign plugin binary: %+v", r)
		}
	})
	// The text form names the problem and exits 1.
	l.inNode("node1", "sysctl", "-qw", "net.ipv4.ip_forward=0")
	out, err := exec.Command(l.bin, "doctor", "--lab", l.name, "--node", "node1").CombinedOutput()
	l.inNode("node1", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	if err == nil || !strings.Contains(string(out), "FAIL forwarding") || !strings.Contains(string(out), "fix: sysctl -w net.ipv4.ip_forward=1") {
		t.Errorf("doctor text output (err %v):\n%s", err, out)
	}
}
