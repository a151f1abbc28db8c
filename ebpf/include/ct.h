/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection tracking with Cilium's semantics (bpf/lib/conntrack.h):
 * - the key is the tuple of the connection's first packet (originator);
 *   a packet whose tuple is found is CT_ESTABLISHED, one whose reversed
 *   tuple is found is CT_REPLY, otherwise an entry is created (CT_NEW) -- for
 *   any packet, SYN or not, as Cilium does (seen_non_syn records the latter);
 * - tx = originator direction, rx = reply direction, whichever hook sees it;
 * - TCP flags are OR-ed per direction; FIN closes its side, RST both;
 * - lifetimes: SYN-only, established TCP, both sides closing, non-TCP;
 *   an entry with both sides closing is no longer refreshed;
 * - a SYN on a closing entry reopens it: closing bits, flags seen and
 *   seen_non_syn are cleared and the SYN lifetime applies again.
 * Flags and counters are updated without atomics (Cilium does so for the
 * flags): two CPUs racing on one direction of one connection can lose an
 * update; see __ct_update.
 */
#pragma once

#include "ct_maps.h"
#include "counters.h"
#include "events.h"
#include "parse.h"

/* Lifetimes in nanoseconds, set at load (DatapathConfig::lifetimes).
 * Defaults are Cilium's: CT_SYN_TIMEOUT, CT_CONNECTION_LIFETIME_TCP,
 * CT_CLOSE_TIMEOUT, CT_CONNECTION_LIFETIME_NONTCP. */
volatile const __u64 tclab_ct_lifetime_syn_ns = 60ULL * 1000000000ULL;
volatile const __u64 tclab_ct_lifetime_tcp_ns = 21600ULL * 1000000000ULL;
volatile const __u64 tclab_ct_lifetime_close_ns = 10ULL * 1000000000ULL;
volatile const __u64 tclab_ct_lifetime_non_tcp_ns = 60ULL * 1000000000ULL;

/* 1: CT timestamps come from bpf_ktime_get_coarse_ns (5.11+; tick
 * resolution, same clock base as CLOCK_MONOTONIC), which costs a fraction
 * of bpf_ktime_get_ns on the per-packet path. The loader sets it only when
 * the kernel has the helper; with 0 the call is dead code the verifier
 * removes, so the object still loads on 5.10. Events keep the precise clock
 * (span timing). */
volatile const __u8 tclab_ct_coarse_clock = 0;

#define CT_F_CLOSING (CT_F_RX_CLOSING | CT_F_TX_CLOSING)

static __always_inline __u64 ct_now(void)
{
	if (tclab_ct_coarse_clock)
		return bpf_ktime_get_coarse_ns();
	return bpf_ktime_get_ns();
}

static __always_inline void ct_tuple_reverse(struct ct_tuple *dst, const struct ct_tuple *src)
{
	__builtin_memcpy(dst->saddr, src->daddr, 16);
	__builtin_memcpy(dst->daddr, src->saddr, 16);
	dst->sport = src->dport;
	dst->dport = src->sport;
	dst->nexthdr = src->nexthdr;
	dst->family = src->family;
	dst->_pad[0] = 0;
	dst->_pad[1] = 0;
}

/* Lifetime for an entry that is still alive (not both sides closing). */
static __always_inline __u64 __ct_lifetime(const struct ct_entry *e, __u8 tcp)
{
	if (!tcp)
		return tclab_ct_lifetime_non_tcp_ns;
	if (e->flags & CT_F_SEEN_NON_SYN)
		return tclab_ct_lifetime_tcp_ns;
	return tclab_ct_lifetime_syn_ns;
}

/* Apply TCP flags of one packet; returns 1 when the entry just became
 * fully closed (both sides closing), which emits EV_CONN_CLOSE. */
static __always_inline int __ct_update_tcp(struct ct_entry *e, __u8 flags, __u8 reply)
{
	__u8 before = e->flags;

	if ((flags & TCP_FLAG_SYN) && (before & CT_F_CLOSING)) {
		/* reopen: a new connection on the same tuple */
		e->flags = before & ~(CT_F_CLOSING | CT_F_SEEN_NON_SYN);
		e->tx_flags_seen = 0;
		e->rx_flags_seen = 0;
		before = e->flags;
		if (reply)
			e->rx_flags_seen = flags;
		else
			e->tx_flags_seen = flags;
	}
	if (!(flags & TCP_FLAG_SYN))
		e->flags |= CT_F_SEEN_NON_SYN;
	if (flags & TCP_FLAG_RST)
		e->flags |= CT_F_CLOSING;
	else if (flags & TCP_FLAG_FIN)
		e->flags |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
	return (before & CT_F_CLOSING) != CT_F_CLOSING && (e->flags & CT_F_CLOSING) == CT_F_CLOSING;
}

