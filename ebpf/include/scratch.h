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
/* Scan buffer: 1 byte of virtual line start + copy + zero padding, rounded
 * to a power of two so that `pos & TCLAB_POS_MASK` plus a constant below
 * 1024 always stays inside (what the verifier needs to see). */
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
};

/* Positions found by the HTTP line scan, in scan-buffer coordinates
 * (buf[0] is the virtual line start, payload starts at buf[1]). 0 = not
 * found: position 0 can never hold a header name. */
struct http_scan {
	__u32 kind;              /* enum http_kind */
	__u32 copied;            /* payload bytes in buf[1..] */
	__u32 nlines;
	__u32 hdr_end;
	__u32 tp_pos;
	__u32 ts_pos;
	__u32 lines[2 * TCLAB_HTTP_MAX_LINES]; /* second half: sink, see http.h */
	__u8 head[16];           /* first payload bytes, zero-padded */
};

struct tclab_scratch {
	struct pkt_info pkt;
	struct http_scan scan;
	struct http_event http;
	struct conn_event conn;
	__u8 buf[TCLAB_SCAN_BUF];
};

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
