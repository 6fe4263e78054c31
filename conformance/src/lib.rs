//! Runs external conformance suites against an iSCSI target (locusd, or
//! tgtd for reference): libiscsi's `iscsi-test-cu`, the Linux kernel
//! initiator in a qemu guest, and QEMU's `qemu-img` / `qemu-io`.
//!
//! Owns starting a fresh target per suite on a free loopback port, parsing
//! and scoring the suites' output, and the committed libiscsi expectations.
//! It knows nothing of the target's internals: it only speaks to it through
//! the initiators, as a user would.
//!
//! Modules:
//! - [`cunit`]: parser of `iscsi-test-cu`'s verbose output;
//! - [`expectations`]: the expectations file and regression rules;
//! - [`target`]: the target process and its temp dir (killed on drop);
//! - [`libiscsi`], [`kernel`], [`qemu`]: the suites;
//! - [`proc`], [`report`]: running tools with time limits, PASS/FAIL lines.

pub mod cunit;
pub mod expectations;
pub mod kernel;
pub mod libiscsi;
pub mod proc;
pub mod qemu;
pub mod report;
pub mod target;

use std::path::PathBuf;

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
