//! The properties the fuzz targets check (`fuzz/`, `cargo fuzz`), shared
//! with the fixed-seed tests that run them in `cargo test`
//! (lab/tests/robust_parsers_fuzz.rs): the user-facing parsers take any
//! bytes without panicking, and every error they return names the input.
//!
//! Each function panics when a property does not hold: that is how a fuzzer
//! learns about it.

use std::path::Path;

use crate::kernels::Manifest;
use crate::vm::console::{ConsoleParser, Event};

/// The file name every target gives its input, so errors can be checked to name it.
pub const NAME: &str = "fuzz-input";

/// A scenario file: parse and validate; errors name the file.
pub fn scenario(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let path = Path::new("/nonexistent-tclab-fuzz").join(format!("{NAME}.toml"));
    if let Err(errors) = crate::scenario::parse_scenario(&path, src) {
        assert!(!errors.is_empty(), "an error list is never empty");
        for e in errors {
            let text = e.to_string();
            assert!(text.contains(NAME), "scenario error does not name the file: {text}");
        }
    }
}

/// A capture: pcap or pcapng; packets numbered from 1 in order, errors name the file.
pub fn pcap(data: &[u8]) {
    let path = Path::new(NAME);
    match crate::pcap::read_bytes(path, data) {
        Ok(packets) => {
            for (i, p) in packets.iter().enumerate() {
                assert_eq!(p.index, i + 1, "packets are numbered from 1 in order");
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(NAME), "pcap error does not name the file: {text}");
        }
    }
}

/// A kernel manifest; errors name the file.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/nonexistent-tclab-fuzz").join(format!("{NAME}.toml"));
    if let Err(e) = Manifest::parse(text, &path) {
        let text = e.to_string();
        assert!(text.contains(NAME), "manifest error does not name the file: {text}");
    }
}

/// The guest's console stream: the first byte picks chunk sizes; feeding the
/// rest in chunks gives the same events as feeding it at once, and every
/// error names its line.
pub fn console(data: &[u8]) {
    let Some((&step, bytes)) = data.split_first() else { return };
    let step = usize::from(step % 17) + 1;
    let mut whole = ConsoleParser::new();
    let mut all = whole.feed(bytes);
    all.extend(whole.finish());
    let mut chunked = ConsoleParser::new();
    let mut parts = Vec::new();
    for chunk in bytes.chunks(step) {
        parts.extend(chunked.feed(chunk));
    }
    parts.extend(chunked.finish());
    assert_eq!(all, parts, "chunking changed the events");
    assert_eq!(whole.seen_final(), chunked.seen_final());
    let lines = bytes.split(|&b| b == b'\n').count();
    let mut finals = 0;
    for ev in &all {
        match ev {
            Ok(Event::Record { record: crate::vm::console::Record::Final { .. }, .. }) => finals += 1,
            Ok(_) => {}
            Err(e) => {
                assert!(e.line >= 1 && e.line <= lines, "error line {} of {lines}", e.line);
                assert!(!e.reason.is_empty());
            }
        }
    }
    assert!(finals <= 1, "at most one final record is accepted");
}
