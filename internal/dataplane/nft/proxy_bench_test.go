package nft

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/proxy"
	"github.com/podnet/podnet/internal/testenv"
)

// BenchmarkProxyFullSync renders N ClusterIP Services × 10 endpoints (the
// shape of bench/'s proxy comparison) and times the backend's full sync
// into a fresh namespace, apart from the API: render, then the one
// transaction. PODNET_BENCH_SERVICES sets N (default 10000).
//
//	go test ./internal/dataplane/nft -run '^$' -bench ProxyFullSync -benchtime 3x
func BenchmarkProxyFullSync(b *testing.B) {
	testenv.RequireRoot(b)
	n := benchServices(b)
	ctx := context.Background()
	var render, apply time.Duration
	for range b.N {
		ns := testenv.NetNS(b, "bench")
		t0 := time.Now()
		frags := renderServices(0, n, proxy.NewSlots())
		t1 := time.Now()
		p, err := NewProxy(ns)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Sync(ctx, proxy.NewSkeleton(testSelf), frags); err != nil {
			b.Fatal(err)
		}
		render += t1.Sub(t0)
		apply += time.Since(t1)
		p.Delete(ctx)
	}
	b.ReportMetric(float64(render.Milliseconds())/float64(b.N), "render-ms/op")
	b.ReportMetric(float64(apply.Milliseconds())/float64(b.N), "apply-ms/op")
}

// benchServices is PODNET_BENCH_SERVICES, 10000 when unset.
func benchServices(b *testing.B) int {
	s := os.Getenv("PODNET_BENCH_SERVICES")
	if s == "" {
		return 10000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("PODNET_BENCH_SERVICES=%q: want a positive number", s)
	}
	return n
}

// renderServices renders n ClusterIP Services × 10 endpoints, from index
// first, as BenchmarkProxyFullSync's shape.
func renderServices(first, n int, slots *proxy.Slots) map[string]*proxy.Fragment {
	frags := make(map[string]*proxy.Fragment, n)
	for i := first; i < first+n; i++ {
		s := model.Service{
			ServiceName: model.ServiceName{Namespace: "ns", Name: fmt.Sprintf("svc-%05d", i)},
			ClusterIPs:  []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:       []model.ServicePort{{Name: "p", Protocol: model.TCP, Port: 80}},
		}
		k := model.PortKey{ServiceName: s.ServiceName, Port: "p", Protocol: model.TCP}
		var eps []model.Endpoint
		for j := range 10 {
			eps = append(eps, model.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i >> 4), byte(i<<4 | j)}), Port: 8080, Ready: true, Serving: true, NodeName: "n2"})
		}
		f, _ := proxy.Render(testSelf, s, map[model.PortKey][]model.Endpoint{k: eps}, slots)
		frags[s.ServiceName.String()] = &f
	}
	return frags
}

// BenchmarkProxyAddOne times the incremental sync that adds one Service
// to a table already holding PODNET_BENCH_SERVICES (default 10000).
//
//	go test ./internal/dataplane/nft -run '^$' -bench ProxyAddOne -benchtime 20x
func BenchmarkProxyAddOne(b *testing.B) {
	testenv.RequireRoot(b)
	n := benchServices(b)
	ctx := context.Background()
	ns := testenv.NetNS(b, "bench")
	slots := proxy.NewSlots()
	p, err := NewProxy(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Delete(ctx)
	if _, err := p.Sync(ctx, proxy.NewSkeleton(testSelf), renderServices(0, n, slots)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		st, err := p.Sync(ctx, proxy.NewSkeleton(testSelf), renderServices(n+i, 1, slots))
		if err != nil {
			b.Fatal(err)
		}
		if st.Full {
			b.Fatal("adding one Service made a full sync")
		}
	}
}
