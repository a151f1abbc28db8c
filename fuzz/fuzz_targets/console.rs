//! `cargo fuzz run console`: see tclab_lab::fuzz_targets::console for the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tclab_lab::fuzz_targets::console(data));
