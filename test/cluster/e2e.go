package cluster

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Selections of the upstream [sig-network] suite.
const (
	// SkipAlways excludes what this machine or a cloud-less cluster cannot
	// run: disruptive and serial specs, slow ones, feature-gated ones,
	// SCTP (no SCTP sockets in this kernel), and cloud load balancers.
	SkipAlways = `\[Serial\]|\[Disruptive\]|\[Slow\]|SCTP|Feature:|LoadBalancer|\[Flaky\]`
	// FocusSmoke is CI's selection: the pod granular checks and a handful
	// of Services specs.
	FocusSmoke = `\[sig-network\] Networking Granular Checks: Pods|\[sig-network\] Services should serve a basic endpoint from pods|\[sig-network\] Services should serve multiport endpoints from pods|\[sig-network\] Services should be able to create a functioning NodePort service|\[sig-network\] HostPort`
	// FocusServices is what the service proxy answers for: every
	// Services spec and the granular Services checks.
	FocusServices = `\[sig-network\] Services |\[sig-network\] Networking Granular Checks: Services`
	// FocusNetpol is the NetworkPolicy suite. Its specs carry
	// [Feature:NetworkPolicy], so this selection is run with SkipNetpol,
	// which keeps every other exclusion.
	FocusNetpol = `\[sig-network\] Netpol`
	SkipNetpol  = `\[Serial\]|\[Disruptive\]|\[Slow\]|SCTP|LoadBalancer|\[Flaky\]`
	// FocusFull is the whole network SIG.
	FocusFull = `\[sig-network\]`
)

// Excluded are specs left out beyond SkipAlways, each with the reason.
var Excluded = []struct{ Pattern, Reason string }{
	{`Services should be rejected for evicted pods`,
		"it needs the kubelet to evict a pod that outgrows its 5 MiB ephemeral-storage limit; in this harness the pod is never evicted within the spec's 5 minutes (the kubelet does not account the writable layer of this containerd setup), a kubelet matter that says nothing about the network"},
}

// Skip is the ginkgo skip expression: SkipAlways and Excluded.
func Skip() string {
	s := SkipAlways
	for _, e := range Excluded {
		s += "|" + e.Pattern
	}
	return s
}

// E2EResult summarises one run.
type E2EResult struct {
	Passed, Failed, Skipped int
	Duration                time.Duration
	Failures                []string
	Junit                   string
	// Groups counts the specs that ran, by group (the words between
	// "[sig-network]" and "should"), with their summed durations.
	Groups map[string]*GroupResult
}

// GroupResult is one group's share of a run.
type GroupResult struct {
	Passed, Failed int
	Duration       time.Duration
}

// specGroup names the group of a spec: "[sig-network] Services should
// serve ..." is in "Services".
func specGroup(name string) string {
	_, rest, ok := strings.Cut(name, "[sig-network] ")
	if !ok {
		return "other"
	}
	for _, sep := range []string{" should ", " Should ", " when ", " [", " - ", " validates ", " spec.", " A set "} {
		if i := strings.Index(rest, sep); i > 0 {
			rest = rest[:i]
		}
	}
	return strings.TrimSpace(rest)
}

// RunE2E runs the upstream e2e.test with ginkgo from node1's namespace.
func (c *Cluster) RunE2E(ctx context.Context, focus, skip string, procs int, reportDir string) (E2EResult, error) {
	os.MkdirAll(reportDir, 0o755)
	kubectlLink := filepath.Join(c.BinDir, "kubectl")
	os.Remove(kubectlLink)
	os.Symlink("kas", kubectlLink)
	args := []string{filepath.Join(c.BinDir, "ginkgo"), fmt.Sprintf("--procs=%d", procs), "--timeout=2h",
		filepath.Join(c.BinDir, "e2e.test"), "--",
		"--kubeconfig=" + c.Kubeconfig(), "--kubectl-path=" + kubectlLink, "--provider=skeleton",
		"--ginkgo.focus=" + focus, "--ginkgo.skip=" + skip, "--report-dir=" + reportDir,
		"--node-os-distro=debian", "--num-nodes=" + fmt.Sprint(c.Nodes)}
	t0 := time.Now()
	out, err := c.run(c.Node1(), args...)
	os.WriteFile(filepath.Join(reportDir, "e2e.log"), []byte(out), 0o644)
	res := E2EResult{Duration: time.Since(t0)}
	junits, _ := filepath.Glob(filepath.Join(reportDir, "junit*.xml"))
	for _, j := range junits {
		res.Junit = j
		if perr := parseJunit(j, &res); perr != nil {
			return res, perr
		}
	}
	if len(junits) == 0 && err != nil {
		return res, err
	}
	return res, nil
}

