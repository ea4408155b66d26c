package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTrace follows packets through a VXLAN lab: a delivered one (every
// hop named), one dropped by ingress policy (the verdict names pod,
// policy, port and source), one through a Service (every candidate
// named), a live one (the kernel's events quoted), and one whose node
// route was deleted (the disagreement flagged).
func TestTrace(t *testing.T) {
	l := startLab(t, "--mode", "vxlan")
	l.apply(explainYAML + `
---
apiVersion: v1
kind: Service
metadata: {name: dbsvc, namespace: prod}
spec:
  selector: {app: db}
  ports: [{port: 5432, targetPort: pg}]
`)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(l.bin, append([]string{"trace", "--lab", l.name}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("trace %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	check := func(out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("trace lacks %q:\n%s", w, out)
			}
		}
	}
	// Addresses come in the order the pods started, which varies.
	dbIP := ""
	for _, p := range l.pods() {
		if p.Namespace == "prod" && p.Name == "db" {
			dbIP = p.Status.PodIP
		}
	}
	if dbIP == "" {
		t.Fatal("prod/db has no address")
	}
	check(run("prod/web-1", "prod/db:5432"),
		"route           "+dbIP+" via 169.254.1.1 dev eth0", "host veth", "policy egress   allowed: no policy isolates it",
		"VXLAN on pnvx4 to VTEP 192.168.77.11 (node node1)", "allowed by prod/db-allow-app rule 0",
		"DELIVERED to prod/db ("+dbIP+":5432) on node node1")
	check(run("prod/web-1", "prod/db:8080"),
		"DROPPED at prod/db ingress: isolated by policy prod/db-allow-app, no rule matches port 8080 from prod/web-1")
	check(run("prod/batch", "prod/dbsvc", "--live"),
		"svc/prod/dbsvc", "DNAT to one of 1: prod/db "+dbIP+":5432",
		"live: failed", "DROPPED (policy: ingress isolated by prod/db-allow-app)",
		"DROPPED at prod/db ingress: isolated by policy prod/db-allow-app, no rule matches port 5432 from prod/batch")
	check(run("prod/web-1", "prod/db:5432", "--live"), "live: connected; kernel events:", "FORWARDED")
	l.inNode("node2", "ip", "route", "del", "10.244.1.0/24")
	check(run("prod/web-1", "prod/db:5432"), "findings: 1", "the kernel disagrees with the desired route 10.244.1.0/24", "BROKEN at node node2")
	if out, err := exec.Command(l.bin, "trace", "--lab", l.name, "prod/nope", "prod/db").CombinedOutput(); err == nil || !strings.Contains(string(out), "not running in the lab") {
		t.Errorf("unknown source: %v %s", err, out)
	}
}
