package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/podnet/podnet/internal/model"
)

// Info is what a Service's rendering tells the agent besides rules.
type Info struct {
	// LocalEndpoints counts the distinct ready endpoints on this node:
	// the figure a health check node port reports to load balancers.
	// Terminating endpoints still serve traffic that reaches the node,
	// but they do not count, so load balancers drain the node.
	LocalEndpoints int
	// Endpoints counts the endpoints in use, over all ports and families.
	Endpoints int
}

// Render computes the fragment of one Service on the node self. eps holds
// the endpoints of every Service port (both families mixed, as the
// EndpointSlices of a dual-stack Service give them). slots gives the
// Service's ports their blocks in the shared endpoints maps; the fragment
// lists the slot ids it uses, for the caller to release when they go.
func Render(self Self, s model.Service, eps map[model.PortKey][]model.Endpoint, slots *Slots) (Fragment, Info) {
	r := renderer{self: self, svc: s, chains: map[string]bool{}, sets: map[string]bool{}, elems: map[elemID]bool{}, slots: slots}
	localSeen := map[netip.Addr]bool{}
	for _, cip := range s.ClusterIPs {
		f := familyOf(cip)
		r.elem("cluster-ips"+f.v, cip.String(), "")
		var ext []netip.Addr
		for _, a := range append(append([]netip.Addr{}, s.ExternalIPs...), s.LoadBalancerIPs...) {
			if a.Is4() == cip.Is4() && !slices.Contains(ext, a) {
				ext = append(ext, a)
			}
		}
		for _, p := range s.Ports {
			all := eps[model.PortKey{ServiceName: s.ServiceName, Port: p.Name, Protocol: p.Protocol}]
			all = filter(all, func(e model.Endpoint) bool { return e.Addr.Is4() == cip.Is4() })
			cluster, local := Categorize(all, self)
			r.port(f, cip, ext, p, cluster, local, len(all) > 0 && hasUsable(all))
			for _, e := range local {
				if e.Ready {
					localSeen[e.Addr] = true
				}
			}
			r.info.Endpoints += len(cluster)
		}
	}
	r.info.LocalEndpoints = len(localSeen)
	return r.frag, r.info
}

// hasUsable reports whether any endpoint could ever be chosen (ready, or
// serving while terminating): with none, traffic is rejected rather than
// dropped.
func hasUsable(eps []model.Endpoint) bool {
	for _, e := range eps {
		if e.Ready || (e.Serving && e.Terminating) {
			return true
		}
	}
	return false
}

type renderer struct {
	self   Self
	svc    model.Service
	frag   Fragment
	info   Info
	chains map[string]bool
	sets   map[string]bool
	elems  map[elemID]bool
	slots  *Slots
}

func (r *renderer) elem(set, key, value string) { r.named(set, key, value, "") }

// named adds an element with a comment.
func (r *renderer) named(set, key, value, comment string) {
	k := elemID{set, key}
	if r.elems[k] {
		return
	}
	r.elems[k] = true
	r.frag.Elements = append(r.frag.Elements, Element{Set: set, Key: key, Value: value, Comment: comment})
}

type elemID struct{ set, key string }

// join writes parts as one nft concatenation.
func join(parts ...string) string { return strings.Join(parts, " . ") }

func (r *renderer) chain(name string, rules []string) {
	if r.chains[name] {
		return
	}
	r.chains[name] = true
	r.frag.Chains = append(r.frag.Chains, Chain{Name: name, Rules: rules})
}

func (r *renderer) hasRanges(f family) bool {
	for _, p := range r.self.ClusterCIDRs {
		if p.Addr().Is4() == (f.v == "4") {
			return true
		}
	}
	return false
}

