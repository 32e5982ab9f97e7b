//! Config text → validated config, or problems that each name a line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzz_api::config(data));
