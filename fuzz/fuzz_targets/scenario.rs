//! `cargo fuzz run scenario`: see tclab_lab::fuzz_targets::scenario for the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tclab_lab::fuzz_targets::scenario(data));
