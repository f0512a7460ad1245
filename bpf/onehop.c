//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * onehop kernel datapath: service load balancing at connect() time for the network namespaces
 * the agent enrolled, the VIP shown back by getpeername(), and a table of established
 * connections. Map sizes here are defaults; the agent sets them before loading.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "onehop.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

/*
 * The few kernel fields telemetry reads that struct bpf_sock_ops does not offer, through
 * bpf_skc_to_tcp_sock. preserve_access_index makes them CO-RE relocations: the loader finds
 * each field's offset in the running kernel's BTF (/sys/kernel/btf/vmlinux), so no kernel
 * headers are needed and any layout of these structs works. tcp_sock starts with its struct sock.
 */
struct sock_common {
	unsigned long skc_flags; /* Linux 6.12+: sk_flags moved here */
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	int sk_err;
} __attribute__((preserve_access_index));

struct sock___before_6_12 {
	unsigned long sk_flags;
} __attribute__((preserve_access_index));

/* The kernel's enum sock_flags: SOCK_DONE is set when the peer's FIN arrives (tcp_fin). */
enum sock_flags {
	SOCK_DEAD,
	SOCK_DONE,
};

struct tcp_sock {
	__u32 lost;          /* packets marked lost, total */
	__u64 bytes_sent;    /* payload bytes transmitted, retransmissions included */
	__u64 bytes_retrans; /* payload bytes retransmitted */
} __attribute__((preserve_access_index));

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Network namespace cookie -> 1 for the namespaces onehop balances. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} oh_enrolled SEC(".maps");

/*
 * oh_services and oh_slots are not preallocated: memory follows what is programmed, so the
 * default sizes cost nothing until used. As in any hash map, an element the agent replaces may be
 * reused at once, so programs copy a value right after looking it up.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct oh_svc_key);
	__type(value, struct oh_svc);
} oh_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct oh_slot_key);
	__type(value, struct oh_endpoint);
} oh_slots SEC(".maps");

/* Round-robin position per service id; same size as oh_services. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} oh_rr SEC(".maps");

/* Socket cookie -> the VIP it connected to, for getpeername. LRU: failed connects never close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct oh_endpoint);
} oh_origdst SEC(".maps");

/* Socket cookie -> established connection. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct oh_conn);
} oh_conns SEC(".maps");

/* Telemetry events (struct oh_event) for the agent. The agent sets its size. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 21);
} oh_events SEC(".maps");

/*
 * Same-node connections of namespaces with OH_NETNS_SOCKMAP, both ends, keyed so each end finds
 * the other (struct oh_sock_key). The kernel removes a socket when it closes. oh_msg, attached to
 * this map, redirects each payload into the peer's receive queue.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct oh_sock_key);
	__type(value, __u64);
} oh_sockhash SEC(".maps");

/* Addresses of this node's pods enrolled with OH_NETNS_SOCKMAP: a peer there is same-node. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct oh_endpoint);
	__type(value, __u8);
} oh_local_addrs SEC(".maps");

/*
 * Bytes oh_msg redirected per connection (oh_sock_key with role 0): they never pass TCP, whose
 * counters telemetry reads, so events add them. Reset when an end is added to oh_sockhash (a
 * client port used again); LRU: closed connections' entries go as room is needed.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct oh_sock_key);
	__type(value, struct oh_redirected);
} oh_redirected_bytes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OH_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} oh_counters SEC(".maps");

/* Keeps enum oh_counter and enum oh_policy in the object's BTF, where the agent reads them. */
const volatile enum oh_counter oh_counter_btf __attribute__((unused));
const volatile enum oh_policy oh_policy_btf __attribute__((unused));
/* ... and the types the agent decodes oh_events and reads flags with, for bpf2go. */
const volatile struct oh_event oh_event_btf __attribute__((unused));
const volatile struct oh_sock_key oh_sock_key_btf __attribute__((unused));
const volatile struct oh_redirected oh_redirected_btf __attribute__((unused));
const volatile enum oh_netns_flag oh_netns_flag_btf __attribute__((unused));
const volatile enum oh_event_type oh_event_type_btf __attribute__((unused));
const volatile enum oh_event_flag oh_event_flag_btf __attribute__((unused));
const volatile enum oh_conn_flag oh_conn_flag_btf __attribute__((unused));
const volatile enum oh_direction oh_direction_btf __attribute__((unused));

