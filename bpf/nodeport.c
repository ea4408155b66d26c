// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// podnet's NodePort and load-balancer balancer for traffic that enters a
// node from outside it. A tc ingress program on the node's uplink sees the
// first packet of a connection to a node port (on any of the node's
// addresses), an external IP or a load-balancer IP, picks a backend, and
// creates the connection's conntrack entry with its NAT already set up
// (the nf_conntrack kfuncs). The kernel's NAT then translates that packet,
// the rest of the connection and its replies, exactly as it does for a
// connection an nftables DNAT rule set up; the program does not rewrite a
// byte itself, and sees only one lookup per later packet.
//
// externalTrafficPolicy decides the rest:
//   - Cluster: any endpoint, and the client is masqueraded to the node's
//     address, so that replies come back through this node.
//   - Local: only this node's endpoints, and the client's address is kept.
//     With none, the packet is dropped here (and reported). A client in the
//     cluster's pod range is treated as Cluster, as kube-proxy does.
//
// What it leaves alone goes on to the nftables rules, which handle it as
// under the nftables dataplane: frontends the agent did not put in the map
// (SCTP, more endpoints than a slot), Cluster frontends
// with no endpoint (the rules reject), and anything not a first packet.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

// The nf_conntrack kfuncs. The kernel matches these declarations against
// its BTF by name; the structs are only ever handled by pointer, so they
// need no members beyond a placeholder.
struct nf_conn {
	__u64 unused;
};
struct nf_conn___init {
	__u64 unused;
};

struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

union nf_inet_addr {
	__u32 all[4];
	__be32 ip;
	__be32 ip6[4];
};

enum nf_nat_manip_type {
	NF_NAT_MANIP_SRC,
	NF_NAT_MANIP_DST
};

