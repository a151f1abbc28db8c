/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Built-in chain programs for the lab.
 * - tclab_verdict: returns the verdict set at load (tclab_test_verdict:
 *   TC_ACT_OK, TC_ACT_UNSPEC or TC_ACT_SHOT) and counts the packets and
 *   bytes it saw in its own per-CPU array (slot 0 packets, slot 1 bytes).
 * - tclab_empty: returns TC_ACT_UNSPEC and nothing else; the baseline the
 *   datapath's per-packet cost is measured against.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

volatile const int tclab_test_verdict = TC_ACT_UNSPEC;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} tclab_test_stats SEC(".maps");

static __always_inline void stats_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&tclab_test_stats, &idx);

	if (v)
		*v += n;
}

SEC("classifier")
int tclab_verdict(struct __sk_buff *skb)
{
	stats_add(0, 1);
	stats_add(1, skb->len);
	return tclab_test_verdict;
}

SEC("classifier")
int tclab_empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "Dual BSD/GPL";
