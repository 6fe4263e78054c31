//! Helpers for end-to-end tests: a real `redis-server` (the blockmap test
//! harness) and the built `locus` binary.
#![allow(dead_code)]

#[path = "../../../blockmap/tests/common/redis.rs"]
pub mod redis;

use std::process::{Command, Output};

/// Result of one `locus` run.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns self.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A `locus` command against `metadata`.
pub fn cmd(metadata: &str, args: &[&str]) -> Command {
    let mut c = Command::new(built_binary("locus"));
    c.env_remove("LOCUS_METADATA")
        .arg("--metadata")
        .arg(metadata)
        .args(args);
    c
}

/// Runs `locus` against `metadata`.
pub fn locus(metadata: &str, args: &[&str]) -> Run {
    cmd(metadata, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run locus: {e}"))
        .into()
}

/// A binary of this workspace, built next to this test executable
/// (`target/<profile>/NAME`). The test command builds every binary before
/// running the tests (`cargo build --workspace --release --bins`).
pub fn built_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins, same profile)",
        path.display()
    );
    path
}
