/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tclab's datapath: two TC classifiers, tclab_ingress and tclab_egress.
 * Each parses the packet, tracks its connection (ct.h) and reports HTTP
 * requests/responses with their W3C trace context (http.h). They never
 * modify, drop or redirect: every path returns TC_ACT_UNSPEC (TCX_NEXT), so
 * the programs after them still run.
 *
 * Build variants (see ebpf/objects.rs): -DTCLAB_CT_HASH (plain hash CT map),
 * -DTCLAB_EVENTS_PERF (perf event array instead of a ring buffer).
 */
#include "common.h"
#include "counters.h"
#include "parse.h"
#include "ct.h"
#include "http.h"

/**
 * tclab_handle - per-packet work of both hooks
 * @skb: the packet (read only)
 * @dir: enum tclab_dir of the hook
 *
 * Return: TC_ACT_UNSPEC, always.
 */
static __always_inline int tclab_handle(struct __sk_buff *skb, __u8 dir)
{
	struct tclab_scratch *s = scratch_get();
	int r;

	counter_inc(CNT_PACKETS);
	if (!s)
		return TC_ACT_UNSPEC;
	r = parse_packet(skb, &s->pkt);
	if (r == PARSE_NON_IP) {
		counter_inc(CNT_NON_IP);
		return TC_ACT_UNSPEC;
	}
	if (r == PARSE_ERROR) {
		counter_inc(CNT_PARSE_ERRORS);
		return TC_ACT_UNSPEC;
	}
	if (r != PARSE_OK)
		return TC_ACT_UNSPEC;
	ct_process(skb, s, dir);
	if (s->pkt.tuple.nexthdr == IPPROTO_TCP && s->pkt.payload_len > 0)
		http_process(skb, s, dir);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int tclab_ingress(struct __sk_buff *skb)
{
	return tclab_handle(skb, TCLAB_DIR_INGRESS);
}

SEC("classifier")
int tclab_egress(struct __sk_buff *skb)
{
	return tclab_handle(skb, TCLAB_DIR_EGRESS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