extern struct nf_conn___init *bpf_skb_ct_alloc(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					       struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern struct nf_conn *bpf_ct_insert_entry(struct nf_conn___init *nfct) __ksym;
extern void bpf_ct_release(struct nf_conn *nfct) __ksym;
extern void bpf_ct_set_timeout(struct nf_conn___init *nfct, __u32 timeout) __ksym;
extern int bpf_ct_set_nat_info(struct nf_conn___init *nfct, union nf_inet_addr *addr, int port,
			       enum nf_nat_manip_type manip) __ksym;

#define BPF_F_CURRENT_NETNS (-1)

// A frontend: IPv4 is stored IPv4-mapped. A node port has the unspecified
// address (::), and applies to the node's own addresses only.
struct np_key {
	__u32 addr[4];
	__u16 port; // network byte order
	__u8 proto;
	__u8 pad;
};

#define NP_LOCAL 1 // externalTrafficPolicy: Local

struct np_val {
	__u32 id;          // all usable endpoints are (id, 0..count-1)
	__u32 count;
	__u32 local_id;    // this node's endpoints, for Local
	__u32 local_count;
	__u32 flags;
	__u32 affinity; // sessionAffinity ClientIP timeout in seconds, 0: none
};

struct np_backend_key {
	__u32 id;
	__u32 index;
};

struct np_backend {
	__u32 addr[4];
	__u16 port; // network byte order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct np_key);
	__type(value, struct np_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_np_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct np_backend_key);
	__type(value, struct np_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_np_backends SEC(".maps");

// Session affinity: the backend a client last had at a frontend, by its
// position in the set and its address (to notice that the set changed
// under it).
struct np_aff_key {
	__u32 client[4];
	struct np_key frontend;
};

struct np_aff_val {
	__u64 last; // bpf_ktime_get_ns of the client's last connection
	__u32 index;
	__u32 pad;
	struct np_backend backend;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct np_aff_key);
	__type(value, struct np_aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_np_affinity SEC(".maps");

// The node's own addresses (IPv4-mapped or IPv6), for node ports. The
// value is the address to masquerade to for that family: the node's
// primary address.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct np_backend);
	__type(value, struct np_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_np_node_addrs SEC(".maps");

// The cluster's pod ranges: a Local frontend treats their clients as
// Cluster.
struct lpm_key {
	__u32 prefixlen;
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__type(key, struct lpm_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_np_cluster SEC(".maps");

// Counters, per CPU: what the program did with first packets.
enum {
	NP_TRANSLATED,     // conntrack entry created, NAT set
	NP_DROPPED_LOCAL,  // Local, no endpoint on this node
	NP_PASSED,         // a frontend's first packet left to the rules
	NP_ERRORS,         // a kfunc failed; left to the rules
	NP_NCOUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NP_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_np_counters SEC(".maps");

// Drops go to the agent's flow log through this ring.
struct np_drop {
	__u32 src[4];
	__u32 dst[4];
	__u16 src_port; // network byte order
	__u16 dst_port;
	__u8 proto;
	__u8 reason; // 1: Local, no endpoint on this node
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_np_drops SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *c = bpf_map_lookup_elem(&podnet_np_counters, &what);
	if (c)
		*c += 1;
}

// A first packet, parsed: addresses IPv4-mapped for IPv4.
struct flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport, dport;
	__u8 proto;
	__u8 v6;
};

static __always_inline void mapped(__u32 *out, __be32 a)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0xffff);
	out[3] = a;
}

// parse fills f from the packet; 0 when it is not a TCP connection's
// first packet or a UDP datagram.
static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	void *l4;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return 0;
		if (ip->frag_off & bpf_htons(0x3fff))
			return 0; // fragments: left to the rules
		mapped(f->src, ip->saddr);
		mapped(f->dst, ip->daddr);
		f->proto = ip->protocol;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return 0;
		__builtin_memcpy(f->src, &ip6->saddr, 16);
		__builtin_memcpy(f->dst, &ip6->daddr, 16);
		f->proto = ip6->nexthdr; // extension headers: left to the rules
		f->v6 = 1;
		l4 = ip6 + 1;
	} else {
		return 0;
	}
	if (f->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return 0;
		if (!th->syn || th->ack)
			return 0; // not a new connection: conntrack has it, or nobody
		f->sport = th->source;
		f->dport = th->dest;
		return 1;
	}
	if (f->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return 0;
		f->sport = uh->source;
		f->dport = uh->dest;
		return 1;
	}
	return 0;
}

static __always_inline void tuple_of(struct flow *f, struct bpf_sock_tuple *t)
{
	if (f->v6) {
		__builtin_memcpy(t->ipv6.saddr, f->src, 16);
		__builtin_memcpy(t->ipv6.daddr, f->dst, 16);
		t->ipv6.sport = f->sport;
		t->ipv6.dport = f->dport;
	} else {
		t->ipv4.saddr = f->src[3];
		t->ipv4.daddr = f->dst[3];
		t->ipv4.sport = f->sport;
		t->ipv4.dport = f->dport;
	}
}

static __always_inline int from_cluster(struct flow *f)
{
	struct lpm_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, f->src, 16);
	return bpf_map_lookup_elem(&podnet_np_cluster, &k) != 0;
}

static __always_inline void report_drop(struct flow *f)
{
	struct np_drop *d = bpf_ringbuf_reserve(&podnet_np_drops, sizeof(*d), 0);
	if (!d)
		return;
	__builtin_memcpy(d->src, f->src, 16);
	__builtin_memcpy(d->dst, f->dst, 16);
	d->src_port = f->sport;
	d->dst_port = f->dport;
	d->proto = f->proto;
	d->reason = 1;
	d->pad = 0;
	bpf_ringbuf_submit(d, 0);
}

static __always_inline int same_backend(struct np_backend *a, struct np_backend *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] && a->addr[2] == b->addr[2] &&
	       a->addr[3] == b->addr[3] && a->port == b->port;
}

// pick chooses one of the n backends under id: at random, or, with
// session affinity, the one the client had while it comes back within the
// timeout and that backend is still where it was.
static __always_inline struct np_backend *pick(struct np_key *fk, struct np_val *v, __u32 id, __u32 n, struct flow *f)
{
	struct np_backend_key bk = {.id = id};
	if (!v->affinity) {
		bk.index = bpf_get_prandom_u32() % n;
		return bpf_map_lookup_elem(&podnet_np_backends, &bk);
	}
	struct np_aff_key ak = {};
	__builtin_memcpy(ak.client, f->src, 16);
	__builtin_memcpy(&ak.frontend, fk, sizeof(ak.frontend));
	__u64 now = bpf_ktime_get_ns();
	struct np_aff_val *av = bpf_map_lookup_elem(&podnet_np_affinity, &ak);
	if (av && now - av->last < (__u64)v->affinity * 1000000000ULL && av->index < n) {
		bk.index = av->index;
		struct np_backend *be = bpf_map_lookup_elem(&podnet_np_backends, &bk);
		if (be && same_backend(be, &av->backend)) {
			av->last = now;
			return be;
		}
	}
	bk.index = bpf_get_prandom_u32() % n;
	struct np_backend *be = bpf_map_lookup_elem(&podnet_np_backends, &bk);
	if (!be)
		return 0;
	struct np_aff_val nv = {.last = now, .index = bk.index};
	__builtin_memcpy(&nv.backend, be, sizeof(nv.backend));
	bpf_map_update_elem(&podnet_np_affinity, &ak, &nv, BPF_ANY);
	return be;
}

SEC("tc")
int podnet_nodeport(struct __sk_buff *skb)
{
	struct flow f = {};
	if (!parse(skb, &f))
		return TC_ACT_OK;
	struct np_key key = {.port = f.dport, .proto = f.proto};
	__builtin_memcpy(key.addr, f.dst, 16);
	struct np_val *v = bpf_map_lookup_elem(&podnet_np_frontends, &key);
	struct np_backend self = {};
	__builtin_memcpy(self.addr, f.dst, 16);
	struct np_backend *masq = bpf_map_lookup_elem(&podnet_np_node_addrs, &self);
	if (!v && masq) {
		// A node port, on one of this node's addresses: the frontend's
		// address is the family's unspecified one.
		__builtin_memset(key.addr, 0, 16);
		if (!f.v6)
			mapped(key.addr, 0);
		v = bpf_map_lookup_elem(&podnet_np_frontends, &key);
	}
	if (!v)
		return TC_ACT_OK;

	struct bpf_sock_tuple t = {};
	tuple_of(&f, &t);
	__u32 tsz = f.v6 ? sizeof(t.ipv6) : sizeof(t.ipv4);
	struct bpf_ct_opts opts = {.netns_id = BPF_F_CURRENT_NETNS, .l4proto = f.proto};
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &t, tsz, &opts, sizeof(opts));
	if (ct) {
		// A retransmitted SYN, or a UDP flow already set up.
		bpf_ct_release(ct);
		return TC_ACT_OK;
	}

	int local = (v->flags & NP_LOCAL) && !from_cluster(&f);
	__u32 id = local ? v->local_id : v->id;
	__u32 n = local ? v->local_count : v->count;
	if (n == 0) {
		if (local) {
			count(NP_DROPPED_LOCAL);
			report_drop(&f);
			return TC_ACT_SHOT;
		}
		count(NP_PASSED);
		return TC_ACT_OK;
	}
	struct np_backend *be = pick(&key, v, id, n, &f);
	if (!be) {
		count(NP_ERRORS);
		return TC_ACT_OK;
	}
	struct np_backend *snat = 0;
	if (!local) {
		if (!masq) {
			// An external or load-balancer address: masquerade to the
			// node's primary address of the family.
			struct np_backend any = {};
			if (!f.v6)
				mapped(any.addr, 0);
			masq = bpf_map_lookup_elem(&podnet_np_node_addrs, &any);
		}
		if (!masq) {
			count(NP_ERRORS);
			return TC_ACT_OK;
		}
		snat = masq;
	}

	opts.netns_id = BPF_F_CURRENT_NETNS;
	opts.error = 0;
	struct nf_conn___init *nct = bpf_skb_ct_alloc(skb, &t, tsz, &opts, sizeof(opts));
	if (!nct) {
		count(NP_ERRORS);
		return TC_ACT_OK;
	}
	// The protocol's own timeouts take over with the next packet.
	bpf_ct_set_timeout(nct, 30000);
	union nf_inet_addr dst = {};
	if (f.v6)
		__builtin_memcpy(dst.all, be->addr, 16);
	else
		dst.ip = be->addr[3];
	if (bpf_ct_set_nat_info(nct, &dst, bpf_ntohs(be->port), NF_NAT_MANIP_DST))
		goto fail;
	if (snat) {
		union nf_inet_addr src = {};
		if (f.v6)
			__builtin_memcpy(src.all, snat->addr, 16);
		else
			src.ip = snat->addr[3];
		// Any source port: the kernel keeps the client's unless it clashes.
		if (bpf_ct_set_nat_info(nct, &src, -1, NF_NAT_MANIP_SRC))
			goto fail;
	}
	ct = bpf_ct_insert_entry(nct);
	if (!ct) {
		// Another CPU inserted the same flow first: it is set up.
		count(NP_ERRORS);
		return TC_ACT_OK;
	}
	bpf_ct_release(ct);
	count(NP_TRANSLATED);
	return TC_ACT_OK;
fail:
	// An entry that was not inserted must still be released.
	ct = bpf_ct_insert_entry(nct);
	if (ct)
		bpf_ct_release(ct);
	count(NP_ERRORS);
	return TC_ACT_OK;
}
