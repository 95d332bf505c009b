//! libFuzzer target: `tresnet_formats::fuzzing::mat`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresnet_formats::fuzzing::mat(data));