/* How often a long connection is reported at most; the agent sets it before loading. */
const volatile __u64 oh_report_period_ns = 5000000000ULL;
/* Wake the agent's reader when oh_events holds this much; the agent sets it before loading. */
const volatile __u64 oh_events_wakeup_bytes = 1 << 19;
/*
 * Extra lookups on every balanced connect(): 0 in every real build. A build with the tag
 * onehop_planted_regression sets it, so that `onehop gate` can show it catches a slower connect
 * path (the verifier prunes the loop when it is 0).
 */
const volatile __u32 oh_planted_connect_lookups = 0;

static __always_inline void count(enum oh_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&oh_counters, &key);

	if (v)
		*v += 1; /* per-CPU: no atomic needed */
}

/* The netns's enum oh_netns_flag bits; 0 if it is not enrolled. */
static __always_inline __u8 netns_flags(__u64 netns)
{
	__u8 *f = bpf_map_lookup_elem(&oh_enrolled, &netns);

	return f ? *f : 0;
}

static __always_inline void v4mapped(__u8 addr[16], __u32 ip4)
{
	__u32 *w = (__u32 *)addr;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = ip4;
}

static __always_inline int is_v4mapped(const __u8 addr[16])
{
	const __u32 *w = (const __u32 *)addr;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* Picks the slot index within priority level prio of svc, or returns -1 if that fails. */
static __always_inline long pick(const struct oh_svc *svc, __u16 n)
{
	if (svc->policy == OH_POLICY_ROUND_ROBIN) {
		__u32 id = svc->id;
		__u64 *pos = bpf_map_lookup_elem(&oh_rr, &id);

		if (!pos)
			return -1;
		return __sync_fetch_and_add(pos, 1) % n;
	}
	return bpf_get_prandom_u32() % n;
}

/* What balance() found. */
enum oh_verdict {
	OH_BALANCED = 0,  /* *be is the chosen endpoint */
	OH_NOT_OURS = -1, /* not a service, or no usable slot: leave the connect() alone */
	OH_EMPTY = -2,    /* a service with no endpoints: refuse the connect() */
};

/*
 * Chooses a backend for the service at key into *be. The agent deletes a changed service's old
 * slots right after switching it to the new generation, so a missing slot means the service
 * value we read is stale: read it again (once is enough, the new slots were written before the
 * switch).
 */
static __always_inline int balance(const struct oh_svc_key *key, struct oh_endpoint *be)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		struct oh_svc *sp = bpf_map_lookup_elem(&oh_services, key);
		struct oh_slot_key sk = {};
		struct oh_endpoint *slot;
		struct oh_svc svc;
		long s;
		int prio = -1;

		if (!sp) {
			count(attempt == 0 ? OH_CNT_CONNECT_NO_SERVICE : OH_CNT_CONNECT_NO_BACKEND);
			return OH_NOT_OURS;
		}
		svc = *sp;
#pragma unroll
		for (int p = OH_MAX_PRIO - 1; p >= 0; p--)
			if (svc.count[p] > 0)
				prio = p;
		if (prio < 0) {
			count(OH_CNT_CONNECT_REFUSED);
			return OH_EMPTY;
		}
		s = pick(&svc, svc.count[prio]);
		if (s < 0)
			break;
		sk.id = svc.id;
		sk.gen = svc.gen;
		sk.prio = prio;
		sk.slot = s;
		slot = bpf_map_lookup_elem(&oh_slots, &sk);
		if (slot) {
			*be = *slot;
			return OH_BALANCED;
		}
		count(OH_CNT_CONNECT_RETRIED);
	}
	count(OH_CNT_CONNECT_NO_BACKEND);
	return OH_NOT_OURS;
}

/* The VIP:port of a service key. */
static __always_inline struct oh_endpoint vip_of(const struct oh_svc_key *key)
{
	struct oh_endpoint vip = {};

	__builtin_memcpy(vip.addr, key->addr, sizeof(vip.addr));
	vip.port = key->port;
	return vip;
}

/* Remembers the VIP a socket connected to; getpeername shows it instead of the backend. */
static __always_inline void remember(void *ctx, const struct oh_svc_key *key)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct oh_endpoint orig = vip_of(key);

	bpf_map_update_elem(&oh_origdst, &cookie, &orig, BPF_ANY);
}

/*
 * Common start of connect4/6: returns the netns's flags if ctx is a TCP connect from a netns
 * enrolled for balancing, else 0.
 */
