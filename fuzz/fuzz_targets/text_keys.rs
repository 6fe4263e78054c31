//! Fuzzes the text key=value parser (RFC 7143 §6.1) used by Login and Text.
//!
//! NOT BUILT YET: `iscsi_target::login` is not part of the branch this file
//! was written on, so the target sits behind the `login` feature
//! (`required-features` in Cargo.toml) and has never been compiled or run.
//! To enable it, make the call below match the real parser's signature, then
//! `cargo fuzz run text_keys --features login`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Oracle: no panic on any data segment, however malformed (missing '=',
    // no NUL terminator, invalid UTF-8, over-long keys or values).
    let _ = iscsi_target::login::parse_text(data);
});
