// Package e2e drives the podnet binary's lab end to end, as a user would:
// up, apply, get, exec, probe, delete, down.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

type labRun struct {
	t    *testing.T
	bin  string
	name string
}

// startLab brings a lab up with a unique name and makes sure it is torn
// down when the test ends, whatever happens.
func startLab(t *testing.T, args ...string) *labRun {
	testenv.RequireRoot(t)
	l := &labRun{t: t, bin: filepath.Join(testenv.Binaries(t), "podnet"), name: "e2e" + testenv.Unique()}
	t.Cleanup(func() {
		exec.Command(l.bin, "lab", "down", "--name", l.name).Run()
		if left, _ := netns.List(lab.Prefix(l.name)); len(left) > 0 {
			t.Errorf("lab down left namespaces: %v", left)
		}
		if _, err := os.Stat(lab.Dir(l.name)); err == nil {
			t.Errorf("lab down left %s", lab.Dir(l.name))
		}
	})
	l.run(append([]string{"up"}, args...)...)
	return l
}

func (l *labRun) run(args ...string) string {
	l.t.Helper()
	out, err := l.try(args...)
	if err != nil {
		l.t.Fatalf("podnet lab %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (l *labRun) try(args ...string) (string, error) {
	full := append([]string{"lab"}, args...)
	full = append(full, "--name", l.name)
	if i := indexOf(args, "--"); i >= 0 {
		// Flags must come before "--".
		full = append(append([]string{"lab"}, args[:i]...), append([]string{"--name", l.name}, args[i:]...)...)
	}
	cmd := exec.Command(l.bin, full...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func indexOf(s []string, x string) int {
	for i, v := range s {
		if v == x {
			return i
		}
	}
	return -1
}

func (l *labRun) apply(yaml string) {
	l.t.Helper()
	f := filepath.Join(l.t.TempDir(), "objs.yaml")
	os.WriteFile(f, []byte(yaml), 0o644)
	l.run("apply", "-f", f)
}

func (l *labRun) probe(args ...string) []lab.ProbeResult {
	l.t.Helper()
	var res []lab.ProbeResult
	out := l.run(append([]string{"probe", "-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		l.t.Fatalf("probe output: %v\n%s", err, out)
	}
	return res
}

func (l *labRun) pods() []corev1.Pod {
	var list corev1.PodList
	if err := json.Unmarshal([]byte(l.run("get", "pods", "-o", "json")), &list); err != nil {
		l.t.Fatal(err)
	}
	return list.Items
}

// podsYAML makes n pods spread round-robin over nodes, each serving TCP
// 8080 and UDP 5353.
func podsYAML(n, nodes int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: p%d, namespace: e2e, labels: {app: p%d}}
spec:
  nodeName: node%d
  containers:
  - name: c
    image: x
    ports: [{containerPort: 8080}, {containerPort: 5353, protocol: UDP}]
`, i, i, (i-1)%nodes+1)
	}
	return b.String()
}

func assertAllConnected(t *testing.T, res []lab.ProbeResult, want int) {
	t.Helper()
	if len(res) != want {
		t.Fatalf("probe tried %d connections, want %d", len(res), want)
	}
	for _, r := range res {
		if !r.Connected || r.AnsweredBy != r.To {
			t.Errorf("%s → %s %s/%d: connected=%v answeredBy=%q err=%s", r.From, r.To, r.Protocol, r.Port, r.Connected, r.AnsweredBy, r.Error)
		}
	}
}

func TestLabThreeNodes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		families []string
	}{
		{"ipv4", nil, []string{"ipv4"}},
		{"dual-stack", []string{"--dual-stack"}, []string{"ipv4", "ipv6"}},
		{"ipv6", []string{"--ipv6"}, []string{"ipv6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := startLab(t, append([]string{"--nodes", "3"}, tc.args...)...)
			l.apply(podsYAML(6, 3))

			// Each pod runs on its node, with addresses from that node's ranges.
			for _, p := range l.pods() {
				n := p.Spec.NodeName[len("node"):]
				for _, ip := range p.Status.PodIPs {
					a := netip.MustParseAddr(ip.IP)
					want := netip.MustParsePrefix("10.244." + n + ".0/24")
					if a.Is6() {
						want = netip.MustParsePrefix("fd00:10:244:" + n + "::/64")
					}
					if !want.Contains(a) {
						t.Errorf("pod %s on %s has %s, outside %s", p.Name, p.Spec.NodeName, a, want)
					}
				}
				if p.Status.Phase != corev1.PodRunning {
					t.Errorf("pod %s is %s", p.Name, p.Status.Phase)
				}
			}
			// Same node and across nodes, TCP and UDP, every family.
			for _, fam := range tc.families {
				assertAllConnected(t, l.probe("--family", fam), 6*6*2)
			}

			// exec runs inside the pod's namespace.
			out := l.run("exec", "p1", "-n", "e2e", "--", "cat", "/proc/net/if_inet6")
			if tc.name != "ipv4" && !strings.Contains(out, "fd00001002440001") {
				t.Errorf("exec in p1 did not see its IPv6 address:\n%s", out)
			}

			// Deleting a pod removes it from the network.
			l.run("delete", "-f", writeTemp(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: p6, namespace: e2e}\n"))
			assertAllConnected(t, l.probe("--port", "8080"), 5*5)
		})
	}
}

func writeTemp(t *testing.T, s string) string {
	f := filepath.Join(t.TempDir(), "f.yaml")
	os.WriteFile(f, []byte(s), 0o644)
	return f
}

// TestLabDownAfterCrash kills the lab process outright and checks that
// `lab down` still removes everything from what is on disk.
func TestLabDownAfterCrash(t *testing.T) {
	l := startLab(t, "--nodes", "2")
	l.apply(podsYAML(2, 2))
	b, err := os.ReadFile(filepath.Join(lab.Dir(l.name), "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ PID int }
	json.Unmarshal(b, &st)
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill lab process %d: %v", st.PID, err)
	}
	if left, _ := netns.List(lab.Prefix(l.name)); len(left) < 4 {
		t.Fatalf("expected the crashed lab's namespaces to remain, found %v", left)
	}
	l.run("down")
	if left, _ := netns.List(lab.Prefix(l.name)); len(left) != 0 {
		t.Fatalf("namespaces left after down: %v", left)
	}
	if _, err := l.try("get", "pods"); err == nil {
		t.Fatal("get pods worked on a lab that is down")
	}
}

// TestLabRejectsBadInput: unsupported kinds and unknown nodes are refused
// with a message that names the problem, and the lab keeps working.
func TestLabRejectsBadInput(t *testing.T) {
	l := startLab(t, "--nodes", "1")
	out, err := l.try("apply", "-f", writeTemp(t, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"))
	if err == nil || !strings.Contains(out, "kind Deployment is not supported") {
		t.Fatalf("Deployment: %v %s", err, out)
	}
	out, err = l.try("apply", "-f", writeTemp(t, "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {nodeName: node9, containers: [{name: c, image: x}]}\n"))
	if err == nil || !strings.Contains(out, `"node9" is not a node of this lab`) {
		t.Fatalf("unknown node: %v %s", err, out)
	}
	l.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}\n")
	assertAllConnected(t, l.probe(), 1)
}
