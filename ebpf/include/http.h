/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * HTTP/1.1 on TCP payload: request lines (method + space), status lines
 * ("HTTP/1.x NNN "), the traceparent/tracestate headers of a request, and
 * requests whose head is split across segments.
 *
 * The payload is copied with bpf_skb_load_bytes into the per-CPU scan
 * buffer (it works on non-linear skbs, so no bpf_skb_pull_data is needed,
 * and the packet is never touched). Only the first TCLAB_HTTP_COPY bytes of
 * a segment are looked at; header lines must start in the first
 * TCLAB_HTTP_SCAN bytes.
 *
 * Split requests. A request segment that ends before the end of its header
 * block (and without a traceparent) marks the CT entry CT_F_HTTP_PENDING
 * and leaves a struct http_carry in tclab_http_carry (key: the CT key): the
 * unfinished last line of the segment when it is at most TCLAB_HTTP_CARRY
 * bytes (CARRY_LINE), else the fact that the segment ended inside a line
 * (CARRY_MIDLINE), and the direction of the request. The next segment of
 * that direction is scanned as a continuation with the carried bytes in
 * front of it, so a header name split across the two segments is found and
 * a CR/LF split is not taken for the end of the header block; it emits
 * EV_HTTP_CONTINUATION. A segment of 1..7 bytes that is the start of a
 * method and its space ("GE", "OPTION") is carried as CARRY_PREFIX, and the
 * next segment is classified with it in front: a request split inside its
 * method is recognised, and its event carries the whole request start. The
 * flag clears when the header end or a traceparent is seen. Segments of
 * the other direction are left alone while a request is pending.
 *
 * Limits: a traceparent value cut by the end of a segment is invalid; a
 * carry entry evicted from the LRU map degrades to the old rule (the next
 * segment of either direction starts a line). Pipelined requests in one
 * segment: the scan stops at the first header end, so only the first
 * request's traceparent is read.
 */
#pragma once

#include "ct.h"
#include "events.h"
#include "traceparent.h"
#include "swar.h"

#define LE4(a, b, c, d) ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24)
#define LE8(a, b, c, d, e, f, g, h) (LE4(a, b, c, d) | LE4(e, f, g, h) << 32)

enum http_kind {
	HTTP_NONE = 0,
	HTTP_REQUEST,
	HTTP_RESPONSE,
	HTTP_CONTINUATION,
};

static __always_inline __u64 __http_prefix(__u64 h, __u64 lit, __u32 len)
{
	__u64 mask = len >= 8 ? ~0ULL : (1ULL << (len * 8)) - 1;

	return (h & mask) == lit;
}

static __always_inline int __http_digit(__u8 c)
{
	return c >= '0' && c <= '9';
}

/* Classify a segment from its first 16 bytes (zero-padded). */
static __always_inline int http_classify(const __u8 *head)
{
	__u64 h = *(const __u64 *)head;

	if (__http_prefix(h, LE4('G', 'E', 'T', ' '), 4) ||
	    __http_prefix(h, LE4('P', 'U', 'T', ' '), 4) ||
	    __http_prefix(h, LE8('H', 'E', 'A', 'D', ' ', 0, 0, 0), 5) ||
	    __http_prefix(h, LE8('P', 'O', 'S', 'T', ' ', 0, 0, 0), 5) ||
	    __http_prefix(h, LE8('T', 'R', 'A', 'C', 'E', ' ', 0, 0), 6) ||
	    __http_prefix(h, LE8('P', 'A', 'T', 'C', 'H', ' ', 0, 0), 6) ||
	    __http_prefix(h, LE8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0), 7) ||
	    __http_prefix(h, LE8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' '), 8) ||
	    __http_prefix(h, LE8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' '), 8))
		return HTTP_REQUEST;
	if (__http_prefix(h, LE8('H', 'T', 'T', 'P', '/', '1', '.', 0), 7) &&
	    __http_digit(head[7]) && head[8] == ' ' && __http_digit(head[9]) &&
	    __http_digit(head[10]) && __http_digit(head[11]) &&
	    (head[12] == ' ' || head[12] == '\r'))
		return HTTP_RESPONSE;
	return HTTP_NONE;
}