static __always_inline __u8 ours(struct bpf_sock_addr *ctx)
{
	__u8 flags;

	count(OH_CNT_CONNECT_SEEN);
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	flags = netns_flags(bpf_get_netns_cookie(ctx));
	if (!(flags & OH_NETNS_BALANCE))
		return 0; /* not enrolled, or a sidecar's pod: its proxy balances */
	count(OH_CNT_CONNECT_ENROLLED);
	return flags;
}

/*
 * Events are submitted without waking the agent until oh_events holds oh_events_wakeup_bytes:
 * the agent reads on its own every 100 ms anyway, and a wakeup per event would
 * cost a context switch per connection.
 */
static __always_inline __u64 wakeup(void)
{
	return bpf_ringbuf_query(&oh_events, BPF_RB_AVAIL_DATA) >= oh_events_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* A zeroed connect_failed event of an outbound socket, or NULL (counted) if oh_events is full. */
static __always_inline struct oh_event *failed_event(__u64 cookie, __u64 netns)
{
	struct oh_event *e = bpf_ringbuf_reserve(&oh_events, sizeof(*e), 0);

	if (!e) {
		count(OH_CNT_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->type = OH_EV_CONNECT_FAILED;
	e->direction = OH_DIR_OUTBOUND;
	e->cookie = cookie;
	e->netns = netns;
	e->time_ns = bpf_ktime_get_ns();
	return e;
}

/* Reports a connect refused because the service has no endpoints (telemetry on). */
static __always_inline void refused_event(struct bpf_sock_addr *ctx, const struct oh_svc_key *key)
{
	struct oh_event *e = failed_event(bpf_get_socket_cookie(ctx), bpf_get_netns_cookie(ctx));

	if (!e)
		return;
	e->flags = OH_EV_NO_ENDPOINTS;
	e->err = ECONNREFUSED;
	e->orig = vip_of(key);
	bpf_ringbuf_submit(e, wakeup());
	count(OH_CNT_EVENTS_SENT);
}

/*
 * Fails the connect() with ECONNREFUSED, as kube-proxy's REJECT rule answers for a service
 * without endpoints: the caller learns at once, and nothing reaches endpoints that are gone. With
 * telemetry on for the netns, an event says so. bpf_set_retval (Linux 5.18+) chooses the errno;
 * a program returning 0 alone gives EPERM.
 */
static __always_inline int refuse(struct bpf_sock_addr *ctx, __u8 flags, const struct oh_svc_key *key)
{
	if (flags & OH_NETNS_TELEMETRY)
		refused_event(ctx, key);
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

static long planted_lookup(__u64 i, void *ctx)
{
	struct oh_svc_key key = {};

	key.port = (__u16)i;
	bpf_map_lookup_elem(&oh_services, &key);
	return 0;
}

/* The planted regression's work: real map lookups, as the connect path's own. */
static __always_inline void planted_work(void)
{
	if (oh_planted_connect_lookups)
		bpf_loop(oh_planted_connect_lookups, planted_lookup, NULL, 0);
}

SEC("cgroup/connect4")
int oh_connect4(struct bpf_sock_addr *ctx)
{
	struct oh_svc_key key = {};
	struct oh_endpoint be;
	__u8 flags = ours(ctx);

	if (!flags)
		return 1;
	v4mapped(key.addr, ctx->user_ip4);
	key.port = (__u16)ctx->user_port;
	key.proto = IPPROTO_TCP;
	switch (balance(&key, &be)) {
	case OH_BALANCED:
		break;
	case OH_EMPTY:
		return refuse(ctx, flags, &key);
	default:
		return 1;
	}
	if (!is_v4mapped(be.addr)) { /* the agent never writes that; never connect to garbage */
		count(OH_CNT_CONNECT_NO_BACKEND);
		return 1;
	}
	remember(ctx, &key);
	planted_work();
	ctx->user_ip4 = ((__u32 *)be.addr)[3];
	ctx->user_port = be.port;
	count(OH_CNT_CONNECT_BALANCED);
	return 1;
}

SEC("cgroup/connect6")
int oh_connect6(struct bpf_sock_addr *ctx)
{
	struct oh_svc_key key = {};
	struct oh_endpoint be;
	__u32 *w = (__u32 *)key.addr;
	__u8 flags = ours(ctx);

	if (!flags)
		return 1;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	key.port = (__u16)ctx->user_port;
	key.proto = IPPROTO_TCP;
	switch (balance(&key, &be)) {
	case OH_BALANCED:
		break;
	case OH_EMPTY:
		return refuse(ctx, flags, &key);
	default:
		return 1;
	}
	/* A v4-mapped VIP is a v4 service, whose backends are v4: written v4-mapped, as needed. */
	remember(ctx, &key);
	planted_work();
	w = (__u32 *)be.addr;
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = be.port;
	count(OH_CNT_CONNECT_BALANCED);
	return 1;
}

SEC("cgroup/getpeername4")
int oh_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct oh_endpoint *orig = bpf_map_lookup_elem(&oh_origdst, &cookie);

	if (orig) {
		ctx->user_ip4 = ((__u32 *)orig->addr)[3];
		ctx->user_port = orig->port;
		count(OH_CNT_GETPEERNAME_REWRITTEN);
	}
	return 1;
}

SEC("cgroup/getpeername6")
int oh_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct oh_endpoint *orig = bpf_map_lookup_elem(&oh_origdst, &cookie);

	if (orig) {
		__u32 *w = (__u32 *)orig->addr;

		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
		ctx->user_port = orig->port;
		count(OH_CNT_GETPEERNAME_REWRITTEN);
	}
	return 1;
}

static __always_inline void watch(struct bpf_sock_ops *skops, int flags)
{
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | flags);
}

/*
 * The local and remote ends of the socket of a bpf_sock_ops or sk_msg_md, which lay them out
 * alike: local_port is in host order; remote_port holds the network-order port in its upper half.
 * Every field is read first, unconditionally and once (volatile): the verifier refuses a context
 * pointer the compiler moved to share one load between the v4 and v6 paths.
 */
#define CTX_U32(x) (*(volatile __u32 *)&(x))
#define SOCK_ENDPOINTS(ctx, src, dst)                                              \
	do {                                                                           \
		__u32 fam_ = CTX_U32((ctx)->family), l4_ = CTX_U32((ctx)->local_ip4);      \
		__u32 r4_ = CTX_U32((ctx)->remote_ip4);                                    \
		__u32 l6_[4] = {CTX_U32((ctx)->local_ip6[0]), CTX_U32((ctx)->local_ip6[1]),  \
				CTX_U32((ctx)->local_ip6[2]), CTX_U32((ctx)->local_ip6[3])};         \
		__u32 r6_[4] = {CTX_U32((ctx)->remote_ip6[0]), CTX_U32((ctx)->remote_ip6[1]), \
				CTX_U32((ctx)->remote_ip6[2]), CTX_U32((ctx)->remote_ip6[3])};       \
		__u32 lp_ = CTX_U32((ctx)->local_port), rp_ = CTX_U32((ctx)->remote_port); \
		if (fam_ == AF_INET) {                                                     \
			v4mapped((src)->addr, l4_);                                            \
			v4mapped((dst)->addr, r4_);                                            \
		} else {                                                                   \
			__builtin_memcpy((src)->addr, l6_, 16);                                \
			__builtin_memcpy((dst)->addr, r6_, 16);                                \
		}                                                                          \
		(src)->port = bpf_htons((__u16)lp_);                                       \
		(dst)->port = bpf_htons((__u16)bpf_ntohl(rp_));                            \
	} while (0)

static __always_inline void sockops_endpoints(struct bpf_sock_ops *skops, struct oh_endpoint *src, struct oh_endpoint *dst)
{
	SOCK_ENDPOINTS(skops, src, dst);
}

/* The kernel's struct tcp_sock of skops, for the fields bpf_sock_ops lacks; NULL if none. */
static __always_inline struct tcp_sock *tcp_sk(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return NULL;
	return bpf_skc_to_tcp_sock(sk);
}

/*
 * Reads the connection's cumulative counters. tcp_sock.bytes_received counts the peer's FIN as
 * a byte once it arrived in order, which SOCK_DONE says (tcp_fin sets it): that byte is left out.
 */
static __always_inline void read_stats(struct bpf_sock_ops *skops, struct oh_tcp_stats *st)
{
	struct tcp_sock *tp = tcp_sk(skops);
	__u64 rcvd = skops->bytes_received;

	st->segs_in = skops->segs_in;
	st->segs_out = skops->segs_out;
	st->retrans = skops->total_retrans;
	st->bytes_received = rcvd;
	st->bytes_sent = 0;
	st->lost = 0;
	if (tp) {
		unsigned long done = 1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE);

		st->bytes_sent = tp->bytes_sent - tp->bytes_retrans;
		st->lost = tp->lost;
		unsigned long flags;

		if (bpf_core_field_exists(((struct sock *)tp)->__sk_common.skc_flags))
			flags = ((struct sock *)tp)->__sk_common.skc_flags;
		else
			flags = ((struct sock___before_6_12 *)tp)->sk_flags;
		if (rcvd > 0 && (flags & done))
			st->bytes_received = rcvd - 1;
	}
}

