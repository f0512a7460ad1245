/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The layout of every onehop BPF map key and value. This header is the one place it is written:
 * bpf2go generates the Go types from it (-type flags in gen.go), and the agent uses those.
 *
 * Addresses are 16 bytes, IPv4 as v4-mapped ::ffff:a.b.c.d; ports are in network byte order,
 * as the kernel keeps them in sockets. Keys have explicit padding so they are fully initialised.
 */
#ifndef ONEHOP_H
#define ONEHOP_H

#include <linux/types.h>

/* Priority (locality) levels per service; matches model.MaxPriorities. */
#define OH_MAX_PRIO 4

enum oh_policy {
	OH_POLICY_RANDOM = 0,
	OH_POLICY_ROUND_ROBIN = 1,
};

/* oh_services key: a service frontend. */
struct oh_svc_key {
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/*
 * oh_services value. gen selects which of the two slot generations is live: the agent writes a
 * changed service's slots under the other gen, then replaces this value in one map update.
 */
struct oh_svc {
	__u32 id;                  /* index into oh_rr, part of every slot key */
	__u8 policy;               /* enum oh_policy */
	__u8 gen;                  /* 0 or 1 */
	__u16 count[OH_MAX_PRIO];  /* slots per priority level; the first non-zero level is used */
	__u16 pad;
};

/* oh_slots key: one slot of one priority level of one generation of a service. */
struct oh_slot_key {
	__u32 id;
	__u8 gen;
	__u8 prio;
	__u16 slot;
};

/* An address and port: a backend (oh_slots value) or an original destination (oh_origdst). */
struct oh_endpoint {
	__u8 addr[16];
	__u16 port;
	__u16 pad;
};

/* oh_enrolled value: what onehop does for a network namespace (bits). */
enum oh_netns_flag {
	OH_NETNS_BALANCE = 1,    /* balance its connects (every enrolled netns but a sidecar's); all are tracked */
	OH_NETNS_TELEMETRY = 2,  /* report its connections through oh_events */
	OH_NETNS_ACCESS_LOG = 4, /* the agent writes an access log line per event (user space only) */
	OH_NETNS_SOCKMAP = 8,    /* its same-node connections go into oh_sockhash: payloads skip TCP/IP */
	/*
	 * A sidecar proxy in the pod intercepts its connections (iptables REDIRECT): its connects
	 * are not balanced (OH_NETNS_BALANCE is off; the proxy balances), and with OH_NETNS_SOCKMAP
	 * every connection it opens is a same-node hop, to its own proxy or from the proxy to a peer.
	 */
	OH_NETNS_SIDECAR = 16,
};

/* Which side of a connection a socket is. */
enum oh_direction {
	OH_DIR_UNKNOWN = 0,  /* a record migrated from an older layout */
	OH_DIR_OUTBOUND = 1, /* it connected (client side) */
	OH_DIR_INBOUND = 2,  /* it was accepted (server side) */
};

/* oh_conn.flags */
enum oh_conn_flag {
	OH_CONN_TELEMETRY = 1, /* its netns had telemetry on when it was established: events are sent */
	OH_CONN_REPORTED = 2,  /* an event of it reached oh_events: it was counted as opened */
	OH_CONN_SOCKMAP = 4,   /* its socket is in oh_sockhash: add what oh_msg redirected to its bytes */
};

/*
 * TCP counters of one connection, cumulative. Bytes are payload: sent counts each byte once
 * however often it was retransmitted (tcp_sock bytes_sent - bytes_retrans); received leaves out
 * the peer's FIN.
 */
struct oh_tcp_stats {
	__u64 bytes_sent;
	__u64 bytes_received;
	__u32 segs_in;
	__u32 segs_out;
	__u32 retrans; /* segments retransmitted (total_retrans) */
	__u32 lost;    /* packets the stack marked lost (tcp_sock.lost) */
};

/*
 * oh_conns value: an established TCP connection of an enrolled network namespace. The map is
 * pinned, so a record outlives agent restarts and the fields below keep being updated by the next
 * agent's programs. Changing this struct changes the pinned layout: bump datapath.LayoutVersion
 * and teach the migration the old one (layout 1 ended at established_ns, layouts 2 and 3 at
 * state_changes).
 */
struct oh_conn {
	struct oh_endpoint src;
	struct oh_endpoint dst;
	__u64 netns;          /* network namespace cookie */
	__u64 established_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	/* Updated from the state callbacks sockops already gets: no per-packet cost. */
	__u64 state_ns;       /* when it entered state: established_ns until its first change */
	__u32 state;          /* TCP state (BPF_TCP_*); 0 if unknown (a record migrated from layout 1) */
	__u32 state_changes;  /* state changes since established */
	/* Layout 4: telemetry. */
	struct oh_endpoint orig; /* the service VIP:port connect() asked for; zero if not balanced */
	__u8 direction;          /* enum oh_direction */
	__u8 flags;              /* enum oh_conn_flag */
	__u16 pad;
	__u64 report_ns;             /* when its last event was sent */
	struct oh_tcp_stats reported; /* the counters as of that event: the next one carries the difference */
};

/*
 * oh_sockhash key: one end of a same-node connection, named so that either end can name the
 * other: the client end's address and port (as the client's socket has them and the server's
 * sees them; an iptables REDIRECT changes the server's local address, not this), which end the
 * socket is, and for a loopback client address the network namespace (loopback connections stay
 * in one; pod addresses are unique on a node). oh_redirected uses it with role 0 for the whole
 * connection.
 */
struct oh_sock_key {
	__u8 addr[16]; /* the client end's address */
	__u16 port;    /* the client end's port */
	__u8 role;     /* enum oh_direction of the socket; 0 in oh_redirected */
	__u8 pad[5];
	__u64 netns;   /* the namespace's cookie if addr is loopback, else 0 */
};

/* oh_redirected value: payload bytes sk_msg redirected, per direction, since established. */
struct oh_redirected {
	__u64 to_server; /* sent by the client end */
	__u64 to_client;
};

enum oh_event_type {
	OH_EV_OPEN = 1,           /* established */
	OH_EV_REPORT = 2,         /* periodic, for a connection that lives longer than the period */
	OH_EV_CLOSE = 3,          /* closed (TCP_CLOSE) */
	OH_EV_CONNECT_FAILED = 4, /* a connect that never got established: err says why */
};

/* oh_event.flags */
enum oh_event_flag {
	OH_EV_FIRST = 1,        /* the connection's first event to arrive: count it opened */
	OH_EV_NO_ENDPOINTS = 2, /* connect failed: refused by onehop, the service has no endpoints */
};

/* One record of oh_events, the ring buffer the agent reads. */
struct oh_event {
	__u8 type;      /* enum oh_event_type */
	__u8 direction; /* enum oh_direction */
	__u8 flags;     /* enum oh_event_flag */
	__u8 state;     /* TCP state */
	__u32 err;      /* connect failed: the socket's errno (ECONNREFUSED, ETIMEDOUT, ...) */
	__u64 cookie;   /* socket cookie */
	__u64 netns;
	__u64 time_ns;        /* bpf_ktime_get_ns */
	__u64 established_ns; /* 0 for a failed connect */
	struct oh_endpoint src;
	struct oh_endpoint dst;  /* the peer: for an outbound connection, the endpoint chosen */
	struct oh_endpoint orig; /* the service VIP:port connect() asked for; zero if not balanced */
	__u32 srtt_us;
	__u32 min_rtt_us;
	__u32 pad;
	struct oh_tcp_stats total; /* since established */
	struct oh_tcp_stats delta; /* since the connection's previous event that arrived */
};

/*
 * Indexes of oh_counters. The agent reads the names from this enum's BTF (OH_CNT_CONNECT_SEEN
 * becomes connect_seen). Adding a counter (before OH_CNT_MAX, which stays last) resizes the
 * pinned oh_counters: bump datapath.LayoutVersion and list the old size in its olderLayouts,
 * whose migration carries the counts over.
 */
enum oh_counter {
	OH_CNT_CONNECT_SEEN = 0,        /* every connect4/6 call, any protocol */
	OH_CNT_CONNECT_ENROLLED,        /* TCP connects from an enrolled netns */
	OH_CNT_CONNECT_BALANCED,        /* ... rewritten to a backend */
	OH_CNT_CONNECT_NO_SERVICE,      /* ... to an address that is no service (left alone) */
	OH_CNT_CONNECT_NO_BACKEND,      /* ... to a service without a usable backend (left alone) */
	OH_CNT_CONNECT_RETRIED,         /* slot lookups repeated because the service changed meanwhile */
	OH_CNT_GETPEERNAME_REWRITTEN,   /* getpeername answers that show the VIP */
	OH_CNT_CONNS_OPENED,            /* connections added to oh_conns */
	OH_CNT_CONNS_CLOSED,            /* connections removed from oh_conns */
	OH_CNT_CONNS_TABLE_FULL,        /* connections not tracked: oh_conns was full */
	OH_CNT_CONNECT_REFUSED,         /* TCP connects to a service with no endpoints: refused */
	OH_CNT_EVENTS_SENT,             /* telemetry events written to oh_events */
	OH_CNT_EVENTS_LOST,             /* telemetry events lost: oh_events was full (counts carry over to the next) */
	OH_CNT_SOCKMAP_ADDED,           /* established sockets added to oh_sockhash */
	OH_CNT_SOCKMAP_FAILED,          /* ... that could not be added (map full, or the kernel refused) */
	OH_CNT_MSG_REDIRECTED,          /* sendmsg calls whose payload went straight to the peer socket */
	OH_CNT_MSG_PASSED,              /* sendmsg calls of a socket in oh_sockhash whose peer is not: TCP/IP */
	OH_CNT_MAX,
};

#endif
