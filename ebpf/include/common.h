/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes and small helpers every tclab program uses. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tclab_types.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Hide a value from the optimiser: clang turns `x & (flag - 1)` with a
 * 0/1 flag back into a select, i.e. a jump, which is what the branch-free
 * code avoids (each jump doubles the verifier's paths in an unrolled loop). */
#define BF_OPAQUE(x) asm volatile("" : "+r"(x))

/* Branch-free "x == 0" for values below 2^63: 1 when zero, else 0. The BPF
 * ISA has no set-on-condition instruction, so a C comparison becomes a jump,
 * and jumps inside the long scanning loops multiply the states the verifier
 * walks (see traceparent.h). */
static __always_inline __u64 bf_is_zero(__u64 x)
{
	/* opaque: knowing x < 2^63, clang would rewrite this as x == 0 */
	BF_OPAQUE(x);
	return (x - 1) >> 63;
}

/* Branch-free equality of two bytes. */
static __always_inline __u64 bf_eq8(__u64 a, __u64 b)
{
	return bf_is_zero((a ^ b) & 0xff);
}
