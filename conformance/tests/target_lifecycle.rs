//! The target guard against a real tgtd (installed by
//! scripts/install-test-deps.sh): it starts on a free loopback port, serves
//! the default IQN, and dropping it kills the process and removes the temp dir.

use conformance::target::{RunningTarget, Setup, TargetKind, DEFAULT_IQN};
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
