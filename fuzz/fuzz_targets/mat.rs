//! libFuzzer target: `tresnet_common::fuzzing::mat`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresnet_common::fuzzing::mat(data));
