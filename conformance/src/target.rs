//! Starting and stopping the iSCSI target under test.
//!
//! Owns the target's process and its temporary data directory. A
//! [`RunningTarget`] kills the process it started (by its PID, never by name)
//! and removes the temp dir when dropped, on every path, panics included.
//!
//! Two kinds of target: `locusd` (the product) and `tgtd` (Debian `tgt`, the
//! peer target, used to develop and check this crate before locusd existed,
//! and as a reference). Both serve `iqn.2026-11.io.locus:default` with a
//! 1 GiB thin LUN from a file in the temp dir, on a free 127.0.0.1 port.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The target name locusd creates by default (issue 2, item 2).
pub const DEFAULT_IQN: &str = "iqn.2026-11.io.locus:default";
/// The LUN size both kinds of target serve: 1 GiB.
pub const LUN_BYTES: u64 = 1 << 30;
/// How long a target may take to accept TCP connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a target may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One-way CHAP credentials (RFC 7143 §12.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    /// CHAP_N the initiator sends.
    pub user: String,
    /// The shared secret.
    pub secret: String,
}

/// What the default target must offer besides a plain login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    /// Require one-way CHAP with these credentials.
    pub chap: Option<Chap>,
    /// Offer CRC32C header and data digests (RFC 7143 §13.1). locusd offers
    /// them always; tgtd only when configured to.
    pub digests: bool,
}

/// Which target program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// `locusd` at this path.
    Locusd(PathBuf),
    /// Debian's `tgtd`, configured with `tgtadm`.
    Tgtd,
}

impl TargetKind {
    /// The LUN that holds the disk: locusd serves LUN 0; tgtd reserves LUN 0
    /// for its controller, so the disk is LUN 1.
    pub fn disk_lun(&self) -> u32 {
        match self {
            TargetKind::Locusd(_) => 0,
            TargetKind::Tgtd => 1,
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TargetKind::Locusd(_) => "locusd",
            TargetKind::Tgtd => "tgtd",
        }
    }
}

/// The TOML config that gives locusd's default target one-way CHAP.
///
/// Kept in one place so the format can follow locusd's config as it settles
/// (README of iscsi-target documents the real format).
pub fn locusd_chap_config(chap: &Chap) -> String {
    format!(
        "[[target]]\nname = \"{DEFAULT_IQN}\"\nchap = {{ user = \"{}\", secret = \"{}\" }}\n\n[[target.lun]]\nid = 0\nsize = \"1G\"\n",
        chap.user, chap.secret
    )
}

/// A target process serving [`DEFAULT_IQN`]; stopped and cleaned up on drop.
#[derive(Debug)]
pub struct RunningTarget {
    kind: TargetKind,
    child: Option<Child>,
    addr: SocketAddr,
    /// tgtd's control port (`-C`), for `tgtadm`.
    control: Option<u16>,
    log: PathBuf,
    dir: tempfile::TempDir,
}

/// Picks a free loopback TCP port (bind to port 0, read it, release it).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A tgtd control port (`-C`, at most 32767; it only names the unix socket
/// `/var/run/tgtd/socket.N`) derived from the TCP port, skipping numbers whose
/// socket exists.
fn tgtd_control_port(tcp_port: u16) -> u16 {
    let mut c = 1000 + tcp_port % 30000;
    while Path::new(&format!("/var/run/tgtd/socket.{c}")).exists() {
        c = 1000 + (c - 999) % 30000;
    }
    c
}

