/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Context propagation (issue #6): carry the trace of an incoming request to
 * the requests its thread makes while serving it, the way Beyla's
 * network-level propagation does, without user-space instrumentation.
 *
 * Programs (loaded by datapath/src/propagation/mod.rs as the mode needs):
 *
 * - tclab_prop_ingress (TC ingress, every mode): the start of an HTTP
 *   request leaves the context it brings in tclab_prop_in (key: the
 *   connection): a valid traceparent continues its trace, an invalid one
 *   restarts (W3C), none leaves our IP/TCP option's context if any, else a
 *   new trace. In modes with the IP option it reads and removes ours.
 * - tclab_prop_read (tp_btf/tcp_rcv_space_adjust, in tcp_recvmsg on the
 *   reading thread): the first read after a request arrived makes the
 *   thread its server: a new server span id, kept per thread, sent to user
 *   space (PROP_EV_SERVER). Only threads under the agent's cgroup.
 * - tclab_prop_sockops (cgroup sock_ops): puts the TCP connections the
 *   cgroup opens into tclab_prop_sockhash, writes/reads our TCP option, and
 *   sees the responses leave on the connections it accepts: data sent on
 *   a connection a thread serves ends that thread's request.
 * - tclab_prop_msg (sk_msg on tclab_prop_sockhash, on the sending
 *   thread): an outgoing HTTP/1.1 request gets a client span id and the
 *   trace of the request its thread serves (else a new trace); without a
 *   traceparent of its own it gets `Traceparent: 00-<trace>-<span>-<flags>`
 *   inserted after its request line (bpf_msg_push_data). A request that
 *   has one is left alone and its value used (an invalid one is not used).
 *   A TLS ClientHello sent by a serving thread (not HTTP: the payload
 *   cannot be changed) opens a client context on its connection for the
 *   TCP/IP options to carry (propagation_tls.h); on the receiving side the
 *   option alone, with no HTTP request start, notes the connection's
 *   context (opaque), and the thread that reads it becomes its server.
 * - tclab_prop_egress (TC egress, modes with the IP option): our IPv4
 *   option / IPv6 destination options header, added with
 *   bpf_skb_adjust_room to the request segments of a connection (context
 *   from tclab_prop_msg, or from the segment's own valid traceparent).
 *   Packets it does not add to are untouched.
 *
 * Kernel memory is only read through BTF-typed pointers (no
 * bpf_probe_read_kernel), so lockdown does not switch anything off.
 * Wire formats: docs/propagation.md. Kernel floor 5.10 (header options).
 */
#define __TARGET_ARCH_x86
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "propagation.h"

/* Built with TCLAB_PROP_HOOKS_ONLY (propagation_hooks.o, for the
 * benchmark's floor): every program returns its pass verdict at once, except
 * that sockops still fills the sockhash (and asks for the header-option
 * callbacks in tcp modes). The kernel's hooks then run as in the real mode
 * with nothing of ours in them: what the mechanism alone costs. */
#ifdef TCLAB_PROP_HOOKS_ONLY
#define PROP_HOOKS_ONLY_RETURN(v) return (v)
#else
#define PROP_HOOKS_ONLY_RETURN(v) do {} while (0)
#endif

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define PROP_SOCK_STREAM 1
#define PROP_MSG_PEEK 2

/* ------------------------------------------------ kernel types (CO-RE) */

struct in6_addr___tclab {
	union {
		__be32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common___tclab {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr___tclab skc_v6_daddr;
	struct in6_addr___tclab skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock___tclab {
	struct sock_common___tclab __sk_common;
} __attribute__((preserve_access_index));

/* ------------------------------------------------ a thread reads a request */

static __always_inline int prop_cgroup_ok(void)
{
	return bpf_current_task_under_cgroup(&tclab_prop_cgroup, 0) == 1;
}

/* The connection of a socket, read through its BTF type (no helper: works
 * under every lockdown mode). 0 when it is neither IPv4 nor IPv6. */
static __always_inline int prop_key_from_sk(struct prop_key *k, struct sock___tclab *sk)
{
	unsigned short family = sk->__sk_common.skc_family;
	int i;

	prop_key_zero(k);
	k->local_port = sk->__sk_common.skc_num;
	k->remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		k->family = TCLAB_AF_INET;
		*(__u32 *)k->local = sk->__sk_common.skc_rcv_saddr;
		*(__u32 *)k->remote = sk->__sk_common.skc_daddr;
		return 1;
	}
	if (family != AF_INET6)
		return 0;
	k->family = TCLAB_AF_INET6;
#pragma unroll
	for (i = 0; i < 4; i++) {
		((__u32 *)k->local)[i] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[i];
		((__u32 *)k->remote)[i] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[i];
	}
	prop_key_unmap(k);
	return 1;
}

static __always_inline int prop_key_eq(const struct prop_key *a, const struct prop_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* tcp_rcv_space_adjust runs in tcp_recvmsg, on the reading thread, each
 * time data is copied to it: the first read after a request arrived on the
 * connection makes the thread the server of that request. */
SEC("tp_btf/tcp_rcv_space_adjust")
int BPF_PROG(tclab_prop_read, struct sock___tclab *sk)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct prop_thread th;
	struct prop_ctx *in;
	__u8 parent[8] = {0};
	__u8 status;

	PROP_HOOKS_ONLY_RETURN(0);
	if (!prop_cgroup_ok() || !prop_key_from_sk(&th.conn, sk))
		return 0;
	in = bpf_map_lookup_elem(&tclab_prop_in, &th.conn);
	if (!in || in->spent)
		return 0;
	__builtin_memcpy(&th.ctx, in, sizeof(th.ctx));
	in->spent = 1;
	status = th.ctx.tp_status;
	prop_count(PC_SERVER_REQUESTS);
	if (th.ctx.origin == PROP_O_NEW) {
		if (status == TP_INVALID)
			prop_count(PC_INCOMING_INVALID);
		prop_random(th.ctx.trace_id, 4);
		th.ctx.flags = tclab_prop_new_flags;
	} else {
		__builtin_memcpy(parent, th.ctx.span_id, 8);
	}
	prop_new_span(&th.ctx);
	PROP_PUT(&tclab_prop_threads, &id, &th);
	PROP_PUT(&tclab_prop_served, &th.conn, &id);
	prop_emit(PROP_EV_SERVER, &th.conn, &th.ctx, parent, status, 0, id);
	return 0;
}

/* ------------------------------------------------ sockops: sockhash, TCP option */

static __always_inline void prop_key_from_ops(struct prop_key *k, struct bpf_sock_ops *o)
{
	prop_key_zero(k);
	k->local_port = o->local_port;
	k->remote_port = bpf_ntohl(o->remote_port);
	if (o->family == AF_INET) {
		k->family = TCLAB_AF_INET;
		*(__u32 *)k->local = o->local_ip4;
		*(__u32 *)k->remote = o->remote_ip4;
		return;
	}
	k->family = TCLAB_AF_INET6;
	((__u32 *)k->local)[0] = o->local_ip6[0];
	((__u32 *)k->local)[1] = o->local_ip6[1];
	((__u32 *)k->local)[2] = o->local_ip6[2];
	((__u32 *)k->local)[3] = o->local_ip6[3];
	((__u32 *)k->remote)[0] = o->remote_ip6[0];
	((__u32 *)k->remote)[1] = o->remote_ip6[1];
	((__u32 *)k->remote)[2] = o->remote_ip6[2];
	((__u32 *)k->remote)[3] = o->remote_ip6[3];
	prop_key_unmap(k);
}

static __always_inline void prop_tcp_write(struct bpf_sock_ops *o, const struct prop_key *key)
{
	struct prop_ctx *c = bpf_map_lookup_elem(&tclab_prop_out, key);
	__u8 opt[PROP_TCP_OPT_LEN];
	__u16 exid;

	if (!c || (c->carried & PROP_CARRIED_HEADER))
		return;
	exid = (c->flags & 1) ? PROP_TCP_EXID_SAMPLED : PROP_TCP_EXID_UNSAMPLED;
	opt[0] = PROP_TCP_OPT_KIND;
	opt[1] = PROP_TCP_OPT_LEN;
	opt[2] = exid >> 8;
	opt[3] = exid & 0xff;
	__builtin_memcpy(opt + 4, c->trace_id, 16);
	__builtin_memcpy(opt + 20, c->span_id, 8);
	if (!bpf_store_hdr_opt(o, opt, sizeof(opt), 0)) {
		prop_count(PC_TCP_WRITTEN);
		c->carried |= PROP_CARRIED_TCP; /* no IP option for it then */
	}
}

/* Our TCP option on a received segment: the caller's context, unless the
 * request already brought a valid traceparent. */
static __always_inline void prop_tcp_read(struct bpf_sock_ops *o, const struct prop_key *key)
{
	__u8 opt[PROP_TCP_OPT_LEN] = {PROP_TCP_OPT_KIND, 4, PROP_TCP_EXID_SAMPLED >> 8, PROP_TCP_EXID_SAMPLED & 0xff};
	struct prop_ctx c, *cur;

	__builtin_memset(&c, 0, sizeof(c));
	c.flags = 1;
	if (bpf_load_hdr_opt(o, opt, sizeof(opt), 0) != PROP_TCP_OPT_LEN) {
		__builtin_memset(opt, 0, sizeof(opt));
		opt[0] = PROP_TCP_OPT_KIND;
		opt[1] = 4;
		opt[2] = PROP_TCP_EXID_UNSAMPLED >> 8;
		opt[3] = PROP_TCP_EXID_UNSAMPLED & 0xff;
		if (bpf_load_hdr_opt(o, opt, sizeof(opt), 0) != PROP_TCP_OPT_LEN)
			return;
		c.flags = 0;
	}
	__builtin_memcpy(c.trace_id, opt + 4, 16);
	__builtin_memcpy(c.span_id, opt + 20, 8);
	prop_count(PC_TCP_READ);
	if (!prop_opt_fresh(key, &c))
		return; /* a later segment of a request already taken */
	cur = bpf_map_lookup_elem(&tclab_prop_in, key);
	if (cur && cur->spent)
		cur = 0; /* an earlier request's, already taken */
	if (cur && cur->tp_status != TP_MISSING)
		return; /* the header decides (continue or restart) */
	/* TC ingress ran first: no entry of its own means no HTTP request
	 * starts here (TLS), an entry keeps its verdict */
	c.opaque = cur ? cur->opaque : 1;
	c.origin = PROP_O_TCP;
	PROP_PUT(&tclab_prop_in, key, &c);
}

/* Data leaving on a connection whose request a thread serves is that
 * request's response: the thread is done with it (its later client
 * requests start traces of their own). Not on a TLS connection (opaque):
 * its handshake answers before the request inside is even read, and
 * nothing tells a response there. 1 when the connection is served. */
static __always_inline int prop_answered(const struct prop_key *key)
{
	__u64 *reader = bpf_map_lookup_elem(&tclab_prop_served, key);
	struct prop_thread *th;

	if (!reader)
		return 0;
	if (*reader) {
		th = bpf_map_lookup_elem(&tclab_prop_threads, reader);
		if (th && !th->ctx.opaque && prop_key_eq(&th->conn, key))
			th->ctx.spent = 1;
		*reader = 0;
	}
	return 1;
}

SEC("sockops")
int tclab_prop_sockops(struct bpf_sock_ops *o)
{
	struct prop_key key;
	__u32 op = o->op;

	if (o->family != AF_INET && o->family != AF_INET6)
		return 1;
	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* Requests leave on the connections a service opened and arrive
		 * on those it accepted. Only the first kind goes into the
		 * sockhash (sk_msg: the requests' ids, the header): a socket
		 * there sends and receives through the psock's path, which
		 * costs every message, and of an accepted one's messages only
		 * the responses matter, and only that they leave: the header-
		 * option callbacks see that (prop_answered). Our option is
		 * written on the first kind and read on the second. */
		if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
			prop_key_from_ops(&key, o);
			bpf_sock_hash_update(o, &tclab_prop_sockhash, &key, BPF_ANY);
			if (tclab_prop_mode & PROP_M_TCP)
				bpf_sock_ops_cb_flags_set(o, o->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		} else {
			bpf_sock_ops_cb_flags_set(o, o->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG |
							     ((tclab_prop_mode & PROP_M_TCP) ? BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG : 0));
		}
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		/* every segment about to be sent (and, with no skb, the MSS
		 * computations): those with data only */
		PROP_HOOKS_ONLY_RETURN(1);
		if (!o->skb_len)
			break;
		prop_key_from_ops(&key, o);
		if (prop_answered(&key))
			break;
		if (tclab_prop_mode & PROP_M_TCP) {
			struct prop_ctx *out = bpf_map_lookup_elem(&tclab_prop_out, &key);

			if (out && !(out->carried & PROP_CARRIED_HEADER))
				bpf_reserve_hdr_opt(o, PROP_TCP_OPT_LEN, 0);
		}
		break;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		PROP_HOOKS_ONLY_RETURN(1);
		if (!(tclab_prop_mode & PROP_M_TCP) || !o->skb_len)
			break;
		prop_key_from_ops(&key, o);
		prop_tcp_write(o, &key);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		PROP_HOOKS_ONLY_RETURN(1);
		if (!(tclab_prop_mode & PROP_M_TCP))
			break;
		prop_key_from_ops(&key, o);
		prop_tcp_read(o, &key);
		break;
	}
	return 1;
}

/* ------------------------------------------------ sk_msg: the header */

static __always_inline void prop_key_from_msg(struct prop_key *k, struct sk_msg_md *m)
{
	prop_key_zero(k);
	k->local_port = m->local_port;
	k->remote_port = bpf_ntohl(m->remote_port);
	if (m->family == AF_INET) {
		k->family = TCLAB_AF_INET;
		*(__u32 *)k->local = m->local_ip4;
		*(__u32 *)k->remote = m->remote_ip4;
		return;
	}
	k->family = TCLAB_AF_INET6;
	((__u32 *)k->local)[0] = m->local_ip6[0];
	((__u32 *)k->local)[1] = m->local_ip6[1];
	((__u32 *)k->local)[2] = m->local_ip6[2];
	((__u32 *)k->local)[3] = m->local_ip6[3];
	((__u32 *)k->remote)[0] = m->remote_ip6[0];
	((__u32 *)k->remote)[1] = m->remote_ip6[1];
	((__u32 *)k->remote)[2] = m->remote_ip6[2];
	((__u32 *)k->remote)[3] = m->remote_ip6[3];
	prop_key_unmap(k);
}

/* Copy the first n (16..PROP_SCAN) bytes of the message to the scan buffer. */
static __always_inline int prop_msg_copy(struct sk_msg_md *m, struct tclab_scratch *s, __u32 n)
{
	void *data = (void *)(long)m->data, *end = (void *)(long)m->data_end;
	__u32 w, k, off = 0;

	if (data + n > end) {
		if (bpf_msg_pull_data(m, 0, n, 0))
			return 0;
		data = (void *)(long)m->data;
		end = (void *)(long)m->data_end;
	}
#pragma clang loop unroll(disable)
	for (w = 0; w < PROP_SCAN / 8; w++) {
		void *p = data + w * 8;

		if (w * 8 + 8 > n || p + 8 > end)
			break;
		*(__u64 *)(SCAN_BUF(s) + 1 + w * 8) = *(__u64 *)p;
		off = w * 8 + 8;
	}
#pragma unroll
	for (k = 0; k < 8; k++) {
		__u32 i = PROP_BOUND(off + k, PROP_SCAN - 1);
		void *p = data + i;

		if (off + k >= n || p + 1 > end)
			break;
		SCAN_BUF(s)[1 + i] = *(__u8 *)p;
	}
	return 1;
}

/* Insert the Traceparent header at message offset `at`. */
static __always_inline int prop_inject(struct sk_msg_md *m, struct tclab_scratch *s, const struct prop_ctx *c,
				       __u32 at)
{
	__u8 *h = s->http.tracestate;
	void *data, *end;
	__u32 size;
	int k;

	prop_header(h, c);
	if (bpf_msg_push_data(m, at, PROP_HDR_LEN, 0)) {
		prop_count(PC_INJECT_FAILED);
		return 0;
	}
	if (bpf_msg_pull_data(m, at, at + PROP_HDR_LEN, 0))
		goto undo;
	data = (void *)(long)m->data;
	end = (void *)(long)m->data_end;
	if (data + PROP_HDR_LEN > end)
		goto undo;
#pragma unroll
	for (k = 0; k < 8; k++)
		((__u64 *)data)[k] = ((const __u64 *)h)[k];
	*(__u32 *)(data + 64) = *(const __u32 *)(h + 64);
	*(__u16 *)(data + 68) = *(const __u16 *)(h + 68);
	/* The insertion split the message in scatterlist entries, which TCP
	 * would send as separate segments (request line, then the rest): one
	 * entry again for the head, so the request leaves as it would have. */
	size = m->size;
	bpf_msg_pull_data(m, 0, size < PROP_LINEAR ? size : PROP_LINEAR, 0);
	prop_count(PC_INJECTED);
	return 1;
undo:
	bpf_msg_pop_data(m, at, PROP_HDR_LEN, 0);
	prop_count(PC_INJECT_FAILED);
	return 0;
}

/* A new client span: in the trace of the request the thread serves (its
 * server span the parent), else in a new trace. */
static __always_inline void prop_client_span(struct prop_ctx *c, __u8 *parent, const struct prop_thread *th)
{
	if (th) {
		__builtin_memcpy(c->trace_id, th->ctx.trace_id, 16);
		__builtin_memcpy(parent, th->ctx.span_id, 8);
		c->flags = th->ctx.flags;
		c->origin = PROP_O_THREAD;
		prop_count(PC_LINKED);
	} else {
		prop_random(c->trace_id, 4);
		c->flags = tclab_prop_new_flags;
		c->origin = PROP_O_NEW;
	}
	prop_new_span(c);
}

/* A message that is not HTTP but a TLS record, on a connection the thread
 * does not serve: a ClientHello (the connection's first bytes), or
 * application data for another served request than the connection's
 * current client context, opens a client span there: the trace of the
 * request the thread serves (else a new trace), that server span as
 * parent. The TCP/IP options then carry it (the payload cannot be
 * changed); the event is a connection-level span (opaque). */
static __always_inline void prop_tls_msg(const struct prop_key *key, const struct prop_thread *th, __u64 head, __u64 id)
{
	__u8 parent[8] = {0};
	__u64 server = 0, *last;
	struct prop_ctx c;
	__u32 type = prop_tls_record(head);

	if (!type)
		return;
	if (th) {
		if (prop_key_eq(&th->conn, key))
			return; /* its own served connection (a TLS server) */
		server = *(const __u64 *)th->ctx.span_id;
	}
	if (!prop_tls_client_hello(head)) {
		last = bpf_map_lookup_elem(&tclab_prop_tls, key);
		if (type != PROP_TLS_APPDATA || !last || *last == server)
			return;
	}
	__builtin_memset(&c, 0, sizeof(c));
	prop_client_span(&c, parent, th);
	c.tp_status = TP_MISSING;
	c.opaque = 1;
	bpf_map_update_elem(&tclab_prop_tls, key, &server, BPF_ANY);
	if (tclab_prop_mode & (PROP_M_TCP | PROP_M_IP))
		bpf_map_update_elem(&tclab_prop_out, key, &c, BPF_ANY);
	prop_count(PC_TLS_CLIENTS);
	prop_emit(PROP_EV_CLIENT, key, &c, parent, TP_MISSING, 0, id);
}

/* First 8 bytes start a status line ("HTTP/1."): a response. */
static __always_inline int prop_is_response(__u64 h)
{
	return (h & 0xffffffffffffffULL) == P8('H', 'T', 'T', 'P', '/', '1', '.', 0);
}

/* A response sent on a connection the service opened (its responses
 * usually leave on accepted ones: prop_answered) that the thread serves:
 * the thread is done with that request. */
static __always_inline void prop_response_sent(struct sk_msg_md *m, __u64 id)
{
	struct prop_thread *th = bpf_map_lookup_elem(&tclab_prop_threads, &id);
	struct prop_key key;

	if (!th || th->ctx.spent)
		return;
	prop_key_from_msg(&key, m);
	if (prop_key_eq(&th->conn, &key))
		th->ctx.spent = 1;
}

SEC("sk_msg")
int tclab_prop_msg(struct sk_msg_md *m)
{
	struct tclab_scratch *s = scratch_get();
	__u64 id = bpf_get_current_pid_tgid();
	__u8 parent[8] = {0};
	struct prop_thread *th;
	struct prop_ctx c;
	struct prop_key key;
	__u32 size = m->size, n, tp, at;
	__u8 status = TP_MISSING, injected = 0;
	__u64 head;

	PROP_HOOKS_ONLY_RETURN(SK_PASS);
	if (!s || size < 16)
		return SK_PASS;
	/* A response is told by its first 8 bytes, without copying the
	 * message to scan it. */
	if ((void *)(long)m->data + 8 <= (void *)(long)m->data_end &&
	    prop_is_response(*(const __u64 *)(long)m->data)) {
		prop_response_sent(m, id);
		return SK_PASS;
	}
	n = size < PROP_SCAN ? size : PROP_SCAN;
	if (!prop_msg_copy(m, s, n))
		return SK_PASS;
	prop_buf_frame(s, n);
	head = *(const __u64 *)(SCAN_BUF(s) + 1);
	if (prop_is_response(head)) {
		prop_response_sent(m, id);
		return SK_PASS;
	}
	prop_key_from_msg(&key, m);
	th = bpf_map_lookup_elem(&tclab_prop_threads, &id);
	if (th && th->ctx.spent)
		th = 0; /* its request has ended */
	if (!prop_is_request(head)) {
		prop_tls_msg(&key, th, head, id);
		return SK_PASS;
	}
	prop_count(PC_CLIENT_REQUESTS);
	prop_scan(s, n);
	__builtin_memset(&c, 0, sizeof(c));
	tp = PROP_GET(s->scan.tp_pos);
	if (tp) {
		status = tp_validate(s, tp, s->http.traceparent);
		if (status != TP_VALID) {
			prop_count(PC_EXISTING_INVALID);
			prop_emit(PROP_EV_CLIENT, &key, 0, 0, status, 0, id);
			return SK_PASS;
		}
		prop_count(PC_EXISTING_VALID);
		prop_ctx_from_tp(&c, s->http.traceparent);
		c.origin = PROP_O_APP;
		if (th && !((((const __u64 *)th->ctx.trace_id)[0] ^ ((const __u64 *)c.trace_id)[0]) |
			    (((const __u64 *)th->ctx.trace_id)[1] ^ ((const __u64 *)c.trace_id)[1])))
			__builtin_memcpy(parent, th->ctx.span_id, 8);
	} else {
		prop_client_span(&c, parent, th);
		/* after the request line (lines[1]: the next line's start) */
		at = PROP_GET(s->scan.lines[1]);
		if ((tclab_prop_mode & PROP_M_HEADERS) && PROP_GET(s->scan.nlines) >= 2 && at >= 17 && at <= n + 1)
			injected = prop_inject(m, s, &c, at - 1);
	}
	c.tp_status = status;
	/* its header carries it (ours, or the application's valid one): with
	 * the header on, the options would only repeat it */
	if ((tclab_prop_mode & PROP_M_HEADERS) && (injected || status == TP_VALID))
		c.carried = PROP_CARRIED_HEADER;
	if (tclab_prop_mode & (PROP_M_TCP | PROP_M_IP))
		PROP_PUT(&tclab_prop_out, &key, &c);
	prop_emit(PROP_EV_CLIENT, &key, &c, parent, status, injected, id);
	return SK_PASS;
}

/* ------------------------------------------------ TC: the IP option */

struct prop_pkt {
	__u32 l3;
	__u32 l4;
	__u32 payload; /* TCP payload offset (after prop_parse_tcp) */
	__u32 plen;    /* TCP payload bytes (after prop_parse_tcp) */
	__u8 family;
	__u8 ihl;   /* IPv4 header words */
	__u8 nexthdr;
	__u8 _pad;
};

/* Ethernet (+ one 802.1Q tag), then IPv4 / IPv6; 0 for anything else. */
static __always_inline int prop_parse_l3(struct __sk_buff *skb, struct prop_pkt *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > end)
		return 0;
	proto = eth->h_proto;
	p->l3 = sizeof(*eth);
	if (proto == bpf_htons(ETH_P_8021Q)) {
		__be16 *inner = (void *)(eth + 1) + 2;

		if ((void *)(inner + 1) > end)
			return 0;
		proto = *inner;
		p->l3 += 4;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + p->l3;

		if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
			return 0;
		if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x3fff)))
			return 0;
		p->family = TCLAB_AF_INET;
		p->ihl = ip->ihl;
		p->l4 = p->l3 + ip->ihl * 4;
		p->plen = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
		return 1;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + p->l3;

		if ((void *)(ip6 + 1) > end)
			return 0;
		p->family = TCLAB_AF_INET6;
		p->nexthdr = ip6->nexthdr;
		p->l4 = p->l3 + sizeof(*ip6);
		p->plen = bpf_ntohs(ip6->payload_len);
		return 1;
	}
	return 0;
}

