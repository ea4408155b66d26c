package agent

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/podnet/podnet/internal/dataplane/ebpf"
	"github.com/podnet/podnet/internal/flow"
)

// Flows of the socket balancer. A connection it translated leaves the
// client already addressed to the backend, so conntrack sees it with no
// NAT and cannot tell which Service it was for; the balancer's ring
// buffer events can. The two are joined on protocol, client port and
// backend: conntrack gives the client's address (an unbound UDP socket
// has none when the balancer sees it), the event gives the Service. A TCP
// event comes before conntrack's (the SYN has not left yet), a UDP event
// after it (at the first reply), so each side waits a little for the
// other, and is recorded alone when the other never comes (a pod-to-pod
// flow has no event; conntrack may miss an event under load). With
// flowEvents off neither source runs.

// joinWait is how long one side waits for the other; readEvery is how
// often the ring is read (events may wait that long in it).
const (
	joinWait  = 200 * time.Millisecond
	readEvery = 50 * time.Millisecond
)

type sockFlowKey struct {
	proto   string
	srcPort uint16
	backend netip.AddrPort
}

type sockFlows struct {
	serviceAt func(a netip.Addr, port uint16, proto string) string
	nameOf    func(netip.Addr) string
	record    func(flow.Record)
	log       func(msg string, args ...any)

	mu     sync.Mutex
	events map[sockFlowKey][]*pendingFlow // events waiting for conntrack
	held   map[sockFlowKey][]*pendingFlow // conntrack records waiting for an event
}

type pendingFlow struct {
	rec   flow.Record
	timer *time.Timer
}

func newSockFlows(a *Agent) *sockFlows {
	return &sockFlows{
		serviceAt: func(ip netip.Addr, port uint16, proto string) string {
			if a.proxy == nil {
				return ""
			}
			return a.proxy.serviceAt(ip, port, proto)
		},
		nameOf: a.names.name,
		record: a.record,
		log:    a.cfg.Log.Debug,
		events: map[sockFlowKey][]*pendingFlow{}, held: map[sockFlowKey][]*pendingFlow{},
	}
}

// watch reads the balancer's events until ctx ends.
func (s *sockFlows) watch(ctx context.Context, ev *ebpf.Events) {
	go func() {
		<-ctx.Done()
		ev.Close()
	}()
	for {
		// The programs wake the reader only when events pile up (see
		// wakeup in bpf/socklb.c), so it looks every readEvery.
		e, err := ev.Read(time.Now().Add(readEvery))
		if errors.Is(err, ebpf.ErrClosed) || ctx.Err() != nil {
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			s.log("socket balancer events", "err", err)
			continue
		}
		s.onEvent(e)
	}
}

// onEvent takes one balancer event.
func (s *sockFlows) onEvent(e ebpf.FlowEvent) {
	proto := string(e.Protocol)
	svc := s.serviceAt(e.Service.Addr(), e.Service.Port(), proto)
	k := sockFlowKey{proto, e.Src.Port(), e.Backend}
	s.mu.Lock()
	if h := s.take(s.held, k, e.Src.Addr()); h != nil {
		s.mu.Unlock()
		h.rec.Service = svc
		s.record(h.rec)
		return
	}
	r := flow.Record{Time: time.Now(), Verdict: flow.Forwarded, Protocol: proto, Src: e.Src.Addr(), SrcPort: e.Src.Port(),
		Dst: e.Backend.Addr(), DstPort: e.Backend.Port(), Service: svc}
	r.SrcName, r.DstName = s.nameOf(r.Src), s.nameOf(r.Dst)
	s.hold(s.events, k, r)
	s.mu.Unlock()
}

// onConntrack takes conntrack's record of a flow it saw un-NATed, which
// may be the balancer's.
func (s *sockFlows) onConntrack(r flow.Record) {
	k := sockFlowKey{r.Protocol, r.SrcPort, netip.AddrPortFrom(r.Dst, r.DstPort)}
	s.mu.Lock()
	if p := s.take(s.events, k, r.Src); p != nil {
		s.mu.Unlock()
		r.Service = p.rec.Service
		s.record(r)
		return
	}
	s.hold(s.held, k, r)
	s.mu.Unlock()
}

// Several clients may use the same port to the same backend at once, so
// each key holds a list; a partner must also have the same client
// address, unless one side does not know it (an unbound UDP socket's
// event).

// take removes and returns the first pending flow under k whose client
// address matches src, nil if none (or if its timer has already fired).
// s.mu is held.
func (s *sockFlows) take(m map[sockFlowKey][]*pendingFlow, k sockFlowKey, src netip.Addr) *pendingFlow {
	for i, p := range m[k] {
		if p.rec.Src != src && !p.rec.Src.IsUnspecified() && !src.IsUnspecified() {
			continue
		}
		if !p.timer.Stop() {
			return nil // expiring right now: it will be recorded alone
		}
		s.remove(m, k, i)
		return p
	}
	return nil
}

// hold keeps r under k until its partner comes or joinWait passes.
// s.mu is held.
func (s *sockFlows) hold(m map[sockFlowKey][]*pendingFlow, k sockFlowKey, r flow.Record) {
	p := &pendingFlow{rec: r}
	p.timer = time.AfterFunc(joinWait, func() { s.expire(m, k, p) })
	m[k] = append(m[k], p)
}

func (s *sockFlows) remove(m map[sockFlowKey][]*pendingFlow, k sockFlowKey, i int) {
	l := slices.Delete(m[k], i, i+1)
	if len(l) == 0 {
		delete(m, k)
	} else {
		m[k] = l
	}
}

// expire records a side whose partner did not come.
func (s *sockFlows) expire(m map[sockFlowKey][]*pendingFlow, k sockFlowKey, p *pendingFlow) {
	s.mu.Lock()
	i := slices.Index(m[k], p)
	if i < 0 {
		s.mu.Unlock()
		return
	}
	s.remove(m, k, i)
	s.mu.Unlock()
	s.record(p.rec)
}
