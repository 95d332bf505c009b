//! libFuzzer target: `tresnet_formats::fuzzing::tar_index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresnet_formats::fuzzing::tar_index(data));