// port renders one Service port in one family.
func (r *renderer) port(f family, cip netip.Addr, ext []netip.Addr, p model.ServicePort, cluster, local []model.Endpoint, usable bool) {
	s := r.svc
	human := s.Namespace + "/" + s.Name + "/" + p.Name
	proto, port := string(p.Protocol), strconv.Itoa(int(p.Port))
	// Reached only by the ClusterIP, with no affinity to remember: the
	// shared balancer chains serve the port. Only other ports need chain
	// names (a hash each), so they are made only for those.
	shared := s.Affinity == 0 && len(ext) == 0 && p.NodePort == 0
	var id, svcChain, locChain, extChain string
	if !shared {
		id = chainID(s.Namespace, s.Name, p.Name, string(p.Protocol), f.v)
		svcChain = chainName("svc", f, id, human)
		locChain = chainName("loc", f, id, human)
		extChain = chainName("ext", f, id, human)
	}
	useSvc := func() string {
		if shared {
			return r.sharedBalance(f, cip, p, cluster)
		}
		if !r.chains[svcChain] {
			r.chain(svcChain, r.balance(f, svcChain, id, p.Protocol, cluster))
		}
		return "goto " + svcChain
	}
	useLoc := func() string {
		if shared {
			return r.sharedBalance(f, cip, p, local)
		}
		if !r.chains[locChain] {
			r.chain(locChain, r.balance(f, locChain, id, p.Protocol, local))
		}
		return "goto " + locChain
	}
	const reject = "goto reject-chain"

	// The ClusterIP.
	cipKey := join(cip.String(), proto, port)
	switch {
	case !usable:
		r.named("no-endpoints"+f.v, cipKey, reject, human)
	case s.InternalLocal && len(local) > 0:
		r.named("services"+f.v, cipKey, useLoc(), human)
	case s.InternalLocal:
		// Endpoints exist, but none here: kube-proxy drops, so the client
		// sees a timeout, not a refusal it might take for a closed port.
		r.named("no-endpoints"+f.v, cipKey, dropNoLocal, human)
	case len(cluster) > 0:
		r.named("services"+f.v, cipKey, useSvc(), human)
	default:
		r.named("no-endpoints"+f.v, cipKey, reject, human)
	}
	for _, e := range append(append([]model.Endpoint{}, cluster...), local...) {
		r.elem("hairpin"+f.v, join(e.Addr.String(), e.Addr.String()), "")
	}
	if len(ext) == 0 && p.NodePort == 0 {
		return
	}

	// External entry points: node ports, external and load-balancer IPs.
	var extVerdict string
	if !usable || (!s.ExternalLocal && len(cluster) == 0) {
		for _, a := range ext {
			r.named("no-endpoints"+f.v, join(a.String(), proto, port), reject, human)
		}
		if p.NodePort != 0 {
			r.named("no-endpoint-nodeports"+f.v, join(proto, strconv.Itoa(int(p.NodePort))), reject, human)
		}
		return
	}
	var rules []string
	if !s.ExternalLocal {
		rules = []string{"jump mark-for-masquerade", useSvc()}
	} else {
		// Policy Local keeps the client's address, so only this node's
		// endpoints may answer. Traffic that starts inside the cluster
		// (pods, and the node itself) does not need that and may use any
		// endpoint, as with kube-proxy.
		if len(cluster) > 0 {
			if r.hasRanges(f) {
				rules = append(rules, fmt.Sprintf("%s saddr @cluster-ranges%s %s", f.ip, f.v, useSvc()))
			}
			rules = append(rules, "fib saddr type local jump mark-for-masquerade", "fib saddr type local "+useSvc())
		}
		if len(local) > 0 {
			rules = append(rules, useLoc())
		} else {
			rules = append(rules, dropNoLocal)
		}
	}
	r.chain(extChain, rules)
	extVerdict = "goto " + extChain
	for _, a := range ext {
		r.named("services"+f.v, join(a.String(), proto, port), extVerdict, human)
	}
	if p.NodePort != 0 {
		r.named("nodeports"+f.v, join(proto, strconv.Itoa(int(p.NodePort))), extVerdict, human)
	}
}

// sharedBalance puts eps (at least one) in the cluster endpoints map under
// the ClusterIP and port, and returns the verdict that balances over them:
// the shared chain for their number.
func (r *renderer) sharedBalance(f family, cip netip.Addr, p model.ServicePort, eps []model.Endpoint) string {
	proto := string(p.Protocol)
	m := clusterEndpointsMap(f, proto)
	name := fmt.Sprintf("lb%s-%s-%d", f.v, proto, len(eps))
	if !r.chains[name] {
		r.chains[name] = true
		r.frag.Chains = append(r.frag.Chains, Chain{Name: name, Shared: true, Rules: []string{
			fmt.Sprintf("meta l4proto %s dnat %s to %s daddr . %s dport . numgen random mod %d map @%s", proto, f.ip, f.ip, proto, len(eps), m),
		}})
	}
	c, port := cip.String(), strconv.Itoa(int(p.Port))
	for i, e := range eps {
		r.elem(m, c+" . "+port+" . "+strconv.Itoa(i), e.Addr.String()+" . "+strconv.Itoa(int(e.Port)))
	}
	return "goto " + name
}

