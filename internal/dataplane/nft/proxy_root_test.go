package nft

import (
	"context"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/proxy"
	"github.com/podnet/podnet/internal/testenv"
)

// TestProxyKernelAcceptsEverySync runs the random Service changes of
// TestIncrementalEqualsFull against the kernel: every transaction must be
// accepted, and a restarted backend's full sync must converge on the same
// ruleset the step-by-step one built.
func TestProxyKernelAcceptsEverySync(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	ns := testenv.NetNS(t, "proxy")
	p, err := NewProxy(ns)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{slots: proxy.NewSlots(), rng: rand.New(rand.NewPCG(5, 6)), svcs: map[string]model.Service{}, eps: map[string]map[model.PortKey][]model.Endpoint{}}
	sk := proxy.NewSkeleton(testSelf)
	for step := range 30 {
		changed := w.step()
		if _, err := p.Sync(ctx, sk, fragments(w, changed)); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
	before := listTable(t, ns)
	var all []string
	for k := range w.svcs {
		all = append(all, k)
	}
	restarted, err := NewProxy(ns)
	if err != nil {
		t.Fatal(err)
	}
	st, err := restarted.Sync(ctx, sk, fragments(w, all))
	if err != nil || !st.Full {
		t.Fatalf("restart sync: %+v %v", st, err)
	}
	if after := listTable(t, ns); after != before {
		t.Errorf("a restarted agent's full sync changed the table\n%s", diffLines(after, before))
	}
	if err := restarted.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

func listTable(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns[strings.LastIndex(ns, "/")+1:], "nft", "list", "table", "inet", proxy.Table).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	return string(out)
}
