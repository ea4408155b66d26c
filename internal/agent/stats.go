package agent

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/cni"
	"github.com/podnet/podnet/internal/dataplane/nft"
	"github.com/podnet/podnet/internal/ipam"
	"github.com/podnet/podnet/internal/k8s"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/proxy"
)

// The kernel keeps podnet's traffic counts: named nftables counters (the
// routing table counts forwarded packets; the proxy counts rejects for
// want of an endpoint and conntrack-invalid drops; the policy table counts
// its drops) and the IP MIB's no-route counters. They are read when
// Prometheus scrapes, so counting costs nothing in between. The CNI
// plugin's operations and the IPAM store are read from files on the same
// occasion.

// networkName is the CNI network the agent writes (see conflist.go).
const networkName = "podnet"

// monotonic turns a counter that may restart from zero (the policy table is
// re-created on a full sync) into a Prometheus counter that never goes
// back.
type monotonic struct{ last, total uint64 }

func (m *monotonic) observe(v uint64) uint64 {
	if v >= m.last {
		m.total += v - m.last
	} else {
		m.total += v
	}
	m.last = v
	return m.total
}

type statsCollector struct {
	a *Agent

	mu   sync.Mutex
	mono map[string]*monotonic

	fwdPackets, fwdBytes     *prometheus.Desc
	dropPackets, dropBytes   *prometheus.Desc
	cniOps, cniDuration      *prometheus.Desc
	ipamAllocated, ipamTotal *prometheus.Desc
}

func newStatsCollector(a *Agent) *statsCollector {
	return &statsCollector{a: a, mono: map[string]*monotonic{},
		fwdPackets:    prometheus.NewDesc("podnet_forwarded_packets_total", "Packets the node forwarded (after podnet's service and policy filters).", nil, nil),
		fwdBytes:      prometheus.NewDesc("podnet_forwarded_bytes_total", "Bytes the node forwarded (after podnet's service and policy filters).", nil, nil),
		dropPackets:   prometheus.NewDesc("podnet_dropped_packets_total", "Packets dropped or rejected, by reason: policy, no_endpoints (a Service without endpoints, rejected with ICMP), no_local_endpoints (a traffic policy Local entry point on a node without an endpoint), conntrack_invalid, no_route (the IP MIB's InNoRoutes and OutNoRoutes).", []string{"reason"}, nil),
		dropBytes:     prometheus.NewDesc("podnet_dropped_bytes_total", "Bytes dropped or rejected, by reason (no_route has no byte count).", []string{"reason"}, nil),
		cniOps:        prometheus.NewDesc("podnet_cni_operations_total", "CNI plugin calls on this node, by verb (ADD, DEL) and result.", []string{"op", "result"}, nil),
		cniDuration:   prometheus.NewDesc("podnet_cni_operation_duration_seconds", "Duration of CNI plugin calls on this node, by verb.", []string{"op"}, nil),
		ipamAllocated: prometheus.NewDesc("podnet_ipam_allocated_addresses", "Pod addresses allocated, by pod range.", []string{"range"}, nil),
		ipamTotal:     prometheus.NewDesc("podnet_ipam_capacity_addresses", "Pod addresses the range can hand out.", []string{"range"}, nil),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.fwdPackets, c.fwdBytes, c.dropPackets, c.dropBytes, c.cniOps, c.cniDuration, c.ipamAllocated, c.ipamTotal} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	counter := func(d *prometheus.Desc, key string, v uint64, labels ...string) {
		m := c.mono[key]
		if m == nil {
			m = &monotonic{}
			c.mono[key] = m
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(m.observe(v)), labels...)
	}
	a := c.a
	if a.masq != nil {
		if cs, err := a.masq.Counters(ctx); err == nil {
			v := cs[nft.CounterForwarded]
			counter(c.fwdPackets, "fwd/p", v.Packets)
			counter(c.fwdBytes, "fwd/b", v.Bytes)
		}
	}
	drop := func(reason string, v nft.Count) {
		counter(c.dropPackets, reason+"/p", v.Packets, reason)
		counter(c.dropBytes, reason+"/b", v.Bytes, reason)
	}
	if a.proxy != nil {
		if cs, err := a.proxy.backend.Counters(ctx); err == nil {
			drop("no_endpoints", cs[proxy.CounterNoEndpoints])
			noLocal := cs[proxy.CounterNoLocal]
			if a.sock != nil {
				// The eBPF balancer drops these before the rules see
				// them; it counts packets, not bytes.
				if bc, err := a.sock.np.Counters(); err == nil {
					noLocal.Packets += bc.DroppedLocal
				}
			}
			drop("no_local_endpoints", noLocal)
			drop("conntrack_invalid", cs[proxy.CounterInvalid])
		}
	}
	if a.policy != nil {
		if cs, err := a.policy.backend.Counters(ctx); err == nil {
			drop("policy", cs[nft.CounterPolicyDropped])
		}
	}
	if n, err := noRoutes(a.cfg.NetNS); err == nil {
		counter(c.dropPackets, "no_route/p", n, "no_route")
	}
	c.collectCNI(ch)
}

