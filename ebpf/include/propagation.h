/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Context propagation (propagation.c): maps, load-time constants and the
 * helpers the programs share: connection keys, the HTTP head scan over the
 * per-CPU scan buffer, W3C ids in hex, events and counters.
 *
 * The HTTP head of a request (from a socket's message, a read buffer or a
 * packet) is copied to SCAN_BUF(s)[1..n] of the datapath's scratch value,
 * with a virtual line feed at [0] and zeros after it, so traceparent.h's
 * tp_validate applies the same W3C rules as the datapath.
 */
#pragma once

#include "common.h"
#include "scratch.h"
#include "swar.h"
#include "traceparent.h"
#include "propagation_types.h"
#include "propagation_tls.h"

/* Load-time constants (set by datapath/src/propagation.rs). */
volatile const __u32 tclab_prop_mode = 0;       /* enum prop_mode_bit */
volatile const __u32 tclab_prop_new_flags = 1;  /* trace flags of new traces (sampled) */

/* Bytes of a request head looked at (request line, headers). */
#define PROP_SCAN 512
#define PROP_HDR_LEN 70 /* "Traceparent: " + 55 + CRLF */
#define PROP_LINEAR 4096 /* bytes of a message made contiguous after an insertion */
#define PROP_ENTRIES 16384

/* x & mask, kept as an instruction: clang drops a mask it can prove
 * redundant, but after a spill the verifier may no longer know the bound
 * (6.1 rejects the access without it). */
#define PROP_BOUND(x, mask)                                                                        \
	({                                                                                         \
		__u64 __b = (x);                                                                   \
		BF_OPAQUE(__b);                                                                    \
		__b & (mask);                                                                      \
	})

#define PROP_GET(field) (*(volatile __u32 *)&(field))
#define PROP_SET(field, v) (*(volatile __u32 *)&(field) = (v))

/* Slot 0: the cgroup whose threads the probes act for (and its descendants). */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} tclab_prop_cgroup SEC(".maps");

/* Sockets of the cgroup, so that tclab_prop_msg runs on their messages. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, PROP_ENTRIES);
	__uint(key_size, sizeof(struct prop_key));
	__uint(value_size, sizeof(__u32));
} tclab_prop_sockhash SEC(".maps");

/* pid_tgid -> the request the thread is serving. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PROP_ENTRIES);
	__type(key, __u64);
	__type(value, struct prop_thread);
} tclab_prop_threads SEC(".maps");

/* Client context of a connection's current request (for the TCP and IP options). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PROP_ENTRIES);
	__type(key, struct prop_key);
	__type(value, struct prop_ctx);
} tclab_prop_out SEC(".maps");

/* The context of the request a connection received last, until a thread
 * reads it: from its traceparent (TC ingress), our IP option (TC ingress)
 * or our TCP option (sockops). span_id is the caller's span. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PROP_ENTRIES);
	__type(key, struct prop_key);
	__type(value, struct prop_ctx);
} tclab_prop_in SEC(".maps");

/* Accepted connections: the thread (pid_tgid) serving the request read
 * last on each, 0 once its response has left (sockops sees it go). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PROP_ENTRIES);
	__type(key, struct prop_key);
	__type(value, __u64);
} tclab_prop_served SEC(".maps");

/* TLS client connections: the server span (of the sending thread) their
 * current client context was opened for (0: none), so that a kept-alive
 * connection used for another served request gets a new client span. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PROP_ENTRIES);
	__type(key, struct prop_key);
	__type(value, __u64);
} tclab_prop_tls SEC(".maps");

/* The caller span id of the last TCP/IP option taken per connection: every
 * segment of a request carries the option, one request is one context. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, PROP_ENTRIES);
	__type(key, struct prop_key);
	__type(value, __u64);
} tclab_prop_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} tclab_prop_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tclab_prop_counters SEC(".maps");

/* Atomic although per-CPU: unlike TC (softirq or BH off), sock_ops,
 * sk_msg and the tracepoint also run in process context with only
 * migration disabled, so two programs on one CPU can interleave a plain
 * `+= 1` and lose a count. */
static __always_inline void prop_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tclab_prop_counters, &idx);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* ------------------------------------------------------------ keys */

/* v4-mapped IPv6 (::ffff:a.b.c.d) keyed as IPv4, as the packets carry it. */
static __always_inline void prop_key_unmap(struct prop_key *k)
{
	__u32 *l = (__u32 *)k->local, *r = (__u32 *)k->remote;

	if (k->family != TCLAB_AF_INET6)
		return;
	if (l[0] | l[1] | r[0] | r[1] || l[2] != bpf_htonl(0xffff) || r[2] != bpf_htonl(0xffff))
		return;
	l[0] = l[3];
	r[0] = r[3];
	l[2] = 0;
	l[3] = 0;
	r[2] = 0;
	r[3] = 0;
	k->family = TCLAB_AF_INET;
}

