/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Global counters: a PERCPU_ARRAY indexed by enum tclab_counter, summed by
 * user space (Datapath::counters). Per-CPU, so no atomics are needed. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tclab_counters SEC(".maps");

static __always_inline void counter_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&tclab_counters, &idx);

	if (v)
		*v += n;
}

static __always_inline void counter_inc(__u32 idx)
{
	counter_add(idx, 1);
}
