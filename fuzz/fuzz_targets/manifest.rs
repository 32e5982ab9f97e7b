//! `content-type\nbody`: what is taken for a manifest or index.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzz_api::manifest(data));
