package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/netns"
)

type cniPlugin struct {
	name     string
	conflist func(dataDir string) string
}

var podnetPlugin = cniPlugin{"podnet", func(d string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench","plugins":[{"type":"podnet","podCIDRs":["10.244.0.0/22"],"mtu":1500,"dataDir":%q}]}`, d)
}}

var bridgePlugin = cniPlugin{"bridge + host-local", func(d string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bench","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"mtu":1500,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/22"}]],"dataDir":%q}}]}`, d)
}}

// benchNode is a node namespace with a CNI config, and a pool of pods.
type benchNode struct {
	prefix string
	node   string
	pods   []string
	cfg    *libcni.CNIConfig
	list   *libcni.NetworkConfigList
	tmp    string
}

func newBenchNode(bin string, p cniPlugin, pods int) (*benchNode, error) {
	b := &benchNode{prefix: fmt.Sprintf("pnb-%d-", time.Now().UnixNano()%1e9)}
	var err error
	if b.tmp, err = os.MkdirTemp("", "podnet-bench-"); err != nil {
		return nil, err
	}
	if b.node, err = netns.Create(b.prefix + "node"); err != nil {
		b.close()
		return nil, err
	}
	h, err := netns.Handle(b.node)
	if err != nil {
		b.close()
		return nil, err
	}
	lo, _ := h.LinkByName("lo")
	h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.0.2.10"), Mask: net.CIDRMask(32, 32)}})
	h.Close()
	for i := 0; i < pods; i++ {
		p, err := netns.Create(fmt.Sprintf("%sp%d", b.prefix, i))
		if err != nil {
			b.close()
			return nil, err
		}
		b.pods = append(b.pods, p)
	}
	b.cfg = libcni.NewCNIConfigWithCacheDir([]string{bin}, b.tmp+"/cache", nil)
	if b.list, err = libcni.ConfListFromBytes([]byte(p.conflist(b.tmp + "/ipam"))); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *benchNode) rt(i int) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: fmt.Sprintf("bench%04d", i), NetNS: b.pods[i], IfName: "eth0"}
}

func (b *benchNode) add(i int) (time.Duration, error) {
	var d time.Duration
	err := netns.Do(b.node, func() error {
		t0 := time.Now()
		_, err := b.cfg.AddNetworkList(context.Background(), b.list, b.rt(i))
		d = time.Since(t0)
		return err
	})
	return d, err
}

func (b *benchNode) del(i int) (time.Duration, error) {
	var d time.Duration
	err := netns.Do(b.node, func() error {
		t0 := time.Now()
		err := b.cfg.DelNetworkList(context.Background(), b.list, b.rt(i))
		d = time.Since(t0)
		return err
	})
	return d, err
}

func (b *benchNode) close() {
	names, _ := netns.List(b.prefix)
	for _, n := range names {
		netns.Delete(n)
	}
	os.RemoveAll(b.tmp)
}

type latency struct{ addMed, addP99, delMed, delP99 []float64 }

// benchCNI adds and then deletes `pods` pods in sequence with each plugin,
// alternating plugins between runs, timing each libcni call (which execs
// the plugin binary, as a runtime does).
func benchCNI(bin string, pods, runs int) (string, error) {
	plugins := []cniPlugin{podnetPlugin, bridgePlugin}
	res := map[string]*latency{}
	for r := 0; r < runs; r++ {
		for k := range plugins {
			p := plugins[(k+r)%len(plugins)]
			b, err := newBenchNode(bin, p, pods)
			if err != nil {
				return "", err
			}
			var adds, dels []float64
			for i := 0; i < pods && err == nil; i++ {
				var d time.Duration
				d, err = b.add(i)
				adds = append(adds, ms(d))
			}
			for i := 0; i < pods && err == nil; i++ {
				var d time.Duration
				d, err = b.del(i)
				dels = append(dels, ms(d))
			}
			b.close()
			if err != nil {
				return "", fmt.Errorf("%s: %w", p.name, err)
			}
			l := res[p.name]
			if l == nil {
				l = &latency{}
				res[p.name] = l
			}
			l.addMed, l.addP99 = append(l.addMed, median(adds)), append(l.addP99, percentile(adds, 99))
			l.delMed, l.delP99 = append(l.delMed, median(dels)), append(l.delP99, percentile(dels, 99))
			fmt.Fprintf(os.Stderr, "run %d %s: ADD median %.2f ms, DEL median %.2f ms\n", r+1, p.name, median(adds), median(dels))
		}
	}
	var s strings.Builder
	fmt.Fprintf(&s, "## CNI ADD and DEL latency\n\n`go run ./bench -only cni -pods %d -runs %d`\n\n", pods, runs)
	fmt.Fprintf(&s, "%d pods added, then deleted, in sequence, in a fresh node namespace; each call goes through libcni, which execs the plugin as a runtime does. Per run: median and p99; the table shows the median over %d runs, plugins alternating.\n\n", pods, runs)
	fmt.Fprintln(&s, "| plugin | ADD median | ADD p99 | DEL median | DEL p99 |")
	fmt.Fprintln(&s, "|---|---|---|---|---|")
	for _, p := range plugins {
		l := res[p.name]
		fmt.Fprintf(&s, "| %s | %.2f ms | %.2f ms | %.2f ms | %.2f ms |\n", p.name, median(l.addMed), median(l.addP99), median(l.delMed), median(l.delP99))
	}
	pn, br := res[podnetPlugin.name], res[bridgePlugin.name]
	fmt.Fprintf(&s, "\nRatio podnet / reference: ADD median %.2f, ADD p99 %.2f, DEL median %.2f (below 1 means podnet is faster). Target: ADD median ≤ 1.\n\n",
		median(pn.addMed)/median(br.addMed), median(pn.addP99)/median(br.addP99), median(pn.delMed)/median(br.delMed))
	return s.String(), nil
}