// collectCNI exports the plugin's statistics and the IPAM store's use.
func (c *statsCollector) collectCNI(ch chan<- prometheus.Metric) {
	dir := filepath.Join(c.a.cfg.CNIDataDir, networkName)
	if st, err := cni.ReadStats(dir); err == nil {
		for op, o := range st {
			for result, n := range o.Results {
				ch <- prometheus.MustNewConstMetric(c.cniOps, prometheus.CounterValue, float64(n), op, result)
			}
			buckets := map[float64]uint64{}
			var cum, count uint64
			for i, ub := range cni.StatBuckets {
				if i < len(o.Buckets) {
					cum += o.Buckets[i]
				}
				buckets[ub] = cum
			}
			for _, n := range o.Buckets {
				count += n
			}
			ch <- prometheus.MustNewConstHistogram(c.cniDuration, count, o.Sum, buckets, op)
		}
	}
	if c.a.nodes == nil {
		return
	}
	objs, err := c.a.nodes()
	if err != nil {
		return
	}
	for _, o := range objs {
		if o.Name != c.a.cfg.NodeName {
			continue
		}
		n, err := k8s.Node(o)
		if err != nil {
			return
		}
		var held map[string]int
		if _, err := os.Stat(dir); err == nil {
			if s, err := ipam.Open(dir); err == nil {
				if all, err := s.List(); err == nil {
					held = map[string]int{}
					for addr := range all {
						for _, r := range n.PodCIDRs {
							if r.Contains(addr) {
								held[r.String()]++
							}
						}
					}
				}
			}
		}
		for _, r := range n.PodCIDRs {
			ch <- prometheus.MustNewConstMetric(c.ipamAllocated, prometheus.GaugeValue, float64(held[r.String()]), r.String())
			ch <- prometheus.MustNewConstMetric(c.ipamTotal, prometheus.GaugeValue, float64(ipam.Size(r)), r.String())
		}
	}
}

// noRoutes sums the IPv4 and IPv6 MIBs' no-route counters of the node's
// namespace (packets the node could not route, arriving or sent).
func noRoutes(nsPath string) (uint64, error) {
	var total uint64
	read := func() error {
		for _, f := range []struct{ file, prefix string }{{"snmp", "Ip:"}, {"snmp6", ""}} {
			v, err := mibFields("/proc/thread-self/net/"+f.file, f.prefix)
			if err != nil {
				return err
			}
			for _, k := range []string{"InNoRoutes", "OutNoRoutes", "Ip6InNoRoutes", "Ip6OutNoRoutes"} {
				total += v[k]
			}
		}
		return nil
	}
	if nsPath == "" {
		return total, read()
	}
	return total, netns.Do(nsPath, read)
}

// mibFields parses /proc/net/snmp (a header line and a value line per
// protocol, prefix picks one) or /proc/net/snmp6 (name value per line).
func mibFields(path, prefix string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	var header []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if prefix == "" {
			if len(fields) == 2 {
				n, _ := strconv.ParseUint(fields[1], 10, 64)
				out[fields[0]] = n
			}
			continue
		}
		if len(fields) == 0 || fields[0] != prefix {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i := 1; i < len(fields) && i < len(header); i++ {
			n, _ := strconv.ParseUint(fields[i], 10, 64)
			out[header[i]] = n
		}
		header = nil
	}
	return out, sc.Err()
}
