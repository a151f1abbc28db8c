/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Cilium-like programs for the lab's chain scenarios (issue 5). They carry
 * the names Cilium gives its TC programs, so that detection by name is
 * exercised, and one neutral program from "another vendor". Each loaded
 * instance gets its behaviour from read-only data set at load:
 *   OK (TC_ACT_OK), UNSPEC (TC_ACT_UNSPEC/TCX_NEXT), DROP (TC_ACT_SHOT),
 *   REDIRECT to an ifindex (bpf_redirect; tclab_cil_redirect_flags = 1
 *   (BPF_F_INGRESS) delivers to that device's ingress instead of its egress), or
 *   DNAT: service addr:port -> backend addr:port on IPv4 TCP/UDP (and the
 *   reverse rewrite of the backend's replies), checksums kept valid; the
 *   verdict after a rewrite is tclab_cil_nat_verdict.
 * Counters (per-CPU array): 0 packets, 1 DNAT rewrites, 2 reverse rewrites,
 * 3 rewrite failures.
 */
#include "common.h"
#include "nat.h"

enum cil_action {
	CIL_OK = 0,
	CIL_UNSPEC = 1,
	CIL_DROP = 2,
	CIL_REDIRECT = 3,
	CIL_DNAT = 4,
};

volatile const __u32 tclab_cil_action = CIL_UNSPEC;
volatile const __u32 tclab_cil_ifindex = 0;
volatile const __u32 tclab_cil_redirect_flags = 0;
volatile const __s32 tclab_cil_nat_verdict = TC_ACT_UNSPEC;
/* network byte order, as on the wire */
volatile const __u32 tclab_cil_svc_addr = 0;
volatile const __u16 tclab_cil_svc_port = 0;
volatile const __u32 tclab_cil_backend_addr = 0;
volatile const __u16 tclab_cil_backend_port = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} tclab_cil_stats SEC(".maps");

static __always_inline void cil_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tclab_cil_stats, &idx);

	if (v)
		*v += 1;
}

/* DNAT towards the backend, or the reverse rewrite of its replies. */
static __always_inline int cil_nat(struct __sk_buff *skb)
{
	struct nat4_loc l;

	if (nat4_locate(skb, &l))
		return TC_ACT_UNSPEC; /* not ours: untouched */
	if (l.daddr == tclab_cil_svc_addr && l.dport == tclab_cil_svc_port) {
		if (nat4_rewrite(skb, &l, 1, tclab_cil_backend_addr, tclab_cil_backend_port)) {
			cil_count(3);
			return TC_ACT_SHOT; /* half-rewritten: never let it out */
		}
		cil_count(1);
		return tclab_cil_nat_verdict;
	}
	if (l.saddr == tclab_cil_backend_addr && l.sport == tclab_cil_backend_port) {
		if (nat4_rewrite(skb, &l, 0, tclab_cil_svc_addr, tclab_cil_svc_port)) {
			cil_count(3);
			return TC_ACT_SHOT;
		}
		cil_count(2);
		return tclab_cil_nat_verdict;
	}
	return TC_ACT_UNSPEC;
}

static __always_inline int cil_handle(struct __sk_buff *skb)
{
	cil_count(0);
	switch (tclab_cil_action) {
	case CIL_OK:
		return TC_ACT_OK;
	case CIL_DROP:
		return TC_ACT_SHOT;
	case CIL_REDIRECT:
		return bpf_redirect(tclab_cil_ifindex, tclab_cil_redirect_flags);
	case CIL_DNAT:
		return cil_nat(skb);
	default:
		return TC_ACT_UNSPEC;
	}
}

SEC("classifier")
int cil_from_netdev(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

SEC("classifier")
int cil_to_netdev(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

SEC("classifier")
int cil_from_container(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

SEC("classifier")
int cil_to_container(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

SEC("classifier")
int cil_from_host(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

SEC("classifier")
int cil_to_host(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

SEC("classifier")
int cil_from_overlay(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

SEC("classifier")
int cil_to_overlay(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

/* A neutral program from "another vendor": same behaviours, other name. */
SEC("classifier")
int acme_tc_filter(struct __sk_buff *skb)
{
	return cil_handle(skb);
}

char _license[] SEC("license") = "Dual BSD/GPL";
