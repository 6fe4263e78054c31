//! The target guard against a real tgtd (installed by
//! scripts/install-test-deps.sh): it starts on a free loopback port, serves
//! the default IQN, and dropping it kills the process and removes the temp dir;
//! the same for a 2-way mirrored cluster (real redis-server and locusd), whose
//! finish() checks the copies.

use conformance::target::{RunningTarget, Setup, TargetKind, DEFAULT_IQN, MIRRORED_IQN};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn tgtd_starts_serves_and_is_cleaned_up_on_drop() {
    let t = RunningTarget::start(&TargetKind::Tgtd, &Setup::default()).expect("tgtd starts");
    let addr = t.addr();
    assert!(addr.ip().is_loopback());
    let pid = t.pid().expect("running");
    let dir: PathBuf = t.dir().to_owned();
    assert!(dir.join("lun0.img").is_file());
    assert_eq!(t.url(), format!("iscsi://{addr}/{DEFAULT_IQN}/1"));
    TcpStream::connect(addr).expect("portal accepts connections");
    // SendTargets discovery through libiscsi lists our target.
    let ls = Command::new("iscsi-ls")
        .arg(format!("iscsi://{addr}"))
        .output()
        .expect("iscsi-ls runs");
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(DEFAULT_IQN),
        "{ls:?}"
    );

    drop(t);
    assert!(!dir.exists(), "temp dir removed");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty(), "process {pid} still exists: {stat}");
    assert!(TcpStream::connect(addr).is_err(), "port closed");
}

#[test]
fn missing_locusd_is_a_clear_error() {
    let kind = TargetKind::Locusd(PathBuf::from("/nonexistent/locusd"));
    let err = RunningTarget::start(&kind, &Setup::default()).expect_err("no binary");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("the locusd binary is not at /nonexistent/locusd"),
        "{msg}"
    );
    assert!(msg.contains("cargo build --release --bin locusd"), "{msg}");
}

/// A binary of this workspace, built next to this test executable
/// (`target/<profile>/NAME`); the test command builds every binary first.
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins, same profile)",
        path.display()
    );
    path
}

fn mirrored(copies: usize) -> TargetKind {
    TargetKind::Mirrored {
        locusd: built_binary("locusd"),
        copies,
    }
}

#[test]
fn mirrored_cluster_serves_checks_its_copies_and_is_cleaned_up() {
    built_binary("locus");
    let t = RunningTarget::start(&mirrored(2), &Setup::default()).expect("cluster starts");
    let addr = t.addr();
    assert!(addr.ip().is_loopback());
    assert_eq!(t.url(), format!("iscsi://{addr}/{MIRRORED_IQN}/0"));
    assert!(t
        .metadata_url()
        .is_some_and(|u| u.starts_with("redis://127.0.0.1:")));
    let pids = t.pids();
    assert_eq!(pids.len(), 3, "n1, n2, redis-server: {pids:?}");
    let dir: PathBuf = t.dir().to_owned();
    let ls = Command::new("iscsi-ls")
        .arg("-s")
        .arg(format!("iscsi://{addr}"))
        .output()
        .expect("iscsi-ls runs");
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(listed.contains(MIRRORED_IQN), "{ls:?}");
    let io = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 1M 64k"])
        .arg(t.url())
        .output()
        .expect("qemu-io runs");
    assert!(io.status.success(), "{io:?}");

    let note = t
        .finish()
        .expect("clean stop, copies in sync and identical");
    assert!(note.contains("256 blocks in sync on n1,n2"), "{note}");
    assert!(
        note.contains("copies identical (1024 MiB, 1 MiB of it not zero)"),
        "{note}"
    );
    assert!(!dir.exists(), "temp dir removed");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty(), "process {pid} still exists: {stat}");
    }
}

#[test]
fn mirrored_copies_that_hold_nothing_prove_nothing() {
    let t = RunningTarget::start(&mirrored(2), &Setup::default()).expect("cluster starts");
    let err = t.finish().expect_err("nothing was written");
    assert!(format!("{err:#}").contains("is all zeros"), "{err:#}");
}

#[test]
fn mirrored_without_the_admin_cli_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("locusd");
    std::fs::write(&fake, "").expect("write");
    let kind = TargetKind::Mirrored {
        locusd: fake,
        copies: 2,
    };
    let err = RunningTarget::start(&kind, &Setup::default()).expect_err("no locus");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("the locus admin binary is not next to locusd"),
        "{msg}"
    );
}

#[test]
fn a_copy_lost_during_the_run_fails_finish() {
    let t = RunningTarget::start(&mirrored(2), &Setup::default()).expect("cluster starts");
    // pids: n1, n2, redis-server (stop order). SIGKILL n2, by its PID.
    let n2 = t.pids()[1];
    let kill = Command::new("kill")
        .args(["-KILL", &n2.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let io = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 1M 64k"])
        .arg(t.url())
        .output()
        .expect("qemu-io runs");
    assert!(io.status.success(), "n1 still takes writes: {io:?}");
    let err = t.finish().expect_err("n2 missed a write");
    let msg = format!("{err:#}");
    assert!(msg.contains("n2 is out-of-sync"), "{msg}");
    assert!(msg.contains("n2/images/lun0.img differs from"), "{msg}");
    assert!(msg.contains("n2 locusd did not exit 0 on SIGTERM"), "{msg}");
}
