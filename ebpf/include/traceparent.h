/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * W3C Trace Context level 1 validation of a traceparent value found by the
 * HTTP header scan (http.h), and the tracestate copy. The Rust reference is
 * datapath/src/w3c.rs; a differential test runs both on the same inputs.
 *
 * Rules: the value may be surrounded by spaces/tabs (at most TP_MAX_OWS on
 * each side here: more is treated as invalid); version is 2 lowercase hex
 * digits, `ff` is invalid; then `-` 32 lowercase hex (trace-id, not all
 * zero) `-` 16 lowercase hex (parent-id, not all zero) `-` 2 lowercase hex
 * (flags). Version 00 ends there (exactly 55 characters); a later version
 * may continue with `-` and more fields (the spec: "either the end of the
 * string or a dash"). The value must end with CR/LF inside the captured
 * bytes: a value cut by the end of the segment is invalid.
 *
 * Everything is branch-free arithmetic over a character class table: the
 * BPF ISA has no set-on-condition, so every C comparison would be a jump,
 * and the verifier walks each jump of the 55-character check separately.
 */
#pragma once

#include "scratch.h"

#define TP_MAX_OWS 16

#define TPC_HEX 1   /* 0-9 a-f */
#define TPC_NZ 2    /* 1-9 a-f */
#define TPC_WS 4    /* space, tab */
#define TPC_EOL 8   /* CR, LF: ends a header value */
#define TPC_NUL 16  /* end of the captured bytes (zero padding) */

#define __TP_DIGIT(c) [c] = TPC_HEX | ((c) != '0' ? TPC_NZ : 0)
static const __u8 tp_class[256] = {
	__TP_DIGIT('0'), __TP_DIGIT('1'), __TP_DIGIT('2'), __TP_DIGIT('3'), __TP_DIGIT('4'),
	__TP_DIGIT('5'), __TP_DIGIT('6'), __TP_DIGIT('7'), __TP_DIGIT('8'), __TP_DIGIT('9'),
	__TP_DIGIT('a'), __TP_DIGIT('b'), __TP_DIGIT('c'), __TP_DIGIT('d'), __TP_DIGIT('e'),
	__TP_DIGIT('f'),
	[' '] = TPC_WS, ['\t'] = TPC_WS,
	['\r'] = TPC_EOL, ['\n'] = TPC_EOL,
	[0] = TPC_NUL,
};

static __always_inline __u64 tp_cls(__u8 c, __u32 bit_shift)
{
	return (tp_class[c] >> bit_shift) & 1;
}

/* Skip at most TP_MAX_OWS spaces/tabs from buffer position v. */
static __always_inline __u32 tp_skip_ows(const struct tclab_scratch *s, __u32 v)
{
	__u64 still = 1;
	int k;

#pragma unroll
	for (k = 0; k < TP_MAX_OWS; k++) {
		still &= tp_cls(s->buf[v & TCLAB_POS_MASK], 2);
		v += still;
	}
	return v;
}

/* Validate the traceparent whose header name starts at buffer position
 * pos. On success copy the 55 characters (version 00 layout) to out and
 * return TP_VALID; otherwise zero out and return TP_INVALID. */
static __always_inline __u8 tp_validate(const struct tclab_scratch *s, __u32 pos, __u8 *out)
{
	__u32 v = tp_skip_ows(s, pos + sizeof("traceparent:") - 1);
	const __u8 *t = s->buf + (v & TCLAB_POS_MASK);
	__u64 ok = 1, nz_trace = 0, nz_parent = 0, is00, eol, dash;
	__u32 e;
	int k;

#pragma unroll
	for (k = 0; k < TCLAB_TRACEPARENT_LEN; k++) {
		if (k == 2 || k == 35 || k == 52)
			ok &= bf_eq8(t[k], '-');
		else
			ok &= tp_cls(t[k], 0);
		if (k >= 3 && k < 35)
			nz_trace |= tp_cls(t[k], 1);
		if (k >= 36 && k < 52)
			nz_parent |= tp_cls(t[k], 1);
	}
	ok &= 1 ^ (bf_eq8(t[0], 'f') & bf_eq8(t[1], 'f'));
	is00 = bf_eq8(t[0], '0') & bf_eq8(t[1], '0');
	e = tp_skip_ows(s, v + TCLAB_TRACEPARENT_LEN);
	eol = tp_cls(s->buf[e & TCLAB_POS_MASK], 3);
	dash = bf_eq8(t[TCLAB_TRACEPARENT_LEN], '-');
	ok &= nz_trace & nz_parent & (eol | ((1 ^ is00) & dash));

	if (ok) {
		__builtin_memcpy(out, t, TCLAB_TRACEPARENT_LEN);
		out[TCLAB_TRACEPARENT_LEN] = 0;
		return TP_VALID;
	}
	__builtin_memset(out, 0, TCLAB_TRACEPARENT_LEN + 1);
	return TP_INVALID;
}

/* Copy the tracestate value (header name at pos) up to the end of its line
 * or TCLAB_TRACESTATE_MAX bytes; bytes after the value are zeroed. Returns
 * the length (leading spaces/tabs skipped, trailing ones kept). */
static __always_inline __u8 ts_copy(const struct tclab_scratch *s, __u32 pos, __u8 *out)
{
	__u32 v = tp_skip_ows(s, pos + sizeof("tracestate:") - 1);
	const __u8 *t = s->buf + (v & TCLAB_POS_MASK);
	__u64 still = 1, len = 0;
	int k;

#pragma unroll
	for (k = 0; k < TCLAB_TRACESTATE_MAX; k++) {
		__u8 c = t[k];

		still &= 1 ^ (tp_cls(c, 3) | tp_cls(c, 4));
		out[k] = c * still;
		len += still;
	}
	return len;
}