/* The TCP header at l4: key (egress: local = source), payload length. */
static __always_inline int prop_parse_tcp(struct __sk_buff *skb, struct prop_pkt *p, struct prop_key *k, int egress)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct tcphdr *tcp = data + PROP_BOUND(p->l4, 0x1ff);
	__u32 doff;

	if ((void *)(tcp + 1) > end)
		return 0;
	doff = tcp->doff * 4;
	if (p->plen < doff)
		return 0;
	p->plen -= doff;
	p->payload = p->l4 + doff;
	prop_key_zero(k);
	k->family = p->family;
	k->local_port = bpf_ntohs(egress ? tcp->source : tcp->dest);
	k->remote_port = bpf_ntohs(egress ? tcp->dest : tcp->source);
	if (p->family == TCLAB_AF_INET) {
		struct iphdr *ip = data + PROP_BOUND(p->l3, 0x1ff);

		if ((void *)(ip + 1) > end)
			return 0;
		*(__u32 *)k->local = egress ? ip->saddr : ip->daddr;
		*(__u32 *)k->remote = egress ? ip->daddr : ip->saddr;
	} else {
		struct ipv6hdr *ip6 = data + PROP_BOUND(p->l3, 0x1ff);

		if ((void *)(ip6 + 1) > end)
			return 0;
		__builtin_memcpy(k->local, egress ? &ip6->saddr : &ip6->daddr, 16);
		__builtin_memcpy(k->remote, egress ? &ip6->daddr : &ip6->saddr, 16);
	}
	return 1;
}

