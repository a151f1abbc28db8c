/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * SIMD-within-a-register helpers: classify 8 bytes at once. Each returns a
 * mask with 0x80 in every byte that matches (exact: no carries cross
 * bytes). Used by the traceparent checks, where a byte loop costs 55
 * iterations of loads, table lookups and shifts per request.
 */
#pragma once

#include "common.h"

#define SWAR_ONES 0x0101010101010101ULL
#define SWAR_HIGH 0x8080808080808080ULL
#define SWAR_LOW7 0x7f7f7f7f7f7f7f7fULL

static __always_inline __u64 swar_load(const __u8 *p)
{
	return *(const __u64 *)p;
}

/* 0x80 in each byte equal to c. */
static __always_inline __u64 swar_eq(__u64 w, __u8 c)
{
	__u64 x = w ^ (c * SWAR_ONES);

	return ~(((x & SWAR_LOW7) + SWAR_LOW7) | x) & SWAR_HIGH;
}

/* 0x80 in each byte that is lowercase hex: 0-9 or a-f. */
static __always_inline __u64 swar_hex_lower(__u64 w)
{
	__u64 w7 = w & SWAR_LOW7;
	__u64 digit = (w7 + 0x50 * SWAR_ONES) & ~(w7 + 0x46 * SWAR_ONES);
	__u64 af = (w7 + 0x1f * SWAR_ONES) & ~(w7 + 0x19 * SWAR_ONES);

	return (digit | af) & ~w & SWAR_HIGH;
}

/* 0x80 in each byte that is a space or a tab (HTTP's OWS). */
static __always_inline __u64 swar_ows(__u64 w)
{
	return swar_eq(w, ' ') | swar_eq(w, '\t');
}

/* How many bytes from the start (lowest address) carry a mask bit: 0..8. */
static __always_inline __u64 swar_leading(__u64 mask)
{
	__u64 other = ~mask & SWAR_HIGH;
	__u64 first = other & -other; /* 0x80 << 8k for the first non-match */

	/* (256^k * 0x0001020304050607) has k in its top byte */
	return (((first >> 7) * 0x0001020304050607ULL) >> 56) + 8 * bf_is_zero(other >> 7);
}
