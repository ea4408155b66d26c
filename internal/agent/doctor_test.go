package agent

import (
	"testing"
	"time"

	"github.com/podnet/podnet/internal/doctor"
)

// The conntrack table's limit is global to the machine (a network
// namespace cannot lower it), so a lab cannot fill it without touching
// the host; the judgement is checked here instead.
func TestConntrackFinding(t *testing.T) {
	if f := conntrackFinding(100, 262144); f.Severity != doctor.OK {
		t.Errorf("nearly empty table: %+v", f)
	}
	if f := conntrackFinding(250000, 262144); f.Severity != doctor.Warn || f.Fix == "" {
		t.Errorf("95%% full table: %+v", f)
	}
}

func TestAPIFindingClockSkew(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	if f := apiFinding(10*time.Millisecond, now.Add(-2*time.Second), now); f.Severity != doctor.OK {
		t.Errorf("2 s apart: %+v", f)
	}
	if f := apiFinding(10*time.Millisecond, now.Add(-time.Minute), now); f.Severity != doctor.Warn || f.Fix == "" {
		t.Errorf("a minute apart: %+v", f)
	}
	if f := apiFinding(10*time.Millisecond, time.Time{}, now); f.Severity != doctor.OK {
		t.Errorf("no server time: %+v", f)
	}
}
