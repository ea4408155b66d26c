package agent

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/podnet/podnet/internal/flow"
)

// FlowPage is the answer of the /flows endpoint.
type FlowPage struct {
	Node  string        `json:"node"`
	Flows []flow.Record `json:"flows"`
	// Seq is the ring's sequence number: pass it back as ?after= to get
	// only newer flows (podnet flows --follow does).
	Seq uint64 `json:"seq"`
}

// FlowsHandler serves the node's recent flows, filtered by the query:
// from, to, verdict, since (a duration) and after (a sequence number).
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
		recs, seq := a.Flows(f, after)
		if recs == nil {
			recs = []flow.Record{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(FlowPage{Node: a.cfg.NodeName, Flows: recs, Seq: seq})
	})
}
