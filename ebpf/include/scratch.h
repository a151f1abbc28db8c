/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU scratch space for one packet.
 *
 * Why map memory rather than the stack: the verifier does not track values
 * stored in map memory. Keeping the parse results, the HTTP scan state and the
 * events here makes every parse path (VLAN or not, IPv4 options, IPv6
 * extension headers, TCP/UDP/ICMP) reach the CT and HTTP code with the same
 * register state, so the verifier walks that code once instead of once per
 * path. It also keeps the 512-byte stack free and lets the perf-buffer
 * variant output events from the same place as the ring-buffer one. */
#pragma once

#include "common.h"

/* Bytes of a TCP segment copied for HTTP scanning (the first request line
 * and headers); line starts are searched in the first TCLAB_HTTP_SCAN. */
#define TCLAB_HTTP_COPY 768
#define TCLAB_HTTP_SCAN 640
#define TCLAB_HTTP_MAX_LINES 64
/* Scan buffer: 1 byte of virtual line start + copy + zero padding; its
 * size leaves room for `pos & TCLAB_POS_MASK` plus a constant below 1024,
 * which is what the verifier needs to see for every access. */
#define TCLAB_SCAN_BUF 2048
#define TCLAB_POS_MASK 1023
#define TCLAB_SCAN_PAD 256

enum parse_result {
	PARSE_OK = 0,
	PARSE_NON_IP,
	PARSE_ERROR,   /* truncated or malformed: counted, passed untouched */
	PARSE_NO_L4,   /* IP but nothing to track (fragment, other protocol) */
};

/* What the parser learnt. Offsets are from skb->data. */
struct pkt_info {
	struct ct_tuple tuple;   /* as carried by the packet */
	struct ct_tuple rtuple;  /* reversed, for the reply lookup */
	__u32 l4_off;
	__u32 payload_off;
	__u32 payload_len;       /* from the IP lengths, not skb->len */
	__u32 skb_len;
	__u8 tcp_flags;
	__u8 ct_status;          /* enum ct_status */
	__u8 ct_reverse;         /* CT key is rtuple (status CT_REPLY) */
	__u8 ct_found;           /* an entry exists (found or inserted) */
	__u8 ct_flags;           /* entry flags after this packet's update */
	__u8 dir;                /* enum tclab_dir of the hook (for the HTTP program) */
	__u8 _pad[2];
};

/* What a request whose head is split across segments leaves for the next
 * segment of its direction (map tclab_http_carry, see http.h). */
#define TCLAB_HTTP_CARRY 16

enum http_carry_state {
	CARRY_LINE = 0,    /* bytes[0..len) start the current line (len 0: at a line start) */
	CARRY_MIDLINE = 1, /* inside a line longer than the carry: no line starts the next segment */
	CARRY_PREFIX = 2,  /* bytes[0..len) (1..7) may start a request ("GE"): none recognised yet */
};

struct http_carry {
	__u8 bytes[TCLAB_HTTP_CARRY];
	__u8 len;
	__u8 state;   /* enum http_carry_state */
	__u8 reply;   /* the request travels in the CT reply direction */
	__u8 _pad[5];
};

/* Positions found by the HTTP line scan, in scan-buffer coordinates
 * (buf[0] is the virtual line start, payload starts at buf[1], after
 * `carried` bytes of a previous segment). 0 = not found: position 0 can
 * never hold a header name. */
struct http_scan {
	__u32 kind;              /* enum http_kind */
	__u32 copied;            /* bytes in buf[1..]: carried + this segment's */
	__u32 nlines;
	__u32 hdr_end;
	__u32 tp_pos;
	__u32 ts_pos;
	__u32 carried;           /* bytes of carry.bytes at buf[1..] */
	__u32 line_start;        /* buf[1] starts a line (virtual LF at buf[0]) */
	__u32 lines[2 * TCLAB_HTTP_MAX_LINES]; /* second half: sink, see http.h */
	__u8 head[16];           /* first payload bytes, zero-padded */
	struct http_carry carry; /* read from the map, then the one to store */
};

/* The HTTP scan buffer is http.payload[] followed by scan_rest[]: the
 * payload is copied once, straight to where the event carries it. Its
 * byte 0 (the virtual line start) is http.tracestate[127], which is
 * written after the scan (see http.h). */
struct tclab_scratch {
	struct pkt_info pkt;
	struct http_scan scan;
	struct conn_event conn;
	struct http_event http; /* must stay right before scan_rest */
	__u8 scan_rest[TCLAB_SCAN_BUF - TCLAB_PAYLOAD_CAPTURE];
};

#define SCAN_BUF(s) ((s)->http.payload - 1)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tclab_scratch);
} tclab_scratch SEC(".maps");

static __always_inline struct tclab_scratch *scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&tclab_scratch, &zero);
}

_Static_assert(__builtin_offsetof(struct pkt_info, tcp_flags) % 8 == 0 &&
		       sizeof(struct pkt_info) - __builtin_offsetof(struct pkt_info, tcp_flags) == 8,
	       "parse_packet clears tcp_flags.._pad as one u64");
_Static_assert(__builtin_offsetof(struct tclab_scratch, scan_rest) ==
		       __builtin_offsetof(struct tclab_scratch, http) + sizeof(struct http_event),
	       "the scan buffer runs from http.payload into scan_rest");
_Static_assert(__builtin_offsetof(struct tclab_scratch, pkt.tuple) % 8 == 0 &&
		       __builtin_offsetof(struct tclab_scratch, http.hdr.tuple) % 8 == 0 &&
		       __builtin_offsetof(struct tclab_scratch, conn.hdr.tuple) % 8 == 0 &&
		       sizeof(struct ct_tuple) == 40,
	       "event_header_fill copies tuples as five aligned words");