static __always_inline void sub_stats(struct oh_tcp_stats *d, const struct oh_tcp_stats *a, const struct oh_tcp_stats *b)
{
	d->bytes_sent = a->bytes_sent - b->bytes_sent;
	d->bytes_received = a->bytes_received - b->bytes_received;
	d->segs_in = a->segs_in - b->segs_in;
	d->segs_out = a->segs_out - b->segs_out;
	d->retrans = a->retrans - b->retrans;
	d->lost = a->lost - b->lost;
}

/* 127.0.0.0/8 (v4-mapped) or ::1. */
static __always_inline int is_loopback(const __u8 addr[16])
{
	const __u32 *w = (const __u32 *)addr;

	if (is_v4mapped(addr))
		return (bpf_ntohl(w[3]) >> 24) == 127;
	return w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(1);
}

/* The oh_sockhash key of the end role of the connection whose client end is client. */
static __always_inline void sock_key(struct oh_sock_key *k, const struct oh_endpoint *client, __u64 netns, __u8 role)
{
	__builtin_memcpy(k->addr, client->addr, sizeof(k->addr));
	k->port = client->port;
	k->role = role;
	k->netns = is_loopback(client->addr) ? netns : 0;
}

/*
 * Adds the payload bytes oh_msg redirected on connection c (OH_CONN_SOCKMAP: its socket was in
 * oh_sockhash) to what TCP counted: with both ends there, payloads never pass TCP.
 */
