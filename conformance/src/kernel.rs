//! The kernel-initiator suite: `conformance/kernel-initiator/` (a qemu
//! guest running open-iscsi: login, mkfs, mount, write, verify, fsck)
//! against a fresh target, once per mode: plain, one-way CHAP, CRC32C
//! digests. The target's IQN and LUN come from the [`RunningTarget`]: the
//! default target's LUN 0 for locusd, LUN 1 for tgtd, the mirrored target's
//! LUN 0 (served by n1) for a mirrored cluster, where CHAP is set with
//! `locus target chap set`.
//!
//! Owns choosing the modes and reading the script's verdict line
//! (`kernel-initiator: PASS` / `kernel-initiator: FAIL <reason>`). A mode
//! passes when the script says PASS and exits 0 and the target then stops
//! cleanly ([`RunningTarget::finish`]: locusd exits 0 on SIGTERM; a mirrored
//! LUN's copies are all in sync and identical). A missing script fails
//! every mode.

use crate::proc;
use crate::report::{Checks, SuiteResult};
use crate::target::{Chap, RunningTarget, Setup, TargetKind};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// One way of running the kernel initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// AuthMethod None, no digests.
    Plain,
    /// One-way CHAP (RFC 7143 §12.1.3).
    Chap,
    /// CRC32C header and data digests (RFC 7143 §13.1).
    Digest,
    /// A mirrored LUN of 3 or more nodes moved to its last node between the
    /// guest's sessions, as `locus` moves a VM's disk to another site
    /// (location add, image sync, image move, location remove): session 2
    /// logs in at the new node and the filesystem must be intact (e2fsck,
    /// checksums).
    Migrate,
}

impl Mode {
    /// All modes, in the order they run.
    pub const ALL: [Mode; 3] = [Mode::Plain, Mode::Chap, Mode::Digest];

    /// The mode's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Chap => "chap",
            Mode::Digest => "digest",
            Mode::Migrate => "migrate",
        }
    }
}

/// Credentials the CHAP mode configures on the target and gives the script.
/// 16 characters: some initiators want 12 to 16.
pub fn test_chap() -> Chap {
    Chap {
        user: "locus-ki".to_owned(),
        secret: "kiSecret-2026-ab".to_owned(),
    }
}

/// Options of the kernel suite.
#[derive(Debug, Clone)]
pub struct Options {
    /// Path of `kernel-initiator.sh`.
    pub script: PathBuf,
    /// Modes to run.
    pub modes: Vec<Mode>,
    /// Guest time limit passed to the script (`--timeout`); the script is
    /// killed two minutes after it.
    pub timeout: Duration,
}

/// What the script's output says: `Ok(())` for PASS, the reason otherwise.
pub fn verdict(output: &str) -> Result<()> {
    let line = output.lines().rev().find(|l| {
        l.starts_with("kernel-initiator: PASS") || l.starts_with("kernel-initiator: FAIL")
    });
    match line {
        Some(l) if l.trim_end() == "kernel-initiator: PASS" => Ok(()),
        Some(l) => bail!("{}", l.trim_end()),
        None => bail!("the script printed no verdict line"),
    }
}

fn run_mode(kind: &TargetKind, opts: &Options, mode: Mode) -> Result<String> {
    if !opts.script.is_file() {
        bail!(
            "{} not found (the harness is conformance/kernel-initiator/ in the repository)",
            opts.script.display()
        );
    }
    let chap = test_chap();
    let setup = Setup {
        chap: (mode == Mode::Chap).then(|| chap.clone()),
        digests: mode == Mode::Digest,
    };
    let target = RunningTarget::start(kind, &setup)?;
    let mut cmd = Command::new("bash");
    cmd.arg(&opts.script)
        .arg("--portal")
        .arg(target.addr().to_string())
        .arg("--target")
        .arg(target.iqn())
        .arg("--lun")
        .arg(target.lun().to_string())
        .arg("--timeout")
        .arg(opts.timeout.as_secs().to_string());
    if mode == Mode::Migrate {
        let Some(cluster) = target.cluster() else {
            bail!("the migrate mode needs a mirrored target (--target mirrored3)");
        };
        let (portal2, pause) = cluster.prepare_migration()?;
        cmd.arg("--portal2")
            .arg(portal2.to_string())
            .arg("--pause-cmd")
            .arg(pause);
    }
    match mode {
        Mode::Plain | Mode::Migrate => {}
        Mode::Chap => {
            cmd.arg("--chap")
                .arg(format!("{}:{}", chap.user, chap.secret));
        }
        Mode::Digest => {
            cmd.arg("--digest");
        }
    }
    let t0 = Instant::now();
    let prefix = format!("  [kernel{} {}] ", kind.tag(), mode.name());
    let out = proc::run(
        &mut cmd,
        opts.timeout + Duration::from_secs(120),
        Some(&prefix),
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let text = format!("{}{}", out.stdout, out.stderr);
    let v = verdict(&text);
    let ran = match (&v, out.status.success()) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err(format!("verdict PASS but exit status {}", out.status)),
        (Err(e), _) => Err(format!("{e:#}\n{}", target.log_tail(30))),
    };
    if mode == Mode::Migrate && ran.is_ok() {
        if let Some(c) = target.cluster() {
            c.migrated();
        }
    }
    let stopped = target.finish();
    match (ran, stopped) {
        (Ok(()), Ok(note)) if note.is_empty() => Ok(format!("{secs:.0}s")),
        (Ok(()), Ok(note)) => Ok(format!("{secs:.0}s; {note}")),
        (Ok(()), Err(e)) => bail!("the guest passed, but stopping the target: {e:#}"),
        (Err(e), Ok(_)) => bail!("{e}"),
        (Err(e), Err(s)) => bail!("{e}\nand stopping the target: {s:#}"),
    }
}

/// Runs each mode against its own fresh target.
pub fn run(kind: &TargetKind, opts: &Options) -> SuiteResult {
    let mut checks = Checks::new("kernel", kind);
    for &mode in &opts.modes {
        println!(
            "kernel{}: {} against a fresh {}",
            kind.tag(),
            mode.name(),
            kind.describe()
        );
        checks.record(mode.name(), &run_mode(kind, opts, mode));
    }
    checks.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        assert!(verdict("[ki +1s] x\nkernel-initiator: PASS\n").is_ok());
        let e = verdict("kernel-initiator: FAIL login failed\n").expect_err("fail");
        assert_eq!(e.to_string(), "kernel-initiator: FAIL login failed");
        assert!(verdict("[ki +1s] nothing\n").is_err());
        assert!(verdict("kernel-initiator: PASSED?\n").is_err());
    }

    #[test]
    fn chap_secret_is_script_safe() {
        let c = test_chap();
        assert!((12..=16).contains(&c.secret.len()));
        assert!(!c.secret.contains(['\'', '\\', ':']));
    }
}
