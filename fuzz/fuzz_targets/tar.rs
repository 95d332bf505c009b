//! libFuzzer target: `tresnet_formats::fuzzing::tar`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresnet_formats::fuzzing::tar(data));
