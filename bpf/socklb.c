// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// podnet's socket-level Service load balancer. cgroup/connect and
// cgroup/sendmsg programs rewrite a ClusterIP destination to a backend
// before the socket routes anything, so east-west traffic to a Service
// costs nothing per packet: no DNAT, no conntrack NAT entry. recvmsg
// rewrites the source of replies to unconnected UDP sockets back to the
// ClusterIP, so that the application sees the address it sent to, and
// getpeername reports the ClusterIP of a connected socket.
//
// The agent fills the maps from the same desired state as the nftables
// backend (internal/proxy); this file only looks things up.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

// From the socket API, which BPF programs cannot include.
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

#define MAX_SERVICES 262144
#define MAX_BACKENDS 1048576

// A Service address: IPv4 is stored as an IPv4-mapped IPv6 address.
struct svc_key {
	__u32 addr[4];
	__u16 port; // network byte order
	__u8 proto; // IPPROTO_TCP or IPPROTO_UDP
	__u8 pad;
};

struct svc_val {
	__u32 id;       // the Service port's backends are (id, 0..count-1)
	__u32 count;    // 0: the Service has no usable backend
	__u32 affinity; // sessionAffinity ClientIP timeout in seconds, 0: none
	__u32 pad;
};

struct backend_key {
	__u32 id;
	__u32 index;
};

struct backend_val {
	__u32 addr[4];
	__u16 port; // network byte order
	__u16 pad;
};

// Which Service address a socket meant when it was sent to a backend: by
// socket and backend, so recvmsg can put the Service address back as the
// source of a UDP reply, and getpeername as a connected socket's peer.
struct rev_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 pad2; // explicit, so that no padding byte is left uninitialised in a key
};

