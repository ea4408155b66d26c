package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/doctor"
	"github.com/podnet/podnet/internal/lab"
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
// repairs it and checks doctor is content again. (The conntrack table's
// fill is judged in a unit test: its limit is global to the machine, and
// filling it would touch the host.)
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
