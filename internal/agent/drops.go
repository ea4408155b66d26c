package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/podnet/podnet/internal/dataplane/ebpf"
	"github.com/podnet/podnet/internal/dataplane/nflog"
	"github.com/podnet/podnet/internal/dataplane/nft"
	"github.com/podnet/podnet/internal/flow"
	"github.com/podnet/podnet/internal/netpol"
	"github.com/podnet/podnet/internal/proxy"
	"github.com/podnet/podnet/internal/routing"
)

// Drops and rejects reach the agent through nflog: the policy table logs
// every packet it drops, the proxy every packet it rejects for want of an
// endpoint and every conntrack-invalid packet it drops, each with a prefix
// that says which. The kernel copies the first bytes of the packet only
// while a reader is bound. Each report becomes a flow record, named and
// explained; policy drops are also counted per policy and logged
// (rate-limited).

// dropLogBurst bounds drop log lines per second; the counters and the flow
// ring see every drop.
const dropLogBurst = 20

func (a *Agent) watchNflog(ctx context.Context) {
	log := a.cfg.Log
	var conn *nflog.Conn
	for {
		var err error
		conn, err = nflog.Open(a.cfg.NetNS, uint16(a.cfg.NflogGroup), 128)
		if err == nil {
			break
		}
		log.Warn("drops will not be explained", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	second, logged, suppressed := time.Now(), 0, 0
	for {
		pkts, err := conn.Read()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// ENOBUFS: the kernel dropped reports faster than we read.
			log.Debug("nflog read", "err", err)
			continue
		}
		for _, pkt := range pkts {
			r, ok := a.explainPacket(pkt)
			if !ok {
				continue
			}
			a.record(r)
			if r.Reason != flow.ReasonPolicy {
				continue
			}
			for _, pol := range r.Policies {
				a.metrics.policyDrops.WithLabelValues(pol, r.Direction).Inc()
			}
			if time.Since(second) > time.Second {
				if suppressed > 0 {
					log.Info("policy drops not logged (rate limit)", "count", suppressed)
				}
				second, logged, suppressed = time.Now(), 0, 0
			}
			if logged < dropLogBurst {
				logged++
				log.Info(dropLine(r))
			} else {
				suppressed++
			}
		}
	}
}

// watchBPFDrops records the eBPF node port balancer's drops as the
// nftables dataplane's nflog reports are recorded: same verdict, same
// reason, same names.
func (a *Agent) watchBPFDrops(ctx context.Context, drops *ebpf.Ring[ebpf.DropEvent]) {
	go func() {
		<-ctx.Done()
		drops.Close()
	}()
	for {
		ev, err := drops.Read(time.Time{})
		if err != nil {
			if !errors.Is(err, ebpf.ErrClosed) {
				a.cfg.Log.Warn("node port balancer drops", "err", err)
			}
			return
		}
		if !ev.NoLocalEndpoint {
			continue
		}
		r := flow.Record{Time: time.Now(), Verdict: flow.Dropped, Reason: flow.ReasonNoLocalEndpoints, Protocol: string(ev.Protocol),
			Src: ev.Src.Addr(), SrcPort: ev.Src.Port(), Dst: ev.Dst.Addr(), DstPort: ev.Dst.Port()}
		if a.proxy != nil {
			r.Service = a.proxy.serviceAt(r.Dst, r.DstPort, r.Protocol)
		}
		r.SrcName, r.DstName = a.names.name(r.Src), a.names.name(r.Dst)
		a.record(r)
	}
}

// dropLine is the log line of a policy drop.
func dropLine(r flow.Record) string {
	pod := r.SrcName
	if r.Direction == "ingress" {
		pod = r.DstName
	}
	port := ""
	if r.DstPort != 0 {
		port = fmt.Sprintf(":%d", r.DstPort)
	}
	from, to := orAddr(r.SrcName, r.Src), orAddr(r.DstName, r.Dst)
	return fmt.Sprintf("dropped: %s of %s isolated by policy %s; no rule matched (%s -> %s%s/%s)",
		r.Direction, pod, strings.Join(r.Policies, ", policy "), from, to, port, r.Protocol)
}

func orAddr(name string, a netip.Addr) string {
	if name != "" {
		return name
	}
	return a.String()
}

// explainPacket turns one nflog report into a flow record.
func (a *Agent) explainPacket(pkt nflog.Packet) (flow.Record, bool) {
	if !pkt.ParsedIPHeader {
		return flow.Record{}, false
	}
	r := flow.Record{Time: time.Now(), Protocol: nflog.ProtoName(pkt.Proto), Src: pkt.Src, Dst: pkt.Dst}
	if pkt.HasTransport {
		r.SrcPort, r.DstPort = pkt.SPort, pkt.DPort
	}
	switch {
	case strings.HasPrefix(pkt.Prefix, nft.PolicyLogPrefix):
		if a.policy == nil {
			return r, false
		}
		chain := strings.TrimSpace(strings.TrimPrefix(pkt.Prefix, nft.PolicyLogPrefix))
		r.Verdict, r.Reason = flow.Dropped, flow.ReasonPolicy
		id := ""
		switch {
		case strings.HasPrefix(chain, "in-"):
			r.Direction, id = "ingress", chain[3:]
		case strings.HasPrefix(chain, "eg-"):
			r.Direction, id = "egress", chain[3:]
		default:
			return r, false
		}
		_, desired := a.policy.state()
		if g := desired.Group(id); g != nil {
			for _, pn := range g.Policies {
				r.Policies = append(r.Policies, pn.String())
			}
		} else {
			r.Policies = []string{"(changed since: group " + id + ")"}
		}
	case strings.HasPrefix(pkt.Prefix, proxy.LogPrefixNoEndpoints):
		r.Verdict, r.Reason = flow.Rejected, flow.ReasonNoEndpoints
		if a.proxy != nil {
			r.Service = a.proxy.serviceAt(r.Dst, r.DstPort, r.Protocol)
		}
	case strings.HasPrefix(pkt.Prefix, proxy.LogPrefixNoLocal):
		r.Verdict, r.Reason = flow.Dropped, flow.ReasonNoLocalEndpoints
		if a.proxy != nil {
			r.Service = a.proxy.serviceAt(r.Dst, r.DstPort, r.Protocol)
		}
	case strings.HasPrefix(pkt.Prefix, proxy.LogPrefixInvalid):
		r.Verdict, r.Reason = flow.Dropped, flow.ReasonInvalid
	default:
		return r, false
	}
	r.SrcName, r.DstName = a.names.name(r.Src), a.names.name(r.Dst)
	return r, true
}

// record stamps a record with the node, keeps it in the ring and exports
// it.
func (a *Agent) record(r flow.Record) {
	r.Node = a.cfg.NodeName
	a.flows.Add(r)
	if a.flowLog != nil {
		if err := a.flowLog.Write(r); err != nil {
			a.cfg.Log.Debug("flow log", "err", err)
		}
	}
}

// Flows returns the flows this node recorded that pass f, oldest first,
// and the ring's sequence number (for following: pass it back as after).
func (a *Agent) Flows(f flow.Filter, after uint64) ([]flow.Record, uint64) {
	recs, seq := a.flows.Since(after)
	return flow.Collect(recs, f), seq
}

// WaitFlows is Flows that, when nothing passing f is newer than after,
// waits for such a record until done is closed: followers are told of a
// flow as soon as it is recorded, without polling.
func (a *Agent) WaitFlows(done <-chan struct{}, f flow.Filter, after uint64) ([]flow.Record, uint64) {
	for {
		recs, seq := a.Flows(f, after)
		if len(recs) > 0 || after == 0 {
			return recs, seq
		}
		select {
		case <-done:
			return recs, seq
		default:
		}
		a.flows.Wait(done, seq)
		// Records that f rejects move the sequence on, so nothing is
		// looked at twice.
		after = seq
	}
}

// PolicyWorld returns the policy world of the last applied sync (nil when
// policy is off or has not synced yet).
func (a *Agent) PolicyWorld() *netpol.World {
	if a.policy == nil {
		return nil
	}
	w, _ := a.policy.state()
	return w
}

// DesiredRoutes returns the routes this node should have to its peers'
// pod ranges.
func (a *Agent) DesiredRoutes() ([]routing.Route, error) {
	st, _, _, _, err := a.desired()
	return st.Routes, err
}
