// Command bench measures podnet against its peers on this machine, in one
// run, and records the figures with their ratios in bench/RESULTS.md.
//
//	go run ./bench [-pods 100] [-runs 3] [-only cni|throughput] [-results bench/RESULTS.md]
//
// Everything runs in network namespaces the benchmark creates and removes.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

func main() {
	pods := flag.Int("pods", 100, "pods per CNI latency run")
	runs := flag.Int("runs", 3, "runs per measurement (medians are reported)")
	secs := flag.Int("seconds", 5, "iperf3 duration per throughput run")
	only := flag.String("only", "", "run one benchmark: cni, reconcile or throughput")
	results := flag.String("results", "bench/RESULTS.md", "file to update")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (it creates network namespaces)")
		os.Exit(2)
	}
	bin, err := buildBinaries()
	if err != nil {
		fail(err)
	}
	meta := runMeta()
	if *only == "" || *only == "cni" {
		sec, err := benchCNI(bin, *pods, *runs)
		if err != nil {
			fail(err)
		}
		if err := updateSection(*results, "cni", meta+sec); err != nil {
			fail(err)
		}
	}
	if *only == "" || *only == "reconcile" {
		sec, err := benchReconcile([]int{1000, 5000}, *runs)
		if err != nil {
			fail(err)
		}
		if err := updateSection(*results, "reconcile", meta+sec); err != nil {
			fail(err)
		}
	}
	if *only == "" || *only == "throughput" {
		sec, err := benchThroughput(bin, *runs, *secs)
		if err != nil {
			fail(err)
		}
		if err := updateSection(*results, "throughput", meta+sec); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// buildBinaries builds podnet and the reference plugins (versions pinned
// in go.mod) into bin/cni.
func buildBinaries() (string, error) {
	dir := "bin/cni"
	args := []string{"build", "-o", dir + "/", "./cmd/podnet",
		"github.com/containernetworking/plugins/plugins/main/bridge",
		"github.com/containernetworking/plugins/plugins/ipam/host-local",
		"github.com/containernetworking/plugins/plugins/main/loopback"}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return dir, nil
}

func runMeta() string {
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	kernel, _ := exec.Command("uname", "-r").Output()
	cpus, _ := exec.Command("nproc").Output()
	return fmt.Sprintf("Measured %s at commit %s, kernel %s, %s CPUs.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), strings.TrimSpace(string(commit)),
		strings.TrimSpace(string(kernel)), strings.TrimSpace(string(cpus)))
}

// updateSection replaces the text between the section's markers in path,
// appending the section when it is new.
func updateSection(path, name, body string) error {
	begin, end := "<!-- BEGIN "+name+" -->", "<!-- END "+name+" -->"
	old, _ := os.ReadFile(path)
	s := string(old)
	if s == "" {
		s = "# podnet benchmark results\n\nEach section is written by `go run ./bench` (see bench/main.go); the command that reproduces it is in the section. Figures are medians over several runs on a noisy 2-core machine, and every ratio compares figures measured in the same run.\n"
	}
	block := begin + "\n" + body + end
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i >= 0 && j > i {
		s = s[:i] + block + s[j+len(end):]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + block + "\n"
	}
	fmt.Println(body)
	return os.WriteFile(path, []byte(s), 0o644)
}
