// Package flow holds flow records, the verdicts and drop reasons they
// carry, a bounded in-memory ring of them, filters over them, and a JSON
// lines exporter with rotation. Records are made by the agent from kernel
// events (conntrack for forwarded flows, nflog for drops and rejects).
package flow

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Verdicts.
const (
	Forwarded = "forwarded"
	Dropped   = "dropped"
	Rejected  = "rejected"
)

// Reasons for a drop or reject.
const (
	ReasonPolicy      = "policy"
	ReasonNoEndpoints = "no_endpoints"
	// ReasonNoLocalEndpoints: a traffic policy Local entry point on a
	// node with no endpoint of its own.
	ReasonNoLocalEndpoints = "no_local_endpoints"
	ReasonInvalid          = "conntrack_invalid"
)

// Record is one flow: a 5-tuple with its verdict, enriched with names.
type Record struct {
	Time     time.Time  `json:"time"`
	Node     string     `json:"node"`
	Verdict  string     `json:"verdict"`
	Reason   string     `json:"reason,omitempty"`
	Protocol string     `json:"protocol"`
	Src      netip.Addr `json:"src"`
	SrcPort  uint16     `json:"srcPort,omitempty"`
	Dst      netip.Addr `json:"dst"`
	DstPort  uint16     `json:"dstPort,omitempty"`
	// SrcName and DstName name the ends: "namespace/pod", "node/NAME", or
	// empty for an address podnet does not know.
	SrcName string `json:"srcName,omitempty"`
	DstName string `json:"dstName,omitempty"`
	// Service is the Service the source addressed ("namespace/name"); the
	// destination is then the backend that was chosen (if any).
	Service string `json:"service,omitempty"`
	// Direction and Policies explain a policy drop: which side was
	// isolated, by which policies.
	Direction string   `json:"direction,omitempty"`
	Policies  []string `json:"policies,omitempty"`
}

func endpoint(name string, a netip.Addr, port uint16) string {
	s := a.String()
	if port != 0 {
		s = netip.AddrPortFrom(a, port).String()
	}
	if name != "" {
		return name + " (" + s + ")"
	}
	return s
}

// String is one line for people.
func (r Record) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s -> ", r.Time.Format("15:04:05.000"), r.Node, r.Protocol, endpoint(r.SrcName, r.Src, r.SrcPort))
	if r.Service != "" {
		b.WriteString("svc/" + r.Service + " -> ")
	}
	b.WriteString(endpoint(r.DstName, r.Dst, r.DstPort))
	b.WriteString(" " + strings.ToUpper(r.Verdict))
	if r.Reason != "" {
		b.WriteString(" (" + r.Reason)
		if len(r.Policies) > 0 {
			fmt.Fprintf(&b, ": %s isolated by %s", r.Direction, strings.Join(r.Policies, ", "))
		}
		b.WriteString(")")
	}
	return b.String()
}

// Ring keeps the most recent records, safe for concurrent use.
type Ring struct {
	mu   sync.Mutex
	buf  []Record
	next int
	full bool
	// seq counts records ever added, so followers can ask for what is new.
	seq uint64
	// added is closed by the next Add, to wake followers; made only when
	// someone waits, so a busy ring with no follower allocates nothing.
	added chan struct{}
}

// NewRing holds up to n records.
func NewRing(n int) *Ring { return &Ring{buf: make([]Record, n)} }

// Add appends a record, evicting the oldest when full.
func (r *Ring) Add(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = rec
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
	r.seq++
	if r.added != nil {
		close(r.added)
		r.added = nil
	}
}

// Wait returns when a record newer than sequence number after is held,
// or when done is closed.
func (r *Ring) Wait(done <-chan struct{}, after uint64) {
	r.mu.Lock()
	if r.seq > after {
		r.mu.Unlock()
		return
	}
	if r.added == nil {
		r.added = make(chan struct{})
	}
	ch := r.added
	r.mu.Unlock()
	select {
	case <-ch:
	case <-done:
	}
}

// Since returns the records added after sequence number after (0: all
// held), oldest first, and the current sequence number.
func (r *Ring) Since(after uint64) ([]Record, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []Record
	if r.full {
		all = append(append(all, r.buf[r.next:]...), r.buf[:r.next]...)
	} else {
		all = append(all, r.buf[:r.next]...)
	}
	if n := r.seq - after; after > 0 && n < uint64(len(all)) {
		all = all[len(all)-int(n):]
	}
	return all, r.seq
}

// Filter selects records. Empty fields match everything.
type Filter struct {
	// From and To match a name ("namespace/pod", "node/NAME"), a Service
	// ("namespace/name", for To), or an address.
	From, To string
	Verdict  string
	Since    time.Time
}

// ParseFilter builds a filter from query-string style values.
func ParseFilter(from, to, verdict, since string, now time.Time) (Filter, error) {
	f := Filter{From: from, To: to, Verdict: verdict}
	switch verdict {
	case "", Forwarded, Dropped, Rejected:
	default:
		return f, fmt.Errorf("verdict %q: want forwarded, dropped or rejected", verdict)
	}
	if since != "" {
		d, err := time.ParseDuration(since)
		if err != nil || d < 0 {
			return f, fmt.Errorf("since %q: want a duration such as 5m", since)
		}
		f.Since = now.Add(-d)
	}
	return f, nil
}

func matchEnd(want, name string, addr netip.Addr) bool {
	return want == "" || want == name || want == addr.String()
}

// Match reports whether a record passes the filter.
func (f Filter) Match(r Record) bool {
	if f.Verdict != "" && r.Verdict != f.Verdict {
		return false
	}
	if !f.Since.IsZero() && r.Time.Before(f.Since) {
		return false
	}
	if !matchEnd(f.From, r.SrcName, r.Src) {
		return false
	}
	if f.To != "" && !matchEnd(f.To, r.DstName, r.Dst) && f.To != r.Service && f.To != "svc/"+r.Service {
		return false
	}
	return true
}

// Collect filters records.
func Collect(recs []Record, f Filter) []Record {
	var out []Record
	for _, r := range recs {
		if f.Match(r) {
			out = append(out, r)
		}
	}
	return out
}