/* Is the segment the start of an HTTP request? -1 if not, else the W3C
 * verdict on its traceparent (c filled when valid). */
static __always_inline int prop_request(struct __sk_buff *skb, struct prop_pkt *p, struct prop_ctx *c)
{
	struct tclab_scratch *s = scratch_get();
	__u32 n = p->plen < PROP_SCAN ? p->plen : PROP_SCAN, tp;
	__u64 head = 0;
	int status;

	if (!s || n < 16 || bpf_skb_load_bytes(skb, p->payload, &head, 8) || !prop_is_request(head))
		return -1;
	n = PROP_BOUND(n - 1, PROP_SCAN - 1) + 1;
	if (bpf_skb_load_bytes(skb, p->payload, SCAN_BUF(s) + 1, n))
		return -1;
	prop_buf_frame(s, n);
	prop_scan(s, n);
	tp = PROP_GET(s->scan.tp_pos);
	if (!tp)
		return TP_MISSING;
	status = tp_validate(s, tp, s->http.traceparent);
	if (status == TP_VALID)
		prop_ctx_from_tp(c, s->http.traceparent);
	return status;
}

static __always_inline __u16 prop_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* IPv4 header checksum of the words in h[0..words) (checksum field zero). */
static __always_inline __u16 prop_ip_csum(const __u16 *h, int words)
{
	__u32 sum = 0;
	int k;

#pragma unroll
	for (k = 0; k < words; k++)
		sum += h[k];
	return prop_csum_fold(sum);
}

