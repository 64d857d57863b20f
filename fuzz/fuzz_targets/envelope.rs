#![no_main]
//! Untrusted envelope bytes through decode, verify and open.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hru_envelope::fixture::fuzz_envelope(data));
