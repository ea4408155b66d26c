package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/agent"
)

func TestLiveReport(t *testing.T) {
	ok := func() (agent.ProbeAnswer, error) {
		return agent.ProbeAnswer{Pod: "prod/web-1", NetNS: "/var/run/netns/cni-1", Outcome: "failed: no answer within 1s", Took: "1s"}, nil
	}
	got := liveReport(ok, func() []string { return []string{"b dropped", "a dropped"} })
	if !strings.HasPrefix(got, "failed: no answer within 1s (from prod/web-1's namespace /var/run/netns/cni-1") || !strings.HasSuffix(got, "kernel events: a dropped | b dropped") {
		t.Errorf("report: %s", got)
	}
	if got := liveReport(ok, func() []string { return nil }); !strings.HasSuffix(got, "the kernel reported no event for it") {
		t.Errorf("no events: %s", got)
	}
	flowsAsked := false
	got = liveReport(func() (agent.ProbeAnswer, error) {
		return agent.ProbeAnswer{}, errors.New("no podnet agent on node n3")
	},
		func() []string { flowsAsked = true; return nil })
	if got != "not sent: no podnet agent on node n3" || flowsAsked {
		t.Errorf("probe not sent: %q (flows asked: %v)", got, flowsAsked)
	}
}
