package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/lab"
)

// flows runs `podnet flows --lab NAME ARGS...`.
func (l *labRun) flows(args ...string) string {
	l.t.Helper()
	out, err := exec.Command(l.bin, append([]string{"flows", "--lab", l.name}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("podnet flows %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func parseFlows(t *testing.T, out string) []flow.Record {
	var recs []flow.Record
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r flow.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("flow line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// TestFlowLog makes one flow of each verdict and checks that podnet flows
// shows each, named and explained, from every node; that the filters
// work; that --follow prints new flows as they happen; and that each node
// exports its flows to its JSON lines file.
func TestFlowLog(t *testing.T) {
	l := startLab(t)
	l.apply(explainYAML + `
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: prod}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
`)
	l.probe("--from", "prod/web-1", "--to", "prod/db", "--port", "5432")
	l.probe("--from", "prod/batch", "--to", "prod/db", "--port", "5432", "--timeout", "300ms")
	l.probe("--from", "prod/batch", "--to-services", "--timeout", "300ms")

	type want struct {
		what string
		ok   func(flow.Record) bool
	}
	wants := []want{
		{"forwarded web-1 -> db:5432", func(r flow.Record) bool {
			return r.Verdict == flow.Forwarded && r.SrcName == "prod/web-1" && r.DstName == "prod/db" && r.DstPort == 5432 && r.Protocol == "tcp"
		}},
		{"dropped batch -> db:5432 by prod/db-allow-app", func(r flow.Record) bool {
			return r.Verdict == flow.Dropped && r.Reason == flow.ReasonPolicy && r.SrcName == "prod/batch" && r.DstName == "prod/db" &&
				r.Direction == "ingress" && len(r.Policies) == 1 && r.Policies[0] == "prod/db-allow-app" && r.Node == "node1"
		}},
		{"forwarded batch -> svc prod/web -> web-1:8080", func(r flow.Record) bool {
			return r.Verdict == flow.Forwarded && r.SrcName == "prod/batch" && r.Service == "prod/web" && r.DstName == "prod/web-1" && r.DstPort == 8080
		}},
		{"rejected batch -> svc prod/empty (no endpoints)", func(r flow.Record) bool {
			return r.Verdict == flow.Rejected && r.Reason == flow.ReasonNoEndpoints && r.SrcName == "prod/batch" && r.Service == "prod/empty"
		}},
	}
	var recs []flow.Record
	eventually(t, 5*time.Second, "every kind of flow recorded", func() (bool, string) {
		out := l.flows("-o", "json")
		recs = parseFlows(t, out)
		var missing []string
		for _, w := range wants {
			found := false
			for _, r := range recs {
				found = found || w.ok(r)
			}
			if !found {
				missing = append(missing, w.what)
			}
		}
		return len(missing) == 0, strings.Join(missing, "; ") + "\n" + out
	})
	// Filters.
	for _, r := range parseFlows(t, l.flows("-o", "json", "--verdict", "dropped")) {
		if r.Verdict != flow.Dropped {
			t.Errorf("--verdict dropped gave %v", r)
		}
	}
	for _, r := range parseFlows(t, l.flows("-o", "json", "--from", "prod/web-1")) {
		if r.SrcName != "prod/web-1" {
			t.Errorf("--from prod/web-1 gave %v", r)
		}
	}
	if got := parseFlows(t, l.flows("-o", "json", "--to", "prod/empty")); len(got) == 0 || got[0].Service != "prod/empty" {
		t.Errorf("--to prod/empty gave %v", got)
	}
	if got := parseFlows(t, l.flows("-o", "json", "--since", "1ms")); len(got) != 0 {
		t.Errorf("--since 1ms gave %d old flows", len(got))
	}
	table := l.flows("--to", "prod/db", "--verdict", "dropped")
	if !strings.Contains(table, "prod/batch") || !strings.Contains(table, "DROPPED (policy: ingress isolated by prod/db-allow-app)") {
		t.Errorf("table output:\n%s", table)
	}

	// --follow prints a flow made after it started.
	var out bytes.Buffer
	follow := exec.Command(l.bin, "flows", "--lab", l.name, "--follow", "--from", "prod/db", "-o", "json")
	follow.Stdout = &out
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer follow.Process.Kill()
	time.Sleep(1500 * time.Millisecond)
	l.probe("--from", "prod/db", "--to", "prod/web-1", "--port", "8080")
	eventually(t, 5*time.Second, "followed flow", func() (bool, string) {
		return strings.Contains(out.String(), `"srcName":"prod/db","dstName":"prod/web-1"`) || strings.Contains(out.String(), `"dstName":"prod/web-1"`), out.String()
	})

	// Export: node1's file holds its flows as JSON lines.
	b, err := os.ReadFile(filepath.Join(lab.Dir(l.name), "nodes", "node1", "flows.json"))
	if err != nil {
		t.Fatal(err)
	}
	exported := parseFlows(t, string(b))
	found := false
	for _, r := range exported {
		found = found || wants[1].ok(r)
	}
	if !found {
		t.Errorf("node1's flow file lacks the policy drop:\n%s", b)
	}
}
