package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/lab"
)

// TestConnectivityTest runs podnet connectivity test in a lab: every path
// passes, the denied intruder is reported as an expected denial, the
// table has latencies, and nothing is left behind.
func TestConnectivityTest(t *testing.T) {
	l := startLab(t, "--dual-stack")
	out, err := exec.Command(l.bin, "connectivity", "test", "--lab", l.name, "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("connectivity test: %v\n%s", err, out)
	}
	var res []lab.PathCheck
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	paths := map[string]lab.PathCheck{}
	for _, r := range res {
		paths[r.Path] = r
		if !r.Pass {
			t.Errorf("path %q failed: %+v", r.Path, r)
		}
		if !r.Skipped && r.Latency <= 0 {
			t.Errorf("path %q has no latency", r.Path)
		}
	}
	for _, p := range []string{"pod to pod, same node", "pod to pod, across nodes", "pod to Service (ClusterIP)", "pod to Service (NodePort)",
		"outside to Service (NodePort)", "node to pod", "pod to outside", "policy: allowed client", "policy: denied intruder"} {
		if _, ok := paths[p]; !ok {
			t.Errorf("path %q not tried", p)
		}
	}
	if d := paths["policy: denied intruder"]; d.Expect != "deny" || !strings.Contains(d.Detail, "timeout") {
		t.Errorf("intruder: %+v", d)
	}
	if pods := l.pods(); len(pods) != 0 {
		t.Errorf("left behind %d pods", len(pods))
	}
	table, _ := exec.Command(l.bin, "connectivity", "test", "--lab", l.name).CombinedOutput()
	if !strings.Contains(string(table), "9 passed, 0 failed, 1 skipped") {
		t.Errorf("table:\n%s", table)
	}
}
