//! The libiscsi suite: `iscsi-test-cu -d -S -t ALL URL URL2` against a
//! fresh target, scored against the committed expectations. `-S` allows the
//! SANITIZE tests; URL2 is the same LUN through a second portal, which the
//! MultipathIO tests use. The tests that skip on the main LUN because they
//! need another configuration ([`EXTRA_TESTS`]: a read-only LUN, physical
//! blocks larger than logical ones) run again, each alone, against such a
//! LUN of the same process, and those outcomes replace the first ones.
//!
//! Owns the command line (both initiator names, `--dataloss`), the log files
//! it leaves in the log dir, and the verdict. Parsing lives in
//! [`crate::cunit`], the regression rules in [`crate::expectations`].
//!
//! A mirrored LUN is held to the local LUN's expectations file
//! (`expectations/libiscsi.toml`): it must do exactly as well. `--bless` is
//! refused on it, so that a mirrored-only failure cannot be written into the
//! file. After the run the target must stop cleanly
//! ([`RunningTarget::finish`]: locusd exits 0 on SIGTERM; a mirrored LUN's
//! copies are all in sync and identical), or the suite fails.

use crate::cunit::{self, Outcome};
use crate::expectations::Expectations;
use crate::proc;
use crate::report::SuiteResult;
use crate::target::{ExtraLun, RunningTarget, Setup, TargetKind};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// First initiator name (`-i`); the reservation tests log in with both.
pub const INITIATOR_1: &str = "iqn.2026-11.io.locus:conformance-1";
/// Second initiator name (`-I`).
pub const INITIATOR_2: &str = "iqn.2026-11.io.locus:conformance-2";

/// Options of the libiscsi suite.
#[derive(Debug, Clone)]
pub struct Options {
    /// Expectations file to compare with (or to write with `bless`).
    pub expectations: PathBuf,
    /// Write the run's outcomes into the expectations file.
    pub bless: bool,
    /// Where the raw output and the per-test results are kept.
    pub log_dir: PathBuf,
    /// Time limit for the whole `iscsi-test-cu` run.
    pub timeout: Duration,
}

/// Runs the suite against a fresh target of `kind`.
pub fn run(kind: &TargetKind, opts: &Options) -> Result<SuiteResult> {
    let mut result = SuiteResult::new("libiscsi", kind);
    let tag = format!("libiscsi{}", kind.tag());
    if opts.bless && matches!(kind, TargetKind::Mirrored { .. }) {
        println!(
            "FAIL {tag}: --bless is refused on a mirrored LUN: it must meet the local LUN's \
             expectations ({}), not rewrite them; bless with --target locusd",
            opts.expectations.display()
        );
        result.summary.failed = 1;
        return Ok(result);
    }
    let mut target = match RunningTarget::start(kind, &Setup::default()) {
        Ok(t) => t,
        Err(e) => {
            println!("FAIL {tag} start {}: {e:#}", kind.name());
            result.summary.failed = 1;
            return Ok(result);
        }
    };
    let target_logs = opts
        .log_dir
        .join(format!("libiscsi-{}-target", kind.name()));
    target.keep_logs(target_logs.clone());
    let url = target.url();
    let url2 = target.url2().unwrap_or_default();
    println!(
        "{tag}: iscsi-test-cu -d -S -t ALL {url} {url2} (target {}; its logs will be in {})",
        kind.describe(),
        target_logs.display()
    );
    let t0 = Instant::now();
    let mut cmd = Command::new("iscsi-test-cu");
    cmd.args([
        "-d",
        "-S",
        "-t",
        "ALL",
        "-i",
        INITIATOR_1,
        "-I",
        INITIATOR_2,
    ])
    .arg(&url);
    if !url2.is_empty() {
        cmd.arg(&url2);
    }
    let mut out = proc::run(&mut cmd, opts.timeout, None)?;
    // The tests that skip on the main LUN, each against a LUN configured
    // as it needs; their output is kept after the main run's.
    let mut extra = Vec::new();
    for (test, lun_url) in target.extra_runs(EXTRA_TESTS) {
        if out.timed_out {
            break;
        }
        println!("{tag}: iscsi-test-cu -d -S -t {test} {lun_url}");
        let mut cmd = Command::new("iscsi-test-cu");
        cmd.args(["-d", "-S", "-t", test, "-i", INITIATOR_1, "-I", INITIATOR_2])
            .arg(&lun_url);
        let run = proc::run(&mut cmd, opts.timeout, None)?;
        out.timed_out |= run.timed_out;
        out.stderr.push_str(&run.stderr);
        extra.push(run.stdout);
    }
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let log = opts.log_dir.join(format!("libiscsi-{}.log", kind.name()));
    std::fs::write(
        &log,
        format!("{}{}{}", out.stdout, extra.concat(), out.stderr),
    )?;
    println!(
        "{tag}: finished in {:.0}s ({}), raw output in {}",
        t0.elapsed().as_secs_f64(),
        out.status,
        log.display()
    );
    let mut healthy = true;
    if out.timed_out {
        println!(
            "FAIL {tag}: iscsi-test-cu did not finish within {}s",
            opts.timeout.as_secs()
        );
        healthy = false;
    }
    // A target that died under the suite is a failure whatever the scores.
    if let Some(how) = target.exited()? {
        println!(
            "FAIL {tag}: the target died during the run ({how})\n{}",
            target.log_tail(40)
        );
        healthy = false;
    }
    // locusd must exit 0 on SIGTERM; a mirrored LUN's copies must be in
    // sync and identical.
    match target.finish() {
        Ok(note) if note.is_empty() => {}
        Ok(note) => println!("PASS {tag} target stopped cleanly ({note})"),
        Err(e) => {
            println!("FAIL {tag}: stopping the target: {e:#}");
            healthy = false;
        }
    }

    let parsed = cunit::parse(&out.stdout).and_then(|mut r| {
        for run in &extra {
            merge(&mut r, cunit::parse(run)?);
        }
        Ok(r)
    });
    let report = match parsed {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL {tag}: cannot parse the output of iscsi-test-cu: {e}");
            result.summary.failed = 1;
            return Ok(result);
        }
    };
    if report.totals.is_none() {
        println!("FAIL {tag}: iscsi-test-cu stopped before its Run Summary");
        healthy = false;
    }
    result.summary = report.summary();
    if !healthy && result.summary.failed == 0 {
        // The run itself failed (timeout, target crash, no Run Summary).
        result.summary.failed = 1;
    }
    let expected = Expectations::load(&opts.expectations)?;
    let mut table = String::new();
    for t in &report.tests {
        let _ = writeln!(table, "{}\t{}\t{}", t.id(), t.outcome, t.detail);
        if t.outcome == Outcome::Fail {
            let known = expected.tests.get(&t.id()) == Some(&Outcome::Fail);
            let known_tag = if known { "KNOWN-FAIL" } else { "FAIL" };
            println!("{known_tag} {tag} {}: {}", t.id(), t.detail);
        }
    }
    std::fs::write(
        opts.log_dir
            .join(format!("libiscsi-{}.results.tsv", kind.name())),
        table,
    )?;

    let cmp = expected.compare(&report);
    for d in &cmp.regressions {
        println!("REGRESSION {tag} {d}");
    }
    for d in &cmp.improvements {
        println!("IMPROVED {tag} {d}");
    }
    if cmp.new_tests.len() <= 20 {
        for d in &cmp.new_tests {
            println!("NEW {tag} {d}");
        }
    } else {
        println!(
            "NEW {tag}: {} passing or skipping tests are not in the expectations file",
            cmp.new_tests.len()
        );
    }
    for d in &cmp.missing {
        println!("MISSING {tag} {d}");
    }
    if opts.bless {
        let flag = match kind {
            TargetKind::Locusd(_) => String::new(),
            _ => format!(" --target {}", kind.name()),
        };
        let origin = format!("{} ({})", kind.name(), tool_versions());
        let regenerate = format!("cargo run --release -p conformance --{flag} libiscsi --bless");
        Expectations::from_report(&report).save(&opts.expectations, &origin, &regenerate)?;
        println!(
            "{tag}: blessed {} tests into {}",
            report.tests.len(),
            opts.expectations.display()
        );
        result.ok = healthy;
    } else {
        if cmp.file_is_stale() {
            println!(
                "{tag}: {} differs from this run without regressions; update it with --bless",
                opts.expectations.display()
            );
        }
        println!(
            "{tag}: {} regressions against {}",
            cmp.regressions.len(),
            opts.expectations.display()
        );
        result.ok = healthy && cmp.is_ok();
    }
    Ok(result)
}