/* Split-request state per connection (see the top of this file). LRU: a
 * connection that never finishes its request head is evicted in time. */
#define TCLAB_HTTP_CARRY_ENTRIES 8192

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TCLAB_HTTP_CARRY_ENTRIES);
	__type(key, struct ct_tuple);
	__type(value, struct http_carry);
} tclab_http_carry SEC(".maps");

/* 1 when the n (1..7) bytes of h (zero above them) are the start of a
 * method and its space, but not all of it: the request may go on in the
 * next segment. */
static __always_inline int http_method_prefix(__u64 h, __u32 n)
{
	__u64 m;

	if (n == 0 || n > 7)
		return 0;
	m = (1ULL << (n * 8)) - 1;
	return (n < 4 && (h == (LE4('G', 'E', 'T', ' ') & m) || h == (LE4('P', 'U', 'T', ' ') & m))) ||
	       (n < 5 && (h == (LE8('H', 'E', 'A', 'D', ' ', 0, 0, 0) & m) ||
			  h == (LE8('P', 'O', 'S', 'T', ' ', 0, 0, 0) & m))) ||
	       (n < 6 && (h == (LE8('T', 'R', 'A', 'C', 'E', ' ', 0, 0) & m) ||
			  h == (LE8('P', 'A', 'T', 'C', 'H', ' ', 0, 0) & m))) ||
	       (n < 7 && h == (LE8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0) & m)) ||
	       h == (LE8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ') & m) ||
	       h == (LE8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ') & m);
}

/* The CT key of the packet's entry (valid when pkt.ct_found). */
static __always_inline struct ct_tuple *http_ct_key(struct tclab_scratch *s)
{
	return s->pkt.ct_reverse ? &s->pkt.rtuple : &s->pkt.tuple;
}

/* Set or clear CT_F_HTTP_PENDING on the packet's entry. */
static __always_inline void http_set_pending(struct tclab_scratch *s, int on)
{
	struct ct_entry *e = ct_entry_of(s);

	if (!e)
		return;
	if (on)
		e->flags |= CT_F_HTTP_PENDING;
	else
		e->flags &= ~CT_F_HTTP_PENDING;
}

/* Store scan.carry for the packet's connection and mark the entry pending
 * (unless it already is). */
static __always_inline void http_carry_store(struct tclab_scratch *s)
{
	if (!s->pkt.ct_found)
		return;
	s->scan.carry.reply = s->pkt.ct_reverse;
	if (bpf_map_update_elem(&tclab_http_carry, http_ct_key(s), &s->scan.carry, BPF_ANY)) {
		/* better no continuation than one read with a stale carry */
		if (s->pkt.ct_flags & CT_F_HTTP_PENDING)
			http_set_pending(s, 0);
		return;
	}
	if (!(s->pkt.ct_flags & CT_F_HTTP_PENDING))
		http_set_pending(s, 1);
}

/* Scan state lives in map memory, read and written through volatile
 * accesses: otherwise clang keeps it in registers across the loops, and
 * registers that differ per iteration stop the verifier from pruning (the
 * code after the loop would be verified once per exit). */
#define SCAN_GET(field) (*(volatile __u32 *)&(field))
#define SCAN_SET(field, v) (*(volatile __u32 *)&(field) = (v))

/* Index (0..7) of the first byte flagged in a non-zero swar_eq() mask. */
static __always_inline __u64 __http_first(__u64 mask)
{
	/* (256^k * 0x0001020304050607) has k in its top byte */
	return (((mask & -mask) >> 7) * 0x0001020304050607ULL) >> 56;
}

/* Record the position after every LF in the first TCLAB_HTTP_SCAN bytes,
 * eight bytes at a time: a word without LF (most) costs a few
 * instructions, a word with one LF a few more; a word with more
 * ("\r\n\r\n", short lines such as "a:\n") records its second, third
 * and fourth LF on one branch, branch-free (stores past the count land in
 * the sink half). Enough for every line start up to the header end: five
 * LFs in 8 bytes include two adjacent ones, a blank line that starts after
 * one of the first four. The count lives in map memory between words so
 * that the loop's exits all look alike to the verifier; the scan stops
 * when the table is full. */
static __always_inline void http_scan_lines(struct tclab_scratch *s)
{
	struct http_scan *sc = &s->scan;
	__u32 limit = SCAN_GET(sc->copied) + 1;
	__u32 w;

#pragma clang loop unroll(disable)
	for (w = 0; w < TCLAB_HTTP_SCAN / 8; w++) {
		__u32 base = w * 8;
		__u64 nl, nl2;
		__u32 n;

		if (base >= limit)
			break;
		nl = swar_eq(swar_load(SCAN_BUF(s) + base), '\n');
		if (!nl)
			continue;
		n = SCAN_GET(sc->nlines);
		/* the first TCLAB_HTTP_MAX_LINES line starts count; a second LF
		 * of the last word may land in lines[TCLAB_HTTP_MAX_LINES] (the
		 * sink half), which the header walk never reads */
		if (n >= TCLAB_HTTP_MAX_LINES)
			break;
		sc->lines[n] = base + 1 + __http_first(nl);
		nl2 = nl & (nl - 1); /* without the first LF */
		if (nl2) {
			__u64 nl3 = nl2 & (nl2 - 1), nl4 = nl3 & (nl3 - 1);

			sc->lines[n + 1] = base + 1 + __http_first(nl2);
			sc->lines[n + 2] = base + 1 + __http_first(nl3);
			sc->lines[n + 3] = base + 1 + __http_first(nl4);
			n += 1 + (1 ^ bf_is_zero(nl3 >> 7)) + (1 ^ bf_is_zero(nl4 >> 7));
		}
		SCAN_SET(sc->nlines, n + 1);
	}
}

/* Walk the recorded line starts up to the end of the header block and
 * note where traceparent and tracestate start (first occurrence). */
static __always_inline void http_scan_headers(struct tclab_scratch *s)
{
	struct http_scan *sc = &s->scan;
	__u32 j;

#pragma clang loop unroll(disable)
	for (j = 0; j < TCLAB_HTTP_MAX_LINES; j++) {
		__u32 p;
		__u64 w8, w4;
		const __u8 *l;

		if (j >= SCAN_GET(sc->nlines))
			break;
		p = SCAN_GET(sc->lines[j]) & TCLAB_POS_MASK;
		l = SCAN_BUF(s) + p;
		w8 = *(const __u64 *)l;
		/* one compare rejects most lines: they do not start "trace" */
		if (((w8 | 0x2020202020ULL) & 0xffffffffffULL) == LE8('t', 'r', 'a', 'c', 'e', 0, 0, 0)) {
			w8 |= 0x2020202020202020ULL;
			w4 = *(const __u32 *)(l + 8) | 0x00202020;
			if (w8 == LE8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r') &&
			    w4 == LE4('e', 'n', 't', ':') && !SCAN_GET(sc->tp_pos))
				SCAN_SET(sc->tp_pos, p);
			w4 = *(const __u32 *)(l + 7) | 0x00202020;
			if (w8 == LE8('t', 'r', 'a', 'c', 'e', 's', 't', 'a') &&
			    w4 == LE4('a', 't', 'e', ':') && !SCAN_GET(sc->ts_pos))
				SCAN_SET(sc->ts_pos, p);
			continue;
		}
		if ((w8 & 0xff) == '\n' || (w8 & 0xffff) == LE4('\r', '\n', 0, 0)) {
			SCAN_SET(sc->hdr_end, p);
			break;
		}
	}
}

/* Zero TCLAB_SCAN_PAD bytes at p with 8-byte stores: p is not aligned, and
 * clang lowers a memset it cannot prove aligned to single-byte stores (256
 * of them). The verifier accepts unaligned map value accesses. */
static __always_inline void __http_zero_pad(__u8 *p)
{
	int k;

#pragma unroll
	for (k = 0; k < TCLAB_SCAN_PAD / 8; k++)
		((__u64 *)p)[k] = 0;
}

/* Copy the carried bytes and the segment into the scan buffer: buf[0] is
 * a virtual line start when the carry says the next byte starts a line,
 * buf[1..] the carried bytes, then the segment. Returns the segment bytes
 * copied (0: nothing to scan); scan.copied counts both. */
static __always_inline __u32 http_copy(struct __sk_buff *skb, struct tclab_scratch *s)
{
	struct pkt_info *pkt = &s->pkt;
	struct http_scan *sc = &s->scan;
	__u32 n = pkt->payload_len;
	__u32 c = SCAN_GET(sc->carried);

	if (n == 0)
		return 0;
	if (n > TCLAB_HTTP_COPY)
		n = TCLAB_HTTP_COPY;
	/* 1..1024 by arithmetic: older verifiers (5.10) do not learn n >= 1
	 * from a `n != 0` test, and the helper's size must not be 0 */
	n = ((n - 1) & TCLAB_POS_MASK) + 1;
	c &= TCLAB_HTTP_CARRY | (TCLAB_HTTP_CARRY - 1);
	if (c > TCLAB_HTTP_CARRY)
		c = TCLAB_HTTP_CARRY;
	/* the whole carry, then the segment over what is not part of it */
	*(__u64 *)(SCAN_BUF(s) + 1) = *(const __u64 *)&sc->carry.bytes[0];
	*(__u64 *)(SCAN_BUF(s) + 9) = *(const __u64 *)&sc->carry.bytes[8];
	if (bpf_skb_load_bytes(skb, pkt->payload_off, SCAN_BUF(s) + 1 + c, n))
		return 0;
	SCAN_BUF(s)[0] = SCAN_GET(sc->line_start) ? '\n' : 0; /* = tracestate[127] */
	/* zero padding: matches, value checks and captures never see the
	 * previous packet's bytes */
	__http_zero_pad(SCAN_BUF(s) + 1 + c + n);
	SCAN_SET(sc->copied, c + n);
	return n;
}

/* Scan a request or continuation for its trace headers. */
static __always_inline void http_trace_headers(struct tclab_scratch *s)
{
	http_scan_lines(s);
	http_scan_headers(s);
}

/* Traceparent and tracestate of the event: validated/copied when found,
 * zero otherwise. Runs after the scan: tracestate[127] is the scan
 * buffer's virtual line start. */
static __always_inline void http_trace_fields(struct tclab_scratch *s)
{
	struct http_scan *sc = &s->scan;
	struct http_event *ev = &s->http;

	if (SCAN_GET(sc->tp_pos))
		ev->traceparent_status = tp_validate(s, SCAN_GET(sc->tp_pos), ev->traceparent);
	else
		__builtin_memset(ev->traceparent, 0, sizeof(ev->traceparent));
	if (SCAN_GET(sc->ts_pos))
		ev->tracestate_len = ts_copy(s, SCAN_GET(sc->ts_pos), ev->tracestate);
	else
		__builtin_memset(ev->tracestate, 0, sizeof(ev->tracestate));
}

/* A segment of a connection whose request head is pending: a continuation
 * (with the carried line in front), the rest of a split method, or -- for
 * the other direction -- nothing. */
static __always_inline int http_kind_pending(struct __sk_buff *skb, struct tclab_scratch *s)
{
	struct http_scan *sc = &s->scan;
	struct http_carry *c;
	__u32 len, total;

	c = bpf_map_lookup_elem(&tclab_http_carry, http_ct_key(s));
	if (!c) {
		/* evicted: the old rule, the segment starts a line */
		SCAN_SET(sc->line_start, 1);
		return HTTP_CONTINUATION;
	}
	if (c->reply != s->pkt.ct_reverse)
		return HTTP_NONE;
	__builtin_memcpy(&sc->carry, c, sizeof(sc->carry));
	len = sc->carry.len;
	if (len > TCLAB_HTTP_CARRY)
		len = TCLAB_HTTP_CARRY;
	if (sc->carry.state != CARRY_PREFIX) {
		if (sc->carry.state == CARRY_LINE) {
			SCAN_SET(sc->carried, len);
			SCAN_SET(sc->line_start, 1);
		}
		return HTTP_CONTINUATION;
	}
	/* the rest of a split method: classify the two together */
	SCAN_SET(sc->carried, len);
	if (!http_copy(skb, s))
		return HTTP_NONE;
	if (http_classify(SCAN_BUF(s) + 1) == HTTP_REQUEST)
		return HTTP_REQUEST;
	total = SCAN_GET(sc->copied);
	if (total < 8 && http_method_prefix(*(const __u64 *)(SCAN_BUF(s) + 1), total)) {
		/* still only the start of a method ("G" | "E" | "T /") */
		*(__u64 *)&sc->carry.bytes[0] = *(const __u64 *)(SCAN_BUF(s) + 1);
		sc->carry.len = total;
		http_carry_store(s);
	} else {
		http_set_pending(s, 0);
	}
	return HTTP_NONE;
}

/* Classify the segment: request, response, continuation of a pending
 * request, or nothing to do. The result is kept in map memory
 * (scan.kind): a register holding it would split the verifier's states
 * for the scan loops. */
static __always_inline int http_kind_of(struct __sk_buff *skb, struct tclab_scratch *s)
{
	struct pkt_info *pkt = &s->pkt;
	struct http_scan *sc = &s->scan;
	__u32 n = pkt->payload_len < 16 ? pkt->payload_len : 16;
	int kind;

	/* reset what the scan reads (not the whole 0.5 KiB) */
	SCAN_SET(sc->nlines, 0);
	SCAN_SET(sc->hdr_end, 0);
	SCAN_SET(sc->tp_pos, 0);
	SCAN_SET(sc->ts_pos, 0);
	SCAN_SET(sc->copied, 0);
	SCAN_SET(sc->carried, 0);
	SCAN_SET(sc->line_start, 0);
	*(__u64 *)&sc->head[0] = 0;
	*(__u64 *)&sc->head[8] = 0;
	if (n == 0 || bpf_skb_load_bytes(skb, pkt->payload_off, sc->head, ((n - 1) & 15) + 1))
		return HTTP_NONE;
	kind = http_classify(sc->head);
	if (kind == HTTP_NONE && (pkt->ct_flags & CT_F_HTTP_PENDING))
		kind = http_kind_pending(skb, s);
	else if (kind == HTTP_NONE && pkt->payload_len < 8 &&
		 http_method_prefix(*(const __u64 *)sc->head, pkt->payload_len)) {
		/* "GE": perhaps a request split inside its method */
		__builtin_memset(&sc->carry, 0, sizeof(sc->carry));
		*(__u64 *)&sc->carry.bytes[0] = *(const __u64 *)sc->head;
		sc->carry.len = pkt->payload_len;
		sc->carry.state = CARRY_PREFIX;
		http_carry_store(s);
	}
	SCAN_SET(sc->kind, kind);
	return kind;
}

/* Start the event: header, sizes, captured payload; trace fields empty. */
static __always_inline void http_event_start(struct __sk_buff *skb, struct tclab_scratch *s, __u8 dir)
{
	struct http_event *ev = &s->http;
	__u32 kind = SCAN_GET(s->scan.kind);
	__u32 n = SCAN_GET(s->scan.copied);

	event_header_fill(&ev->hdr, skb, &s->pkt, kind == HTTP_REQUEST    ? EV_HTTP_REQUEST
						  : kind == HTTP_RESPONSE ? EV_HTTP_RESPONSE
									  : EV_HTTP_CONTINUATION,
			  dir);
	ev->payload_len = s->pkt.payload_len;
	ev->captured_len = n < TCLAB_PAYLOAD_CAPTURE ? n : TCLAB_PAYLOAD_CAPTURE;
	ev->traceparent_status = TP_MISSING;
	ev->tracestate_len = 0;
	/* carried_len, line_start and the padding, in one store */
	*(__u64 *)&ev->carried_len = (SCAN_GET(s->scan.carried) & 0xff) |
				     (__u64)(kind != HTTP_CONTINUATION || SCAN_GET(s->scan.line_start)) << 8;
	/* payload[] already holds the segment (zero-padded); traceparent and
	 * tracestate are written by http_trace_fields */
}

/* What the next segment needs of this one, in scan.carry: the unfinished
 * last line when it is short, else that the segment ended inside a line.
 * Only what the scan saw is trusted: a segment copied or scanned in part,
 * or with more lines than recorded, leaves "a line starts next" (the rule
 * before carries existed). */
static __always_inline void http_carry_tail(struct tclab_scratch *s)
{
	struct http_scan *sc = &s->scan;
	__u32 end = SCAN_GET(sc->copied) + 1; /* buffer position after the last byte */
	__u32 nl = SCAN_GET(sc->nlines);
	__u32 start, len;
	__u64 keep;
	const __u8 *t;

	*(__u64 *)&sc->carry.bytes[0] = 0;
	*(__u64 *)&sc->carry.bytes[8] = 0;
	*(__u64 *)&sc->carry.len = 0; /* len, state (CARRY_LINE), reply, pad */
	if (SCAN_GET(sc->copied) - SCAN_GET(sc->carried) < s->pkt.payload_len ||
	    end > TCLAB_HTTP_SCAN || nl >= TCLAB_HTTP_MAX_LINES)
		return;
	if (nl)
		start = SCAN_GET(sc->lines[(nl - 1) & (TCLAB_HTTP_MAX_LINES - 1)]);
	else if (SCAN_GET(sc->kind) == HTTP_REQUEST || SCAN_GET(sc->line_start))
		start = 1;
	else
		start = end + TCLAB_HTTP_CARRY + 1; /* no line start in the buffer */
	if (start > end || end - start > TCLAB_HTTP_CARRY) {
		sc->carry.state = CARRY_MIDLINE;
		return;
	}
	len = end - start;
	t = SCAN_BUF(s) + (start & TCLAB_POS_MASK);
	keep = len >= 8 ? ~0ULL : (1ULL << ((len * 8) & 63)) - 1;
	*(__u64 *)&sc->carry.bytes[0] = *(const __u64 *)t & keep;
	keep = len >= 16 ? ~0ULL : len <= 8 ? 0 : (1ULL << (((len - 8) * 8) & 63)) - 1;
	*(__u64 *)&sc->carry.bytes[8] = *(const __u64 *)(t + 8) & keep;
	sc->carry.len = len;
}

/* Counters and the split-request state after the scan: a request or
 * continuation that reaches neither the header end nor a traceparent
 * leaves its tail for the next segment; one that does clears
 * CT_F_HTTP_PENDING. */
static __always_inline void http_finish(struct tclab_scratch *s)
{
	__u32 kind = SCAN_GET(s->scan.kind);
	__u8 tp = s->http.traceparent_status;
	int done = SCAN_GET(s->scan.hdr_end) || tp != TP_MISSING;

	if (kind == HTTP_RESPONSE) {
		counter_inc(CNT_HTTP_RESPONSES);
		return;
	}
	if (kind == HTTP_REQUEST)
		counter_inc(CNT_HTTP_REQUESTS);
	if (tp != TP_MISSING)
		counter_inc(tp == TP_VALID ? CNT_TRACEPARENT_VALID : CNT_TRACEPARENT_INVALID);
	if (done) {
		if (s->pkt.ct_flags & CT_F_HTTP_PENDING)
			http_set_pending(s, 0);
		return;
	}
	http_carry_tail(s);
	http_carry_store(s);
}

static __always_inline void http_process(struct __sk_buff *skb, struct tclab_scratch *s, __u8 dir)
{
#ifdef TCLAB_EVENTS_PERF
	/* bpf_perf_event_output wants the context after the header scan: held
	 * in a register through the scan, it cost the 5.10 and 6.1 verifiers
	 * 303k instructions instead of 180k (more spills, fewer pruned states);
	 * a stack slot is reloaded once. The ring buffer needs no context. */
	struct __sk_buff *volatile out_ctx = skb;
#else
	struct __sk_buff *out_ctx = skb;
#endif

	if (http_kind_of(skb, s) == HTTP_NONE)
		return;
	/* the rest of a split method was copied to be classified */
	if (!SCAN_GET(s->scan.copied) && !http_copy(skb, s))
		return;
	http_event_start(skb, s, dir);
	if (SCAN_GET(s->scan.kind) != HTTP_RESPONSE)
		http_trace_headers(s);
	http_trace_fields(s);
	http_finish(s);
	event_http(out_ctx, s);
}
