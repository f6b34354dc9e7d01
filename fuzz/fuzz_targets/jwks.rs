#![no_main]
// The body lives in the library (portcullis::fuzz_targets), so that the corpus and every
// crash found here replay in an ordinary test: tests/fuzz_regressions.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz_targets::jwks(data));
