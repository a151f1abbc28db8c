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
 * Everything is branch-free, eight bytes at a time (swar.h): the BPF ISA
 * has no set-on-condition, so every C comparison would be a jump that the
 * verifier walks separately, and a byte loop costs ~4x more at run time.
 */
#pragma once

#include "scratch.h"
#include "swar.h"

#define TP_MAX_OWS 16

#define TPC_EOL 8   /* CR, LF: ends a header value */

static const __u8 tp_class[256] = {
	['\r'] = TPC_EOL, ['\n'] = TPC_EOL,
};

static __always_inline __u64 tp_cls(__u8 c, __u32 bit_shift)
{
	return (tp_class[c] >> bit_shift) & 1;
}

/* Skip at most TP_MAX_OWS spaces/tabs from buffer position v. The usual
 * cases (no space, one space) are tested first: they skip the two-word
 * count (a third of the validation's instructions). */
static __always_inline __u32 tp_skip_ows(const struct tclab_scratch *s, __u32 v)
{
	const __u8 *p = SCAN_BUF(s) + (v & TCLAB_POS_MASK);
	__u64 n, n2;

	if (p[0] != ' ' && p[0] != '\t')
		return v;
	if (p[1] != ' ' && p[1] != '\t')
		return v + 1;
	n = swar_leading(swar_ows(swar_load(p)));
	n2 = swar_leading(swar_ows(swar_load(SCAN_BUF(s) + ((v + 8) & TCLAB_POS_MASK))));

	/* the second word counts only if the first was all OWS */
	return v + n + (n2 & -bf_is_zero(n ^ 8));
}

/* Masks for the version-00 layout, byte k of the word at offset o:
 * 0x80 where a hex digit / a dash is expected (constants after inlining). */
static __always_inline __u64 __tp_layout_mask(int o, int dash)
{
	__u64 m = 0;
	int j;

#pragma unroll
	for (j = 0; j < 8; j++) {
		int i = o + j;
		int is_dash = i == 2 || i == 35 || i == 52;

		if (i < TCLAB_TRACEPARENT_LEN && is_dash == dash)
			m |= 0x80ULL << (8 * j);
	}
	return m;
}

/* 0xff in byte k of the word at offset o when index o+k is in [lo, hi). */
static __always_inline __u64 __tp_range_mask(int o, int lo, int hi)
{
	__u64 m = 0;
	int j;

#pragma unroll
	for (j = 0; j < 8; j++)
		if (o + j >= lo && o + j < hi)
			m |= 0xffULL << (8 * j);
	return m;
}

/* Validate the traceparent whose header name starts at buffer position
 * pos. On success copy the 55 characters (version 00 layout) to out and
 * return TP_VALID; otherwise zero out and return TP_INVALID. */
static __always_inline __u8 tp_validate(const struct tclab_scratch *s, __u32 pos, __u8 *out)
{
	__u32 v = tp_skip_ows(s, pos + sizeof("traceparent:") - 1);
	const __u8 *t = SCAN_BUF(s) + (v & TCLAB_POS_MASK);
	__u64 bad = 0, nz_trace = 0, nz_parent = 0, head, is00, eol, dash;
	__u32 e;
	int o;

	/* seven words cover the 55 characters; byte 55 is checked below */
#pragma unroll
	for (o = 0; o < 56; o += 8) {
		__u64 w = swar_load(t + o);
		__u64 hex = __tp_layout_mask(o, 0), dashes = __tp_layout_mask(o, 1);

		bad |= (swar_hex_lower(w) & hex) ^ hex;
		bad |= (swar_eq(w, '-') & dashes) ^ dashes;
		nz_trace |= (w ^ ('0' * SWAR_ONES)) & __tp_range_mask(o, 3, 35);
		nz_parent |= (w ^ ('0' * SWAR_ONES)) & __tp_range_mask(o, 36, 52);
	}
	head = *(const __u16 *)t;
	is00 = bf_is_zero(head ^ ('0' | '0' << 8));
	bad |= bf_is_zero(head ^ ('f' | 'f' << 8)) << 7;
	e = tp_skip_ows(s, v + TCLAB_TRACEPARENT_LEN);
	eol = tp_cls(SCAN_BUF(s)[e & TCLAB_POS_MASK], 3);
	dash = bf_eq8(t[TCLAB_TRACEPARENT_LEN], '-');
	bad |= (1 ^ (eol | ((1 ^ is00) & dash))) << 7;
	bad |= bf_is_zero((nz_trace >> 32) | (nz_trace & 0xffffffff)) << 7;
	bad |= bf_is_zero((nz_parent >> 32) | (nz_parent & 0xffffffff)) << 7;

	if (!bad) {
		/* word copies (t is unaligned: memcpy would go byte by byte) */
#pragma unroll
		for (o = 0; o < 56; o += 8)
			*(__u64 *)(out + o) = swar_load(t + o);
		out[TCLAB_TRACEPARENT_LEN] = 0;
		return TP_VALID;
	}
#pragma unroll
	for (o = 0; o < 56; o += 8)
		*(__u64 *)(out + o) = 0;
	return TP_INVALID;
}

/* Copy the tracestate value (header name at pos) up to the end of its line
 * or TCLAB_TRACESTATE_MAX bytes; bytes after the value are zeroed. Returns
 * the length (leading spaces/tabs skipped, trailing ones kept). Eight bytes
 * at a time, branch-free, like the traceparent check. */
static __always_inline __u8 ts_copy(const struct tclab_scratch *s, __u32 pos, __u8 *out)
{
	__u32 v = tp_skip_ows(s, pos + sizeof("tracestate:") - 1);
	const __u8 *t = SCAN_BUF(s) + (v & TCLAB_POS_MASK);
	__u64 len = 0, found = 0;
	int o;

	/* length: bytes before the first CR, LF or NUL (end of capture) */
#pragma unroll
	for (o = 0; o < TCLAB_TRACESTATE_MAX; o += 8) {
		__u64 w = swar_load(t + o);
		__u64 end = swar_eq(w, '\r') | swar_eq(w, '\n') | swar_eq(w, 0);

		__u64 lead = swar_leading(~end & SWAR_HIGH);
		__u64 before = found - 1; /* all ones until an end was seen */

		BF_OPAQUE(before);
		len += lead & before;
		found |= 1 ^ bf_is_zero(end >> 7);
		BF_OPAQUE(found);
	}
	/* copy whole words, keeping only the bytes before len */
#pragma unroll
	for (o = 0; o < TCLAB_TRACESTATE_MAX; o += 8) {
		__u64 r = len - o; /* bytes of this word to keep, clamped to 0..8 */
		__u64 keep;

		r &= -(1 ^ (r >> 63));                  /* below 0 -> 0 */
		r = r - ((r - 8) & -(1 ^ ((r - 8) >> 63))); /* above 8 -> 8 */
		keep = ((1ULL << ((r * 8) & 63)) - 1) | -(r >> 3);
		*(__u64 *)(out + o) = swar_load(t + o) & keep;
	}
	return len;
}
