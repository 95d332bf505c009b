//! libFuzzer target: `tresnet_formats::fuzzing::npy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresnet_formats::fuzzing::npy(data));
