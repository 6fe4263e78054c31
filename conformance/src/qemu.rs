//! The QEMU suite: `qemu-img` and `qemu-io` through QEMU's libiscsi block
//! driver (`iscsi://` URLs) against a fresh target.
//!
//! Owns the round trip: a local qcow2 with known patterns is converted onto
//! the LUN, compared, copied back and compared again; `qemu-io` writes and
//! verifies patterns in one process and re-reads them from another. Two
//! negative controls prove that the comparisons can fail: a local change
//! must make `qemu-img compare` report the changed offset, and a wrong
//! pattern must make `qemu-io read -P` fail. Last, the target must stop
//! cleanly ([`RunningTarget::finish`]).

use crate::proc;
use crate::report::{Checks, SuiteResult};
use crate::target::{RunningTarget, Setup, TargetKind};
use anyhow::{bail, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const STEP_LIMIT: Duration = Duration::from_secs(300);

/// Patterns written into the local image: (byte, offset, length). The
/// second is sector-aligned but not 4 KiB-aligned.
const LOCAL_PATTERNS: [(u8, u64, u64); 3] = [
    (0x5a, 0, 1 << 20),
    (0xa5, 7 * (1 << 20) + 1536, 1536),
    (0x11, 60 << 20, 4 << 20),
];
/// Offset the negative control changes locally; a hole in the image above.
const CHANGED_OFFSET: u64 = 2 << 20;

/// Runs a tool; `Ok(combined output)` when it exits with `want` status.
fn tool(program: &str, args: &[&str], want: i32) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = proc::run(&mut cmd, STEP_LIMIT, None)?;
    let text = format!("{}{}", out.stdout, out.stderr);
    if out.timed_out {
        bail!("{program} {} timed out", args.join(" "));
    }
    if out.status.code() != Some(want) {
        bail!(
            "{program} {} exited with {} (wanted {want}): {}",
            args.join(" "),
            out.status,
            text.trim()
        );
    }
    Ok(text)
}

/// `qemu-io` must exit 0 and verify every pattern.
fn qemu_io(args: &[&str]) -> Result<String> {
    let text = tool("qemu-io", args, 0)?;
    if text.contains("Pattern verification failed") || text.contains("failed:") {
        bail!("qemu-io {}: {}", args.join(" "), text.trim());
    }
    Ok(String::new())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Runs every check against one fresh target.
pub fn run(kind: &TargetKind) -> SuiteResult {
    let mut checks = Checks::new("qemu", kind);
    let target = match RunningTarget::start(kind, &Setup::default()) {
        Ok(t) => t,
        Err(e) => {
            checks.record(&format!("start {}", kind.name()), &Err(e));
            return checks.finish();
        }
    };
    let work = match tempfile::Builder::new().prefix("locus-qemu-").tempdir() {
        Ok(w) => w,
        Err(e) => {
            checks.record("temp dir", &Err(e.into()));
            return checks.finish();
        }
    };
    let url = target.url();
    let src = path_str(&work.path().join("src.qcow2"));
    let back = path_str(&work.path().join("back.qcow2"));
    println!(
        "qemu{}: round trips through {url} (target {})",
        kind.tag(),
        kind.describe()
    );

    let create =
        tool("qemu-img", &["create", "-q", "-f", "qcow2", &src, "64M"], 0).and_then(|_| {
            let cmds: Vec<String> = LOCAL_PATTERNS
                .iter()
                .map(|(p, off, len)| format!("write -P {p:#x} {off} {len}"))
                .collect();
            let mut args = vec!["-f", "qcow2"];
            for c in &cmds {
                args.extend(["-c", c.as_str()]);
            }
            args.push(&src);
            qemu_io(&args)
        });
    checks.record("qemu-img create + qemu-io write local qcow2", &create);

    checks.record(
        "qemu-img convert local qcow2 -> LUN",
        &tool(
            "qemu-img",
            &["convert", "-n", "-f", "qcow2", "-O", "raw", &src, &url],
            0,
        )
        .map(|_| String::new()),
    );
    checks.record(
        "qemu-img compare local qcow2 = LUN",
        &tool(
            "qemu-img",
            &["compare", "-f", "qcow2", "-F", "raw", &src, &url],
            0,
        )
        .map(|_| String::new()),
    );

    // Negative control: change 4 KiB locally; compare must name that offset.
    let changed = format!("write -P 0xee {CHANGED_OFFSET} 4k");
    let control = qemu_io(&["-f", "qcow2", "-c", &changed, &src])
        .and_then(|_| {
            tool(
                "qemu-img",
                &["compare", "-f", "qcow2", "-F", "raw", &src, &url],
                1,
            )
        })
        .and_then(|text| {
            let want = format!("Content mismatch at offset {CHANGED_OFFSET}!");
            if text.contains(&want) {
                Ok(String::new())
            } else {
                bail!("expected {want:?}, got: {}", text.trim())
            }
        })
        .and_then(|_| {
            qemu_io(&[
                "-f",
                "qcow2",
                "-c",
                &format!("write -z {CHANGED_OFFSET} 4k"),
                &src,
            ])
        });
    checks.record(
        "qemu-img compare detects a difference (negative control)",
        &control,
    );

    checks.record(
        "qemu-img convert LUN -> local qcow2, compare with the original",
        &tool(
            "qemu-img",
            &["convert", "-f", "raw", "-O", "qcow2", &url, &back],
            0,
        )
        .and_then(|_| {
            tool(
                "qemu-img",
                &["compare", "-f", "qcow2", "-F", "qcow2", &src, &back],
                0,
            )
        })
        .map(|_| String::new()),
    );

    checks.record(
        "qemu-io write + read -P on the LUN",
        &qemu_io(&[
            "-f",
            "raw",
            "-c",
            "write -P 0xc3 100M 256k",
            "-c",
            "read -P 0xc3 100M 256k",
            "-c",
            "write -P 0x3c 300M 64k",
            "-c",
            "read -P 0x3c 300M 64k",
            &url,
        ]),
    );
    checks.record(
        "qemu-io read -P in a new session",
        &qemu_io(&[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0xc3 100M 256k",
            "-c",
            "read -P 0x3c 300M 64k",
            "-c",
            "read -P 0 200M 64k",
            "-c",
            "read -P 0x5a 0 1M",
            &url,
        ]),
    );
    checks.record(
        "qemu-io read -P detects a wrong pattern (negative control)",
        &tool(
            "qemu-io",
            &["-f", "raw", "-r", "-c", "read -P 0xc4 100M 4k", &url],
            1,
        )
        .and_then(|text| {
            if text.contains("Pattern verification failed at offset 104857600") {
                Ok(String::new())
            } else {
                bail!("qemu-io did not report the mismatch: {}", text.trim())
            }
        }),
    );
    checks.record(
        "target stops cleanly (locusd exits 0 on SIGTERM; mirrored copies in sync and identical)",
        &target.finish(),
    );
    checks.finish()
}
