package agent

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/podnet/podnet/internal/dataplane/nflog"
	"github.com/podnet/podnet/internal/flow"
)

// Forwarded flows come from conntrack's NEW events: the kernel announces
// each connection once, when its first packet has passed every filter
// (an entry is confirmed only then, so a connection policy drops never
// appears here; nflog reports it instead). The original tuple is what the
// client sent; when the reply comes from somewhere else, the proxy
// translated it, and the original destination names the Service.

func (a *Agent) watchConntrack(ctx context.Context) {
	log := a.cfg.Log
	cfg := &netlink.Config{}
	if a.cfg.NetNS != "" {
		f, err := os.Open(a.cfg.NetNS)
		if err != nil {
			log.Warn("forwarded flows will not be recorded", "err", err)
			return
		}
		defer f.Close()
		cfg.NetNS = int(f.Fd())
	}
	c, err := conntrack.Dial(cfg)
	if err != nil {
		log.Warn("forwarded flows will not be recorded", "err", err)
		return
	}
	_ = c.SetReadBuffer(4 << 20)
	events := make(chan conntrack.Event, 1024)
	errs, err := c.Listen(events, 1, []netfilter.NetlinkGroup{netfilter.GroupCTNew})
	if err != nil {
		c.Close()
		log.Warn("forwarded flows will not be recorded", "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-errs:
			if ctx.Err() == nil && err != nil {
				log.Debug("conntrack events", "err", err)
			}
		case ev := <-events:
			if ev.Flow == nil {
				continue
			}
			r, ok := a.flowOf(ev.Flow)
			switch {
			case !ok:
			case a.sockFlows != nil && r.Service == "" && (r.Protocol == "tcp" || r.Protocol == "udp"):
				// Not NATed: perhaps the socket balancer's.
				a.sockFlows.onConntrack(r)
			default:
				a.record(r)
			}
		}
	}
}

// flowOf makes a forwarded record of a new conntrack entry that involves
// a pod or a Service; the node's own traffic with the outside is left out.
func (a *Agent) flowOf(f *conntrack.Flow) (flow.Record, bool) {
	o, rep := f.TupleOrig, f.TupleReply
	r := flow.Record{Time: time.Now(), Verdict: flow.Forwarded, Protocol: nflog.ProtoName(o.Proto.Protocol),
		Src: o.IP.SourceAddress, SrcPort: o.Proto.SourcePort, Dst: o.IP.DestinationAddress, DstPort: o.Proto.DestinationPort}
	if rep.IP.SourceAddress != r.Dst || rep.Proto.SourcePort != r.DstPort {
		// DNAT: the reply's source is the backend the proxy chose.
		if a.proxy != nil {
			r.Service = a.proxy.serviceAt(r.Dst, r.DstPort, r.Protocol)
		}
		r.Dst, r.DstPort = rep.IP.SourceAddress, rep.Proto.SourcePort
	}
	r.SrcName, r.DstName = a.names.name(r.Src), a.names.name(r.Dst)
	isPod := func(n string) bool { return n != "" && !strings.HasPrefix(n, "node/") }
	if r.Service == "" && !isPod(r.SrcName) && !isPod(r.DstName) {
		return r, false
	}
	return r, true
}
