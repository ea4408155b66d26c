package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

func TestFirstLastSize(t *testing.T) {
	for _, tc := range []struct {
		r           string
		first, last string
		size        int64
	}{
		{"10.244.1.0/24", "10.244.1.2", "10.244.1.254", 253},
		{"10.244.1.0/30", "10.244.1.2", "10.244.1.2", 1},
		{"fd00:10:244:1::/120", "fd00:10:244:1::2", "fd00:10:244:1::ff", 254},
	} {
		r := netip.MustParsePrefix(tc.r)
		if got := First(r).String(); got != tc.first {
			t.Errorf("First(%s) = %s, want %s", tc.r, got, tc.first)
		}
		if got := Last(r).String(); got != tc.last {
			t.Errorf("Last(%s) = %s, want %s", tc.r, got, tc.last)
		}
		if got := Size(r); got != tc.size {
			t.Errorf("Size(%s) = %d, want %d", tc.r, got, tc.size)
		}
	}
	if err := ValidateRange(netip.MustParsePrefix("10.0.0.0/31")); err == nil {
		t.Error("a /31 cannot hold a pod, want an error")
	}
	if err := ValidateRange(netip.MustParsePrefix("10.0.0.5/24")); err == nil {
		t.Error("host bits set, want an error")
	}
}

func TestNextRotatesAndWraps(t *testing.T) {
	r := netip.MustParsePrefix("10.0.0.0/29") // pods: .2 .. .6
	used := map[netip.Addr]bool{}
	inUse := func(a netip.Addr) bool { return used[a] }
	var last netip.Addr
	var got []string
	for i := 0; i < 5; i++ {
		a, err := Next(r, last, inUse)
		if err != nil {
			t.Fatal(err)
		}
		used[a], last = true, a
		got = append(got, a.String())
	}
	if fmt.Sprint(got) != "[10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6]" {
		t.Fatalf("order %v", got)
	}
	if _, err := Next(r, last, inUse); !errors.As(err, new(*ErrExhausted)) {
		t.Fatalf("want exhaustion, got %v", err)
	}
	// Free .3: it is found by wrapping around, after the end of the range.
	delete(used, netip.MustParseAddr("10.0.0.3"))
	a, err := Next(r, last, inUse)
	if err != nil || a.String() != "10.0.0.3" {
		t.Fatalf("got %v %v, want 10.0.0.3", a, err)
	}
}

func TestStoreReuseIsDelayed(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00::/120")}
	a1, fresh, err := s.Allocate(Attachment{"c1", "eth0"}, Meta{HostIf: "pnA"}, r)
	if err != nil || !fresh || len(a1) != 2 {
		t.Fatalf("allocate: %v %v %v", a1, fresh, err)
	}
	// A retried ADD gets the same addresses back.
	again, fresh, err := s.Allocate(Attachment{"c1", "eth0"}, Meta{HostIf: "pnA"}, r)
	if err != nil || fresh || fmt.Sprint(again) != fmt.Sprint(a1) {
		t.Fatalf("retry: %v %v %v", again, fresh, err)
	}
	if _, err := s.Release(Attachment{"c1", "eth0"}); err != nil {
		t.Fatal(err)
	}
	a2, _, err := s.Allocate(Attachment{"c2", "eth0"}, Meta{HostIf: "pnB"}, r)
	if err != nil {
		t.Fatal(err)
	}
	if a2[0] == a1[0] || a2[1] == a1[1] {
		t.Fatalf("released address handed out again at once: %v then %v", a1, a2)
	}
	// Releasing an unknown attachment is fine.
	if freed, err := s.Release(Attachment{"nope", "eth0"}); err != nil || len(freed) != 0 {
		t.Fatalf("release unknown: %v %v", freed, err)
	}
}

func TestStoreExhaustionNamesRange(t *testing.T) {
	s, _ := Open(t.TempDir())
	r := []netip.Prefix{netip.MustParsePrefix("10.2.0.0/30")}
	if _, _, err := s.Allocate(Attachment{"a", "eth0"}, Meta{}, r); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.Allocate(Attachment{"b", "eth0"}, Meta{}, r)
	if err == nil || err.Error() != "range 10.2.0.0/30 exhausted: no free address" {
		t.Fatalf("got %v", err)
	}
}

func TestStoreReleaseExcept(t *testing.T) {
	s, _ := Open(t.TempDir())
	r := []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24")}
	for _, id := range []string{"a", "b", "c"} {
		if _, _, err := s.Allocate(Attachment{id, "eth0"}, Meta{}, r); err != nil {
			t.Fatal(err)
		}
	}
	freed, err := s.ReleaseExcept(map[Attachment]bool{{"b", "eth0"}: true})
	if err != nil || len(freed) != 2 {
		t.Fatalf("freed %v %v", freed, err)
	}
	all, _ := s.List()
	if len(all) != 1 {
		t.Fatalf("left %v", all)
	}
	for _, a := range all {
		if a.ContainerID != "b" {
			t.Fatalf("kept the wrong one: %v", a)
		}
	}
}

// TestStoreConcurrent runs 200 allocations from separate goroutines, each
// with its own Store value as separate plugin processes would have, and
// checks that every address is distinct and recorded.
func TestStoreConcurrent(t *testing.T) {
	dir := t.TempDir()
	r := []netip.Prefix{netip.MustParsePrefix("10.4.0.0/24"), netip.MustParsePrefix("fd00:4::/64")}
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := Open(dir)
			if err != nil {
				errs <- err
				return
			}
			id := fmt.Sprintf("c%03d", i)
			addrs, _, err := s.Allocate(Attachment{id, "eth0"}, Meta{}, r)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, a := range addrs {
				if other, dup := seen[a]; dup {
					errs <- fmt.Errorf("%s given to %s and %s", a, other, id)
				}
				seen[a] = id
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != 400 {
		t.Fatalf("want 400 distinct addresses, got %d", len(seen))
	}
	s, _ := Open(dir)
	all, _ := s.List()
	if len(all) != 400 {
		t.Fatalf("store holds %d, want 400", len(all))
	}
}