static __always_inline void prop_key_zero(struct prop_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
}

/* Store *val under key: over the key's value in place when it has one (a
 * lookup and a copy), else inserted. The per-request entries (a
 * connection's incoming context, a thread's request, a connection's
 * outgoing one) come back for the same keys request after request, and an
 * LRU map's update takes its locks and lists where a store does not. A
 * reader on another CPU may see a half-written value only when two
 * requests of one connection overlap, which HTTP/1.1 does not do. */
#define PROP_PUT(map, key, val)                                                  \
	do {                                                                     \
		typeof(val) __cur = bpf_map_lookup_elem(map, key);               \
		if (__cur)                                                       \
			*__cur = *(val);                                         \
		else                                                             \
			bpf_map_update_elem(map, key, val, BPF_ANY);             \
	} while (0)

/* 1 when c (from an option) is not the one last taken on the connection
 * (and remember it). */
static __always_inline int prop_opt_fresh(const struct prop_key *k, const struct prop_ctx *c)
{
	__u64 span = *(const __u64 *)c->span_id;
	__u64 *last = bpf_map_lookup_elem(&tclab_prop_seen, k);

	if (last && *last == span)
		return 0;
	if (last)
		*last = span;
	else
		bpf_map_update_elem(&tclab_prop_seen, k, &span, BPF_ANY);
	return 1;
}

/* ------------------------------------------------------------ HTTP head */

/* First 8 bytes start a request ("GET " … "OPTIONS "). */
static __always_inline int prop_is_request(__u64 h)
{
#define P4(a, b, c, d) ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24)
#define P8(a, b, c, d, e, f, g, k) (P4(a, b, c, d) | P4(e, f, g, k) << 32)
	__u32 lo = h;

	return lo == P4('G', 'E', 'T', ' ') || lo == P4('P', 'U', 'T', ' ') ||
	       (h & 0xffffffffffULL) == P8('H', 'E', 'A', 'D', ' ', 0, 0, 0) ||
	       (h & 0xffffffffffULL) == P8('P', 'O', 'S', 'T', ' ', 0, 0, 0) ||
	       (h & 0xffffffffffffULL) == P8('T', 'R', 'A', 'C', 'E', ' ', 0, 0) ||
	       (h & 0xffffffffffffULL) == P8('P', 'A', 'T', 'C', 'H', ' ', 0, 0) ||
	       (h & 0xffffffffffffffULL) == P8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0) ||
	       h == P8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ') || h == P8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ');
}

/* Virtual line start and zero padding around n copied bytes. */
static __always_inline void prop_buf_frame(struct tclab_scratch *s, __u32 n)
{
	__u8 *p = SCAN_BUF(s) + 1 + PROP_BOUND(n, PROP_SCAN | (PROP_SCAN - 1));
	int k;

	SCAN_BUF(s)[0] = '\n';
#pragma unroll
	for (k = 0; k < 8; k++)
		((__u64 *)p)[k] = 0;
}

/* Record a line start (branch-free, as http.h). */
static __always_inline __u64 __prop_line(struct http_scan *sc, __u64 n, __u64 pos, __u64 has)
{
	sc->lines[n & (2 * TCLAB_HTTP_MAX_LINES - 1)] = pos;
	return n + (has & ((n - TCLAB_HTTP_MAX_LINES) >> 63));
}

/* Scan the n bytes at SCAN_BUF(s)[1..]: line starts into scan.lines
 * (lines[0] = 1, the request line), the traceparent header's position
 * (scan.tp_pos, 0: none) and the header end (scan.hdr_end). */
static __always_inline void prop_scan(struct tclab_scratch *s, __u32 n)
{
	struct http_scan *sc = &s->scan;
	__u32 w, j;

	PROP_SET(sc->nlines, 0);
	PROP_SET(sc->tp_pos, 0);
	PROP_SET(sc->hdr_end, 0);
	PROP_SET(sc->copied, n);
#pragma clang loop unroll(disable)
	for (w = 0; w < PROP_SCAN / 8; w++) {
		__u32 base = w * 8;
		__u64 nl, nl2, k;

		if (base > PROP_GET(sc->copied))
			break;
		nl = swar_eq(swar_load(SCAN_BUF(s) + base), '\n');
		if (!nl)
			continue;
		nl2 = nl & (nl - 1);
		k = PROP_GET(sc->nlines);
		k = __prop_line(sc, k, base + 1 + swar_leading(~nl & SWAR_HIGH), 1);
		k = __prop_line(sc, k, base + 1 + swar_leading(~nl2 & SWAR_HIGH), 1 ^ bf_is_zero(nl2 >> 7));
		PROP_SET(sc->nlines, k);
	}
#pragma clang loop unroll(disable)
	for (j = 1; j < TCLAB_HTTP_MAX_LINES; j++) {
		__u32 p;
		__u64 w8, w4;
		const __u8 *l;

		if (j >= PROP_GET(sc->nlines))
			break;
		p = PROP_GET(sc->lines[j]) & TCLAB_POS_MASK;
		l = SCAN_BUF(s) + p;
		w8 = *(const __u64 *)l;
		if ((w8 & 0xff) == '\n' || (w8 & 0xffff) == P4('\r', '\n', 0, 0)) {
			PROP_SET(sc->hdr_end, p);
			break;
		}
		w4 = *(const __u32 *)(l + 8) | 0x00202020;
		if ((w8 | 0x2020202020202020ULL) == P8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r') &&
		    w4 == P4('e', 'n', 't', ':')) {
			PROP_SET(sc->tp_pos, p);
			break;
		}
	}
}

