//! Fuzzes the SCSI CDB parser (SPC-4 §4.2, SBC-3 §5).
//!
//! PLACEHOLDER, NOT BUILT YET: the SCSI module is not part of the branch this
//! file was written on, and its parser's name and signature were unknown when
//! this was written. The target sits behind the `scsi` feature
//! (`required-features` in Cargo.toml) and has never been compiled or run.
//! To enable it, replace the call below with the real two-step parser (opcode
//! table lookup, then field decoding), then
//! `cargo fuzz run cdb_parse --features scsi`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Oracle: every CDB of 0..=260 bytes parses or yields a sense-carrying
    // error (INVALID COMMAND OPERATION CODE, INVALID FIELD IN CDB), never a
    // panic.
    let cdb = &data[..data.len().min(260)];
    let _ = iscsi_target::scsi::parse_cdb(cdb);
});
