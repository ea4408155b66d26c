package cni

import (
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"golang.org/x/sys/unix"
)

// The plugin is a short-lived process, so it cannot serve metrics itself.
// Each ADD and DEL adds its outcome and duration to a small JSON document
// in the network's store directory, under a lock of its own (not the
// allocation lock, so metrics never delay an allocation); the agent reads
// it when scraped. Losing a count in a crash is acceptable, so the write is
// an atomic rename without fsync.

// StatsFile is the name of the statistics document in the store directory.
const StatsFile = "stats.json"

// StatBuckets are the upper bounds, in seconds, of the latency histogram.
var StatBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// OpStats counts one verb's calls.
type OpStats struct {
	// Results counts calls by result ("success" or "error").
	Results map[string]uint64 `json:"results"`
	// Buckets[i] counts calls that took at most StatBuckets[i] (not
	// cumulative); Sum is the total time in seconds.
	Buckets []uint64 `json:"buckets"`
	Sum     float64  `json:"sum"`
}

// Stats is the document: verb ("ADD", "DEL") → counts.
type Stats map[string]*OpStats

// ReadStats reads the statistics of the store directory dir; a missing
// file is empty statistics.
func ReadStats(dir string) (Stats, error) {
	b, err := os.ReadFile(filepath.Join(dir, StatsFile))
	if os.IsNotExist(err) {
		return Stats{}, nil
	}
	if err != nil {
		return nil, err
	}
	st := Stats{}
	return st, json.Unmarshal(b, &st)
}

// recordStats adds one call to the document; errors are ignored, as a
// metric must never fail a pod.
func recordStats(dir, op string, d time.Duration, failed bool) {
	if os.MkdirAll(dir, 0o700) != nil {
		return
	}
	lf, err := os.OpenFile(filepath.Join(dir, "stats.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return
	}
	defer lf.Close()
	if unix.Flock(int(lf.Fd()), unix.LOCK_EX) != nil {
		return
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	st, err := ReadStats(dir)
	if err != nil {
		st = Stats{} // a torn or foreign file: start again
	}
	o := st[op]
	if o == nil {
		o = &OpStats{Results: map[string]uint64{}}
		st[op] = o
	}
	if len(o.Buckets) != len(StatBuckets)+1 {
		o.Buckets = make([]uint64, len(StatBuckets)+1) // the last is +Inf
	}
	result := "success"
	if failed {
		result = "error"
	}
	o.Results[result]++
	secs := d.Seconds()
	o.Sum += secs
	i := 0
	for i < len(StatBuckets) && secs > StatBuckets[i] {
		i++
	}
	o.Buckets[i]++
	b, err := json.Marshal(st)
	if err != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".stats-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), filepath.Join(dir, StatsFile)) != nil {
		os.Remove(tmp.Name())
	}
}

// measured wraps a verb so its outcome and duration are recorded in the
// network's store directory (when the config parses; a config that does
// not parse fails before anything is done, and has no directory).
func measured(op string, fn func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		t0 := time.Now()
		err := fn(args)
		if conf, perr := ParseConfig(args.StdinData); perr == nil {
			recordStats(conf.StoreDir(), op, time.Since(t0), err != nil)
		}
		return err
	}
}
