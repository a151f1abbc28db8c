/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing: Ethernet (+ one 802.1Q tag), IPv4 (+ options), IPv6 (+
 * extension headers), TCP, UDP, ICMP, ICMPv6. Direct packet access only
 * (skb->data/data_end): the parser reads headers, which are always in the
 * linear part of the skb. It never writes to the packet.
 */
#pragma once

#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>

#include "scratch.h"

/* Extension headers skipped before giving up (Cilium uses 4 as well). */
#define IPV6_MAX_EXT_HEADERS 4

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* <linux/icmp.h> pulls in libc headers via <linux/if.h>: define the
 * little that is needed here. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
struct icmphdr_tclab {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

struct vlan_hdr_tclab {
	__be16 tci;
	__be16 proto;
};

/* ICMP echo: the identifier plays the port role so that request and reply
 * map to one CT entry: a request carries it as dport, a reply as sport,
 * which is the request tuple reversed. Other ICMP types use ports 0. */
static __always_inline void __parse_icmp_ports(struct ct_tuple *t, __u8 type, __be16 id,
					       __u8 echo_req, __u8 echo_reply)
{
	t->sport = 0;
	t->dport = 0;
	if (type == echo_req)
		t->dport = id;
	else if (type == echo_reply)
		t->sport = id;
}

/* Parse the L4 header at pkt->l4_off; l4_len is what the IP header says. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt_info *pkt, __u32 l4_len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = pkt->l4_off & 0x3fff;
	struct ct_tuple *t = &pkt->tuple;

	switch (t->nexthdr) {
	case IPPROTO_TCP: {
		struct tcphdr *th = data + off;
		__u32 doff;

		if ((void *)(th + 1) > data_end)
			return PARSE_ERROR;
		doff = th->doff * 4;
		if (doff < sizeof(*th) || doff > l4_len)
			return PARSE_ERROR;
		t->sport = th->source;
		t->dport = th->dest;
		pkt->tcp_flags = ((__u8 *)th)[13];
		pkt->payload_off = off + doff;
		pkt->payload_len = l4_len - doff;
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end || l4_len < sizeof(*uh))
			return PARSE_ERROR;
		t->sport = uh->source;
		t->dport = uh->dest;
		pkt->payload_off = off + sizeof(*uh);
		pkt->payload_len = l4_len - sizeof(*uh);
		return PARSE_OK;
	}
	case IPPROTO_ICMP: {
		struct icmphdr_tclab *ih = data + off;

		if ((void *)(ih + 1) > data_end || l4_len < sizeof(*ih))
			return PARSE_ERROR;
		__parse_icmp_ports(t, ih->type, ih->id, ICMP_ECHO, ICMP_ECHOREPLY);
		return PARSE_OK;
	}
	case IPPROTO_ICMPV6: {
		struct icmp6hdr *ih = data + off;

		if ((void *)(ih + 1) > data_end || l4_len < sizeof(*ih))
			return PARSE_ERROR;
		__parse_icmp_ports(t, ih->icmp6_type, ih->icmp6_dataun.u_echo.identifier,
				   ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY);
		return PARSE_OK;
	}
	}
	return PARSE_NO_L4;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt_info *pkt, __u32 off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + off;
	__u32 ihl, tot_len;

	if ((void *)(ip + 1) > data_end)
		return PARSE_ERROR;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_ERROR;
	ihl = ip->ihl * 4;
	/* options must be present in full, as must the whole datagram */
	if (data + off + ihl > data_end)
		return PARSE_ERROR;
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < ihl || off + tot_len > pkt->skb_len)
		return PARSE_ERROR;

	pkt->tuple.family = TCLAB_AF_INET;
	pkt->tuple.nexthdr = ip->protocol;
	__builtin_memcpy(pkt->tuple.saddr, &ip->saddr, 4);
	__builtin_memcpy(pkt->tuple.daddr, &ip->daddr, 4);
	/* a non-first fragment has no L4 header */
	if (ip->frag_off & bpf_htons(0x1fff))
		return PARSE_NO_L4;
	pkt->l4_off = off + ihl;
	return parse_l4(skb, pkt, tot_len - ihl);
}

/* Skip IPv6 extension headers; returns the final next header or -1. */
static __always_inline int __ipv6_skip_ext(struct __sk_buff *skb, __u32 *offp, __u32 *ext_len,
					   __u8 nh)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = *offp;
	int i;

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		__u8 *h = data + (off & 0x3fff);
		__u32 len;

		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS &&
		    nh != IPPROTO_FRAGMENT && nh != IPPROTO_AH)
			break;
		if ((void *)(h + 8) > data_end)
			return -1;
		if (nh == IPPROTO_FRAGMENT) {
			/* offset != 0: a later fragment, no L4 header to parse */
			if (((h[2] << 8) | h[3]) & 0xfff8)
				return -2;
			len = 8;
		} else if (nh == IPPROTO_AH) {
			len = (h[1] + 2) * 4;
		} else {
			len = (h[1] + 1) * 8;
		}
		nh = h[0];
		off = (off & 0x3fff) + len;
		*ext_len += len;
	}
	if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	    nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH)
		return -1;
	*offp = off;
	return nh;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt_info *pkt, __u32 off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + off;
	__u32 plen, ext_len = 0;
	int nh;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_ERROR;
	if (ip6->version != 6)
		return PARSE_ERROR;
	plen = bpf_ntohs(ip6->payload_len);
	if (off + sizeof(*ip6) + plen > pkt->skb_len)
		return PARSE_ERROR;

	pkt->tuple.family = TCLAB_AF_INET6;
	__builtin_memcpy(pkt->tuple.saddr, &ip6->saddr, 16);
	__builtin_memcpy(pkt->tuple.daddr, &ip6->daddr, 16);
	off += sizeof(*ip6);
	nh = __ipv6_skip_ext(skb, &off, &ext_len, ip6->nexthdr);
	if (nh == -2)
		return PARSE_NO_L4;
	if (nh < 0 || ext_len > plen)
		return PARSE_ERROR;
	pkt->tuple.nexthdr = nh;
	pkt->l4_off = off;
	return parse_l4(skb, pkt, plen - ext_len);
}

/* Fill pkt from the packet. Returns enum parse_result. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt_info *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	/* only what every path reads: the tuple (a hash key, so its padding
	 * too) and the small fields; rtuple is written before use */
	__builtin_memset(&pkt->tuple, 0, sizeof(pkt->tuple));
	pkt->l4_off = 0;
	pkt->payload_off = 0;
	pkt->payload_len = 0;
	pkt->skb_len = skb->len;
	*(__u64 *)&pkt->tcp_flags = 0; /* tcp_flags .. ct_flags, _pad */
	if ((void *)(eth + 1) > data_end)
		return PARSE_ERROR;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		struct vlan_hdr_tclab *vh = data + off;

		if ((void *)(vh + 1) > data_end)
			return PARSE_ERROR;
		proto = vh->proto;
		off += sizeof(*vh);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, pkt, off);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, pkt, off);
	return PARSE_NON_IP;
}
