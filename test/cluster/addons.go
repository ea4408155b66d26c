package cluster

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podnet/podnet/test/cluster/images"
)

//go:embed manifests/coredns.yaml
var corednsYAML string

// CoreDNSImage is the CoreDNS image the e2e suite of this Kubernetes
// version expects.
var CoreDNSImage = images.CoreDNSRef

func (c *Cluster) installAddons(ctx context.Context) error {
	if err := c.waitFor(ctx, 60*time.Second, "nodes registered", func() (bool, string) {
		out, err := c.kubectl("get", "nodes", "--no-headers")
		return err == nil && strings.Count(out, "\n") >= c.Nodes, out
	}); err != nil {
		return err
	}
	// podnet, the production way.
	deploy, err := c.deployFiles()
	if err != nil {
		return err
	}
	if out, err := c.kubectl("apply", "-f", deploy); err != nil {
		return fmt.Errorf("install podnet: %v\n%s", err, out)
	}
	if err := c.waitFor(ctx, 120*time.Second, "nodes Ready (podnet installed its CNI config)", func() (bool, string) {
		out, err := c.kubectl("get", "nodes", "--no-headers")
		return err == nil && strings.Count(out, " Ready ") >= c.Nodes, out
	}); err != nil {
		return err
	}
	f := filepath.Join(c.Dir, "coredns.yaml")
	os.WriteFile(f, []byte(strings.ReplaceAll(corednsYAML, "COREDNS_IMAGE", CoreDNSImage)), 0o644)
	if out, err := c.kubectl("apply", "-f", f); err != nil {
		return fmt.Errorf("install CoreDNS: %v\n%s", err, out)
	}
	return c.waitFor(ctx, 180*time.Second, "podnet and CoreDNS ready", func() (bool, string) {
		out, err := c.kubectl("get", "pods", "-n", "kube-system", "-o", "wide", "--no-headers")
		if err != nil {
			return false, out
		}
		ready := 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			if len(f) > 2 && f[2] == "Running" && strings.HasPrefix(f[1], "1/1") {
				ready++
			}
		}
		return ready >= c.Nodes+2, out
	})
}

// deployFiles prepares deploy/ as an operator would for this cluster:
// policy on or off as asked, and, replacing kube-proxy, proxy: true in
// the ConfigMap and the apiserver's real address for the agent, which
// cannot reach the kubernetes Service's ClusterIP before it has programmed
// it (the podnet-apiserver ConfigMap the DaemonSet reads its
// KUBERNETES_SERVICE_HOST/PORT from).
func (c *Cluster) deployFiles() (string, error) {
	dir := filepath.Join(c.Dir, "deploy")
	os.MkdirAll(dir, 0o755)
	entries, err := os.ReadDir(c.DeployDir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(c.DeployDir, e.Name()))
		if err != nil {
			return "", err
		}
		s := string(b)
		if strings.Contains(s, "kind: ConfigMap") && c.Proxy == "podnet" {
			s = strings.Replace(s, "proxy: false", "proxy: true", 1)
		}
		if strings.Contains(s, "kind: ConfigMap") && c.Policy != "podnet" {
			s = strings.Replace(s, "policy: true", "policy: false", 1)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), []byte(s), 0o644); err != nil {
			return "", err
		}
	}
	if c.Proxy != "podnet" {
		return dir, nil
	}
	cm := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: podnet-apiserver, namespace: kube-system}\ndata: {KUBERNETES_SERVICE_HOST: %q, KUBERNETES_SERVICE_PORT: \"6443\"}\n", c.apiIP)
	return dir, os.WriteFile(filepath.Join(dir, "05-apiserver.yaml"), []byte(cm), 0o644)
}

func (c *Cluster) waitFor(ctx context.Context, limit time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not reached after %s; last state:\n%s(logs in %s)", what, limit, state, filepath.Join(c.Dir, "logs"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
