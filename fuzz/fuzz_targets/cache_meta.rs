//! An object's `.meta` file and a tag file, as read at start.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzz_api::cache_meta(data));
