package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	cebpf "github.com/cilium/ebpf"
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

// Ring reads one of the programs' ring buffers, parsing each record into
// a T. There is one reader per ring: the agent's.
type Ring[T any] struct {
	r     *ringbuf.Reader
	parse func([]byte) (T, bool)
}

// Events reads the socket balancer's flow events.
type Events = Ring[FlowEvent]

// Events opens the ring buffer the programs write flow events to.
func (l *SockLB) Events() (*Events, error) {
	return openRing(l.objs.PodnetEvents, parseFlowEvent)
}

func openRing[T any](m *cebpf.Map, parse func([]byte) (T, bool)) (*Ring[T], error) {
	r, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("ring buffer %s: %w", m, err)
	}
	return &Ring[T]{r: r, parse: parse}, nil
}

// ErrClosed is returned by Read once the reader is closed.
var ErrClosed = errors.New("ring buffer closed")

// Read waits for the next record, at most until the deadline (zero:
// none); it returns os.ErrDeadlineExceeded when the deadline passes first.
func (e *Ring[T]) Read(deadline time.Time) (T, error) {
	var zero T
	e.r.SetDeadline(deadline)
	for {
		rec, err := e.r.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return zero, ErrClosed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return zero, err
		}
		if err != nil {
			return zero, fmt.Errorf("ring buffer: %w", err)
		}
		if ev, ok := e.parse(rec.RawSample); ok {
			return ev, nil
		}
	}
}

// Close stops reading; a blocked Read returns ErrClosed.
func (e *Ring[T]) Close() error { return e.r.Close() }

// DropEvent is one first packet the node port balancer dropped.
type DropEvent struct {
	Protocol model.Protocol
	Src, Dst netip.AddrPort
	// NoLocalEndpoint: a policy-Local entry point with no endpoint on
	// this node (the only reason the program drops for).
	NoLocalEndpoint bool
}

// dropEventSize is sizeof(struct np_drop) in bpf/nodeport.c.
const dropEventSize = 40

// Drops opens the ring buffer the node port balancer reports drops to.
func (n *NodePort) Drops() (*Ring[DropEvent], error) {
	return openRing(n.objs.PodnetNpDrops, parseDropEvent)
}

func parseDropEvent(b []byte) (DropEvent, bool) {
	if len(b) < dropEventSize {
		return DropEvent{}, false
	}
	addr := func(off int) netip.Addr { return netip.AddrFrom16([16]byte(b[off : off+16])).Unmap() }
	port := func(off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }
	return DropEvent{
		Src:             netip.AddrPortFrom(addr(0), port(32)),
		Dst:             netip.AddrPortFrom(addr(16), port(34)),
		Protocol:        protoName(b[36]),
		NoLocalEndpoint: b[37] == 1,
	}, true
}

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
