package agent

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/flow"
)

// TestFlowsLongPoll: a follower's request with after and wait is held
// until a flow that passes its filter is recorded, and answered with it;
// flows its filter rejects do not end the wait.
func TestFlowsLongPoll(t *testing.T) {
	a := &Agent{cfg: Config{NodeName: "n1"}, flows: flow.NewRing(16)}
	rec := func(src string) flow.Record {
		return flow.Record{Time: time.Now(), Verdict: flow.Forwarded, Protocol: "tcp", SrcName: src,
			Src: netip.MustParseAddr("10.244.1.5"), Dst: netip.MustParseAddr("10.244.2.5"), DstPort: 80}
	}
	a.flows.Add(rec("prod/old"))
	srv := httptest.NewServer(FlowsHandler(a))
	defer srv.Close()

	type answer struct {
		page FlowPage
		at   time.Time
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.Get(srv.URL + "?after=1&wait=20s&from=prod/web")
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		var p FlowPage
		err = json.NewDecoder(resp.Body).Decode(&p)
		got <- answer{page: p, at: time.Now(), err: err}
	}()
	time.Sleep(300 * time.Millisecond)
	a.flows.Add(rec("prod/other")) // filtered out: the request keeps waiting
	select {
	case ans := <-got:
		t.Fatalf("answered before a matching flow: %+v %v", ans.page, ans.err)
	case <-time.After(300 * time.Millisecond):
	}
	added := time.Now()
	a.flows.Add(rec("prod/web"))
	select {
	case ans := <-got:
		if ans.err != nil {
			t.Fatal(ans.err)
		}
		if len(ans.page.Flows) != 1 || ans.page.Flows[0].SrcName != "prod/web" || ans.page.Seq != 3 {
			t.Fatalf("page %+v, want the prod/web flow at seq 3", ans.page)
		}
		t.Logf("answered %v after the flow was recorded", ans.at.Sub(added))
	case <-time.After(10 * time.Second):
		t.Fatal("a matching flow did not end the wait")
	}

	// Without wait the answer is immediate, and wait is bounded.
	resp, err := http.Get(srv.URL + "?after=3")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	resp, err = http.Get(srv.URL + "?after=3&wait=2h")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("wait=2h: status %d, want 400", resp.StatusCode)
	}
}
