package netpol

import (
	"crypto/sha256"
	"encoding/hex"
	"hash/maphash"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/podnet/podnet/internal/model"
)

// Compilation model. Every local pod that some policy isolates in a
// direction is put in a group: the pods isolated by the same policies (and,
// on ingress, with the same named ports, which resolve against the pod)
// allow exactly the same traffic, so they share one chain and its sets. A
// group is named by a hash of what it allows, so a change that alters what
// a group allows makes a new group, and the dataplane's incremental sync is
// a matter of adding and removing whole groups and repointing pods.

// Group is the allow-list shared by pods isolated by the same policies.
type Group struct {
	// ID is a hash of the contents; equal IDs mean equal rules.
	ID      string
	Ingress bool
	// Policies are the isolating policies, for drop explanations.
	Policies []model.PolicyName
	// Any holds peers allowed on every protocol and port; Ports holds
	// "addr . proto . port" intervals, per family (index 0: IPv4).
	Any   [2][]string
	Ports [2][]string
}

// Dir is "ingress" or "egress".
func (g *Group) Dir() string {
	if g.Ingress {
		return "ingress"
	}
	return "egress"
}

// Desired is the policy state of one node.
type Desired struct {
	Groups map[string]*Group
	// Ingress and Egress map each isolated local pod address to its
	// group's ID.
	Ingress, Egress map[netip.Addr]string
	// Local lists every local pod address, so that a pod reaching itself
	// (through a Service) is never subject to its own policy.
	Local []netip.Addr
	// PodOf names the local pod of each address, for drop explanations.
	PodOf map[netip.Addr]string
}

// Compiler compiles successive worlds, remembering the groups of the last
// compile: a group whose inputs (policies and the grants they produce) did
// not change is reused as it was, so the interval decomposition, the
// costly part, is redone only for groups a change touched. Not safe for
// concurrent use.
type Compiler struct {
	seed maphash.Seed
	last map[uint64]*Group
}

// NewCompiler returns a compiler with an empty cache.
func NewCompiler() *Compiler {
	return &Compiler{seed: maphash.MakeSeed(), last: map[uint64]*Group{}}
}

// Group returns the group with the given ID, or nil (also on a nil
// Desired).
func (d *Desired) Group(id string) *Group {
	if d == nil {
		return nil
	}
	return d.Groups[id]
}

// Compile computes the desired state of node with a fresh compiler.
func Compile(w *World, node string) *Desired { return NewCompiler().Compile(w, node) }

// Compile computes the desired state of node: the pods on it are the ones
// whose ingress and egress this node enforces.
func (cc *Compiler) Compile(w *World, node string) *Desired {
	d := &Desired{Groups: map[string]*Group{}, Ingress: map[netip.Addr]string{}, Egress: map[netip.Addr]string{}, PodOf: map[netip.Addr]string{}}
	c := compiler{w: w, cache: map[string]*Group{}, peers: map[string]*peerSet{}, seed: cc.seed, last: cc.last, next: map[uint64]*Group{}}
	defer func() { cc.last = c.next }()
	for i := range w.Pods {
		pod := &w.Pods[i]
		if pod.Node != node {
			continue
		}
		for _, ip := range pod.IPs {
			d.Local = append(d.Local, ip)
			d.PodOf[ip] = pod.Key()
		}
		for _, ingress := range []bool{true, false} {
			pols := w.isolating(*pod, ingress)
			if len(pols) == 0 {
				continue
			}
			g := c.group(pols, pod, ingress)
			d.Groups[g.ID] = g
			m := d.Egress
			if ingress {
				m = d.Ingress
			}
			for _, ip := range pod.IPs {
				m[ip] = g.ID
			}
		}
	}
	slices.SortFunc(d.Local, func(a, b netip.Addr) int { return a.Compare(b) })
	return d
}

type compiler struct {
	w     *World
	cache map[string]*Group
	seed  maphash.Seed
	peers map[string]*peerSet
	// last holds the previous compile's groups by input fingerprint;
	// next collects this one's.
	last, next map[uint64]*Group
}

