package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/podnet/podnet/internal/model"
)

// FlowEvent is one connection the balancer translated: a TCP connection
// as its SYN leaves, or a UDP socket's first reply from a backend.
type FlowEvent struct {
	// NetNS is the client's network namespace cookie.
	NetNS    uint64
	Protocol model.Protocol
	// Src is the client socket's address, Backend where the balancer sent
	// it, and Service the address the socket named.
	Src, Backend, Service netip.AddrPort
}

// flowEventSize is sizeof(struct flow_event) in bpf/socklb.c.
const flowEventSize = 64

// Events reads the balancer's flow events.
type Events struct{ r *ringbuf.Reader }

// Events opens the ring buffer the programs write flow events to. There
// is one reader per ring: the agent's.
func (l *SockLB) Events() (*Events, error) {
	r, err := ringbuf.NewReader(l.objs.PodnetEvents)
	if err != nil {
		return nil, fmt.Errorf("flow events: %w", err)
	}
	return &Events{r: r}, nil
}

// ErrClosed is returned by Read once the reader is closed.
var ErrClosed = errors.New("flow events closed")

// Read waits for the next event, at most until the deadline (zero: none);
// it returns os.ErrDeadlineExceeded when the deadline passes first.
func (e *Events) Read(deadline time.Time) (FlowEvent, error) {
	e.r.SetDeadline(deadline)
	for {
		rec, err := e.r.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return FlowEvent{}, ErrClosed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return FlowEvent{}, err
		}
		if err != nil {
			return FlowEvent{}, fmt.Errorf("flow events: %w", err)
		}
		if ev, ok := parseFlowEvent(rec.RawSample); ok {
			return ev, nil
		}
	}
}

// Close stops reading; a blocked Read returns ErrClosed.
func (e *Events) Close() error { return e.r.Close() }

func parseFlowEvent(b []byte) (FlowEvent, bool) {
	if len(b) < flowEventSize {
		return FlowEvent{}, false
	}
	addr := func(off int) netip.Addr { return netip.AddrFrom16([16]byte(b[off : off+16])).Unmap() }
	port := func(off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }
	return FlowEvent{
		NetNS:    binary.NativeEndian.Uint64(b[0:]),
		Protocol: protoName(b[62]),
		Src:      netip.AddrPortFrom(addr(8), port(56)),
		Backend:  netip.AddrPortFrom(addr(24), port(58)),
		Service:  netip.AddrPortFrom(addr(40), port(60)),
	}, true
}
