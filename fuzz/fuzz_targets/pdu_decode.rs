//! The `pdu_decode` fuzz target. Its input layout and oracles live in
//! `../oracles/pdu_decode.rs`, which `iscsi-target/tests/fuzz_regressions.rs` also
//! runs, so every committed input is replayed by the test suite.
#![no_main]

#[path = "../oracles/pdu_decode.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
