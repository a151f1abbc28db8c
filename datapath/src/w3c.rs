//! W3C Trace Context level 1: the `traceparent` header, as a reference
//! implementation of the rules the kernel applies (`ebpf/include/traceparent.h`).
//!
//! `version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex:
//! version 2 characters (`ff` invalid), trace-id 32 (not all zero), parent-id
//! 16 (not all zero), flags 2. Version `00` is exactly 55 characters; a later
//! version keeps that layout and, after the flags, either ends or continues
//! with `-` (spec: "Vendors MUST check that the 2 characters are either the
//! end of the string or a dash"). Surrounding spaces and tabs (HTTP's OWS)
//! are ignored. <https://www.w3.org/TR/trace-context-1/#traceparent-header>

use std::fmt;

/// A valid traceparent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Why a traceparent value is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error("traceparent is {0} characters, shorter than 55")]
    TooShort(usize),
    #[error("traceparent version 00 must be exactly 55 characters, not {0}")]
    Version00Length(usize),
    #[error("traceparent version ff is invalid")]
    VersionFf,
    #[error("traceparent has no '-' at position {0}")]
    MissingDash(usize),
    #[error("traceparent has a character that is not lowercase hex at position {0}")]
    NotLowerHex(usize),
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
    #[error("traceparent of a later version continues after the flags without '-' (position 55)")]
    BadSuffix,
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decode `out.len()` bytes of lowercase hex starting at `at` in `v`.
fn hex_field(v: &[u8], at: usize, out: &mut [u8]) -> Result<(), TraceparentError> {
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = lower_hex(v[at + 2 * i]).ok_or(TraceparentError::NotLowerHex(at + 2 * i))?;
        let lo = lower_hex(v[at + 2 * i + 1]).ok_or(TraceparentError::NotLowerHex(at + 2 * i + 1))?;
        *byte = hi << 4 | lo;
    }
    Ok(())
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = v.iter().position(|c| !is_ows(c)).unwrap_or(v.len());
    let end = v.iter().rposition(|c| !is_ows(c)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Parse a traceparent header value (what follows `traceparent:` up to the
/// end of the line; surrounding spaces and tabs are allowed).
pub fn parse_traceparent(value: &[u8]) -> Result<TraceParent, TraceparentError> {
    let v = trim_ows(value);
    if v.len() < 55 {
        return Err(TraceparentError::TooShort(v.len()));
    }
    let mut version = [0u8; 1];
    hex_field(v, 0, &mut version)?;
    for dash in [2, 35, 52] {
        if v[dash] != b'-' {
            return Err(TraceparentError::MissingDash(dash));
        }
    }
    let mut tp = TraceParent { version: version[0], trace_id: [0; 16], parent_id: [0; 8], flags: 0 };
    hex_field(v, 3, &mut tp.trace_id)?;
    hex_field(v, 36, &mut tp.parent_id)?;
    let mut flags = [0u8; 1];
    hex_field(v, 53, &mut flags)?;
    tp.flags = flags[0];
    if tp.version == 0xff {
        return Err(TraceparentError::VersionFf);
    }
    if tp.version == 0 && v.len() != 55 {
        return Err(TraceparentError::Version00Length(v.len()));
    }
    if v.len() > 55 && v[55] != b'-' {
        return Err(TraceparentError::BadSuffix);
    }
    if tp.trace_id == [0; 16] {
        return Err(TraceparentError::ZeroTraceId);
    }
    if tp.parent_id == [0; 8] {
        return Err(TraceparentError::ZeroParentId);
    }
    Ok(tp)
}

impl TraceParent {
    /// A new root context: random non-zero ids, version 00, sampled.
    pub fn new_root<R: rand::Rng + ?Sized>(rng: &mut R) -> TraceParent {
        TraceParent { version: 0, trace_id: new_trace_id(rng), parent_id: new_span_id(rng), flags: 0x01 }
    }

    /// The same trace with a new span (this hop's id as the parent of the next).
    pub fn child<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> TraceParent {
        TraceParent { version: 0, parent_id: new_span_id(rng), ..*self }
    }

    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    pub fn trace_id_hex(&self) -> String {
        hex_id(&self.trace_id)
    }

    pub fn parent_id_hex(&self) -> String {
        hex_id(&self.parent_id)
    }
}

/// Lower-case hex of an id, as W3C writes it. Every span's ids go through
/// here in the agent; `hex::encode` collects a char iterator one char at a
/// time, which was ~8% of an agent's reader.
pub fn hex_id(id: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(id.len() * 2);
    for b in id {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
    // only ASCII digits were pushed: this cannot fail
    String::from_utf8(out).unwrap_or_default()
}

/// An id as its hex digits (`N` of them), kept inline: every span carries
/// three and every propagation record three more, and as heap strings
/// their allocations were a third of the agent's cost of a record. Empty
/// (no digits) until set. Reads as a `&str` (it derefs to one).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HexId<const N: usize> {
    digits: [u8; N],
    len: u8,
}

/// A trace-id's 32 hex digits.
pub type TraceIdHex = HexId<32>;
/// A span (parent) id's 16 hex digits.
pub type SpanIdHex = HexId<16>;

impl<const N: usize> HexId<N> {
    /// No digits.
    pub const EMPTY: HexId<N> = HexId { digits: [b'0'; N], len: 0 };

    /// The lower-case hex of `id` (`N / 2` bytes; a shorter or longer id
    /// is cut or padded with zeros, which no caller gives).
    pub fn from_bytes(id: &[u8]) -> HexId<N> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = HexId { digits: [b'0'; N], len: N as u8 };
        for (pair, b) in out.digits.chunks_exact_mut(2).zip(id) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        out
    }

    /// `s` when it is exactly `N` hex digits (kept as written).
    pub fn parse(s: &str) -> Option<HexId<N>> {
        let b = s.as_bytes();
        if b.len() != N || !b.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut out = HexId { digits: [b'0'; N], len: N as u8 };
        out.digits.copy_from_slice(b);
        Some(out)
    }

    pub fn as_str(&self) -> &str {
        // only ASCII hex digits are ever stored
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Back to no digits.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl<const N: usize> Default for HexId<N> {
    fn default() -> HexId<N> {
        HexId::EMPTY
    }
}

impl<const N: usize> std::ops::Deref for HexId<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> AsRef<str> for HexId<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq<str> for HexId<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for HexId<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> PartialEq<String> for HexId<N> {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<HexId<N>> for String {
    fn eq(&self, other: &HexId<N>) -> bool {
        self == other.as_str()
    }
}

impl<const N: usize> PartialEq<HexId<N>> for &str {
    fn eq(&self, other: &HexId<N>) -> bool {
        *self == other.as_str()
    }
}

impl<const N: usize> serde::Serialize for HexId<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> serde::Deserialize<'de> for HexId<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HexId<N>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.is_empty() {
            return Ok(HexId::EMPTY);
        }
        HexId::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not {N} hex digits")))
    }
}

/// A random trace-id that is not all zero.
pub fn new_trace_id<R: rand::Rng + ?Sized>(rng: &mut R) -> [u8; 16] {
    loop {
        let id: [u8; 16] = rng.r#gen();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A random span (parent) id that is not all zero.
pub fn new_span_id<R: rand::Rng + ?Sized>(rng: &mut R) -> [u8; 8] {
    loop {
        let id: [u8; 8] = rng.r#gen();
        if id != [0; 8] {
            return id;
        }
    }
}

impl fmt::Display for TraceParent {
    /// The version-00 form: `00-<trace-id>-<parent-id>-<flags>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}-{}-{}-{:02x}", self.version, self.trace_id_hex(), self.parent_id_hex(), self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn hex_id_writes_every_byte_in_lower_case() {
        let every: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_id(&every), hex::encode(&every));
        assert_eq!(hex_id(&[0x00, 0xab, 0x0f, 0xf0]), "00ab0ff0");
        assert_eq!(hex_id(&[]), "");
    }

    #[test]
    fn valid_value_parses_and_displays_back() {
        let tp = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(tp.to_string(), VALID);
        assert!(tp.sampled());
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(parse_traceparent(format!(" \t{VALID}\t ").as_bytes()), Ok(tp));
    }

    #[test]
    fn every_rule_rejects() {
        use TraceparentError::*;
        let cases: [(String, TraceparentError); 9] = [
            (VALID[..54].to_string(), TooShort(54)),
            (format!("{VALID}0"), Version00Length(56)),
            (VALID.replacen("00-", "ff-", 1), VersionFf),
            (VALID.to_uppercase(), NotLowerHex(4)),
            (VALID.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)), ZeroTraceId),
            (VALID.replace("00f067aa0ba902b7", &"0".repeat(16)), ZeroParentId),
            (VALID.replacen('-', "_", 1), MissingDash(2)),
            (VALID.replacen("00-", "01-", 1) + "x", BadSuffix),
            (VALID.replace("-01", "-0g"), NotLowerHex(54)),
        ];
        for (value, want) in cases {
            assert_eq!(parse_traceparent(value.as_bytes()), Err(want), "{value}");
        }
    }

    #[test]
    fn future_versions_keep_the_layout() {
        let v1 = VALID.replacen("00-", "cc-", 1);
        assert_eq!(parse_traceparent(v1.as_bytes()).unwrap().version, 0xcc);
        assert!(parse_traceparent(format!("{v1}-what-the-future-holds").as_bytes()).is_ok());
        assert!(parse_traceparent(format!("{v1}-").as_bytes()).is_ok());
    }

    #[test]
    fn generated_ids_are_valid() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let root = TraceParent::new_root(&mut rng);
            let child = root.child(&mut rng);
            assert_eq!(parse_traceparent(child.to_string().as_bytes()), Ok(child));
            assert_eq!(child.trace_id, root.trace_id);
        }
    }

    #[test]
    fn hex_ids_are_inline_lower_case_digits() {
        let t = TraceIdHex::from_bytes(&[0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]);
        assert_eq!(t, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.to_string(), hex_id(&[0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]));
        assert_eq!(SpanIdHex::parse("00f067aa0ba902b7").map(|s| s.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(SpanIdHex::parse("00f067aa0ba902b"), None, "15 digits");
        assert_eq!(SpanIdHex::parse("00f067aa0ba902bx"), None, "not hex");
        let mut e = t;
        e.clear();
        assert!(e.is_empty() && e.as_str().is_empty() && TraceIdHex::default().is_empty());
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"4bf92f3577b34da6a3ce929d0e0e4736\"");
        assert_eq!(serde_json::from_str::<TraceIdHex>("\"4bf92f3577b34da6a3ce929d0e0e4736\"").unwrap(), t);
        assert!(serde_json::from_str::<SpanIdHex>("\"xyz\"").is_err());
    }
}