static __always_inline void add_redirected(const struct oh_conn *c, struct oh_tcp_stats *st)
{
	struct oh_sock_key key = {};
	struct oh_redirected *r;

	if (!(c->flags & OH_CONN_SOCKMAP))
		return;
	sock_key(&key, c->direction == OH_DIR_OUTBOUND ? &c->src : &c->dst, c->netns, 0);
	r = bpf_map_lookup_elem(&oh_redirected_bytes, &key);
	if (!r)
		return;
	if (c->direction == OH_DIR_OUTBOUND) {
		st->bytes_sent += r->to_server;
		st->bytes_received += r->to_client;
	} else {
		st->bytes_sent += r->to_client;
		st->bytes_received += r->to_server;
	}
}

/*
 * Adds an established socket of a netns with OH_NETNS_SOCKMAP to oh_sockhash when its peer is
 * on this node: on loopback, at an address of oh_local_addrs, or (a sidecar's pod) any
 * connection it opens, which its proxy intercepts. Both ends of a same-node connection end up
 * there, and oh_msg pairs them; a socket whose peer never does is passed to TCP/IP.
 */
static __always_inline void sockmap_add(struct bpf_sock_ops *skops, __u64 cookie, const struct oh_endpoint *local,
					const struct oh_endpoint *remote, __u64 netns, __u8 flags, __u8 dir)
{
	struct oh_endpoint peer = {};
	struct oh_sock_key key = {};
	struct oh_redirected zero = {};
	struct oh_conn *c;

	__builtin_memcpy(peer.addr, remote->addr, sizeof(peer.addr));
	if (!is_loopback(remote->addr) && !bpf_map_lookup_elem(&oh_local_addrs, &peer) &&
	    !((flags & OH_NETNS_SIDECAR) && dir == OH_DIR_OUTBOUND))
		return;
	sock_key(&key, dir == OH_DIR_OUTBOUND ? local : remote, netns, dir);
	if (bpf_sock_hash_update(skops, &oh_sockhash, &key, BPF_ANY)) {
		count(OH_CNT_SOCKMAP_FAILED);
		return;
	}
	count(OH_CNT_SOCKMAP_ADDED);
	/* Nothing is redirected before the second end is added: both resets come first. */
	key.role = 0;
	bpf_map_update_elem(&oh_redirected_bytes, &key, &zero, BPF_ANY);
	c = bpf_map_lookup_elem(&oh_conns, &cookie);
	if (c)
		c->flags |= OH_CONN_SOCKMAP;
}

