package agent

import (
	"context"
	"log/slog"
	"time"
)

// syncLoop is the shape of both of the agent's loops: level-triggered
// syncs woken by trigger (requests merge in its buffer of one), a periodic
// safety net (onPeriod runs before that sync), retries with exponential
// back-off after a failure, and at least minInterval between syncs.
type syncLoop struct {
	name        string
	trigger     <-chan struct{}
	period      time.Duration
	onPeriod    func()
	sync        func() error
	minInterval time.Duration
	log         *slog.Logger
}

func (l syncLoop) run(ctx context.Context) {
	backoff := time.Duration(0)
	tick := time.NewTicker(l.period)
	defer tick.Stop()
	for {
		var retry <-chan time.Time
		if backoff > 0 {
			retry = time.After(backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-l.trigger:
		case <-tick.C:
			if l.onPeriod != nil {
				l.onPeriod()
			}
		case <-retry:
		}
		if err := l.sync(); err != nil {
			backoff = nextBackoff(backoff)
			l.log.Error(l.name+" sync failed", "err", err, "retry", backoff)
			continue
		}
		backoff = 0
		if l.minInterval > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(l.minInterval):
			}
		}
	}
}

// nextBackoff doubles a retry delay, from 100ms up to 30s.
func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, 100*time.Millisecond), 30*time.Second)
}
