//! libFuzzer target: `tresnet_worker::fuzzing::image_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tresnet_worker::fuzzing::image_decode(data));