struct rev_val {
	__u32 addr[4];
	__u16 port;
	__u16 reported; // a UDP flow event was sent for this socket and backend
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct backend_key);
	__type(value, struct backend_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_backends SEC(".maps");

// Session affinity: the backend a client last had, per Service port. The
// client is its network namespace (a pod, or the node itself), which is
// what a pod's address stands for in kube-proxy's ClientIP affinity.
struct aff_key {
	__u64 netns;
	__u32 id;
	__u32 pad;
};

struct aff_val {
	__u64 last; // bpf_ktime_get_ns of the client's last connection
	__u32 index;
	__u32 pad;
	struct backend_val backend; // to notice the backend at index changed
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct aff_key);
	__type(value, struct aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_udp_rev SEC(".maps");

// Flow events: one per connection the balancer translated (TCP when the
// SYN is about to leave, UDP at the first reply), with the Service
// address the socket named, for the agent's flow log. The conntrack
// entries of these connections carry no NAT, so without this the log
// could not say which Service a flow was for.
struct flow_event {
	__u64 netns;
	__u32 src[4];
	__u32 dst[4]; // the backend
	__u32 svc[4]; // the Service address the socket named
	__u16 src_port; // all ports in network byte order
	__u16 dst_port;
	__u16 svc_port;
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_events SEC(".maps");

// wakeup wakes the agent only once events have piled up: it reads the ring
// every 50 ms anyway, and a wake-up per connection costs the connecting
// client measurable time on a small node.
static __always_inline __u64 wakeup(void)
{
	return bpf_ringbuf_query(&podnet_events, BPF_RB_AVAIL_DATA) >= 256 * sizeof(struct flow_event) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

// The network namespaces this node balances for, by netns cookie. Key 0
// means every namespace (a node with one agent per machine).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podnet_netns SEC(".maps");

static __always_inline int mine(void *ctx)
{
	__u64 all = 0, cookie = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&podnet_netns, &all) || bpf_map_lookup_elem(&podnet_netns, &cookie);
}

// pick finds the Service at key and chooses one of its backends. It
// returns 0 when the address is not a Service (or has no backend: the
// connection then goes on unchanged and the nftables rules reject it).
static __always_inline int same_backend(struct backend_val *a, struct backend_val *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] && a->addr[2] == b->addr[2] &&
	       a->addr[3] == b->addr[3] && a->port == b->port;
}

static __always_inline struct backend_val *pick(void *ctx, struct svc_key *key)
{
	struct svc_val *svc = bpf_map_lookup_elem(&podnet_services, key);
	if (!svc || svc->count == 0)
		return 0;
	struct backend_key bk = {.id = svc->id};
	if (!svc->affinity) {
		bk.index = bpf_get_prandom_u32() % svc->count;
		return bpf_map_lookup_elem(&podnet_backends, &bk);
	}
	struct aff_key ak = {.netns = bpf_get_netns_cookie(ctx), .id = svc->id};
	__u64 now = bpf_ktime_get_ns();
	struct aff_val *av = bpf_map_lookup_elem(&podnet_affinity, &ak);
	if (av && now - av->last < (__u64)svc->affinity * 1000000000ULL && av->index < svc->count) {
		bk.index = av->index;
		struct backend_val *be = bpf_map_lookup_elem(&podnet_backends, &bk);
		if (be && same_backend(be, &av->backend)) {
			av->last = now;
			return be;
		}
	}
	bk.index = bpf_get_prandom_u32() % svc->count;
	struct backend_val *be = bpf_map_lookup_elem(&podnet_backends, &bk);
	if (!be)
		return 0;
	struct aff_val nv = {.last = now, .index = bk.index};
	__builtin_memcpy(&nv.backend, be, sizeof(nv.backend));
	bpf_map_update_elem(&podnet_affinity, &ak, &nv, BPF_ANY);
	return be;
}

static __always_inline void key4(struct svc_key *k, __u32 addr, __u32 port, __u8 proto)
{
	k->addr[0] = 0;
	k->addr[1] = 0;
	k->addr[2] = bpf_htonl(0xffff);
	k->addr[3] = addr;
	k->port = (__u16)port;
	k->proto = proto;
}

static __always_inline void key6(struct svc_key *k, struct bpf_sock_addr *ctx, __u8 proto)
{
	k->addr[0] = ctx->user_ip6[0];
	k->addr[1] = ctx->user_ip6[1];
	k->addr[2] = ctx->user_ip6[2];
	k->addr[3] = ctx->user_ip6[3];
	k->port = (__u16)ctx->user_port;
	k->proto = proto;
}

static __always_inline __u8 proto_of(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM ? IPPROTO_TCP : ctx->type == SOCK_DGRAM ? IPPROTO_UDP : 0;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, struct backend_val *be, struct svc_key *k)
{
	struct rev_key rk = {.cookie = bpf_get_socket_cookie(ctx), .port = be->port};
	__builtin_memcpy(rk.addr, be->addr, sizeof(rk.addr));
	struct rev_val rv = {.port = k->port};
	__builtin_memcpy(rv.addr, k->addr, sizeof(rv.addr));
	bpf_map_update_elem(&podnet_udp_rev, &rk, &rv, BPF_ANY);
}

static __always_inline int translate4(struct bpf_sock_addr *ctx, int rev)
{
	__u8 proto = proto_of(ctx);
	if (!proto || !mine(ctx))
		return 1;
	struct svc_key k = {};
	key4(&k, ctx->user_ip4, ctx->user_port, proto);
	struct backend_val *be = pick(ctx, &k);
	if (!be)
		return 1;
	if (rev)
		remember(ctx, be, &k);
	ctx->user_ip4 = be->addr[3];
	ctx->user_port = be->port;
	return 1;
}

static __always_inline int translate6(struct bpf_sock_addr *ctx, int rev)
{
	__u8 proto = proto_of(ctx);
	if (!proto || !mine(ctx))
		return 1;
	struct svc_key k = {};
	key6(&k, ctx, proto);
	struct backend_val *be = pick(ctx, &k);
	if (!be)
		return 1;
	if (rev)
		remember(ctx, be, &k);
	ctx->user_ip6[0] = be->addr[0];
	ctx->user_ip6[1] = be->addr[1];
	ctx->user_ip6[2] = be->addr[2];
	ctx->user_ip6[3] = be->addr[3];
	ctx->user_port = be->port;
	return 1;
}

SEC("cgroup/connect4")
int podnet_connect4(struct bpf_sock_addr *ctx) { return translate4(ctx, 1); }

SEC("cgroup/connect6")
int podnet_connect6(struct bpf_sock_addr *ctx) { return translate6(ctx, 1); }

SEC("cgroup/sendmsg4")
int podnet_sendmsg4(struct bpf_sock_addr *ctx) { return translate4(ctx, 1); }

SEC("cgroup/sendmsg6")
int podnet_sendmsg6(struct bpf_sock_addr *ctx) { return translate6(ctx, 1); }

// restore puts the Service address back where the kernel reports a
// backend's address to the application: the source of a UDP reply, or a
// connected socket's peer.
// load6 copies an IPv6 address out of a socket context. The verifier takes
// only constant-offset loads from a socket, so each word is read on its
// own; the barriers keep the compiler from sharing an address computation
// between them.
#define load6(dst, ptr, field)                \
	do {                                  \
		(dst)[0] = (ptr)->field[0];   \
		asm volatile("" : "+r"(ptr)); \
		(dst)[1] = (ptr)->field[1];   \
		asm volatile("" : "+r"(ptr)); \
		(dst)[2] = (ptr)->field[2];   \
		asm volatile("" : "+r"(ptr)); \
		(dst)[3] = (ptr)->field[3];   \
		asm volatile("" : "+r"(ptr)); \
	} while (0)

// report sends the flow event of a UDP socket's first reply from a
// backend: the socket has its own address by then.
static __always_inline void report(struct bpf_sock_addr *ctx, struct rev_key *rk, struct rev_val *rv)
{
	if (rv->reported)
		return;
	rv->reported = 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return;
	struct flow_event *ev = bpf_ringbuf_reserve(&podnet_events, sizeof(*ev), 0);
	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->netns = bpf_get_netns_cookie(ctx);
	ev->proto = IPPROTO_UDP;
	if (sk->family == 2) { // AF_INET
		ev->src[2] = bpf_htonl(0xffff);
		ev->src[3] = sk->src_ip4;
	} else {
		load6(ev->src, sk, src_ip6);
	}
	ev->src_port = bpf_htons((__u16)sk->src_port);
	__builtin_memcpy(ev->dst, rk->addr, sizeof(ev->dst));
	ev->dst_port = rk->port;
	__builtin_memcpy(ev->svc, rv->addr, sizeof(ev->svc));
	ev->svc_port = rv->port;
	bpf_ringbuf_submit(ev, wakeup());
}

static __always_inline int restore4(struct bpf_sock_addr *ctx, int recv)
{
	if (!mine(ctx))
		return 1;
	struct rev_key rk = {.cookie = bpf_get_socket_cookie(ctx), .port = (__u16)ctx->user_port};
	rk.addr[2] = bpf_htonl(0xffff);
	rk.addr[3] = ctx->user_ip4;
	struct rev_val *rv = bpf_map_lookup_elem(&podnet_udp_rev, &rk);
	if (!rv)
		return 1;
	if (recv)
		report(ctx, &rk, rv);
	ctx->user_ip4 = rv->addr[3];
	ctx->user_port = rv->port;
	return 1;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx, int recv)
{
	if (!mine(ctx))
		return 1;
	struct rev_key rk = {.cookie = bpf_get_socket_cookie(ctx), .port = (__u16)ctx->user_port};
	rk.addr[0] = ctx->user_ip6[0];
	rk.addr[1] = ctx->user_ip6[1];
	rk.addr[2] = ctx->user_ip6[2];
	rk.addr[3] = ctx->user_ip6[3];
	struct rev_val *rv = bpf_map_lookup_elem(&podnet_udp_rev, &rk);
	if (!rv)
		return 1;
	if (recv)
		report(ctx, &rk, rv);
	ctx->user_ip6[0] = rv->addr[0];
	ctx->user_ip6[1] = rv->addr[1];
	ctx->user_ip6[2] = rv->addr[2];
	ctx->user_ip6[3] = rv->addr[3];
	ctx->user_port = rv->port;
	return 1;
}

SEC("cgroup/recvmsg4")
int podnet_recvmsg4(struct bpf_sock_addr *ctx) { return restore4(ctx, 1); }

SEC("cgroup/recvmsg6")
int podnet_recvmsg6(struct bpf_sock_addr *ctx) { return restore6(ctx, 1); }

SEC("cgroup/getpeername4")
int podnet_getpeername4(struct bpf_sock_addr *ctx) { return restore4(ctx, 0); }

SEC("cgroup/getpeername6")
int podnet_getpeername6(struct bpf_sock_addr *ctx) { return restore6(ctx, 0); }

// A TCP connection the balancer translated is reported when its SYN is
// about to leave: the socket has its own address and port by then, and
// podnet_udp_rev (despite its name, filled by every translated connect)
// names the Service it meant.
SEC("sockops")
int podnet_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	// The kernel hands sock_ops the remote port in network byte order
	// in the upper half of the field (on little-endian machines).
	struct rev_key rk = {.cookie = bpf_get_socket_cookie(skops), .port = (__u16)(skops->remote_port >> 16)};
	struct flow_event ev = {};
	if (skops->family == 2) { // AF_INET
		rk.addr[2] = bpf_htonl(0xffff);
		rk.addr[3] = skops->remote_ip4;
		ev.src[2] = bpf_htonl(0xffff);
		ev.src[3] = skops->local_ip4;
	} else {
		load6(rk.addr, skops, remote_ip6);
		load6(ev.src, skops, local_ip6);
	}
	struct rev_val *rv = bpf_map_lookup_elem(&podnet_udp_rev, &rk);
	if (!rv)
		return 1;
	ev.netns = bpf_get_netns_cookie(skops);
	ev.proto = IPPROTO_TCP;
	ev.src_port = bpf_htons((__u16)skops->local_port);
	__builtin_memcpy(ev.dst, rk.addr, sizeof(ev.dst));
	ev.dst_port = rk.port;
	__builtin_memcpy(ev.svc, rv->addr, sizeof(ev.svc));
	ev.svc_port = rv->port;
	bpf_ringbuf_output(&podnet_events, &ev, sizeof(ev), wakeup());
	return 1;
}