/* Update an existing entry for one packet. Returns 1 if it just closed. */
static __always_inline int __ct_update(struct ct_entry *e, const struct pkt_info *pkt, __u8 reply,
				       __u64 now)
{
	__u8 tcp = pkt->tuple.nexthdr == IPPROTO_TCP;
	int closed = 0;

	/* plain adds: two locked adds were a fifth of the per-packet cost, and
	 * one direction of one connection is handled by one CPU at a time in
	 * practice (same RX queue; one sending socket) */
	if (reply) {
		e->rx_packets += 1;
		e->rx_bytes += pkt->skb_len;
		e->rx_flags_seen |= pkt->tcp_flags;
	} else {
		e->tx_packets += 1;
		e->tx_bytes += pkt->skb_len;
		e->tx_flags_seen |= pkt->tcp_flags;
	}
	e->last_status = reply ? CT_REPLY : CT_ESTABLISHED;
	if (tcp)
		closed = __ct_update_tcp(e, pkt->tcp_flags, reply);
	if ((e->flags & CT_F_CLOSING) != CT_F_CLOSING)
		e->expires_ns = now + __ct_lifetime(e, tcp);
	else if (closed)
		e->expires_ns = now + tclab_ct_lifetime_close_ns;
	return closed;
}

/* Create an entry for the packet's tuple (originator = this packet). */
static __always_inline void __ct_create(struct __sk_buff *skb, struct tclab_scratch *s, __u8 dir,
					__u64 now)
{
	struct pkt_info *pkt = &s->pkt;
	struct ct_entry entry, *e = &entry;
	__u8 tcp = pkt->tuple.nexthdr == IPPROTO_TCP;
	long err;

	__builtin_memset(e, 0, sizeof(*e));
	e->tx_packets = 1;
	e->tx_bytes = pkt->skb_len;
	e->created_ns = now;
	e->tx_flags_seen = pkt->tcp_flags;
	e->created_dir = dir;
	e->last_status = CT_NEW;
	if (tcp)
		__ct_update_tcp(e, pkt->tcp_flags, 0);
	if ((e->flags & CT_F_CLOSING) == CT_F_CLOSING)
		e->expires_ns = now + tclab_ct_lifetime_close_ns;
	else
		e->expires_ns = now + __ct_lifetime(e, tcp);

	pkt->ct_status = CT_NEW;
	err = bpf_map_update_elem(&tclab_ct, &pkt->tuple, e, BPF_NOEXIST);
	if (err) {
		counter_inc(CNT_CT_INSERT_FAILED);
		event_conn(skb, s, EV_CT_INSERT_FAILED, dir, 0);
		return;
	}
	pkt->ct_found = 1;
	counter_inc(CNT_CT_NEW);
	event_conn(skb, s, EV_CONN_OPEN, dir, e);
}

/* Look the packet up (forward, then reversed) and update or create. */
static __always_inline void ct_process(struct __sk_buff *skb, struct tclab_scratch *s, __u8 dir)
{
	struct pkt_info *pkt = &s->pkt;
	__u64 now = ct_now();
	struct ct_entry *e;
	__u8 reply = 0;

	e = bpf_map_lookup_elem(&tclab_ct, &pkt->tuple);
	if (!e) {
		ct_tuple_reverse(&pkt->rtuple, &pkt->tuple);
		e = bpf_map_lookup_elem(&tclab_ct, &pkt->rtuple);
		reply = 1;
	}
	if (!e) {
		__ct_create(skb, s, dir, now);
		return;
	}
	pkt->ct_found = 1;
	pkt->ct_reverse = reply;
	pkt->ct_status = reply ? CT_REPLY : CT_ESTABLISHED;
	counter_inc(reply ? CNT_CT_REPLY : CNT_CT_ESTABLISHED);
	if (__ct_update(e, pkt, reply, now))
		event_conn(skb, s, EV_CONN_CLOSE, dir, e);
	pkt->ct_flags = e->flags;
}

/* The entry of the packet's connection, after ct_process; NULL if none. */
static __always_inline struct ct_entry *ct_entry_of(struct tclab_scratch *s)
{
	if (!s->pkt.ct_found)
		return 0;
	return bpf_map_lookup_elem(&tclab_ct, s->pkt.ct_reverse ? &s->pkt.rtuple : &s->pkt.tuple);
}
