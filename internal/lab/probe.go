package lab

import (
	"context"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ProbeRequest selects what a probe tries.
type ProbeRequest struct {
	// Port and Protocol pick one port on every target; zero means each
	// target's declared containerPorts.
	Port     int    `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	// Family picks the target address family: "ipv4", "ipv6", or empty
	// for each pod's primary address.
	Family  string        `json:"family,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

type probeTarget struct {
	key  string
	ns   string
	ips  []netip.Addr
	pod  *corev1.Pod
	from *sandbox
}

// Probe tries every pod → pod connection with real packets, in parallel,
// and returns the results sorted by from, to, port.
func (l *Lab) Probe(ctx context.Context, req ProbeRequest) []ProbeResult {
	if req.Timeout == 0 {
		req.Timeout = time.Second
	}
	req.Protocol = strings.ToUpper(req.Protocol)
	l.mu.Lock()
	var pods []probeTarget
	for k, sb := range l.sandboxes {
		obj, ok, _ := l.factory.Core().V1().Pods().Informer().GetIndexer().GetByKey(k)
		if !ok {
			continue
		}
		pods = append(pods, probeTarget{key: k, ips: sb.ips, pod: obj.(*corev1.Pod), from: sb})
	}
	l.mu.Unlock()
	sort.Slice(pods, func(i, j int) bool { return pods[i].key < pods[j].key })

	var jobs []*ProbeResult
	var dsts []netip.AddrPort
	var srcs []string
	for _, from := range pods {
		for _, to := range pods {
			ip, ok := pickIP(to.ips, req.Family)
			if !ok {
				continue
			}
			for _, pp := range targetPorts(to.pod, req) {
				jobs = append(jobs, &ProbeResult{From: from.key, To: to.key, Port: pp.port, Protocol: pp.proto, Target: netip.AddrPortFrom(ip, uint16(pp.port)).String()})
				dsts = append(dsts, netip.AddrPortFrom(ip, uint16(pp.port)))
				srcs = append(srcs, from.from.nsPath)
			}
		}
	}
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			ans, err := dial(ctx, srcs[i], jobs[i].Protocol, dsts[i], req.Timeout)
			if err != nil {
				jobs[i].Error = err.Error()
				return
			}
			jobs[i].Connected = true
			jobs[i].AnsweredBy, jobs[i].Source = parseAnswer(ans)
		}(i)
	}
	wg.Wait()
	out := make([]ProbeResult, len(jobs))
	for i, j := range jobs {
		out[i] = *j
	}
	return out
}

func pickIP(ips []netip.Addr, family string) (netip.Addr, bool) {
	for _, a := range ips {
		switch family {
		case "":
			return a, true
		case "ipv4":
			if a.Is4() {
				return a, true
			}
		case "ipv6":
			if a.Is6() {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

type portProto struct {
	port  int
	proto string
}

func targetPorts(p *corev1.Pod, req ProbeRequest) []portProto {
	if req.Port > 0 {
		proto := req.Protocol
		if proto == "" {
			proto = "TCP"
		}
		return []portProto{{req.Port, proto}}
	}
	var out []portProto
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			proto := string(cp.Protocol)
			if proto == "" {
				proto = "TCP"
			}
			if req.Protocol != "" && req.Protocol != proto {
				continue
			}
			out = append(out, portProto{int(cp.ContainerPort), proto})
		}
	}
	return out
}

// PodNetNS returns the namespace path of a running pod.
func (l *Lab) PodNetNS(ns, name string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sb, ok := l.sandboxes[ns+"/"+name]
	if !ok {
		return "", false
	}
	return sb.nsPath, true
}

// NodeNetNS returns the namespace path of a node.
func (l *Lab) NodeNetNS(name string) (string, bool) {
	if n := l.node(name); n != nil {
		return n.nsPath, true
	}
	return "", false
}
