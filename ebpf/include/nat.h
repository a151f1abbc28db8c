/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * IPv4 address/port rewrite with incremental checksum updates, for the
 * Cilium-like test programs (ciliumlike.c): the IP header checksum through
 * bpf_l3_csum_replace, the TCP/UDP checksum (pseudo header included)
 * through bpf_l4_csum_replace. A UDP checksum of zero ("none") stays zero
 * (BPF_F_MARK_MANGLED_0).
 */
#pragma once

#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "common.h"

/* Where the rewritable fields of an IPv4 TCP/UDP packet are. */
struct nat4_loc {
	__u32 ip_off;   /* IPv4 header */
	__u32 l4_off;   /* TCP/UDP header */
	__u32 csum_off; /* L4 checksum field */
	__u32 saddr, daddr;
	__u16 sport, dport;
	__u8 proto;
	__u8 udp_zero_csum;
};

/* Find the IPv4 TCP/UDP fields (Ethernet, optional 802.1Q). 0 on success. */
static __always_inline int nat4_locate(struct __sk_buff *skb, struct nat4_loc *l)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 off = sizeof(*eth);
	__be16 proto;
	__u16 *ports;

	if ((void *)(eth + 1) > data_end)
		return -1;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		if (data + off + 4 > data_end)
			return -1;
		proto = *(__be16 *)(data + off + 2);
		off += 4;
	}
	if (proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = data + off;
	if ((void *)(ip + 1) > data_end || ip->ihl < 5 || (ip->frag_off & bpf_htons(0x1fff)))
		return -1;
	l->ip_off = off;
	l->l4_off = off + ip->ihl * 4;
	l->proto = ip->protocol;
	l->saddr = ip->saddr;
	l->daddr = ip->daddr;
	ports = data + (l->l4_off & 0xff);
	if ((void *)(ports + 2) > data_end)
		return -1;
	l->sport = ports[0];
	l->dport = ports[1];
	if (l->proto == IPPROTO_TCP) {
		l->csum_off = l->l4_off + __builtin_offsetof(struct tcphdr, check);
		l->udp_zero_csum = 0;
	} else if (l->proto == IPPROTO_UDP) {
		struct udphdr *uh = (void *)ports;

		if ((void *)(uh + 1) > data_end)
			return -1;
		l->csum_off = l->l4_off + __builtin_offsetof(struct udphdr, check);
		l->udp_zero_csum = uh->check == 0;
	} else {
		return -1;
	}
	return 0;
}

/* Rewrite one address (daddr if dst, else saddr) and its port. */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, const struct nat4_loc *l, int dst,
					__u32 new_addr, __u16 new_port)
{
	__u32 addr_off = l->ip_off + (dst ? __builtin_offsetof(struct iphdr, daddr)
					  : __builtin_offsetof(struct iphdr, saddr));
	__u32 port_off = l->l4_off + (dst ? 2 : 0);
	__u32 old_addr = dst ? l->daddr : l->saddr;
	__u16 old_port = dst ? l->dport : l->sport;
	__u64 l4_flags = l->udp_zero_csum ? BPF_F_MARK_MANGLED_0 : 0;

	if (bpf_l4_csum_replace(skb, l->csum_off, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | l4_flags | sizeof(new_addr)))
		return -1;
	if (bpf_l4_csum_replace(skb, l->csum_off, old_port, new_port, l4_flags | sizeof(new_port)))
		return -1;
	if (bpf_l3_csum_replace(skb, l->ip_off + __builtin_offsetof(struct iphdr, check), old_addr,
				new_addr, sizeof(new_addr)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
		return -1;
	return 0;
}
