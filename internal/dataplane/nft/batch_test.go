package nft

import (
	"strings"
	"testing"
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
