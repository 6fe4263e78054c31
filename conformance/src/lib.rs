//! Runs external conformance suites against an iSCSI target (locusd's local
//! LUN, a LUN mirrored on 2 or 3 locusd nodes, or tgtd for reference):
//! libiscsi's `iscsi-test-cu`, the Linux kernel initiator in a qemu guest,
//! and QEMU's `qemu-img` / `qemu-io`.
//!
//! Owns starting a fresh target per suite on free loopback ports, parsing
//! and scoring the suites' output, and the committed libiscsi expectations.
//! It knows nothing of the target's internals: it speaks to it through the
//! initiators, as a user would, and sets a mirrored cluster up and inspects
//! it with the `locus` admin CLI, as an operator would.
//!
//! What runs against what (`locus-conformance all`, as `scripts/test.sh`
//! runs it):
//! - locusd, local LUN (`iqn.2026-11.io.locus:default` LUN 0): libiscsi
//!   (`expectations/libiscsi.toml`), qemu, kernel plain/CHAP/digest;
//! - 2-way mirrored LUN (`iqn.2026-11.io.locus:mirrored` LUN 0 on n1, copies
//!   on n1, n2): libiscsi against the same `expectations/libiscsi.toml`;
//! - 3-way mirrored LUN (copies on n1, n2, n3): kernel plain.
//!
//! Modules:
//! - [`cunit`]: parser of `iscsi-test-cu`'s verbose output;
//! - [`expectations`]: the expectations file and regression rules;
//! - [`target`]: the target's processes and temp dir (killed on drop);
//! - [`cluster`]: the mirrored cluster (Redis, N locusd) and its checks;
//! - [`libiscsi`], [`kernel`], [`qemu`]: the suites;
//! - [`proc`], [`report`]: running tools with time limits, PASS/FAIL lines.

pub mod cluster;
pub mod cunit;
pub mod expectations;
pub mod kernel;
pub mod libiscsi;
pub mod proc;
pub mod qemu;
pub mod report;
pub mod target;

use std::path::PathBuf;

/// The locusd binary tested by default: `locusd` next to the running
/// program (`cargo build --release --bins` puts `locus-conformance`, `locusd`
/// and `locus` in the same directory, whatever `CARGO_TARGET_DIR` is), else
/// `target/release/locusd` under the workspace root.
pub fn default_locusd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("locusd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| workspace_root().join("target/release/locusd"))
}

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