static __always_inline void prop_ip_add(struct __sk_buff *skb, struct prop_pkt *p, const struct prop_ctx *c)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (p->family == TCLAB_AF_INET) {
		__u16 h[(20 + PROP_IP4_OPT_LEN) / 2];
		__u8 *b = (__u8 *)h;
		struct iphdr *ip = data + PROP_BOUND(p->l3, 0x1ff);

		/* only headers without options: ours then fits and stays first */
		if ((void *)(ip + 1) > end || p->ihl != 5) {
			prop_count(PC_IP_SKIPPED);
			return;
		}
		__builtin_memcpy(b, ip, 20);
		b[0] = 0x40 | (20 + PROP_IP4_OPT_LEN) / 4;
		((struct iphdr *)b)->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) + PROP_IP4_OPT_LEN);
		((struct iphdr *)b)->check = 0;
		b[20] = PROP_IP4_OPT_TYPE;
		b[21] = PROP_IP4_OPT_LEN;
		b[22] = PROP_MARKER;
		b[23] = c->flags;
		__builtin_memcpy(b + 24, c->trace_id, 16);
		__builtin_memcpy(b + 40, c->span_id, 8);
		((struct iphdr *)b)->check = prop_ip_csum(h, sizeof(h) / 2);
		if (bpf_skb_adjust_room(skb, PROP_IP4_OPT_LEN, BPF_ADJ_ROOM_NET, 0)) {
			prop_count(PC_IP_SKIPPED); /* e.g. above the MTU */
			return;
		}
		if (bpf_skb_store_bytes(skb, p->l3, b, sizeof(h), 0))
			return;
		prop_count(PC_IP_ADDED);
		return;
	}
	{
		__u8 d[PROP_IP6_DSTOPT_LEN];
		struct ipv6hdr *ip6 = data + PROP_BOUND(p->l3, 0x1ff);
		__be16 plen;
		__u8 next = IPPROTO_DSTOPTS;

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP) {
			prop_count(PC_IP_SKIPPED);
			return;
		}
		plen = bpf_htons(bpf_ntohs(ip6->payload_len) + PROP_IP6_DSTOPT_LEN);
		d[0] = IPPROTO_TCP;
		d[1] = PROP_IP6_DSTOPT_LEN / 8 - 1;
		d[2] = PROP_IP6_OPT_TYPE;
		d[3] = 26;
		d[4] = PROP_MARKER;
		d[5] = c->flags;
		__builtin_memcpy(d + 6, c->trace_id, 16);
		__builtin_memcpy(d + 22, c->span_id, 8);
		d[30] = 1; /* PadN, no data */
		d[31] = 0;
		if (bpf_skb_adjust_room(skb, PROP_IP6_DSTOPT_LEN, BPF_ADJ_ROOM_NET, 0)) {
			prop_count(PC_IP_SKIPPED);
			return;
		}
		if (bpf_skb_store_bytes(skb, p->l3 + 40, d, sizeof(d), 0) ||
		    bpf_skb_store_bytes(skb, p->l3 + 4, &plen, 2, 0) ||
		    bpf_skb_store_bytes(skb, p->l3 + 6, &next, 1, 0))
			return;
		prop_count(PC_IP_ADDED);
	}
}

