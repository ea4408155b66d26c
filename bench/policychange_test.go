package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/testenv"
)

// policyInEffect measures how long a NetworkPolicy change takes to reach
// real packets, end to end: a lab on a real kube-apiserver, the policy
// created or deleted through the API, and a client pod retrying new TCP
// connections (50 ms timeout each) to a pod on another node until the
// outcome flips. It covers the API, the agents' informers, the compile and
// the nftables transaction.
func policyInEffect(b *testing.B) string {
	api := testenv.StartAPIServer(b)
	bin := filepath.Join(testenv.Binaries(b), "podnet")
	name := fmt.Sprintf("bpc%d", time.Now().UnixNano()%1e5)
	run := func(args ...string) {
		out, err := exec.Command(bin, append([]string{"lab"}, append(args, "--name", name)...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("lab %v: %v\n%s", args, err, out)
		}
	}
	run("up", "--kubeconfig", api.Kubeconfig)
	defer exec.Command(bin, "lab", "down", "--name", name).Run()
	f := filepath.Join(b.TempDir(), "pods.yaml")
	os.WriteFile(f, []byte(`apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
spec: {nodeName: node1, containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}}
spec: {nodeName: node2, containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}
`), 0o644)
	run("apply", "-f", f)
	lc := lab.NewClient(name)
	var ns struct{ Path string }
	if err := lc.Do("GET", "/v1/netns?namespace=bench&pod=client", nil, &ns); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command(bin, "lab", "get", "pods", "--name", name).CombinedOutput()
	if err != nil {
		b.Fatal(err)
	}
	server := ""
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == "server" {
			server = f[3] + ":8080"
		}
	}
	cfg, _ := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: "bench"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}}
	until := func(connected bool) time.Duration {
		t0 := time.Now()
		for (connectTime(ns.Path, server) > 0) != connected {
			if time.Since(t0) > 30*time.Second {
				b.Fatalf("policy change not in effect after 30 s (want connected=%t)", connected)
			}
		}
		return time.Since(t0)
	}
	until(true)
	var deny, allow []float64
	for i := 0; i < 7; i++ {
		if _, err := c.NetworkingV1().NetworkPolicies("bench").Create(ctx, pol, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		deny = append(deny, ms(until(false)))
		if err := c.NetworkingV1().NetworkPolicies("bench").Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
		allow = append(allow, ms(until(true)))
	}
	var s strings.Builder
	s.WriteString("### A policy change in effect, end to end\n\n")
	s.WriteString("A 3-node lab on a real kube-apiserver; a NetworkPolicy isolating a pod is created, then deleted, through the API, while a pod on another node retries new TCP connections to it (50 ms timeout each) until the outcome flips. API, informers, compile and nftables transaction included; 7 rounds.\n\n")
	s.WriteString("| change | median | max |\n|---|---|---|\n")
	mx := func(xs []float64) float64 {
		m := 0.0
		for _, x := range xs {
			m = max(m, x)
		}
		return m
	}
	fmt.Fprintf(&s, "| policy created: new connections denied after | %s | %s |\n", fmtMS(median(deny)), fmtMS(mx(deny)))
	fmt.Fprintf(&s, "| policy deleted: new connections allowed after | %s | %s |\n\n", fmtMS(median(allow)), fmtMS(mx(allow)))
	s.WriteString("Target: under 1 s.\n\n")
	return s.String()
}
