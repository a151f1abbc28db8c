//! Rust reference of `ebpf/include/propagation_tls.h`: which first bytes
//! of a message the kernel takes for a TLS record, and for a ClientHello
//! (the first bytes a TLS client sends, which open a client span on the
//! connection). The kernel looks at the first 8 bytes only.

/// TLS record content types (RFC 8446 §5.1).
pub const HANDSHAKE: u8 = 0x16;
pub const APPLICATION_DATA: u8 = 0x17;
/// Handshake message type of a ClientHello.
pub const CLIENT_HELLO: u8 = 0x01;
/// Largest record length accepted: 2^14 plaintext + 2048 (TLS 1.2 ciphertext).
pub const MAX_RECORD: u16 = 16384 + 2048;

/// The content type of the TLS record `msg` starts with, when its header
/// looks like one: type 0x14..=0x18, legacy version 3.0..=3.4, length
/// 1..=[`MAX_RECORD`]; `None` otherwise (and for fewer than 8 bytes: the
/// kernel needs 16 to look at a message at all).
pub fn record_type(msg: &[u8]) -> Option<u8> {
    let [ty, major, minor, hi, lo, ..] = *msg.get(..8)? else { return None };
    let len = u16::from_be_bytes([hi, lo]);
    ((0x14..=0x18).contains(&ty) && major == 3 && minor <= 4 && (1..=MAX_RECORD).contains(&len)).then_some(ty)
}

/// A handshake record whose first message is a ClientHello.
pub fn is_client_hello(msg: &[u8]) -> bool {
    record_type(msg) == Some(HANDSHAKE) && msg.get(5) == Some(&CLIENT_HELLO)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS 1.3 ClientHello's first bytes (record 3.1, length 0x00f8, type 1).
    const HELLO: [u8; 9] = [0x16, 0x03, 0x01, 0x00, 0xf8, 0x01, 0x00, 0x00, 0xf4];

    #[test]
    fn client_hellos_are_recognised() {
        assert_eq!(record_type(&HELLO), Some(HANDSHAKE));
        assert!(is_client_hello(&HELLO));
        // TLS 1.2 record version, SSL 3.0 record version
        for minor in [0u8, 3] {
            let mut h = HELLO;
            h[2] = minor;
            assert!(is_client_hello(&h), "3.{minor}");
        }
    }

    #[test]
    fn other_records_are_not_client_hellos() {
        let mut server_hello = HELLO;
        server_hello[5] = 0x02;
        assert_eq!(record_type(&server_hello), Some(HANDSHAKE));
        assert!(!is_client_hello(&server_hello));
        let app = [APPLICATION_DATA, 3, 3, 0x00, 0x35, 0xaa, 0xbb, 0xcc];
        assert_eq!(record_type(&app), Some(APPLICATION_DATA));
        assert!(!is_client_hello(&app));
    }

    #[test]
    fn non_tls_bytes_are_refused() {
        for msg in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            &[0x16, 0x03, 0x05, 0x00, 0x10, 0x01, 0, 0], // version 3.5
            &[0x16, 0x02, 0x01, 0x00, 0x10, 0x01, 0, 0], // version 2.x
            &[0x16, 0x03, 0x01, 0x00, 0x00, 0x01, 0, 0], // empty record
            &[0x16, 0x03, 0x03, 0x48, 0x01, 0x01, 0, 0], // 18433 bytes: too long
            &[0x13, 0x03, 0x03, 0x00, 0x10, 0x01, 0, 0], // type below 0x14
            &[0x19, 0x03, 0x03, 0x00, 0x10, 0x01, 0, 0], // type above 0x18
            &HELLO[..7],                                 // too short to judge
        ] {
            assert_eq!(record_type(msg), None, "{msg:02x?}");
            assert!(!is_client_hello(msg));
        }
        let mut longest = HELLO;
        longest[3..5].copy_from_slice(&MAX_RECORD.to_be_bytes());
        assert!(is_client_hello(&longest), "the longest record is still one");
    }
}
