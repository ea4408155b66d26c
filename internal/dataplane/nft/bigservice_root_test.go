package nft

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/model"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
	"github.com/podnet/podnet/internal/testenv"
)

// TestServiceWithMoreEndpointsThanASlot programs a Service port with more
// endpoints than a slot of the shared maps holds and connects to its
// ClusterIP until endpoints beyond the slot's size have answered: no
// endpoint is cut off, and an endpoint removed in an incremental sync is
// no longer chosen.
func TestServiceWithMoreEndpointsThanASlot(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	ns := testenv.NetNS(t, "bigsvc")
	const n = proxy.SlotSize + 600
	const basePort = 20000
	vip := netip.MustParseAddr("10.96.0.10")
	var lns []net.Listener
	err := netns.Do(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// The ClusterIP needs a route for the socket's first lookup;
		// the proxy's output hook then translates it.
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(10, 96, 0, 0), Mask: net.CIDRMask(12, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		for i := range n {
			l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", basePort+i))
			if err != nil {
				return err
			}
			lns = append(lns, l)
		}
		return nil
	})
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	answered := map[int]int{}
	for i, l := range lns {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				answered[i]++
				mu.Unlock()
				c.Close()
			}
		}()
	}

	// A ClusterIP-only port balances through the shared chains, with no
	// slot; one with a node port has a chain of its own and, past a
	// slot's size, a map of its own.
	for _, v := range []struct {
		name     string
		nodePort uint16
	}{{"cluster-ip-only", 0}, {"with-node-port", 30080}} {
		t.Run(v.name, func(t *testing.T) {
			nodePort := v.nodePort
			mu.Lock()
			clear(answered)
			mu.Unlock()
			s := model.Service{ServiceName: model.ServiceName{Namespace: "ns", Name: "big"}, ClusterIPs: []netip.Addr{vip},
				Ports: []model.ServicePort{{Name: "p", Protocol: model.TCP, Port: 80, NodePort: nodePort}}}
			var eps []model.Endpoint
			for i := range n {
				eps = append(eps, model.Endpoint{Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(basePort + i), Ready: true, Serving: true, NodeName: "n1"})
			}
			key := model.PortKey{ServiceName: s.ServiceName, Port: "p", Protocol: model.TCP}
			slots := proxy.NewSlots()
			self := testSelf
			self.NodeIPs = nil
			sk := proxy.NewSkeleton(self)
			p, err := NewProxy(ns)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Delete(ctx)
			sync := func(eps []model.Endpoint) {
				t.Helper()
				f, _ := proxy.Render(self, s, map[model.PortKey][]model.Endpoint{key: eps}, slots)
				if _, err := p.Sync(ctx, sk, map[string]*proxy.Fragment{"ns/big": &f}); err != nil {
					t.Fatal(err)
				}
			}
			sync(eps)
			connect := func(tries int) {
				t.Helper()
				for range tries {
					err := netns.Do(ns, func() error {
						c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(vip, 80).String(), 2*time.Second)
						if err != nil {
							return err
						}
						return c.Close()
					})
					if err != nil {
						t.Fatalf("connect to the ClusterIP: %v", err)
					}
				}
			}
			connect(300)
			time.Sleep(100 * time.Millisecond)
			mu.Lock()
			beyond := 0
			for i := range answered {
				if i >= proxy.SlotSize {
					beyond++
				}
			}
			mu.Unlock()
			// Each connection has a 600/4696 chance of an endpoint past the slot
			// size: 300 connections all missing them would be a 1e-18 event.
			if beyond == 0 {
				t.Fatalf("no endpoint beyond the first %d answered 300 connections: the rest are cut off", proxy.SlotSize)
			}

			// Keep only endpoints past the slot size: every connection lands there.
			sync(eps[proxy.SlotSize:])
			mu.Lock()
			clear(answered)
			mu.Unlock()
			connect(50)
			time.Sleep(100 * time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			for i := range answered {
				if i < proxy.SlotSize {
					t.Fatalf("removed endpoint %d still answered", i)
				}
			}
		})
	}
}
