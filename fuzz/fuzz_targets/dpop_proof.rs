//! cargo-fuzz binary for `cae_proxy::dev::fuzz::dpop_proof` (properties documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cae_proxy::dev::fuzz::dpop_proof(data));
