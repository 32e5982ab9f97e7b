//! A `WWW-Authenticate` value and a token service's answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzz_api::www_authenticate(data));
