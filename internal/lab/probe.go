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
	// ToServices targets every Service's ClusterIPs and ports instead of
	// the pods; results name the Service as "svc/NAMESPACE/NAME".
	ToServices bool `json:"toServices,omitempty"`
	// FromNodes adds the node namespaces as sources, named "node/NAME".
	FromNodes bool `json:"fromNodes,omitempty"`
	// From and To, when set, keep only that source and that target
	// ("NAMESPACE/NAME", "node/NAME" or "svc/NAMESPACE/NAME").
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
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
	sources := pods
	if req.FromNodes {
		for _, n := range l.nodes {
			sources = append(sources, probeTarget{key: "node/" + n.name, from: &sandbox{nsPath: n.nsPath}})
		}
	}
	if req.From != "" {
		var keep []probeTarget
		for _, s := range sources {
			if s.key == req.From {
				keep = append(keep, s)
			}
		}
		sources = keep
	}
	if req.ToServices {
		for _, t := range l.serviceTargets(req) {
			if req.To != "" && t.name != req.To {
				continue
			}
			for _, from := range sources {
				jobs = append(jobs, &ProbeResult{From: from.key, To: t.name, Port: int(t.dst.Port()), Protocol: t.proto, Target: t.dst.String()})
				dsts = append(dsts, t.dst)
				srcs = append(srcs, from.from.nsPath)
			}
		}
	}
	for _, from := range sources {
		if req.ToServices {
			break
		}
		for _, to := range pods {
			if req.To != "" && to.key != req.To {
				continue
			}
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
	// Refused and answered probes take microseconds; the cap bounds the
	// goroutines waiting out timeouts on dropped ones.
	sem := make(chan struct{}, 128)
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

type serviceTarget struct {
	name  string
	proto string
	dst   netip.AddrPort
}

// serviceTargets lists every ClusterIP and port of the lab's Services, in
// the requested family (all families when none is given).
func (l *Lab) serviceTargets(req ProbeRequest) []serviceTarget {
	objs := l.factory.Core().V1().Services().Informer().GetIndexer().List()
	var out []serviceTarget
	for _, o := range objs {
		s := o.(*corev1.Service)
		for _, ipStr := range s.Spec.ClusterIPs {
			ip, err := netip.ParseAddr(ipStr)
			if err != nil || (req.Family == "ipv4" && !ip.Is4()) || (req.Family == "ipv6" && !ip.Is6()) {
				continue
			}
			for _, p := range s.Spec.Ports {
				proto := string(p.Protocol)
				if proto == "" {
					proto = "TCP"
				}
				if req.Protocol != "" && req.Protocol != proto || req.Port > 0 && int(p.Port) != req.Port {
					continue
				}
				out = append(out, serviceTarget{name: "svc/" + s.Namespace + "/" + s.Name, proto: proto, dst: netip.AddrPortFrom(ip, uint16(p.Port))})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].name != out[j].name {
			return out[i].name < out[j].name
		}
		return out[i].dst.String() < out[j].dst.String()
	})
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