/// Polls until `addr` accepts a TCP connection, the child exits, or the
/// deadline passes.
fn wait_ready(child: &mut Child, addr: SocketAddr, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) before accepting connections on {addr}\n{}",
                log_tail(log, 30)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} did not accept connections on {addr} within {}s\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a log file, indented, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("--- {} is empty ---\n", path.display());
    }
    let start = lines.len().saturating_sub(n);
    let mut out = format!("--- last lines of {} ---\n", path.display());
    for l in &lines[start..] {
        out.push_str("  | ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the
    // PID is that of a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl RunningTarget {
    /// Starts a fresh target on a free port with a fresh temp data dir, and
    /// waits (bounded) until it accepts connections, configured as `setup`
    /// says.
    pub fn start(kind: &TargetKind, setup: &Setup) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("locus-conformance-")
            .tempdir()
            .context("creating the target's temp dir")?;
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = dir.path().join("target.log");
        let log_file = File::create(&log).context("creating the target log")?;
        let mut cmd;
        let mut control = None;
        match kind {
            TargetKind::Locusd(bin) => {
                if !bin.is_file() {
                    bail!(
                        "the locusd binary is not at {}: build it with `cargo build --release --bin locusd`, \
                         or pass --locusd PATH (or set LOCUSD)",
                        bin.display()
                    );
                }
                let data = dir.path().join("data");
                cmd = Command::new(bin);
                cmd.arg("--listen")
                    .arg(addr.to_string())
                    .arg("--data-dir")
                    .arg(&data);
                if let Some(chap) = &setup.chap {
                    let cfg = dir.path().join("locusd.toml");
                    std::fs::write(&cfg, locusd_chap_config(chap))?;
                    cmd.arg("--config").arg(cfg);
                }
            }
            TargetKind::Tgtd => {
                let c = tgtd_control_port(port);
                control = Some(c);
                cmd = Command::new("tgtd");
                cmd.env("MALLOC_MMAP_THRESHOLD_", "67108864")
                    .env("MALLOC_TRIM_THRESHOLD_", "268435456")
                    .arg("-f")
                    .arg("-C")
                    .arg(c.to_string())
                    .arg("--iscsi")
                    .arg(format!("portal={addr}"));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let mut t = RunningTarget {
            kind: kind.clone(),
            child: Some(child),
            addr,
            control,
            log,
            dir,
        };
        if let Some(child) = t.child.as_mut() {
            wait_ready(child, addr, kind.name(), &t.log)?;
        }
        if let TargetKind::Tgtd = kind {
            t.configure_tgtd(setup)?;
        }
        Ok(t)
    }

    /// Creates the target, its LUN and (optionally) the CHAP account in tgtd.
    fn configure_tgtd(&self, setup: &Setup) -> Result<()> {
        let c = self.control.unwrap_or_default().to_string();
        let lun_file = self.dir.path().join("lun0.img");
        File::create(&lun_file)?.set_len(LUN_BYTES)?;
        let adm = |args: &[&str]| {
            let mut cmd = Command::new("tgtadm");
            cmd.args(["-C", &c, "--lld", "iscsi"]).args(args);
            run_tool(&mut cmd)
        };
        adm(&[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            DEFAULT_IQN,
        ])?;
        let path = lun_file.display().to_string();
        adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &path,
        ])?;
        adm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        if setup.digests {
            for key in ["HeaderDigest", "DataDigest"] {
                adm(&[
                    "--op",
                    "update",
                    "--mode",
                    "target",
                    "--tid",
                    "1",
                    "--name",
                    key,
                    "--value",
                    "CRC32C,None",
                ])?;
            }
        }
        if let Some(chap) = &setup.chap {
            adm(&[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                &chap.user,
                "--password",
                &chap.secret,
            ])?;
            adm(&[
                "--op", "bind", "--mode", "account", "--tid", "1", "--user", &chap.user,
            ])?;
        }
        Ok(())
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kind of target.
    pub fn kind(&self) -> &TargetKind {
        &self.kind
    }

    /// The LUN holding the disk.
    pub fn lun(&self) -> u32 {
        self.kind.disk_lun()
    }

    /// The libiscsi URL of the disk LUN: `iscsi://127.0.0.1:PORT/IQN/LUN`.
    pub fn url(&self) -> String {
        format!("iscsi://{}/{DEFAULT_IQN}/{}", self.addr, self.lun())
    }

    /// The PID of the target process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` if the target process has exited on its own.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// The temp dir (data dir, log, LUN file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the target's stderr, for failure reports.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Stops the target: SIGTERM, then SIGKILL after a bounded wait. Returns
    /// how it exited, and whether it needed SIGKILL. tgtd ignores SIGTERM, so
    /// it is killed straight away.
    pub fn stop(&mut self) -> Result<(ExitStatus, bool)> {
        let Some(mut child) = self.child.take() else {
            bail!("target already stopped");
        };
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if matches!(self.kind, TargetKind::Locusd(_)) {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait()? {
                    return Ok((status, false));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        child.kill()?;
        let status = child.wait()?;
        if let Some(c) = self.control {
            for f in [
                format!("/var/run/tgtd/socket.{c}"),
                format!("/var/run/tgtd/socket.{c}.lock"),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok((status, true))
    }
}

impl Drop for RunningTarget {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop() {
                eprintln!("warning: stopping {}: {e:#}", self.kind.name());
            }
        }
    }
}
