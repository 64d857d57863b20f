#![no_main]
//! Untrusted KeyGranted bodies through the key ring.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hru_envelope::fixture::fuzz_key_granted(data));
