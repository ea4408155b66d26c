// Package trace holds the result of `podnet trace`: the hops a packet
// takes from a pod to its destination, what the dataplane does at each,
// any disagreement between the desired and the kernel's state, and a
// closing verdict line.
package trace

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Hop is one step of the path.
type Hop struct {
	// Where names the place ("pod prod/web-1", "node node2").
	Where string `json:"where"`
	// Step names what happens there ("route", "service", "policy egress").
	Step string `json:"step"`
	// What says what the dataplane does.
	What string `json:"what"`
	// Finding, when set, flags a disagreement between desired and actual
	// state, or a problem on the path.
	Finding string `json:"finding,omitempty"`
}

// Verdicts.
const (
	Delivered = "DELIVERED"
	Dropped   = "DROPPED"
	Rejected  = "REJECTED"
	Broken    = "BROKEN"
)

// Result is a whole trace.
type Result struct {
	From, To string
	Hops     []Hop  `json:"hops"`
	Verdict  string `json:"verdict"`
	// Line is the closing sentence, e.g. "DROPPED at prod/db ingress:
	// isolated by policy prod/db-allow-app, no rule matches port 5432
	// from prod/web-1".
	Line string `json:"line"`
	// Live, for --live, says what real packets did.
	Live string `json:"live,omitempty"`
}

// LiveLine is the --live report: the outcome of the real connection
// ("connected", "failed: ...") and the kernel events the nodes recorded
// for it, in a stable order.
func LiveLine(outcome string, events []string) string {
	if len(events) == 0 {
		return outcome + "; the kernel reported no event for it"
	}
	events = slices.Clone(events)
	slices.Sort(events)
	return outcome + "; kernel events: " + strings.Join(events, " | ")
}

// Add appends a hop.
func (r *Result) Add(where, step, what string) *Hop {
	r.Hops = append(r.Hops, Hop{Where: where, Step: step, What: what})
	return &r.Hops[len(r.Hops)-1]
}

// End sets the verdict and its line.
func (r *Result) End(verdict, format string, a ...any) {
	r.Verdict = verdict
	r.Line = verdict + " " + fmt.Sprintf(format, a...)
}

// Findings lists the hops' findings.
func (r Result) Findings() []string {
	var out []string
	for _, h := range r.Hops {
		if h.Finding != "" {
			out = append(out, h.Where+": "+h.Finding)
		}
	}
	return out
}

// Print writes the trace for people.
func (r Result) Print(w io.Writer) {
	fmt.Fprintf(w, "trace %s -> %s\n", r.From, r.To)
	for i, h := range r.Hops {
		fmt.Fprintf(w, "%2d. %-22s %-15s %s\n", i+1, h.Where, h.Step, h.What)
		if h.Finding != "" {
			fmt.Fprintf(w, "    %-22s %-15s ! %s\n", "", "", h.Finding)
		}
	}
	if f := r.Findings(); len(f) > 0 {
		fmt.Fprintf(w, "findings: %d (%s)\n", len(f), strings.Join(f, "; "))
	}
	if r.Live != "" {
		fmt.Fprintln(w, "live: "+r.Live)
	}
	fmt.Fprintln(w, r.Line)
}
