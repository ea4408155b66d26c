package nft

import (
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

func TestMergeElements(t *testing.T) {
	in := strings.Join([]string{
		"add table inet t",
		"add element inet t s { 1 : 10.0.0.1 . 80 }",
		"add element inet t s { 2 : 10.0.0.2 . 80 }",
		"add element inet t m { 10.96.0.1 . tcp . 80 : goto svc }",
		"delete element inet t m { 10.96.0.2 . tcp . 80 }",
		"delete element inet t m { 10.96.0.3 . tcp . 80 }",
		"add rule inet t c ip daddr { 1.2.3.4, 5.6.7.8 } accept",
		"add element inet t s { 3 : 10.0.0.3 . 80 }",
		"",
	}, "\n")
	got, err := mergeElements(in)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"add table inet t",
		"add element inet t s { 1 : 10.0.0.1 . 80, 2 : 10.0.0.2 . 80 }",
		"add element inet t m { 10.96.0.1 . tcp . 80 : goto svc }",
		"delete element inet t m { 10.96.0.2 . tcp . 80, 10.96.0.3 . tcp . 80 }",
		"add rule inet t c ip daddr { 1.2.3.4, 5.6.7.8 } accept",
		"add element inet t s { 3 : 10.0.0.3 . 80 }",
		"",
	}, "\n")
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if _, err := mergeElements("add table inet t\n# ERROR: bad object\n"); err == nil {
		t.Error("a transaction with a pending error ran")
	}
}

// TestElementWriterWritesWhatMergingGives: the full sync's direct element
// text is the same as knftables' commands for those elements, merged.
func TestElementWriterWritesWhatMergingGives(t *testing.T) {
	fake := knftables.NewFake(knftables.InetFamily, "podnet-proxy")
	tx := fake.NewTransaction()
	ew := &elementWriter{family: "inet", table: "podnet-proxy"}
	add := func(set string, isMap bool, key, value, comment string) {
		tx.Add(element(set, isMap, key, content{value, comment}))
		ew.add(set, key, value, comment)
	}
	add("cluster-ips4", false, "10.96.0.10", "", "")
	add("cluster-ips4", false, "10.96.0.11", "", "")
	add("services4", true, "10.96.0.10 . tcp . 80", "goto lb4-tcp-2", "ns/web/http")
	add("cluster-endpoints4-tcp", true, "10.96.0.10 . 80 . 0", "10.244.1.5 . 8080", "")
	add("cluster-endpoints4-tcp", true, "10.96.0.10 . 80 . 1", "10.244.2.5 . 8080", "")
	want, err := mergeElements(tx.String())
	if err != nil {
		t.Fatal(err)
	}
	if got := ew.String(); got != want {
		t.Fatalf("element writer:\n%s\nmerged knftables:\n%s", got, want)
	}
	if ew.total != 5 {
		t.Errorf("counted %d elements, want 5", ew.total)
	}
}
