/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structs shared between the eBPF programs and user space.
 *
 * Every struct here is mirrored in datapath/src/types.rs; the test
 * `types::tests::layouts_match_c` checks sizes and field offsets against
 * the BTF of the built object, so a layout change here without the mirror
 * fails `cargo test`. Rules: fixed-width fields only, explicit padding,
 * no implicit holes, never reorder a field (pinned maps outlive the agent).
 */
#pragma once

#include <linux/types.h>

/* Address family of a tuple. Both families use 16-byte addresses; an IPv4
 * address sits in the first 4 bytes and the rest is zero (not v4-mapped, so
 * the bytes read the same as the wire format). */
enum tclab_family {
	TCLAB_AF_INET = 4,
	TCLAB_AF_INET6 = 6,
};

/* Where the program that saw the packet is attached. */
enum tclab_dir {
	TCLAB_DIR_INGRESS = 0,
	TCLAB_DIR_EGRESS = 1,
};

/* CT key: the connection as its first packet saw it (the originator
 * direction). A reply is found by looking up the reversed tuple.
 * Ports are in network byte order, as on the wire. */
struct ct_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 nexthdr;  /* IPPROTO_TCP / UDP / ICMP / ICMPV6 */
	__u8 family;   /* enum tclab_family */
	__u8 _pad[2];  /* must be zero: part of the hash key */
};

/* Per-packet verdict of a CT lookup, as Cilium's ct_status. */
enum ct_status {
	CT_NEW = 0,         /* no entry: one was created */
	CT_ESTABLISHED = 1, /* entry found in the originator direction */
	CT_REPLY = 2,       /* entry found for the reversed tuple */
};

/* ct_entry.flags bits (Cilium's names, see `cilium bpf ct list`). */
enum ct_entry_flag {
	CT_F_RX_CLOSING = 1 << 0,  /* FIN/RST seen from the reply side */
	CT_F_TX_CLOSING = 1 << 1,  /* FIN/RST seen from the originator */
	CT_F_SEEN_NON_SYN = 1 << 2, /* a packet without SYN was seen */
	CT_F_HTTP_PENDING = 1 << 3, /* request head split across segments: see http.h */
};

/* CT value. "tx" is the originator direction, "rx" the reply direction,
 * independent of which TC hook saw the packet. */
struct ct_entry {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 created_ns;   /* bpf_ktime_get_ns() at insert */
	__u64 expires_ns;   /* last packet + lifetime of the current state */
	__u8 tx_flags_seen; /* TCP flags OR-ed, originator direction */
	__u8 rx_flags_seen; /* TCP flags OR-ed, reply direction */
	__u8 flags;         /* enum ct_entry_flag */
	__u8 created_dir;   /* enum tclab_dir of the packet that created it */
	__u8 last_status;   /* enum ct_status of the last packet */
	__u8 _pad[3];
};

/* Global counters: one slot per index in a PERCPU_ARRAY, summed by user
 * space. */
enum tclab_counter {
	CNT_PACKETS = 0,
	CNT_NON_IP,
	CNT_PARSE_ERRORS,       /* truncated or malformed headers: passed untouched */
	CNT_CT_NEW,
	CNT_CT_ESTABLISHED,
	CNT_CT_REPLY,
	CNT_CT_INSERT_FAILED,   /* Cilium's "CT: Map insertion failed" */
	CNT_HTTP_REQUESTS,
	CNT_HTTP_RESPONSES,
	CNT_TRACEPARENT_VALID,
	CNT_TRACEPARENT_INVALID,
	CNT_EVENTS_LOST,        /* ring buffer reserve/output failed */
	CNT_MAX,
};

enum tclab_event_kind {
	EV_CONN_OPEN = 1,
	EV_CONN_CLOSE = 2,
	EV_HTTP_REQUEST = 3,
	EV_HTTP_RESPONSE = 4,
	EV_CT_INSERT_FAILED = 5,
	EV_HTTP_CONTINUATION = 6, /* later segment of a request whose headers were split */
};

/* Outcome of the W3C traceparent search in a request. */
enum traceparent_status {
	TP_MISSING = 0,
	TP_VALID = 1,
	TP_INVALID = 2,
};

#define TCLAB_TRACEPARENT_LEN 55 /* version 00: 2+1+32+1+16+1+2 */
#define TCLAB_TRACESTATE_MAX 128
#define TCLAB_PAYLOAD_CAPTURE 256 /* first bytes of an HTTP segment, for user space */

/* Common head of every event on the ring buffer. */
struct event_header {
	__u64 ts_ns;
	__u32 kind;    /* enum tclab_event_kind */
	__u32 ifindex;
	struct ct_tuple tuple; /* as the packet carried it (not the CT key) */
	__u8 dir;      /* enum tclab_dir */
	__u8 ct_status;/* enum ct_status */
	__u8 tcp_flags;
	__u8 _pad[5];
};

/* EV_HTTP_REQUEST, EV_HTTP_RESPONSE and EV_HTTP_CONTINUATION. Method,
 * path, host and status are parsed by user space from `payload`; the
 * traceparent decision is the kernel's (validated per W3C level 1).
 *
 * payload[] starts with carried_len bytes kept from earlier segments of the
 * same request (see http.h): for EV_HTTP_REQUEST the start of a method
 * token split across segments ("GE" of "GE" | "T / HTTP/1.1"), so payload[]
 * reads as the whole request; for EV_HTTP_CONTINUATION the unfinished last
 * line of the previous segment (already reported there). */
struct http_event {
	struct event_header hdr;
	__u32 payload_len;      /* TCP payload length of the segment */
	__u16 captured_len;     /* bytes valid in payload[], carried ones included */
	__u8 traceparent_status;/* enum traceparent_status */
	__u8 tracestate_len;
	__u8 traceparent[TCLAB_TRACEPARENT_LEN + 1]; /* NUL-padded, lower-case */
	__u8 carried_len;       /* leading bytes of payload[] from earlier segments */
	__u8 line_start;        /* payload[0] starts a line (0: a continuation that
				 * begins inside a line its previous segment cut) */
	__u8 _pad[6];           /* no tail padding (520 bytes) */
	__u8 tracestate[TCLAB_TRACESTATE_MAX];
	__u8 payload[TCLAB_PAYLOAD_CAPTURE];
};

/* EV_CONN_OPEN, EV_CONN_CLOSE, EV_CT_INSERT_FAILED. */
struct conn_event {
	struct event_header hdr;
	struct ct_entry entry; /* zero for EV_CT_INSERT_FAILED */
};
