package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/podnet/podnet/internal/flow"
)

// maxFlowWait bounds a long poll, below the usual idle timeouts of
// proxies in between.
const maxFlowWait = time.Minute

// FlowPage is the answer of the /flows endpoint.
type FlowPage struct {
	Node  string        `json:"node"`
	Flows []flow.Record `json:"flows"`
	// Seq is the ring's sequence number: pass it back as ?after= to get
	// only newer flows (podnet flows --follow does, with ?wait=).
	Seq uint64 `json:"seq"`
}

// FlowsHandler serves the node's recent flows, filtered by the query:
// from, to, verdict, since (a duration) and after (a sequence number).
// With after and wait (a duration, at most a minute), a request that finds
// nothing new is held until a matching flow is recorded or the wait ends:
// a long poll, which streams flows through any HTTP proxy in between
// (the apiserver's pod proxy, the lab's API).
func FlowsHandler(a *Agent) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f, err := flow.ParseFilter(q.Get("from"), q.Get("to"), q.Get("verdict"), q.Get("since"), time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var after uint64
		if s := q.Get("after"); s != "" {
			if after, err = strconv.ParseUint(s, 10, 64); err != nil {
				http.Error(w, "after: want a sequence number", http.StatusBadRequest)
				return
			}
		}
		var wait time.Duration
		if s := q.Get("wait"); s != "" {
			if wait, err = time.ParseDuration(s); err != nil || wait < 0 || wait > maxFlowWait {
				http.Error(w, "wait: want a duration up to 1m", http.StatusBadRequest)
				return
			}
		}
		var recs []flow.Record
		var seq uint64
		if wait > 0 && after > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), wait)
			recs, seq = a.WaitFlows(ctx.Done(), f, after)
			cancel()
		} else {
			recs, seq = a.Flows(f, after)
		}
		if recs == nil {
			recs = []flow.Record{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(FlowPage{Node: a.cfg.NodeName, Flows: recs, Seq: seq})
	})
}
