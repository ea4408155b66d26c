// Package doctor holds the findings of podnet's node checks and their
// rendering. The checks themselves run in the agent, which knows the
// desired state and sits in the node's network namespace.
package doctor

import (
	"fmt"
	"io"
	"strings"
)

// Severity of a finding.
const (
	OK    = "ok"
	Warn  = "warn"
	Error = "error"
)

// Finding is the outcome of one check.
type Finding struct {
	Check    string `json:"check"`
	Severity string `json:"severity"`
	// Detail says what was seen; Fix, for a problem, what to do.
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Report is one node's findings.
type Report struct {
	Node     string    `json:"node"`
	Findings []Finding `json:"findings"`
}

// Problems counts the findings that are not OK.
func (r Report) Problems() int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity != OK {
			n++
		}
	}
	return n
}

// Has reports whether a check produced a finding of the given severity.
func (r Report) Has(check, severity string) bool {
	for _, f := range r.Findings {
		if f.Check == check && f.Severity == severity {
			return true
		}
	}
	return false
}

// Print writes the report for people: one line per check, and the fix
// under each problem.
func (r Report) Print(w io.Writer) {
	fmt.Fprintf(w, "node %s: %d problem(s)\n", r.Node, r.Problems())
	for _, f := range r.Findings {
		mark := map[string]string{OK: "ok  ", Warn: "WARN", Error: "FAIL"}[f.Severity]
		fmt.Fprintf(w, "  %s %-12s %s\n", mark, f.Check, f.Detail)
		if f.Fix != "" {
			for _, line := range strings.Split(f.Fix, "\n") {
				fmt.Fprintf(w, "       %-12s fix: %s\n", "", line)
			}
		}
	}
}
