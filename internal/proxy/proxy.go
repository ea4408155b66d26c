// Package proxy computes the nftables state that implements Services on
// one node: it turns Services and their endpoints into chains, sets and
// map elements, as plain data. It does no I/O; the nft backend applies
// what it returns.
//
// The table (inet podnet-proxy) has a fixed skeleton of base chains that
// classify a packet with one lookup in a verdict map keyed by
// address . protocol . port (services4/6) or protocol . port for node
// ports (nodeports4/6). The map sends the packet to the Service port's own
// chain, which picks an endpoint with one numgen lookup in an anonymous
// map and DNATs to it. So the cost per packet is a fixed number of hash
// lookups however many Services exist, and a Service's change touches
// only its own chains and map elements.
//
// A Service port reached only by its ClusterIP (no node port, external or
// load-balancer IP, no session affinity: most of them in a big cluster)
// has no chain of its own. Its map entry sends packets to a chain shared
// by every such port with the same number of endpoints,
//
//	lb4-tcp-<N>  dnat to ip daddr . tcp dport . numgen random mod N map @cluster-endpoints4-tcp
//
// which finds the endpoint by ClusterIP, port and a random index. Adding
// such a Service adds only map elements: no chain, no rule.
//
// Other Service ports have up to three chains per family:
//
//	svc4-<id>-<ns>/<name>/<port>  all cluster endpoints (ClusterIP, and external traffic under policy Cluster)
//	loc4-<id>-<ns>/<name>/<port>  this node's endpoints (internalTrafficPolicy or externalTrafficPolicy Local)
//	ext4-<id>-<ns>/<name>/<port>  the entry for NodePort, external and load-balancer IPs
//
// plus, with ClientIP session affinity, one chain and one dynamic set per
// endpoint (aep4-<id>-<endpoint>) that remember which client went where.
//
// Services without endpoints are not in the NAT maps; their addresses are
// in no-endpoints4/6, which filter chains consult to reject new
// connections with ICMP, as kube-proxy does.
package proxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Table is the nftables table (family inet) the proxy owns.
const Table = "podnet-proxy"

// MasqMark is the packet mark bit that asks nat-postrouting to masquerade.
// It is the bit kube-proxy uses, so a node moving between the two proxies
// sees one meaning for it.
const MasqMark = 0x4000

// Self is the node the proxy runs on.
type Self struct {
	Name string
	// Zone is the node's topology.kubernetes.io/zone label.
	Zone string
	// NodeIPs are the addresses node ports are served on.
	NodeIPs []netip.Addr
	// ClusterCIDRs are the pod ranges. Traffic to a ClusterIP from outside
	// them is masqueraded; pods reaching an externalTrafficPolicy: Local
	// Service by its external address are sent to any endpoint.
	ClusterCIDRs []netip.Prefix
	// NflogGroup, when set, is where rejects (no endpoints) and
	// conntrack-invalid drops are reported, for the flow log.
	NflogGroup int
}

// LogPrefixNoEndpoints and LogPrefixInvalid start the proxy's nflog
// prefixes.
const (
	LogPrefixNoEndpoints = "podnet-proxy no-endpoints "
	LogPrefixNoLocal     = "podnet-proxy no-local-endpoints "
	LogPrefixInvalid     = "podnet-proxy invalid "
)

// dropNoLocal is the verdict for a policy-Local entry point on a node
// without an endpoint: dropped (kube-proxy's behaviour: the client times
// out rather than taking a refusal for a closed port), and reported.
const dropNoLocal = "goto drop-no-local-chain"

// Chain is one regular chain and its rules, in nft syntax.
type Chain struct {
	Name  string
	Rules []string
	// Shared chains may be in many fragments, always with the same rules
	// (the name says what they do); the table holds one while any
	// fragment does.
	Shared bool
}

// Set declares a set or map.
type Set struct {
	Name string
	// Type is the nft type, with " : verdict" for verdict maps; TypeOf,
	// when set, declares the type by expressions instead.
	Type    string
	TypeOf  string
	Flags   []string
	Timeout time.Duration
}

// IsMap reports whether the set is a map.
func (s Set) IsMap() bool { return strings.Contains(s.Type+s.TypeOf, " : ") }

// Element is one element of a set or map, in nft syntax: Key and Value
// are written as nft takes them ("10.96.0.10 . tcp . 80"), each one string
// that the backend keeps as it is, since a big cluster's table holds
// hundreds of thousands of elements. Value is empty for sets.
type Element struct {
	Set   string
	Key   string
	Value string
	// Comment names the Service port the element is for, so that the
	// table reads well in `nft list` although a ClusterIP-only port has
	// no chain of its own to carry its name.
	Comment string
}

// Fragment is the part of the table one Service owns.
type Fragment struct {
	Chains   []Chain
	Sets     []Set
	Elements []Element
	// Slots are the ids of the endpoints-map slots the fragment uses.
	Slots []string
}

