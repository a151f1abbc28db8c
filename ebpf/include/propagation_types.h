/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structs of the context-propagation object (propagation.c) shared with
 * user space; mirrored in datapath/src/propagation/types.rs, whose test
 * checks sizes and field offsets against this object's BTF. Same rules as
 * tclab_types.h: fixed-width fields, explicit padding, never reorder.
 */
#pragma once

#include <linux/types.h>

/* prop_mode bits (load-time constant tclab_prop_mode). */
enum prop_mode_bit {
	PROP_M_HEADERS = 1 << 0,   /* insert Traceparent into outgoing HTTP/1.1 requests (sk_msg) */
	PROP_M_TCP = 1 << 1,       /* TCP header option (sockops) */
	PROP_M_IP = 1 << 2,        /* IPv4 option / IPv6 destination option (TC) */
	PROP_M_CORRELATE = 1 << 3, /* server request -> client requests of the same thread (tp_btf) */
};

/* Where a context came from. */
enum prop_origin {
	PROP_O_NEW = 0,     /* no usable incoming context: a new trace */
	PROP_O_HEADER = 1,  /* a valid traceparent header of the request */
	PROP_O_TCP = 2,     /* our TCP option on the connection */
	PROP_O_IP = 3,      /* our IP option on the connection */
	PROP_O_THREAD = 4,  /* client: the server request its thread is serving */
	PROP_O_APP = 5,     /* client: the application sent a traceparent itself */
};

/* Which carriers took a client context already (prop_ctx.carried): with
 * several carriers on (`all`), a request is carried once, by the first
 * that can (header, then TCP option, then IP option), as OBI does. */
enum prop_carried {
	PROP_CARRIED_HEADER = 1 << 0, /* its traceparent header (inserted, or the application's) */
	PROP_CARRIED_TCP = 1 << 1,    /* our TCP option, written on a segment */
};

/* A connection as its socket sees it. Addresses as on the wire (IPv4 in
 * the first 4 bytes, rest zero; v4-mapped IPv6 sockets are keyed as IPv4),
 * ports in host byte order. */
struct prop_key {
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;
	__u16 remote_port;
	__u8 family; /* enum tclab_family: 4 or 6 */
	__u8 _pad[3];
};

/* A trace context: the trace, the span it names, the flags. */
struct prop_ctx {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 flags;
	__u8 origin;    /* enum prop_origin */
	__u8 tp_status; /* enum traceparent_status of the request's header */
	__u8 opaque;    /* the connection's payload is not HTTP (TLS): no request seen */
	/* Spent: in tclab_prop_in, a thread has taken it; in
	 * tclab_prop_threads, the request has ended. Entries are overwritten
	 * in place and marked spent rather than deleted: an LRU map's update
	 * and delete take its locks and lists, a lookup and a store do not. */
	__u8 spent;
	__u8 carried; /* tclab_prop_out: enum prop_carried bits */
	__u8 _pad[2];
};

/* What a thread is serving (map tclab_prop_threads, key pid_tgid). */
struct prop_thread {
	struct prop_ctx ctx; /* span_id: the server span */
	struct prop_key conn;
};

enum prop_event_kind {
	PROP_EV_SERVER = 1, /* a request read on a connection (the server span's ids) */
	PROP_EV_CLIENT = 2, /* a request sent (the client span's ids) */
};

/* One event on tclab_prop_events. */
struct prop_event {
	__u64 ts_ns;
	__u32 kind;      /* enum prop_event_kind */
	__u32 tgid;
	__u32 tid;
	__u8 tp_status;  /* enum traceparent_status of the request's own header */
	__u8 injected;   /* client: the header was inserted by us */
	__u8 origin;     /* enum prop_origin of the trace */
	__u8 flags;      /* trace flags */
	struct prop_key conn;
	__u8 trace_id[16];
	__u8 span_id[8];   /* server: the server span; client: the client span */
	__u8 parent_id[8]; /* server: the caller's span (zero: root); client: the server span (zero: none) */
	__u8 opaque;       /* a connection-level span: the payload is not HTTP (TLS) */
	__u8 _pad[7];
};

/* Per-CPU counters (tclab_prop_counters). */
enum prop_counter {
	PC_SERVER_REQUESTS = 0,  /* requests read by sockets of the cgroup */
	PC_CLIENT_REQUESTS,      /* requests sent by sockets of the cgroup */
	PC_LINKED,               /* client requests linked to the server request of their thread */
	PC_INJECTED,             /* Traceparent headers inserted */
	PC_INJECT_FAILED,        /* bpf_msg_push_data/pull_data refused */
	PC_EXISTING_VALID,       /* outgoing requests that already had a valid traceparent */
	PC_EXISTING_INVALID,     /* ... an invalid one (left alone, not used) */
	PC_INCOMING_INVALID,     /* incoming requests with an invalid traceparent (new trace) */
	PC_IP_ADDED,             /* IP options written */
	PC_IP_SKIPPED,           /* no room (options full, MTU) or extension headers */
	PC_IP_STRIPPED,          /* our IP options read and removed on ingress */
	PC_TCP_WRITTEN,          /* TCP options written */
	PC_TCP_READ,             /* TCP options read */
	PC_EVENTS_LOST,
	PC_TC_PACKETS,           /* packets the TC classifiers saw */
	PC_TLS_CLIENTS,          /* client contexts opened by a TLS record (ClientHello, or app data for another request) */
	PC_MAX,
};

/* Wire format (see docs/propagation.md). */
#define PROP_IP4_OPT_TYPE 0x9e   /* copied, class 0, number 30 (RFC 4727 experiment) */
#define PROP_IP4_OPT_LEN 28
#define PROP_IP6_OPT_TYPE 0x1e   /* RFC 4727 experiment, skip if unknown, not changed en route */
#define PROP_IP6_DSTOPT_LEN 32   /* the whole destination options header we add */
#define PROP_MARKER 0x7c
#define PROP_TCP_OPT_KIND 253    /* RFC 6994 shared experimental option */
#define PROP_TCP_OPT_LEN 28
#define PROP_TCP_EXID_SAMPLED 0x7c1a   /* trace flags 01 */
#define PROP_TCP_EXID_UNSAMPLED 0x7c1b /* trace flags 00 */
