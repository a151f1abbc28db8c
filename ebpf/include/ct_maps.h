/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The CT map. One map for both families (struct ct_tuple holds 16-byte
 * addresses). max_entries is the Cilium default and is overridden at load
 * (Datapath::load, aya map_max_entries). The map type is chosen at build
 * time: LRU (default, old entries are evicted) or, with -DTCLAB_CT_HASH, a
 * plain hash whose inserts fail when it is full (Cilium's "CT: Map insertion
 * failed"), which is what the lab uses to exercise that path.
 */
#pragma once

#include "common.h"

#define TCLAB_CT_MAP_SIZE 524288

#ifdef TCLAB_CT_HASH
#define TCLAB_CT_MAP_TYPE BPF_MAP_TYPE_HASH
#else
#define TCLAB_CT_MAP_TYPE BPF_MAP_TYPE_LRU_HASH
#endif

struct {
	__uint(type, TCLAB_CT_MAP_TYPE);
	__uint(max_entries, TCLAB_CT_MAP_SIZE);
	__type(key, struct ct_tuple);
	__type(value, struct ct_entry);
} tclab_ct SEC(".maps");