SEC("classifier")
int tclab_prop_egress(struct __sk_buff *skb)
{
	struct prop_pkt p = {};
	struct prop_key key;
	struct prop_ctx c, *out;

	PROP_HOOKS_ONLY_RETURN(TC_ACT_UNSPEC);
	prop_count(PC_TC_PACKETS);
	if (!(tclab_prop_mode & PROP_M_IP) || !prop_parse_l3(skb, &p))
		return TC_ACT_UNSPEC;
	if (p.family == TCLAB_AF_INET6 && p.nexthdr != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	if (!prop_parse_tcp(skb, &p, &key, 1) || !p.plen)
		return TC_ACT_UNSPEC;
	out = bpf_map_lookup_elem(&tclab_prop_out, &key);
	if (out && out->carried)
		return TC_ACT_UNSPEC; /* its header or our TCP option carries it */
	if (out)
		__builtin_memcpy(&c, out, sizeof(c));
	else if (prop_request(skb, &p, &c) != TP_VALID)
		return TC_ACT_UNSPEC;
	prop_ip_add(skb, &p, &c);
	return TC_ACT_UNSPEC;
}

/* Our IP option, if the packet carries it (IPv4: first and alone;
 * IPv6: the whole first destination options header): read into c, then
 * removed. 1 when it was ours. */
static __always_inline int prop_ip_strip(struct __sk_buff *skb, struct prop_pkt *p, struct prop_ctx *c)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (p->family == TCLAB_AF_INET) {
		__u8 *o = data + PROP_BOUND(p->l3, 0x1ff) + 20;
		__u16 h[10];

		if (p->ihl != 5 + PROP_IP4_OPT_LEN / 4 || (void *)(o + PROP_IP4_OPT_LEN) > end)
			return 0;
		if (o[0] != PROP_IP4_OPT_TYPE || o[1] != PROP_IP4_OPT_LEN || o[2] != PROP_MARKER)
			return 0;
		c->flags = o[3];
		__builtin_memcpy(c->trace_id, o + 4, 16);
		__builtin_memcpy(c->span_id, o + 20, 8);
		__builtin_memcpy(h, data + PROP_BOUND(p->l3, 0x1ff), 20);
		((__u8 *)h)[0] = 0x45;
		((struct iphdr *)h)->tot_len = bpf_htons(bpf_ntohs(((struct iphdr *)h)->tot_len) - PROP_IP4_OPT_LEN);
		((struct iphdr *)h)->check = 0;
		((struct iphdr *)h)->check = prop_ip_csum(h, 10);
		if (bpf_skb_adjust_room(skb, -PROP_IP4_OPT_LEN, BPF_ADJ_ROOM_NET, 0))
			return 0;
		if (bpf_skb_store_bytes(skb, p->l3, h, sizeof(h), BPF_F_RECOMPUTE_CSUM))
			return 0;
		p->ihl = 5;
		p->l4 = p->l3 + 20; /* plen (tot_len - header) is unchanged */
		return 1;
	}
	{
		struct ipv6hdr *ip6 = data + PROP_BOUND(p->l3, 0x1ff);
		__u8 *d = (__u8 *)(ip6 + 1);
		__u8 next;
		__be16 plen;

		if ((void *)(d + PROP_IP6_DSTOPT_LEN) > end || ip6->nexthdr != IPPROTO_DSTOPTS)
			return 0;
		if (d[0] != IPPROTO_TCP || d[1] != PROP_IP6_DSTOPT_LEN / 8 - 1 || d[2] != PROP_IP6_OPT_TYPE ||
		    d[3] != 26 || d[4] != PROP_MARKER)
			return 0;
		c->flags = d[5];
		__builtin_memcpy(c->trace_id, d + 6, 16);
		__builtin_memcpy(c->span_id, d + 22, 8);
		next = d[0];
		plen = bpf_htons(bpf_ntohs(ip6->payload_len) - PROP_IP6_DSTOPT_LEN);
		if (bpf_skb_adjust_room(skb, -PROP_IP6_DSTOPT_LEN, BPF_ADJ_ROOM_NET, 0))
			return 0;
		if (bpf_skb_store_bytes(skb, p->l3 + 4, &plen, 2, BPF_F_RECOMPUTE_CSUM) ||
		    bpf_skb_store_bytes(skb, p->l3 + 6, &next, 1, BPF_F_RECOMPUTE_CSUM))
			return 0;
		p->nexthdr = next;
		p->plen -= PROP_IP6_DSTOPT_LEN;
		return 1;
	}
}

