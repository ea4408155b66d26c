package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/netns"
)

// iperf runs one iperf3 TCP stream from the client namespace to the server
// namespace's address and returns Gbit/s received.
func iperf(clientNS, serverNS, addr string, secs int) (float64, error) {
	return iperfVia(clientNS, serverNS, addr, addr, secs)
}

// iperfVia is iperf with the client sending to dst (a Service address)
// and the server bound to bind (the address dst leads to).
func iperfVia(clientNS, serverNS, bind, dst string, secs int) (float64, error) {
	var srv *exec.Cmd
	if err := netns.Do(serverNS, func() error {
		srv = exec.Command("iperf3", "-s", "-1", "-B", bind)
		return srv.Start()
	}); err != nil {
		return 0, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var out []byte
	var err error
	for try := 0; try < 20; try++ {
		time.Sleep(100 * time.Millisecond)
		err = netns.Do(clientNS, func() error {
			var e error
			args := []string{"-c", dst, "-t", fmt.Sprint(secs), "-O", "1", "-J"}
			if ap, err := netip.ParseAddrPort(dst); err == nil {
				// A translated port (a node port) in front of 5201.
				args = []string{"-c", ap.Addr().String(), "-p", fmt.Sprint(ap.Port()), "-t", fmt.Sprint(secs), "-O", "1", "-J"}
			}
			out, e = exec.Command("iperf3", args...).Output()
			return e
		})
		if err == nil {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 client: %v %s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, err
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// rawVeth is the baseline: two namespaces joined by one veth pair, nothing
// else in the path.
func rawVeth(secs int) (float64, error) {
	prefix := fmt.Sprintf("pnb-%d-", time.Now().UnixNano()%1e9)
	defer func() {
		names, _ := netns.List(prefix)
		for _, n := range names {
			netns.Delete(n)
		}
	}()
	a, err := netns.Create(prefix + "a")
	if err != nil {
		return 0, err
	}
	b, err := netns.Create(prefix + "b")
	if err != nil {
		return 0, err
	}
	ha, _ := netns.Handle(a)
	defer ha.Close()
	hb, _ := netns.Handle(b)
	defer hb.Close()
	fd, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fd.Close()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(fd.Fd()))}); err != nil {
		return 0, err
	}
	for i, h := range []*netlink.Handle{ha, hb} {
		l, err := h.LinkByName("eth0")
		if err != nil {
			return 0, err
		}
		h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, 0, byte(1+i)), Mask: net.CIDRMask(24, 32)}})
		h.LinkSetUp(l)
	}
	return iperf(a, b, "10.99.0.2", secs)
}

// podPair puts two pods on one node with plugin p and measures pod A → pod B.
func podPair(bin string, p cniPlugin, secs int) (float64, error) {
	b, err := newBenchNode(bin, p, 2)
	if err != nil {
		return 0, err
	}
	defer b.close()
	if _, err := b.add(0); err != nil {
		return 0, err
	}
	if _, err := b.add(1); err != nil {
		return 0, err
	}
	r, err := b.cfg.GetNetworkListCachedResult(b.list, b.rt(1))
	if err != nil {
		return 0, err
	}
	res, err := current.NewResultFromResult(r)
	if err != nil || len(res.IPs) == 0 {
		return 0, fmt.Errorf("%s: no address for pod B: %v", p.name, err)
	}
	return iperf(b.pods[0], b.pods[1], res.IPs[0].Address.IP.String(), secs)
}

// benchThroughput measures single-stream TCP throughput between two pods
// on one node, under podnet and the reference bridge plugin, against a raw
// veth pair, interleaved so drift hits all three alike.
func benchThroughput(bin string, runs, secs int) (string, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return "", fmt.Errorf("iperf3 is not installed (apt-get install iperf3)")
	}
	paths := []struct {
		name string
		run  func() (float64, error)
	}{
		{"raw veth pair (baseline)", func() (float64, error) { return rawVeth(secs) }},
		{"podnet, pod → pod, same node", func() (float64, error) { return podPair(bin, podnetPlugin, secs) }},
		{"bridge + host-local, pod → pod, same node", func() (float64, error) { return podPair(bin, bridgePlugin, secs) }},
	}
	got := make([][]float64, len(paths))
	for r := 0; r < runs; r++ {
		for i, p := range paths {
			g, err := p.run()
			if err != nil {
				return "", fmt.Errorf("%s: %w", p.name, err)
			}
			got[i] = append(got[i], g)
			fmt.Fprintf(os.Stderr, "run %d %s: %.2f Gbit/s\n", r+1, p.name, g)
		}
	}
	var s strings.Builder
	fmt.Fprintf(&s, "## Same-node pod-to-pod TCP throughput\n\n`go run ./bench -only throughput -runs %d -seconds %d`\n\n", runs, secs)
	fmt.Fprintf(&s, "One iperf3 TCP stream for %d s (first second omitted), MTU 1500 everywhere, paths interleaved; median of %d runs.\n\n", secs, runs)
	fmt.Fprintln(&s, "| path | Gbit/s (median) | runs | ratio to raw veth |")
	fmt.Fprintln(&s, "|---|---|---|---|")
	base := median(got[0])
	for i, p := range paths {
		var each []string
		for _, g := range got[i] {
			each = append(each, fmt.Sprintf("%.1f", g))
		}
		fmt.Fprintf(&s, "| %s | %.2f | %s | %.2f |\n", p.name, median(got[i]), strings.Join(each, ", "), median(got[i])/base)
	}
	fmt.Fprintf(&s, "\nTarget: podnet ≥ 0.95 of the raw veth pair.\n\n")
	return s.String(), nil
}