// balance renders the rules that pick one of eps and DNAT to it. Without
// session affinity it is one rule: a numgen lookup in an anonymous map.
// With affinity each endpoint gets a chain that records the client in a
// dynamic set with the affinity timeout, and the balancer first sends
// clients found in one of those sets back to the same endpoint.
func (r *renderer) balance(f family, chain, id string, proto model.Protocol, eps []model.Endpoint) []string {
	if len(eps) == 0 {
		return []string{"drop"}
	}
	if r.svc.Affinity == 0 {
		if len(eps) == 1 {
			return []string{dnat(f, proto, eps)}
		}
		if len(eps) > SlotSize {
			// Too many for a slot of the shared maps: this port gets a
			// map of its own (rare, so the extra set per Service does
			// not add up).
			m := "endpoints-" + chain
			if !r.sets[m] {
				r.sets[m] = true
				r.frag.Sets = append(r.frag.Sets, Set{Name: m, TypeOf: "numgen random mod 1 : " + f.ip + " daddr . " + string(proto) + " dport"})
			}
			for i, e := range eps {
				r.elem(m, strconv.Itoa(i), join(e.Addr.String(), strconv.Itoa(int(e.Port))))
			}
			return []string{fmt.Sprintf("meta l4proto %s dnat %s to numgen random mod %d map @%s", proto, f.ip, len(eps), m)}
		}
		// One numgen draw, offset into this chain's slot of the shared
		// endpoints map.
		base := r.slots.Get(chain)
		r.frag.Slots = append(r.frag.Slots, chain)
		m := endpointsMap(f, string(proto), int(base/SlotSize)%EndpointShards)
		for i, e := range eps {
			r.elem(m, strconv.Itoa(int(base)+i), join(e.Addr.String(), strconv.Itoa(int(e.Port))))
		}
		return []string{fmt.Sprintf("meta l4proto %s dnat %s to numgen random mod %d offset %d map @%s", proto, f.ip, len(eps), base, m)}
	}
	var rules, targets []string
	for _, e := range eps {
		ap := netip.AddrPortFrom(e.Addr, e.Port).String()
		eid := chainID(ap)[:6]
		// The timeout is part of the name: a set's timeout cannot be
		// changed in place, so a new timeout makes a new set.
		set := fmt.Sprintf("aff%s-%s-%s-%d", f.v, id, eid, int(r.svc.Affinity.Seconds()))
		ch := chainName("aep", f, id+"-"+eid, ap)
		if !r.sets[set] {
			r.sets[set] = true
			r.frag.Sets = append(r.frag.Sets, Set{Name: set, Type: f.addr, Flags: []string{"dynamic", "timeout"}, Timeout: r.svc.Affinity})
		}
		r.chain(ch, []string{
			fmt.Sprintf("update @%s { %s saddr }", set, f.ip),
			dnat(f, proto, []model.Endpoint{e}),
		})
		rules = append(rules, fmt.Sprintf("%s saddr @%s goto %s", f.ip, set, ch))
		targets = append(targets, ch)
	}
	if len(targets) == 1 {
		return append(rules, "goto "+targets[0])
	}
	var m []string
	for i, t := range targets {
		m = append(m, fmt.Sprintf("%d : goto %s", i, t))
	}
	// " , " rather than ", ": knftables' fake reads a chain name up to the
	// next space.
	return append(rules, fmt.Sprintf("numgen random mod %d vmap { %s }", len(targets), strings.Join(m, " , ")))
}

// dnat sends to the one endpoint of eps.
func dnat(f family, proto model.Protocol, eps []model.Endpoint) string {
	return fmt.Sprintf("meta l4proto %s dnat %s to %s", proto, f.ip, netip.AddrPortFrom(eps[0].Addr, eps[0].Port))
}
