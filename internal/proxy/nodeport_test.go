package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/model"
)

func TestNodePortBackendsFollowTheRules(t *testing.T) {
	withNodePort := func(mut func(*model.Service)) model.Service {
		return svc("web", func(s *model.Service) {
			s.Ports[0].NodePort = 30080
			s.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8::5")}
			if mut != nil {
				mut(s)
			}
		})
	}
	s := withNodePort(nil)
	k := key(s, "http")
	eps := map[model.PortKey][]model.Endpoint{k: {ep("10.244.1.5", 8080, "n1"), ep("10.244.2.5", 8080, "n2")}}
	np := Frontend{Addr: netip.IPv4Unspecified(), Port: 30080, Protocol: model.TCP}
	ext := Frontend{Addr: netip.MustParseAddr("203.0.113.5"), Port: 80, Protocol: model.TCP}
	got := NodePortBackends(self, s, eps)
	// The IPv6 external IP has no IPv6 ClusterIP to go with: left out.
	if len(got) != 2 || len(got[np].Cluster) != 2 || got[np].LocalPolicy || len(got[ext].Cluster) != 2 {
		t.Fatalf("policy Cluster: %v", got)
	}
	// Local: this node's endpoints beside all of them (for pod-range
	// clients); with none here the entry stays, for the drop.
	local := withNodePort(func(s *model.Service) { s.ExternalLocal = true })
	got = NodePortBackends(self, local, eps)
	if !got[np].LocalPolicy || len(got[np].Local) != 1 || got[np].Local[0].Addr().String() != "10.244.1.5" || len(got[np].Cluster) != 2 {
		t.Errorf("policy Local: %v", got)
	}
	got = NodePortBackends(self, local, map[model.PortKey][]model.Endpoint{k: {ep("10.244.2.5", 8080, "n2")}})
	if len(got[np].Local) != 0 || !got[np].LocalPolicy || len(got[np].Cluster) != 1 {
		t.Errorf("policy Local without a local endpoint: %v", got)
	}
	// Left to the rules: no endpoints (they reject), SCTP, and
	// a ClusterIP-only Service has nothing external at all.
	if got := NodePortBackends(self, s, nil); len(got) != 0 {
		t.Errorf("no endpoints: %v", got)
	}
	if got := NodePortBackends(self, withNodePort(func(s *model.Service) { s.Affinity = time.Minute }), eps); got[np].Affinity != time.Minute || len(got[np].Cluster) != 2 {
		t.Errorf("session affinity: %v", got)
	}
	sctp := withNodePort(func(s *model.Service) { s.Ports[0].Protocol = model.SCTP })
	if got := NodePortBackends(self, sctp, map[model.PortKey][]model.Endpoint{{ServiceName: sctp.ServiceName, Port: "http", Protocol: model.SCTP}: eps[k]}); len(got) != 0 {
		t.Errorf("SCTP: %v", got)
	}
	if got := NodePortBackends(self, svc("web", nil), eps); len(got) != 0 {
		t.Errorf("ClusterIP only: %v", got)
	}
}