/* The context a connection's latest request brings, for the thread that
 * will read it (tclab_prop_read): a valid traceparent continues its trace;
 * an invalid one restarts (W3C); without one, our IP option (if any) is
 * the caller's context. Strips our IP option in modes with it. */
SEC("classifier")
int tclab_prop_ingress(struct __sk_buff *skb)
{
	struct prop_pkt p = {};
	struct prop_key key;
	struct prop_ctx c, opt;
	int has_opt = 0, status, fresh;

	PROP_HOOKS_ONLY_RETURN(TC_ACT_UNSPEC);
	prop_count(PC_TC_PACKETS);
	if (!prop_parse_l3(skb, &p))
		return TC_ACT_UNSPEC;
	__builtin_memset(&opt, 0, sizeof(opt));
	if (tclab_prop_mode & PROP_M_IP)
		has_opt = prop_ip_strip(skb, &p, &opt);
	if (has_opt)
		prop_count(PC_IP_STRIPPED);
	if (p.family == TCLAB_AF_INET6 && p.nexthdr != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	if (!prop_parse_tcp(skb, &p, &key, 0))
		return TC_ACT_UNSPEC;
	__builtin_memset(&c, 0, sizeof(c));
	status = prop_request(skb, &p, &c);
	if (status < 0 && !has_opt)
		return TC_ACT_UNSPEC;
	fresh = has_opt ? prop_opt_fresh(&key, &opt) : 1;
	if (status < 0 && !fresh)
		return TC_ACT_UNSPEC; /* a later segment of a request already seen */
	if (status == TP_VALID) {
		c.origin = PROP_O_HEADER;
	} else if (has_opt && status != TP_INVALID) {
		__builtin_memcpy(&c, &opt, sizeof(c));
		c.origin = PROP_O_IP;
		c.opaque = status < 0; /* no HTTP request starts here (TLS) */
	} else {
		__builtin_memset(&c, 0, sizeof(c));
		c.origin = PROP_O_NEW;
	}
	c.tp_status = status < 0 ? TP_MISSING : status;
	PROP_PUT(&tclab_prop_in, &key, &c);
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "Dual BSD/GPL";
