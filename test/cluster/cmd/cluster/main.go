// Command cluster brings a real Kubernetes cluster up in network
// namespaces with podnet as its network plugin, runs the upstream network
// e2e suite against it, and tears it down. See test/cluster and README.
//
//	go run ./test/cluster/cmd/cluster up|down|e2e [flags]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/podnet/podnet/test/cluster"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cluster up|down|e2e [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	name := fs.String("name", "e2e", "cluster name")
	nodes := fs.Int("nodes", 2, "number of nodes")
	bin := fs.String("bin", "bin", "directory with kas, e2e.test, ginkgo, the CNI plugins and podnet")
	images := fs.String("images", "bin/images", "directory with the OCI image archives")
	proxy := fs.String("proxy", "kube-proxy", "service proxy: kube-proxy or podnet")
	policy := fs.String("policy", "none", "network policy: none or podnet")
	selection := fs.String("selection", "smoke", "e2e selection: smoke, services, netpol or full")
	focusFlag := fs.String("focus", "", "a ginkgo focus regexp instead of the selection (re-running chosen specs; results are not recorded)")
	reports := fs.String("reports", "/var/lib/podnet-cluster-reports", "where the junit and the suite's log are kept (outside the cluster's state, which is removed)")
	procs := fs.Int("procs", 4, "parallel ginkgo processes")
	keep := fs.Bool("keep", false, "e2e: leave the cluster up afterwards")
	results := fs.String("results", "test/e2e/RESULTS.md", "where e2e writes its summary")
	fs.Parse(os.Args[2:])
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	cfg := cluster.Config{Name: *name, Nodes: *nodes, BinDir: abs(*bin), Images: abs(*images), DeployDir: abs("deploy"),
		Proxy: *proxy, Policy: *policy, Log: func(f string, a ...any) { fmt.Printf("cluster: "+f+"\n", a...) }}
	ctx := context.Background()
	switch os.Args[1] {
	case "up":
		if _, err := cluster.Up(ctx, cfg); err != nil {
			fmt.Fprintln(os.Stderr, "cluster up:", err)
			os.Exit(1)
		}
	case "down":
		if err := cluster.Down(*name); err != nil {
			fmt.Fprintln(os.Stderr, "cluster down:", err)
			os.Exit(1)
		}
	case "connectivity":
		// podnet connectivity test against a real cluster, from node1.
		cluster.Down(*name)
		c, err := cluster.Up(ctx, cfg)
		code := 0
		if err != nil {
			fmt.Fprintln(os.Stderr, "cluster up:", err)
			code = 1
		} else {
			podnet := filepath.Join(abs(*bin), "podnet")
			out, err := c.RunOnNode1(podnet, "connectivity", "test", "--kubeconfig", c.Kubeconfig())
			fmt.Print(out)
			if err != nil {
				code = 1
			}
			// podnet trace against the cluster: a CoreDNS pod to the
			// kube-dns Service, through the agents' /route answers.
			dns, err := c.RunOnNode1(filepath.Join(abs(*bin), "kubectl"), "--kubeconfig", c.Kubeconfig(), "-n", "kube-system",
				"get", "pods", "-l", "k8s-app=kube-dns", "-o", "jsonpath={.items[0].metadata.name}")
			if err != nil {
				fmt.Fprintln(os.Stderr, "find a CoreDNS pod:", err)
				code = 1
			} else {
				out, err := c.RunOnNode1(podnet, "trace", "kube-system/"+strings.TrimSpace(dns), "kube-system/kube-dns:53", "--protocol", "UDP", "--kubeconfig", c.Kubeconfig())
				fmt.Print(out)
				if err != nil || !strings.Contains(out, "DELIVERED") {
					code = 1
				}
				// --live: the pod's agent connects from inside the pod's
				// namespace (DNS over TCP on the same Service).
				out, err = c.RunOnNode1(podnet, "trace", "kube-system/"+strings.TrimSpace(dns), "kube-system/kube-dns:53", "--protocol", "TCP", "--live", "--kubeconfig", c.Kubeconfig())
				fmt.Print(out)
				if err != nil || !strings.Contains(out, "connected (from kube-system/") {
					fmt.Fprintln(os.Stderr, "trace --live did not connect from the pod")
					code = 1
				}
			}
		}
		if !*keep {
			cluster.Down(*name)
		}
		os.Exit(code)
	case "e2e":
		if *policy != "podnet" && *policy != "none" {
			fmt.Fprintln(os.Stderr, "cluster e2e: --policy must be podnet or none")
			os.Exit(2)
		}
		cluster.Down(*name)
		// os.Exit skips deferred calls, so every exit below goes through
		// done, which tears the cluster down unless --keep.
		done := func(code int) {
			if !*keep {
				cluster.Down(*name)
			}
			os.Exit(code)
		}
		c, err := cluster.Up(ctx, cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cluster up:", err)
			done(1)
		}
		focus, skip := cluster.FocusSmoke, cluster.Skip()
		switch *selection {
		case "full":
			focus = cluster.FocusFull
		case "services":
			focus = cluster.FocusServices
		case "netpol":
			focus, skip = cluster.FocusNetpol, cluster.SkipNetpol
		}
		if *focusFlag != "" {
			focus = *focusFlag
		}
		reportDir := filepath.Join(*reports, fmt.Sprintf("%s-%s-%s", *name, *selection, time.Now().UTC().Format("20060102-150405")))
		res, err := c.RunE2E(ctx, focus, skip, *procs, reportDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			done(1)
		}
		cmdline := fmt.Sprintf("go run ./test/cluster/cmd/cluster e2e --selection %s --nodes %d --procs %d --proxy %s --policy %s", *selection, *nodes, *procs, *proxy, *policy)
		commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
		title := fmt.Sprintf("%s selection, %d nodes, proxy %s, policy %s (%s, commit %s)", *selection, *nodes, *proxy, *policy, time.Now().UTC().Format("2006-01-02 15:04 UTC"), strings.TrimSpace(string(commit)))
		summary := res.Summary(title, cmdline)
		if *selection == "netpol" {
			summary += "\nExcluded (`" + cluster.SkipNetpol + "`): Serial, Disruptive, Slow and Flaky specs, SCTP (this kernel has no SCTP sockets) and LoadBalancer specs. The NetworkPolicy specs carry `[Feature:NetworkPolicy]`, so this selection does not exclude `Feature:`.\n"
		} else {
			summary += "\nExcluded everywhere (`" + cluster.SkipAlways + "`): Serial, Disruptive, Slow and Flaky specs, feature-gated specs (`Feature:`), SCTP (this kernel has no SCTP sockets) and LoadBalancer specs (they need a cloud provider).\n"
			for _, e := range cluster.Excluded {
				summary += fmt.Sprintf("Also excluded: `%s`: %s.\n", e.Pattern, e.Reason)
			}
		}
		fmt.Print(summary)
		fmt.Printf("%d passed, %d failed, %d skipped\n", res.Passed, res.Failed, res.Skipped)
		fmt.Printf("junit and the suite's log: %s\n", reportDir)
		if *focusFlag != "" {
			// A re-run of chosen specs is not a selection's result.
			if res.Failed > 0 {
				done(1)
			}
			done(0)
		}
		if err := appendResults(*results, summary); err != nil {
			fmt.Fprintln(os.Stderr, "results:", err)
		}
		// The junit of the specs that ran (skipped ones left out: they are
		// thousands) goes beside RESULTS.md, one file per selection and proxy.
		if res.Junit != "" {
			out := filepath.Join(filepath.Dir(*results), "junit", fmt.Sprintf("%s-%s.xml", *selection, *proxy))
			if err := cluster.WriteRanJunit(res.Junit, out); err != nil {
				fmt.Fprintln(os.Stderr, "junit:", err)
			}
		}
		if res.Failed > 0 {
			done(1)
		}
		done(0)
	default:
		fmt.Fprintln(os.Stderr, "usage: cluster up|down|e2e [flags]")
		os.Exit(2)
	}
}

// appendResults records a run at the top of the results file, newest first.
func appendResults(path, section string) error {
	old, _ := os.ReadFile(path)
	head := "# Upstream network e2e results\n\nEach section is one run of `make e2e-smoke` or `make e2e-full` (test/cluster/cmd/cluster e2e), newest first.\n"
	body := strings.TrimPrefix(string(old), head)
	return os.WriteFile(path, []byte(head+"\n"+section+"\n"+body), 0o644)
}