/* ------------------------------------------------------------ ids */

static __always_inline void prop_random(__u8 *out, int words)
{
	__u32 any = 0;
	int k;

#pragma unroll
	for (k = 0; k < words; k++) {
		__u32 r = bpf_get_prandom_u32();

		any |= r;
		__builtin_memcpy(out + 4 * k, &r, 4);
	}
	if (!any)
		out[4 * words - 1] = 1; /* W3C: never all zero */
}

/* A new context: random trace (unless given) and span ids. */
static __always_inline void prop_new_span(struct prop_ctx *c)
{
	prop_random(c->span_id, 2);
}

static __always_inline __u8 prop_hexc(__u32 v)
{
	return v + '0' + 39 * ((9 - v) >> 31);
}

static __always_inline void prop_hex(__u8 *out, const __u8 *in, int n)
{
	int k;

#pragma unroll
	for (k = 0; k < n; k++) {
		out[2 * k] = prop_hexc(in[k] >> 4);
		out[2 * k + 1] = prop_hexc(in[k] & 15);
	}
}

/* Lower-case hex (already validated) to bytes. */
static __always_inline void prop_unhex(__u8 *out, const __u8 *in, int n)
{
	int k;

#pragma unroll
	for (k = 0; k < n; k++) {
		__u8 h = in[2 * k], l = in[2 * k + 1];

		out[k] = (((h & 0xf) + 9 * (h >> 6)) << 4) | ((l & 0xf) + 9 * (l >> 6));
	}
}

/* A validated 55-character traceparent into trace/span/flags. */
static __always_inline void prop_ctx_from_tp(struct prop_ctx *c, const __u8 *tp)
{
	__u8 f;

	prop_unhex(c->trace_id, tp + 3, 16);
	prop_unhex(c->span_id, tp + 36, 8);
	prop_unhex(&f, tp + 53, 1);
	c->flags = f;
}

/* "Traceparent: 00-<trace>-<span>-<flags>\r\n" into out[0..70). */
static __always_inline void prop_header(__u8 *out, const struct prop_ctx *c)
{
	__builtin_memcpy(out, "Traceparent: 00-", 16);
	prop_hex(out + 16, c->trace_id, 16);
	out[48] = '-';
	prop_hex(out + 49, c->span_id, 8);
	out[65] = '-';
	prop_hex(out + 66, &c->flags, 1);
	out[68] = '\r';
	out[69] = '\n';
}

/* ------------------------------------------------------------ events */

/* The event being built (map memory: keeps it off the 512-byte stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct prop_event);
} tclab_prop_event SEC(".maps");

/* id: pid_tgid of the current task. */
static __always_inline void prop_emit(__u32 kind, const struct prop_key *key, const struct prop_ctx *c,
				      const __u8 *parent, __u8 tp_status, __u8 injected, __u64 id)
{
	__u32 zero = 0;
	struct prop_event *ev = bpf_map_lookup_elem(&tclab_prop_event, &zero);

	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->kind = kind;
	ev->tgid = id >> 32;
	ev->tid = id;
	ev->tp_status = tp_status;
	ev->injected = injected;
	__builtin_memcpy(&ev->conn, key, sizeof(ev->conn));
	if (c) {
		ev->origin = c->origin;
		ev->flags = c->flags;
		ev->opaque = c->opaque;
		__builtin_memcpy(ev->trace_id, c->trace_id, 16);
		__builtin_memcpy(ev->span_id, c->span_id, 8);
	}
	if (parent)
		__builtin_memcpy(ev->parent_id, parent, 8);
	/* The agent drains this ring whenever it reads the datapath's events
	 * and never sleeps on it: a wake-up (an irq_work self-IPI, a VM exit
	 * here) would be paid for nothing, up to five times per request. */
	if (bpf_ringbuf_output(&tclab_prop_events, ev, sizeof(*ev), BPF_RB_NO_WAKEUP))
		prop_count(PC_EVENTS_LOST);
}