/*
 * Sends an event of connection c (telemetry on) with its counters now and what changed since
 * its last event that arrived. If oh_events is full the event is lost (counted) and nothing
 * else: the next event carries the difference, and counts it opened if none arrived before.
 */
static __always_inline void conn_event(struct bpf_sock_ops *skops, struct oh_conn *c, __u64 cookie, __u8 type, __u64 now)
{
	struct oh_event *e = bpf_ringbuf_reserve(&oh_events, sizeof(*e), 0);

	if (!e) {
		count(OH_CNT_EVENTS_LOST);
		return;
	}
	e->type = type;
	e->direction = c->direction;
	e->flags = (c->flags & OH_CONN_REPORTED) ? 0 : OH_EV_FIRST;
	e->state = c->state;
	e->err = 0;
	e->cookie = cookie;
	e->netns = c->netns;
	e->time_ns = now;
	e->established_ns = c->established_ns;
	e->src = c->src;
	e->dst = c->dst;
	e->orig = c->orig;
	e->srtt_us = skops->srtt_us >> 3; /* tcp_sock keeps it times 8 */
	e->min_rtt_us = skops->rtt_min;
	e->pad = 0;
	read_stats(skops, &e->total);
	add_redirected(c, &e->total);
	sub_stats(&e->delta, &e->total, &c->reported);
	c->reported = e->total;
	c->report_ns = now;
	c->flags |= OH_CONN_REPORTED;
	bpf_ringbuf_submit(e, wakeup());
	count(OH_CNT_EVENTS_SENT);
}

static __always_inline void track(struct bpf_sock_ops *skops, __u64 cookie, const struct oh_endpoint *local,
				  const struct oh_endpoint *remote, __u64 netns, __u8 netns_flags, __u8 direction)
{
	struct oh_endpoint *orig;
	struct oh_conn c = {}, *cp;

	c.src = *local;
	c.dst = *remote;
	c.netns = netns;
	c.established_ns = bpf_ktime_get_ns();
	c.state_ns = c.established_ns;
	c.state = BPF_TCP_ESTABLISHED;
	c.direction = direction;
	if (direction == OH_DIR_OUTBOUND) {
		orig = bpf_map_lookup_elem(&oh_origdst, &cookie);
		if (orig)
			c.orig = *orig;
	}
	if (netns_flags & OH_NETNS_TELEMETRY)
		c.flags = OH_CONN_TELEMETRY;
	if (bpf_map_update_elem(&oh_conns, &cookie, &c, BPF_ANY)) {
		count(OH_CNT_CONNS_TABLE_FULL);
		return;
	}
	count(OH_CNT_CONNS_OPENED);
	if (!(netns_flags & OH_NETNS_TELEMETRY))
		return;
	cp = bpf_map_lookup_elem(&oh_conns, &cookie);
	if (cp)
		conn_event(skops, cp, cookie, OH_EV_OPEN, c.established_ns);
}

/* A connect from an enrolled netns with telemetry on that closed before it was established. */
static __always_inline void connect_failed(struct bpf_sock_ops *skops, __u64 cookie, __u64 netns)
{
	struct tcp_sock *tp = tcp_sk(skops);
	struct oh_endpoint *orig = bpf_map_lookup_elem(&oh_origdst, &cookie);
	struct oh_event *e = failed_event(cookie, netns);

	if (!e)
		return;
	e->state = BPF_TCP_CLOSE;
	e->err = tp ? ((struct sock *)tp)->sk_err : 0;
	sockops_endpoints(skops, &e->src, &e->dst);
	if (orig)
		e->orig = *orig;
	bpf_ringbuf_submit(e, wakeup());
	count(OH_CNT_EVENTS_SENT);
}