// BaseChain is one of the skeleton's hooked chains.
type BaseChain struct {
	Chain
	Type, Hook, Priority string
}

// Skeleton is the fixed part of the table: base chains, helper chains and
// the shared sets and maps, with the elements that depend only on the node.
type Skeleton struct {
	Base     []BaseChain
	Chains   []Chain
	Sets     []Set
	Elements []Element
	// Counters are named counters the rules update; they survive every
	// sync, so the agent can export them as monotonic counts.
	Counters []string
}

// The proxy's named counters: packets rejected for want of an endpoint,
// dropped for want of an endpoint on this node (a traffic policy Local),
// and forwarded packets dropped as conntrack-invalid.
const (
	CounterNoEndpoints = "no-endpoints"
	CounterNoLocal     = "no-local-endpoints"
	CounterInvalid     = "conntrack-invalid"
)

// family describes one IP family in nft terms.
type family struct {
	v    string // "4" or "6"
	ip   string // "ip" or "ip6"
	addr string // "ipv4_addr" or "ipv6_addr"
}

var families = []family{{"4", "ip", "ipv4_addr"}, {"6", "ip6", "ipv6_addr"}}

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return families[0]
	}
	return families[1]
}

// logTo renders a log statement to the node's nflog group, or nothing.
func logTo(self Self, prefix string) string {
	if self.NflogGroup == 0 {
		return ""
	}
	return fmt.Sprintf("log prefix %q group %d ", prefix, self.NflogGroup)
}

