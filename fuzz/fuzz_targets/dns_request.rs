//! A raw DNS request through the real handler: no panic, no records for a name outside the list.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzz_api::dns_request(data));