SEC("sockops")
int oh_sockops(struct bpf_sock_ops *skops)
{
	__u64 netns = bpf_get_netns_cookie(skops);
	__u64 cookie, now;
	struct oh_endpoint local = {}, remote = {};
	struct oh_conn *c;
	__u8 flags, dir;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Watch from the SYN on, so a connect that fails also drops its oh_origdst entry. */
		if (netns_flags(netns))
			watch(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		flags = netns_flags(netns);
		if (!flags)
			break;
		/*
		 * With telemetry, RTT samples (as ACKs arrive) are the chance to report a long
		 * connection; without it this socket costs nothing per packet.
		 */
		watch(skops, BPF_SOCK_OPS_STATE_CB_FLAG | ((flags & OH_NETNS_TELEMETRY) ? BPF_SOCK_OPS_RTT_CB_FLAG : 0));
		dir = skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ? OH_DIR_OUTBOUND : OH_DIR_INBOUND;
		/* Once for both: the connection's record and, with sockmap, its sockhash entry. */
		cookie = bpf_get_socket_cookie(skops);
		sockops_endpoints(skops, &local, &remote);
		track(skops, cookie, &local, &remote, netns, flags, dir);
		if (flags & OH_NETNS_SOCKMAP)
			sockmap_add(skops, cookie, &local, &remote, netns, flags, dir);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		cookie = bpf_get_socket_cookie(skops);
		c = bpf_map_lookup_elem(&oh_conns, &cookie);
		if (!c || !(c->flags & OH_CONN_TELEMETRY))
			break;
		now = bpf_ktime_get_ns();
		if (now - c->report_ns >= oh_report_period_ns)
			conn_event(skops, c, cookie, OH_EV_REPORT, now);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		cookie = bpf_get_socket_cookie(skops);
		c = bpf_map_lookup_elem(&oh_conns, &cookie);
		if (skops->args[1] != BPF_TCP_CLOSE) {
			/* Closing states (FIN_WAIT1, CLOSE_WAIT, ...): a few per connection, at most. */
			if (c) {
				c->state_ns = bpf_ktime_get_ns();
				c->state = skops->args[1];
				c->state_changes++; /* state callbacks of one socket are serialised */
			}
			break;
		}
		if (c) {
			if (c->flags & OH_CONN_TELEMETRY) {
				c->state = BPF_TCP_CLOSE;
				conn_event(skops, c, cookie, OH_EV_CLOSE, bpf_ktime_get_ns());
			}
			if (bpf_map_delete_elem(&oh_conns, &cookie) == 0)
				count(OH_CNT_CONNS_CLOSED);
		} else if (skops->args[0] == BPF_TCP_SYN_SENT && (netns_flags(netns) & OH_NETNS_TELEMETRY)) {
			connect_failed(skops, cookie, netns);
		}
		bpf_map_delete_elem(&oh_origdst, &cookie);
		break;
	}
	return 1;
}

/* Counts a redirected payload, and its bytes for the connection's telemetry (add_redirected). */
static __always_inline void redirected(struct oh_sock_key *peer, __u32 size, int to_server)
{
	struct oh_redirected *r;

	peer->role = 0;
	r = bpf_map_lookup_elem(&oh_redirected_bytes, peer);
	if (r) {
		if (to_server)
			__sync_fetch_and_add(&r->to_server, size);
		else
			__sync_fetch_and_add(&r->to_client, size);
	}
	count(OH_CNT_MSG_REDIRECTED);
}

/*
 * Every sendmsg of a socket in oh_sockhash: the payload goes straight into the peer socket's
 * receive queue when the peer is there too (skipping TCP/IP on both sides), else through TCP/IP.
 * The peer is the server end of the connection whose client end is this socket, or else the
 * client end of the one whose client is this socket's peer: a server's local port cannot be a
 * client's port too, so at most one of the two exists.
 */
SEC("sk_msg")
int oh_msg(struct sk_msg_md *msg)
{
	struct oh_endpoint local = {}, remote = {};
	struct oh_sock_key peer = {};
	__u64 netns = bpf_get_netns_cookie(msg);
	__u32 size = msg->size;

	SOCK_ENDPOINTS(msg, &local, &remote);
	sock_key(&peer, &local, netns, OH_DIR_INBOUND);
	if (bpf_msg_redirect_hash(msg, &oh_sockhash, &peer, BPF_F_INGRESS) == SK_PASS) {
		redirected(&peer, size, 1);
		return SK_PASS;
	}
	sock_key(&peer, &remote, netns, OH_DIR_OUTBOUND);
	if (bpf_msg_redirect_hash(msg, &oh_sockhash, &peer, BPF_F_INGRESS) == SK_PASS) {
		redirected(&peer, size, 0);
		return SK_PASS;
	}
	count(OH_CNT_MSG_PASSED);
	return SK_PASS;
}
