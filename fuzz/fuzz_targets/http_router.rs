//! `host\npath\naccept`: host patterns, the registry path router, digests, Accept normalising.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzz_api::http_router(data));
