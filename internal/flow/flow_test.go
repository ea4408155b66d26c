package flow

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func rec(i int, verdict string) Record {
	return Record{Time: time.Unix(int64(1000+i), 0), Node: "n1", Verdict: verdict, Protocol: "tcp",
		Src: netip.MustParseAddr("10.0.0.1"), SrcPort: uint16(40000 + i), SrcName: "a/web",
		Dst: netip.MustParseAddr("10.0.0.2"), DstPort: 80, DstName: "a/db", Service: "a/db-svc"}
}

func TestRingKeepsNewestAndFollows(t *testing.T) {
	r := NewRing(4)
	for i := 0; i < 3; i++ {
		r.Add(rec(i, Forwarded))
	}
	all, seq := r.Since(0)
	if len(all) != 3 || seq != 3 {
		t.Fatalf("got %d records, seq %d", len(all), seq)
	}
	for i := 3; i < 7; i++ {
		r.Add(rec(i, Forwarded))
	}
	all, seq = r.Since(0)
	if len(all) != 4 || all[0].SrcPort != 40003 || all[3].SrcPort != 40006 {
		t.Fatalf("ring holds %v", all)
	}
	newer, _ := r.Since(5)
	if len(newer) != 2 || newer[0].SrcPort != 40005 {
		t.Fatalf("since 5: %v", newer)
	}
	if none, _ := r.Since(seq); len(none) != 0 {
		t.Fatalf("since now: %v", none)
	}
}

func TestFilter(t *testing.T) {
	recs := []Record{rec(0, Forwarded), rec(1, Dropped), rec(2, Rejected)}
	recs[1].SrcName = "b/batch"
	f, err := ParseFilter("", "a/db", "dropped", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := Collect(recs, f); len(got) != 1 || got[0].SrcName != "b/batch" {
		t.Fatalf("dropped to a/db: %v", got)
	}
	f, _ = ParseFilter("a/web", "svc/a/db-svc", "", "", time.Now())
	if got := Collect(recs, f); len(got) != 2 {
		t.Fatalf("from a/web to the service: %v", got)
	}
	f, _ = ParseFilter("10.0.0.1", "", "", "", time.Now())
	if got := Collect(recs, f); len(got) != 3 {
		t.Fatalf("by address: %v", got)
	}
	f, _ = ParseFilter("", "", "", "1s", time.Unix(1002, 500))
	if got := Collect(recs, f); len(got) != 1 {
		t.Fatalf("since: %v", got)
	}
	if _, err := ParseFilter("", "", "maybe", "", time.Now()); err == nil {
		t.Fatal("bad verdict accepted")
	}
	if _, err := ParseFilter("", "", "", "yesterday", time.Now()); err == nil {
		t.Fatal("bad since accepted")
	}
	s := rec(1, Dropped)
	s.Reason, s.Direction, s.Policies = ReasonPolicy, "ingress", []string{"a/deny"}
	if want := "DROPPED (policy: ingress isolated by a/deny)"; !strings.Contains(s.String(), want) {
		t.Fatalf("%q lacks %q", s.String(), want)
	}
}

func TestExporterRotates(t *testing.T) {
	dir := t.TempDir()
	e := &Exporter{Path: filepath.Join(dir, "flows.json"), MaxBytes: 1000, Keep: 2}
	for i := 0; i < 40; i++ {
		if err := e.Write(rec(i, Forwarded)); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "flows.json*"))
	if len(files) != 3 {
		t.Fatalf("files %v, want flows.json, .1, .2", files)
	}
	last := -1
	for _, name := range []string{"flows.json.2", "flows.json.1", "flows.json"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		if st.Size() > 1000 {
			t.Errorf("%s is %d bytes, over the limit", name, st.Size())
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r Record
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if i := int(r.SrcPort) - 40000; i != last+1 && last != -1 {
				t.Fatalf("%s: record %d follows %d", name, i, last)
			} else {
				last = i
			}
		}
		f.Close()
	}
	if last != 39 {
		t.Fatal(fmt.Sprint("last record ", last))
	}
}
