//! `cargo fuzz run pcap`: see tclab_lab::fuzz_targets::pcap for the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tclab_lab::fuzz_targets::pcap(data));
