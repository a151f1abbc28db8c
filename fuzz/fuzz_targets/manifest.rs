//! `cargo fuzz run manifest`: see tclab_lab::fuzz_targets::manifest for the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tclab_lab::fuzz_targets::manifest(data));