// NewSkeleton renders the skeleton for a node.
func NewSkeleton(self Self) Skeleton {
	var sk Skeleton
	masq := fmt.Sprintf("meta mark set meta mark or 0x%x", MasqMark)
	sk.Chains = append(sk.Chains,
		Chain{Name: "mark-for-masquerade", Rules: []string{masq}},
		Chain{Name: "reject-chain", Rules: []string{logTo(self, LogPrefixNoEndpoints) + fmt.Sprintf("counter name %q reject", CounterNoEndpoints)}},
		Chain{Name: "drop-no-local-chain", Rules: []string{logTo(self, LogPrefixNoLocal) + fmt.Sprintf("counter name %q drop", CounterNoLocal)}},
	)
	sk.Counters = []string{CounterNoEndpoints, CounterNoLocal, CounterInvalid}
	services := Chain{Name: "services"}
	post := []string{}
	filterIn, filterOut := []string{}, []string{}
	for _, f := range families {
		sk.Sets = append(sk.Sets,
			Set{Name: "cluster-ranges" + f.v, Type: f.addr, Flags: []string{"interval"}},
			Set{Name: "nodeport-ips" + f.v, Type: f.addr},
			Set{Name: "cluster-ips" + f.v, Type: f.addr},
			Set{Name: "hairpin" + f.v, Type: f.addr + " . " + f.addr},
		)
		// The endpoints of ClusterIP-only Service ports, keyed by
		// ClusterIP . port . index: the shared balancer chains
		// (lb4-tcp-N) look them up, so these ports need no chain, rule or
		// slot of their own.
		for _, proto := range []string{"tcp", "udp", "sctp"} {
			sk.Sets = append(sk.Sets, Set{Name: clusterEndpointsMap(f, proto),
				TypeOf: fmt.Sprintf("%s daddr . %s dport . numgen random mod 1 : %s daddr . %s dport", f.ip, proto, f.ip, proto)})
		}
		// Every other Service port's endpoints, keyed by its slot
		// offset plus the endpoint's index: shared maps (one per family
		// and protocol, as nft types the port by protocol), so that no
		// Service needs a set of its own: the kernel finds sets by walking
		// a list, which makes adding thousands of them slow.
		// The maps are sharded too: the kernel's cost of adding an
		// element grows with the number of rules that use its map.
		for _, proto := range []string{"tcp", "udp", "sctp"} {
			for shard := range EndpointShards {
				sk.Sets = append(sk.Sets, Set{Name: endpointsMap(f, proto, shard), TypeOf: "numgen random mod 1 : " + f.ip + " daddr . " + proto + " dport"})
			}
		}
		sk.Sets = append(sk.Sets,
			Set{Name: "services" + f.v, Type: f.addr + " . inet_proto . inet_service : verdict"},
			Set{Name: "nodeports" + f.v, Type: "inet_proto . inet_service : verdict"},
			Set{Name: "no-endpoints" + f.v, Type: f.addr + " . inet_proto . inet_service : verdict"},
			Set{Name: "no-endpoint-nodeports" + f.v, Type: "inet_proto . inet_service : verdict"},
		)
		hasRanges := false
		for _, p := range self.ClusterCIDRs {
			if p.Addr().Is4() == (f.v == "4") {
				hasRanges = true
				sk.Elements = append(sk.Elements, Element{Set: "cluster-ranges" + f.v, Key: p.Masked().String()})
			}
		}
		for _, a := range self.NodeIPs {
			if a.Is4() == (f.v == "4") {
				sk.Elements = append(sk.Elements, Element{Set: "nodeport-ips" + f.v, Key: a.String()})
			}
		}
		// Off-cluster clients of a ClusterIP (the node itself, or a router
		// that sends service traffic in) are masqueraded so that replies
		// come back through this node, which holds the NAT state.
		if hasRanges {
			services.Rules = append(services.Rules, fmt.Sprintf("%s daddr @cluster-ips%s %s saddr != @cluster-ranges%s jump mark-for-masquerade", f.ip, f.v, f.ip, f.v))
		}
		services.Rules = append(services.Rules,
			fmt.Sprintf("%s daddr . meta l4proto . th dport vmap @services%s", f.ip, f.v),
			fmt.Sprintf("%s daddr @nodeport-ips%s meta l4proto . th dport vmap @nodeports%s", f.ip, f.v, f.v),
		)
		// A pod reaching itself through a Service arrives from its own
		// address: masquerade it, or the pod would drop its own packet.
		post = append(post, fmt.Sprintf("ct status dnat %s saddr . %s daddr @hairpin%s masquerade", f.ip, f.ip, f.v))
		noEP := fmt.Sprintf("ct state new %s daddr . meta l4proto . th dport vmap @no-endpoints%s", f.ip, f.v)
		noNP := fmt.Sprintf("ct state new %s daddr @nodeport-ips%s meta l4proto . th dport vmap @no-endpoint-nodeports%s", f.ip, f.v, f.v)
		filterIn = append(filterIn, noNP, noEP)
		filterOut = append(filterOut, noNP, noEP)
	}
	post = append(post,
		fmt.Sprintf("meta mark & 0x%x == 0 return", MasqMark),
		fmt.Sprintf("meta mark set meta mark xor 0x%x", MasqMark),
		"masquerade fully-random",
	)
	sk.Chains = append(sk.Chains, services)
	// Packets conntrack finds invalid (out of window, for instance) are
	// dropped rather than forwarded: DNATed traffic among them would
	// reach endpoints un-NATed and draw resets that kill the connection.
	filterFwd := []string{"ct state invalid " + logTo(self, LogPrefixInvalid) + fmt.Sprintf("counter name %q drop", CounterInvalid)}
	for _, f := range families {
		filterFwd = append(filterFwd, fmt.Sprintf("ct state new %s daddr . meta l4proto . th dport vmap @no-endpoints%s", f.ip, f.v))
	}
	sk.Base = []BaseChain{
		{Chain: Chain{Name: "nat-prerouting", Rules: []string{"jump services"}}, Type: "nat", Hook: "prerouting", Priority: "dstnat"},
		{Chain: Chain{Name: "nat-output", Rules: []string{"jump services"}}, Type: "nat", Hook: "output", Priority: "dstnat"},
		{Chain: Chain{Name: "nat-postrouting", Rules: post}, Type: "nat", Hook: "postrouting", Priority: "srcnat"},
		{Chain: Chain{Name: "filter-input", Rules: filterIn}, Type: "filter", Hook: "input", Priority: "filter - 10"},
		{Chain: Chain{Name: "filter-forward", Rules: filterFwd}, Type: "filter", Hook: "forward", Priority: "filter - 10"},
		{Chain: Chain{Name: "filter-output", Rules: filterOut}, Type: "filter", Hook: "output", Priority: "filter - 10"},
	}
	return sk
}

// EndpointShards is the number of endpoints maps per family and protocol.
// Only ports with their own chains use them (node ports, external IPs,
// affinity: a minority), so a few shards keep the rules bound to each map
// few, while every full sync pays for each empty map it declares.
const EndpointShards = 16

func clusterEndpointsMap(f family, proto string) string {
	return fmt.Sprintf("cluster-endpoints%s-%s", f.v, proto)
}

func endpointsMap(f family, proto string, shard int) string {
	return fmt.Sprintf("endpoints%s-%s-%02d", f.v, proto, shard)
}

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// chainID is a short stable hash; the readable suffix is for humans only
// and may be cut, so the hash is what keeps names unique.
func chainID(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return b32.EncodeToString(sum[:])[:10]
}

// maxChainName keeps names well inside the kernel's 256-byte limit.
const maxChainName = 200

// nameSafe keeps the readable part of a chain name within what nft accepts
// unquoted (':' would not parse in an IPv6 address).
var nameSafe = strings.NewReplacer(":", ".", "[", "", "]", "", " ", "_")

func chainName(kind string, f family, id, human string) string {
	n := fmt.Sprintf("%s%s-%s-%s", kind, f.v, id, nameSafe.Replace(human))
	if len(n) > maxChainName {
		n = n[:maxChainName]
	}
	return n
}