/// The tests that skip on the main LUN and run again, alone, against a LUN
/// configured as they need ([`RunningTarget::extra_runs`]): a read-only
/// LUN, and LUNs with more than one logical block per physical block
/// (`CHECK_FOR_LBPPB_GT_1`). GetLBAStatus.UnmapSingle stays on the main
/// LUN: with LBPPB > 1 it expects GET LBA STATUS at LBA i + 1 to describe
/// LBA i + LBPPB first, which SBC-4 5.8.2 forbids.
///
/// Sanitize.Reset runs again alone on the main LUN. In the full run it
/// follows Sanitize.Reservations, which (libiscsi 1.19) leaves its second
/// initiator's RESERVE(6) in place, so Reset's SANITIZE is, rightly, a
/// RESERVATION CONFLICT and never starts. Alone, it shows what it tests: a
/// SANITIZE that outlives ABORT TASK, the resets and a reconnect.
pub const EXTRA_TESTS: &[(&str, ExtraLun)] = &[
    ("ALL.Sanitize.Reset", ExtraLun::Main),
    ("ALL.ReadOnly.ReadOnlySBC", ExtraLun::ReadOnly),
    ("ALL.WriteSame10.UnmapUnaligned", ExtraLun::Emulated512),
    ("ALL.WriteSame16.UnmapUnaligned", ExtraLun::Emulated512),
    ("ALL.WriteSame10.InvalidDataOutSize", ExtraLun::Emulated512),
    ("ALL.WriteSame16.InvalidDataOutSize", ExtraLun::Emulated512),
    (
        "ALL.CompareAndWrite.InvalidDataOutSize",
        ExtraLun::Emulated512,
    ),
];

/// The outcomes of `extra` (a run of some tests alone) replace those of the
/// same tests in `main`; its failures count in the totals.
fn merge(main: &mut cunit::RunReport, extra: cunit::RunReport) {
    for t in extra.tests {
        match main.tests.iter_mut().find(|m| m.id() == t.id()) {
            Some(m) => *m = t,
            None => main.tests.push(t),
        }
    }
    match (main.totals.as_mut(), extra.totals) {
        (Some(m), Some(e)) => m.failed += e.failed,
        // The extra run stopped before its Run Summary.
        (Some(_), None) => main.totals = None,
        (None, _) => {}
    }
}

/// `libiscsi-bin` version, for the blessed file's header.
fn tool_versions() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=libiscsi-bin ${Version}", "libiscsi-bin"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "libiscsi-bin version unknown".to_owned())
}
