/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Context propagation over connections whose payload cannot be read or
 * changed (TLS): recognising TLS records from the first 8 bytes of a
 * message. A thread serving a request that sends a ClientHello opens a
 * client span on that connection; the TCP/IP options carry it (see
 * propagation.c, tclab_prop_msg, and docs/propagation.md).
 *
 * Mirrored by datapath/src/propagation/tls.rs (unit-tested there; the
 * kernel's own verdicts are checked by datapath/tests/propagation_tls.rs).
 */
#pragma once

#include <linux/types.h>

#define PROP_TLS_HANDSHAKE 0x16
#define PROP_TLS_APPDATA 0x17
#define PROP_TLS_CLIENT_HELLO 0x01
/* Largest record length: 2^14 plaintext + 2048 (TLS 1.2 ciphertext). */
#define PROP_TLS_MAX_RECORD (16384 + 2048)

/* The content type of the TLS record that the 8 bytes h (in memory order,
 * little-endian load) start, when they look like one: type 0x14..0x18,
 * legacy version 3.0..3.4, length 1..PROP_TLS_MAX_RECORD. 0 otherwise. */
static __always_inline __u32 prop_tls_record(__u64 h)
{
	__u32 type = h & 0xff, major = (h >> 8) & 0xff, minor = (h >> 16) & 0xff;
	__u32 len = ((h >> 24) & 0xff) << 8 | ((h >> 32) & 0xff);

	if (type < 0x14 || type > 0x18 || major != 3 || minor > 4 || len == 0 || len > PROP_TLS_MAX_RECORD)
		return 0;
	return type;
}

/* A handshake record whose first message is a ClientHello: the first
 * bytes a TLS client sends on a connection. */
static __always_inline int prop_tls_client_hello(__u64 h)
{
	return prop_tls_record(h) == PROP_TLS_HANDSHAKE && ((h >> 40) & 0xff) == PROP_TLS_CLIENT_HELLO;
}