type junitSuite struct {
	Cases []struct {
		Name    string    `xml:"name,attr"`
		Time    float64   `xml:"time,attr"`
		Skipped *struct{} `xml:"skipped"`
		Failure *struct{} `xml:"failure"`
		Error   *struct{} `xml:"error"`
	} `xml:"testcase"`
}

func parseJunit(path string, res *E2EResult) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var s struct {
		Suites []junitSuite `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &s); err != nil {
		var one junitSuite
		if err2 := xml.Unmarshal(b, &one); err2 != nil {
			return err
		}
		s.Suites = []junitSuite{one}
	}
	if res.Groups == nil {
		res.Groups = map[string]*GroupResult{}
	}
	for _, su := range s.Suites {
		for _, tc := range su.Cases {
			if tc.Skipped != nil {
				res.Skipped++
				continue
			}
			// Ginkgo's suite nodes ([SynchronizedBeforeSuite] and the
			// like) are not specs: they count only when they fail.
			if !strings.Contains(tc.Name, "[sig-network]") && tc.Failure == nil && tc.Error == nil {
				continue
			}
			g := res.Groups[specGroup(tc.Name)]
			if g == nil {
				g = &GroupResult{}
				res.Groups[specGroup(tc.Name)] = g
			}
			g.Duration += time.Duration(tc.Time * float64(time.Second))
			if tc.Failure != nil || tc.Error != nil {
				res.Failed++
				g.Failed++
				res.Failures = append(res.Failures, tc.Name)
			} else {
				res.Passed++
				g.Passed++
			}
		}
	}
	sort.Strings(res.Failures)
	return nil
}

// Summary renders a result for test/e2e/RESULTS.md.
func (r E2EResult) Summary(title, command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## %s\n\n`%s`\n\n", title, command)
	fmt.Fprintf(&b, "%d passed, %d failed, %d skipped in %s (the skipped are outside the selection). Junit: `%s` (kept on the machine that ran it).\n", r.Passed, r.Failed, r.Skipped, r.Duration.Round(time.Second), r.Junit)
	if len(r.Groups) > 0 {
		var names []string
		for n := range r.Groups {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintln(&b, "\n| group | passed | failed | spec time (summed) |\n|---|---|---|---|")
		for _, n := range names {
			g := r.Groups[n]
			fmt.Fprintf(&b, "| %s | %d | %d | %s |\n", n, g.Passed, g.Failed, g.Duration.Round(time.Second))
		}
	}
	if len(r.Failures) > 0 {
		fmt.Fprintln(&b, "\nFailed:")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "- %s\n", f)
		}
	}
	return b.String()
}

// WriteRanJunit copies a ginkgo junit report to out without its skipped
// test cases.
func WriteRanJunit(in, out string) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var doc struct {
		XMLName xml.Name   `xml:"testsuites"`
		Attrs   []xml.Attr `xml:",any,attr"`
		Suites  []struct {
			Attrs []xml.Attr `xml:",any,attr"`
			Cases []struct {
				Inner string     `xml:",innerxml"`
				Attrs []xml.Attr `xml:",any,attr"`
				Skip  *struct{}  `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		return err
	}
	var w strings.Builder
	w.WriteString(xml.Header + "<testsuites>\n")
	attrs := func(as []xml.Attr) string {
		var s strings.Builder
		for _, a := range as {
			s.WriteString(" " + a.Name.Local + "=\"")
			xml.EscapeText(&s, []byte(a.Value))
			s.WriteString("\"")
		}
		return s.String()
	}
	for _, su := range doc.Suites {
		fmt.Fprintf(&w, "  <testsuite%s>\n", attrs(su.Attrs))
		for _, tc := range su.Cases {
			if tc.Skip != nil {
				continue
			}
			fmt.Fprintf(&w, "    <testcase%s>%s</testcase>\n", attrs(tc.Attrs), tc.Inner)
		}
		w.WriteString("  </testsuite>\n")
	}
	w.WriteString("</testsuites>\n")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, []byte(w.String()), 0o644)
}
