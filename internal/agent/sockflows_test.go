package agent

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/dataplane/ebpf"
	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/model"
)

// TestSockFlowsJoin: a balancer event and conntrack's record of the same
// connection make one flow record, whichever comes first, with the
// client's address from conntrack and the Service from the event; either
// alone is recorded once its partner is overdue.
func TestSockFlowsJoin(t *testing.T) {
	var mu sync.Mutex
	var got []flow.Record
	s := &sockFlows{
		serviceAt: func(a netip.Addr, port uint16, proto string) string {
			if a == netip.MustParseAddr("10.96.0.10") && port == 80 {
				return "prod/web"
			}
			return ""
		},
		nameOf: func(netip.Addr) string { return "" },
		record: func(r flow.Record) { mu.Lock(); got = append(got, r); mu.Unlock() },
		log:    func(string, ...any) {},
		events: map[sockFlowKey][]*pendingFlow{}, held: map[sockFlowKey][]*pendingFlow{},
	}
	backend := netip.MustParseAddrPort("10.244.2.5:8080")
	ev := func(proto model.Protocol, src string) ebpf.FlowEvent {
		return ebpf.FlowEvent{Protocol: proto, Src: netip.MustParseAddrPort(src), Backend: backend, Service: netip.MustParseAddrPort("10.96.0.10:80")}
	}
	ct := func(proto string, port uint16) flow.Record {
		return flow.Record{Verdict: flow.Forwarded, Protocol: proto, Src: netip.MustParseAddr("10.244.1.7"), SrcPort: port, Dst: backend.Addr(), DstPort: backend.Port()}
	}
	s.onEvent(ev(model.TCP, "10.244.1.7:40001")) // TCP: the event first
	s.onConntrack(ct("tcp", 40001))
	s.onConntrack(ct("udp", 40002)) // UDP: conntrack first; the socket had no address yet
	s.onEvent(ev(model.UDP, "[::]:40002"))
	s.onConntrack(ct("tcp", 40003))              // pod to pod: no event ever
	s.onEvent(ev(model.TCP, "10.244.1.7:40004")) // no conntrack record (missed)
	mu.Lock()
	if len(got) != 2 {
		t.Fatalf("joined records %+v, want 2", got)
	}
	for i, port := range []uint16{40001, 40002} {
		if got[i].SrcPort != port || got[i].Service != "prod/web" || got[i].Src != netip.MustParseAddr("10.244.1.7") {
			t.Errorf("record %d: %+v, want client 10.244.1.7:%d through prod/web", i, got[i], port)
		}
	}
	mu.Unlock()
	time.Sleep(2 * joinWait)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 4 {
		t.Fatalf("after the wait: %d records, want 4: %+v", len(got), got)
	}
	for _, r := range got[2:] {
		switch r.SrcPort {
		case 40003:
			if r.Service != "" {
				t.Errorf("pod-to-pod flow named a Service: %+v", r)
			}
		case 40004:
			if r.Service != "prod/web" {
				t.Errorf("event alone lost its Service: %+v", r)
			}
		default:
			t.Errorf("unexpected record %+v", r)
		}
	}
	if len(s.events)+len(s.held) != 0 {
		t.Errorf("left pending: %d events, %d held", len(s.events), len(s.held))
	}
}

// TestSockFlowsSamePortTwoClients: two clients that happen to use the
// same port to the same backend keep their own records.
func TestSockFlowsSamePortTwoClients(t *testing.T) {
	var got []flow.Record
	var mu sync.Mutex
	s := &sockFlows{
		serviceAt: func(a netip.Addr, port uint16, proto string) string {
			return map[string]string{"10.96.0.10:80": "prod/web", "10.96.0.11:80": "prod/api"}[netip.AddrPortFrom(a, port).String()]
		},
		nameOf: func(netip.Addr) string { return "" },
		record: func(r flow.Record) { mu.Lock(); got = append(got, r); mu.Unlock() },
		log:    func(string, ...any) {},
		events: map[sockFlowKey][]*pendingFlow{}, held: map[sockFlowKey][]*pendingFlow{},
	}
	backend := netip.MustParseAddrPort("10.244.2.5:8080")
	s.onEvent(ebpf.FlowEvent{Protocol: model.TCP, Src: netip.MustParseAddrPort("10.244.1.7:40001"), Backend: backend, Service: netip.MustParseAddrPort("10.96.0.10:80")})
	s.onEvent(ebpf.FlowEvent{Protocol: model.TCP, Src: netip.MustParseAddrPort("10.244.3.9:40001"), Backend: backend, Service: netip.MustParseAddrPort("10.96.0.11:80")})
	for _, src := range []string{"10.244.3.9", "10.244.1.7"} {
		s.onConntrack(flow.Record{Verdict: flow.Forwarded, Protocol: "tcp", Src: netip.MustParseAddr(src), SrcPort: 40001, Dst: backend.Addr(), DstPort: backend.Port()})
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]string{"10.244.3.9": "prod/api", "10.244.1.7": "prod/web"}
	if len(got) != 2 {
		t.Fatalf("records %+v, want 2", got)
	}
	for _, r := range got {
		if want[r.Src.String()] != r.Service {
			t.Errorf("client %s through %q, want %q", r.Src, r.Service, want[r.Src.String()])
		}
	}
	if len(s.events)+len(s.held) != 0 {
		t.Errorf("left pending: %d events, %d held", len(s.events), len(s.held))
	}
}
