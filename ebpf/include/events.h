/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Events to user space: a BPF_MAP_TYPE_RINGBUF (5.8+), or with
 * -DTCLAB_EVENTS_PERF a per-CPU perf event array for kernels without ring
 * buffers. Events are built in the per-CPU scratch value and copied out in
 * one call, so both transports share the code. A failed output is counted in
 * CNT_EVENTS_LOST: loss is never silent.
 *
 * Wake-ups: by default the ring wakes its reader whenever a record lands
 * while the reader is caught up, which costs a self-IPI (an 8-9 us VM exit
 * here) per event under light load. With tclab_events_wakeup_bytes set
 * (Datapath::load does), only the record that brings the unread bytes to
 * that many forces a wake-up (one per crossing, as OBI's wakeup_data_bytes
 * but not one per record past it); the reader's own poll slices pick up the
 * rest (EventReader::poll).
 */
#pragma once

#include "counters.h"
#include "scratch.h"

/* Ring buffer size in bytes (a power of two, multiple of the page size).
 * The loader overrides it (DatapathConfig::events_ring_bytes). */
#define TCLAB_EVENTS_RINGBUF_SIZE (256 * 1024)

/* 0: the kernel's default wake-ups; otherwise see above. Set at load. */
volatile const __u32 tclab_events_wakeup_bytes = 0;

#ifdef TCLAB_EVENTS_PERF
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} tclab_events SEC(".maps");
#else
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TCLAB_EVENTS_RINGBUF_SIZE);
} tclab_events SEC(".maps");
#endif

static __always_inline void __event_output(struct __sk_buff *skb, void *ev, __u64 size)
{
	long err;

#ifdef TCLAB_EVENTS_PERF
	err = bpf_perf_event_output(skb, &tclab_events, BPF_F_CURRENT_CPU, ev, size);
#else
	__u64 flags = 0;

	if (tclab_events_wakeup_bytes) {
		__u64 unread = bpf_ringbuf_query(&tclab_events, BPF_RB_AVAIL_DATA);

		/* only the record that crosses the threshold wakes: forcing one
		 * per record above it cost a self-IPI each while the reader lagged
		 * (1M-run test: 300 ns per packet instead of 155) */
		flags = unread < tclab_events_wakeup_bytes && unread + size >= tclab_events_wakeup_bytes
				? BPF_RB_FORCE_WAKEUP
				: BPF_RB_NO_WAKEUP;
	}
	err = bpf_ringbuf_output(&tclab_events, ev, size, flags);
#endif
	if (err)
		counter_inc(CNT_EVENTS_LOST);
}

static __always_inline void event_header_fill(struct event_header *h, struct __sk_buff *skb,
					      const struct pkt_info *pkt, __u32 kind, __u8 dir)
{
	h->ts_ns = bpf_ktime_get_ns();
	h->kind = kind;
	h->ifindex = skb->ifindex;
	/* word copies: both tuples sit at 8-byte aligned offsets, which clang
	 * cannot know from struct ct_tuple's 2-byte alignment */
	((__u64 *)&h->tuple)[0] = ((const __u64 *)&pkt->tuple)[0];
	((__u64 *)&h->tuple)[1] = ((const __u64 *)&pkt->tuple)[1];
	((__u64 *)&h->tuple)[2] = ((const __u64 *)&pkt->tuple)[2];
	((__u64 *)&h->tuple)[3] = ((const __u64 *)&pkt->tuple)[3];
	((__u64 *)&h->tuple)[4] = ((const __u64 *)&pkt->tuple)[4];
	h->dir = dir;
	h->ct_status = pkt->ct_status;
	h->tcp_flags = pkt->tcp_flags;
	__builtin_memset(h->_pad, 0, sizeof(h->_pad));
}

/* EV_CONN_OPEN / EV_CONN_CLOSE / EV_CT_INSERT_FAILED; entry may be NULL. */
static __always_inline void event_conn(struct __sk_buff *skb, struct tclab_scratch *s, __u32 kind,
				       __u8 dir, const struct ct_entry *entry)
{
	struct conn_event *ev = &s->conn;

	event_header_fill(&ev->hdr, skb, &s->pkt, kind, dir);
	if (entry)
		__builtin_memcpy(&ev->entry, entry, sizeof(ev->entry));
	else
		__builtin_memset(&ev->entry, 0, sizeof(ev->entry));
	__event_output(skb, ev, sizeof(*ev));
}

/* Only the captured part of payload[] is sent: most requests fill a
 * fraction of it, and the copy into the ring is per byte. */
static __always_inline void event_http(struct __sk_buff *skb, struct tclab_scratch *s)
{
	__u32 n = s->http.captured_len;

	if (n > TCLAB_PAYLOAD_CAPTURE)
		n = TCLAB_PAYLOAD_CAPTURE;
	__event_output(skb, &s->http, __builtin_offsetof(struct http_event, payload) + n);
}