// fingerprint hashes what a group is computed from.
func (c *compiler) fingerprint(ingress bool, pols []*model.Policy, grants [2][]grant) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(strconv.FormatBool(ingress))
	for _, p := range pols {
		h.WriteString("|" + p.PolicyName.String())
	}
	var b [2]byte
	for fam := range grants {
		h.WriteString("#")
		for _, g := range grants[fam] {
			h.WriteString(";" + g.port.proto)
			b[0], b[1] = byte(g.port.lo>>8), byte(g.port.lo)
			h.Write(b[:])
			b[0], b[1] = byte(g.port.hi>>8), byte(g.port.hi)
			h.Write(b[:])
			for _, r := range g.addrs {
				h.Write(r.lo.AsSlice())
				h.Write(r.hi.AsSlice())
			}
		}
	}
	return h.Sum64()
}

func (c *compiler) group(pols []*model.Policy, pod *model.PolicyPod, ingress bool) *Group {
	var key strings.Builder
	key.WriteString(strconv.FormatBool(ingress))
	named := false
	for _, p := range pols {
		key.WriteString("|" + p.PolicyName.String())
		rules := p.EgressRules
		if ingress {
			rules = p.IngressRules
		}
		for _, r := range rules {
			for _, pp := range r.Ports {
				named = named || pp.Named != ""
			}
		}
	}
	// Ingress named ports resolve against the selected pod itself.
	if ingress && named {
		for _, np := range pod.Ports {
			key.WriteString("|" + np.Name + "/" + string(np.Protocol) + "/" + strconv.Itoa(int(np.Port)))
		}
	}
	if g, ok := c.cache[key.String()]; ok {
		return g
	}
	var grants [2][]grant
	for _, p := range pols {
		rules := p.EgressRules
		if ingress {
			rules = p.IngressRules
		}
		for _, r := range rules {
			for fam, gs := range c.ruleGrants(p, r, pod, ingress) {
				grants[fam] = append(grants[fam], gs...)
			}
		}
	}
	fp := c.fingerprint(ingress, pols, grants)
	if g, ok := c.last[fp]; ok {
		c.next[fp] = g
		c.cache[key.String()] = g
		return g
	}
	g := &Group{Ingress: ingress}
	for _, p := range pols {
		g.Policies = append(g.Policies, p.PolicyName)
	}
	h := sha256.New()
	h.Write([]byte(g.Dir()))
	for fam := range grants {
		g.Any[fam], g.Ports[fam] = decompose(grants[fam])
		h.Write([]byte("|any" + strconv.Itoa(fam) + ":" + joinElems(g.Any[fam]) + "|ports:" + joinElems(g.Ports[fam])))
	}
	for _, p := range g.Policies {
		h.Write([]byte("|" + p.String()))
	}
	g.ID = hex.EncodeToString(h.Sum(nil))[:12]
	c.cache[key.String()] = g
	c.next[fp] = g
	return g
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// ruleGrants turns one rule into grants per family.
func (c *compiler) ruleGrants(p *model.Policy, r model.PolicyRule, pod *model.PolicyPod, ingress bool) [2][]grant {
	var out [2][]grant
	// Peer addresses per family, and the pods among them (for egress
	// named ports).
	var addrs [2][]addrRange
	var peerPods []int
	if r.Peers == nil {
		addrs[0] = []addrRange{allRange(true)}
		addrs[1] = []addrRange{allRange(false)}
		if !ingress && namedPorts(r.Ports) {
			for i := range c.w.Pods {
				peerPods = append(peerPods, i)
			}
		}
	}
	needPods := !ingress && namedPorts(r.Ports)
	for _, pe := range r.Peers {
		ps := c.peer(p, pe)
		for fam := range addrs {
			addrs[fam] = appendShared(addrs[fam], ps.addrs[fam])
		}
		if !needPods {
			continue
		}
		if pe.Block == nil {
			peerPods = append(peerPods, ps.pods...)
			continue
		}
		for i := range c.w.Pods {
			if inBlock(pe, c.w.Pods[i].IPs) {
				peerPods = append(peerPods, i)
			}
		}
	}
	if r.Ports == nil {
		for fam := range addrs {
			if len(addrs[fam]) > 0 {
				out[fam] = append(out[fam], grant{addrs: addrs[fam]})
			}
		}
		return out
	}
	for _, pp := range r.Ports {
		proto := string(pp.Protocol)
		switch {
		case pp.Named != "" && ingress:
			if n, ok := pod.Resolve(pp.Named, pp.Protocol); ok {
				for fam := range addrs {
					if len(addrs[fam]) > 0 {
						out[fam] = append(out[fam], grant{addrs: addrs[fam], port: portRange{proto, n, n}})
					}
				}
			}
		case pp.Named != "":
			// Egress: the name resolves against each destination pod.
			seen := map[int]bool{}
			for _, i := range peerPods {
				if seen[i] {
					continue
				}
				seen[i] = true
				peer := &c.w.Pods[i]
				n, ok := peer.Resolve(pp.Named, pp.Protocol)
				if !ok {
					continue
				}
				for _, ip := range peer.IPs {
					if !c.peerAdmitsAddr(p, r, ip, peer) {
						continue
					}
					out[family(ip)] = append(out[family(ip)], grant{addrs: []addrRange{{ip, ip}}, port: portRange{proto, n, n}})
				}
			}
		default:
			lo, hi := pp.Port, pp.Port
			if pp.Port == 0 {
				lo, hi = 0, 65535
			} else if pp.EndPort != 0 {
				hi = pp.EndPort
			}
			for fam := range addrs {
				if len(addrs[fam]) > 0 {
					out[fam] = append(out[fam], grant{addrs: addrs[fam], port: portRange{proto, lo, hi}})
				}
			}
		}
	}
	return out
}

// peerAdmitsAddr checks one address of a peer pod against a rule's peers:
// a dual-stack pod may be inside an ipBlock by one address only.
func (c *compiler) peerAdmitsAddr(p *model.Policy, r model.PolicyRule, ip netip.Addr, pod *model.PolicyPod) bool {
	if r.Peers == nil {
		return true
	}
	for _, pe := range r.Peers {
		if c.w.peerMatches(p, pe, ip, pod) {
			return true
		}
	}
	return false
}

// peerSet is what one peer of a rule selects.
type peerSet struct {
	addrs [2][]addrRange
	pods  []int
}

// peer evaluates a peer once per compile: many policies use the same
// selectors (every "namespaces labelled env=prod"), and a selector over
// thousands of pods is the compiler's main cost.
func (c *compiler) peer(p *model.Policy, pe model.PolicyPeer) *peerSet {
	key := peerKey(p, pe)
	if ps, ok := c.peers[key]; ok {
		return ps
	}
	ps := &peerSet{}
	if pe.Block != nil {
		fam := family(pe.Block.CIDR.Addr())
		rs := []addrRange{prefixRange(pe.Block.CIDR)}
		for _, e := range pe.Block.Except {
			rs = subtract(rs, prefixRange(e))
		}
		ps.addrs[fam] = rs
	} else {
		ps.pods = c.w.peerPods(p, pe)
		for _, i := range ps.pods {
			for _, ip := range c.w.Pods[i].IPs {
				ps.addrs[family(ip)] = append(ps.addrs[family(ip)], addrRange{ip, ip})
			}
		}
	}
	c.peers[key] = ps
	return ps
}

func peerKey(p *model.Policy, pe model.PolicyPeer) string {
	var b strings.Builder
	if pe.Block != nil {
		b.WriteString("block " + pe.Block.CIDR.String())
		for _, e := range pe.Block.Except {
			b.WriteString(" -" + e.String())
		}
		return b.String()
	}
	if pe.Namespaces == nil {
		b.WriteString("ns=" + p.Namespace)
	} else {
		b.WriteString("nssel " + selectorKey(*pe.Namespaces))
	}
	if pe.Pods != nil {
		b.WriteString(" pods " + selectorKey(*pe.Pods))
	}
	return b.String()
}

func selectorKey(s model.Selector) string {
	var parts []string
	for k, v := range s.Labels {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	for _, e := range s.Exprs {
		parts = append(parts, e.Key+" "+string(e.Op)+" "+strings.Join(e.Values, ","))
	}
	return strings.Join(parts, ";")
}

func namedPorts(ports []model.PolicyPort) bool {
	for _, p := range ports {
		if p.Named != "" {
			return true
		}
	}
	return false
}

// appendShared appends src to dst, sharing src when dst is empty; the
// capacity limit makes a later append copy instead of writing into src.
func appendShared(dst, src []addrRange) []addrRange {
	if len(dst) == 0 {
		return src[:len(src):len(src)]
	}
	return append(dst, src...)
}

func inBlock(pe model.PolicyPeer, ips []netip.Addr) bool {
	for _, ip := range ips {
		if pe.Block.CIDR.Contains(ip) {
			return true
		}
	}
	return false
}
