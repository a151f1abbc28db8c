/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tclab's datapath: two TC classifiers, tclab_ingress and tclab_egress.
 * Each parses the packet and tracks its connection (ct.h); a TCP segment
 * with payload goes on, by tail call, to tclab_http, which reports HTTP
 * requests/responses with their W3C trace context (http.h). None of them
 * modifies, drops or redirects: every path returns TC_ACT_UNSPEC
 * (TCX_NEXT), so the programs after them still run.
 *
 * Why a tail call: the HTTP code is most of what the verifier walks (on
 * 5.10 and 6.1, 160k of each classifier's 172k instructions when it was
 * inlined), and it does not depend on the hook: the direction is one byte
 * of its event, passed in the scratch space with everything else. As its
 * own program it is verified once per load instead of once per hook, which
 * more than halves the verifier's work at every agent start. The loader
 * fills tclab_http_prog before anything is attached; an empty slot would
 * end the packet's work after CT, still TC_ACT_UNSPEC.
 *
 * Build variants (see ebpf/objects.rs): -DTCLAB_CT_HASH (plain hash CT map),
 * -DTCLAB_EVENTS_PERF (perf event array instead of a ring buffer).
 */
#include "common.h"
#include "counters.h"
#include "parse.h"
#include "ct.h"
#include "http.h"

/* Slot 0: tclab_http, set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tclab_http_prog SEC(".maps");

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
	if (s->pkt.tuple.nexthdr == IPPROTO_TCP && s->pkt.payload_len > 0) {
		s->pkt.dir = dir;
		bpf_tail_call(skb, &tclab_http_prog, 0);
	}
	return TC_ACT_UNSPEC;
}

/* The HTTP part of both hooks (see the top of this file): reached only by
 * tail call, with the scratch space as the hook left it. */
SEC("classifier")
int tclab_http(struct __sk_buff *skb)
{
	struct tclab_scratch *s = scratch_get();

	if (s)
		http_process(skb, s, s->pkt.dir);
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
