package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testenv"
)

// TestAgentProbesFromPodNamespace is the node side of `podnet trace
// --live` in a cluster: a podnet agent process, as the DaemonSet runs it,
// finds a pod's network namespace from the kernel alone (the pod's route,
// its veth, the peer's namespace id, the runtime's named namespaces) and
// makes a real connection from inside it.
func TestAgentProbesFromPodNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	api := testenv.StartAPIServer(t)
	c := clientFor(t, api)
	ctx := context.Background()
	node, pod, srv := testenv.NetNS(t, "node"), testenv.NetNS(t, "pod"), testenv.NetNS(t, "srv")
	plug(t, node, pod, "vp", netip.MustParsePrefix("10.0.1.1/24"), netip.MustParsePrefix("10.0.1.2/24"))
	plug(t, node, srv, "vs", netip.MustParsePrefix("10.0.2.1/24"), netip.MustParsePrefix("10.0.2.2/24"))
	if err := netns.Sysctl(node, "net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	makeNode(t, c, "solo", "10.0.1.1", "10.0.1.0/24")
	var ln net.Listener
	if err := netns.Do(srv, func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// The test apiserver runs no controllers: the ServiceAccount
	// admission wants the namespace's default account to exist.
	if _, err := c.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, ip := range map[string]string{"client": "10.0.1.2", "elsewhere": "10.0.1.9"} {
		nodeName := "solo"
		if name == "elsewhere" {
			nodeName = "other"
		}
		p, err := c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		p.Status.PodIP = ip
		if _, err := c.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	health := freeAddr(t)
	tmp := t.TempDir()
	cmd := exec.Command(filepath.Join(testenv.Binaries(t), "podnet"), "agent", "--kubeconfig", api.Kubeconfig, "--node-name", "solo", "--mode", "direct",
		"--netns", node, "--cni-conf-dir", filepath.Join(tmp, "net.d"), "--cni-data-dir", filepath.Join(tmp, "data"), "--health-addr", health)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually(t, 20*time.Second, "agent ready", func() (bool, string) {
		b := scrapeQuiet(health, "/readyz")
		return b == "ok\n", b
	})

	probe := func(pod, dst string) (int, string) {
		q := url.Values{"pod": {pod}, "dst": {dst}, "protocol": {"TCP"}}
		resp, err := http.Post("http://"+health+"/probe?"+q.Encode(), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := probe("default/client", "10.0.2.2:8080")
	var ans agent.ProbeAnswer
	if code != 200 || json.Unmarshal([]byte(body), &ans) != nil {
		t.Fatalf("probe: %d %s", code, body)
	}
	same := func(a, b string) bool { // /var/run is a link to /run
		ra, _ := filepath.EvalSymlinks(a)
		rb, _ := filepath.EvalSymlinks(b)
		return ra != "" && ra == rb
	}
	if ans.Outcome != "connected" || !same(ans.NetNS, pod) {
		t.Errorf("probe to a listening port: %+v, want connected from %s", ans, pod)
	}
	// Nothing listens on port 9: refused, from the pod (the server
	// namespace answers with a reset).
	code, body = probe("default/client", "10.0.2.2:9")
	if code != 200 || json.Unmarshal([]byte(body), &ans) != nil || !strings.HasPrefix(ans.Outcome, "failed:") || !strings.Contains(ans.Outcome, "refused") {
		t.Errorf("probe to a closed port: %d %s", code, body)
	}
	// A pod on another node is that node's agent's to probe.
	if code, body = probe("default/elsewhere", "10.0.2.2:8080"); code != http.StatusUnprocessableEntity || !strings.Contains(body, "node other") {
		t.Errorf("probe from a pod elsewhere: %d %s", code, body)
	}
}
