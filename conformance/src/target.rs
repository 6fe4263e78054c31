//! Starting and stopping the iSCSI target under test.
//!
//! Owns the target's processes and its temporary directory. A
//! [`RunningTarget`] kills the processes it started (by their PIDs, never by
//! name) and removes the temp dir when dropped, on every path, panics
//! included.
//!
//! Three kinds of target ([`TargetKind`]):
//! - `locusd` (the product) serving its config-file default target
//!   [`DEFAULT_IQN`], whose LUN 0 is a 1 GiB thin image in the temp dir;
//! - `tgtd` (Debian `tgt`, the peer target, used to develop and check this
//!   crate before locusd existed, and as a reference), serving
//!   [`DEFAULT_IQN`] with a 1 GiB LUN 1 from a file in the temp dir;
//! - a **mirrored cluster** ([`crate::cluster`]): a real `redis-server` as
//!   metadata store and N `locusd` nodes `n1`..`nN`, serving
//!   [`MIRRORED_IQN`] whose LUN 0 is the 1 GiB image `lun0` placed on every
//!   node; `n1` is its only hypervisor, so it takes the write lease and
//!   serves the LUN, and every write goes to all N copies.
//!
//! Every process listens on a free 127.0.0.1 port. [`RunningTarget::finish`]
//! stops the target and checks that it stopped cleanly (locusd exits 0 on
//! SIGTERM; for a mirrored LUN, every copy is still in sync and the copies
//! are byte-for-byte identical).

use crate::cluster::{self, Cluster};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The target name locusd creates by default (issue 2, item 2).
pub const DEFAULT_IQN: &str = "iqn.2026-11.io.locus:default";
/// The store target of a mirrored cluster. A store target may not share a
/// config target's name, and every locusd also serves [`DEFAULT_IQN`] from
/// its (default) config.
pub const MIRRORED_IQN: &str = "iqn.2026-11.io.locus:mirrored";
/// A second target of locusd (and of a mirrored cluster's n1), from its
/// config file: LUN 0 is a small read-only LUN (`read_only = true`), for
/// libiscsi's ReadOnly tests, which skip on a writable LUN.
pub const READONLY_IQN: &str = "iqn.2026-11.io.locus:readonly";
/// A third target of the same config: LUN 0 is a small "512e" LUN, 512-byte
/// logical blocks on 4096-byte physical ones (`physical_block_size = 4096`,
/// LBPPB 8), for the libiscsi tests that skip unless LBPPB > 1.
pub const EMULATED512_IQN: &str = "iqn.2026-11.io.locus:512e";

/// The LUN an extra libiscsi run needs ([`crate::libiscsi::EXTRA_TESTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraLun {
    /// The main LUN ([`RunningTarget::url`]).
    Main,
    /// [`READONLY_IQN`] LUN 0.
    ReadOnly,
    /// [`EMULATED512_IQN`] LUN 0.
    Emulated512,
}
/// The LUN size every kind of target serves: 1 GiB.
pub const LUN_BYTES: u64 = 1 << 30;
/// The logical block size of the local LUN (locusd's config default,
/// `block_size = 512`), which the expectations file assumes; the mirrored
/// image is created with the same.
pub const LOGICAL_BLOCK_SIZE: u32 = 512;
/// How long a target may take to accept TCP connections (and a mirrored
/// cluster to serve its LUN).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
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

/// What the target must offer besides a plain login.
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
    /// `locusd` at this path, one process, its local default LUN.
    Locusd(PathBuf),
    /// Debian's `tgtd`, configured with `tgtadm`.
    Tgtd,
    /// `copies` locusd nodes (the `locus` admin binary must be next to
    /// `locusd`) and a redis-server, serving a LUN mirrored on every node.
    Mirrored {
        /// The locusd binary.
        locusd: PathBuf,
        /// How many nodes hold a copy (2 to [`cluster::MAX_COPIES`]).
        copies: usize,
    },
}

impl TargetKind {
    /// The LUN that holds the disk: locusd serves LUN 0; tgtd reserves LUN 0
    /// for its controller, so the disk is LUN 1.
    pub fn disk_lun(&self) -> u32 {
        match self {
            TargetKind::Locusd(_) | TargetKind::Mirrored { .. } => 0,
            TargetKind::Tgtd => 1,
        }
    }

    /// The target name that holds the disk.
    pub fn iqn(&self) -> &'static str {
        match self {
            TargetKind::Locusd(_) | TargetKind::Tgtd => DEFAULT_IQN,
            TargetKind::Mirrored { .. } => MIRRORED_IQN,
        }
    }

    /// A short name for messages and log file names: `locusd`, `tgtd`,
    /// `mirrored2`, `mirrored3` (the `--target` values).
    pub fn name(&self) -> String {
        match self {
            TargetKind::Locusd(_) => "locusd".to_owned(),
            TargetKind::Tgtd => "tgtd".to_owned(),
            TargetKind::Mirrored { copies, .. } => format!("mirrored{copies}"),
        }
    }

    /// What runs, for summaries: `locusd (local LUN)`, ...
    pub fn describe(&self) -> String {
        match self {
            TargetKind::Locusd(_) => "locusd (local LUN)".to_owned(),
            TargetKind::Tgtd => "tgtd (reference)".to_owned(),
            TargetKind::Mirrored { copies, .. } => {
                format!("locusd ({copies}-way mirrored LUN, {copies} nodes + Redis)")
            }
        }
    }

    /// Appended to the suite name in per-check lines (`FAIL libiscsi@mirrored2
    /// ...`), so that runs on different targets can be told apart; empty for
    /// the single-process targets, whose lines are as they always were.
    pub fn tag(&self) -> String {
        match self {
            TargetKind::Locusd(_) | TargetKind::Tgtd => String::new(),
            TargetKind::Mirrored { .. } => format!("@{}", self.name()),
        }
    }

    /// True when the target is the product (its exit status is checked).
    pub fn is_locusd(&self) -> bool {
        !matches!(self, TargetKind::Tgtd)
    }
}

/// The TOML config of locusd (and of a mirrored cluster's nodes): the
/// default target as locusd defines it without a file (LUN 0, 1 GiB),
/// with one-way CHAP when `chap` is given, [`READONLY_IQN`], whose LUN 0 is
/// a 64 MiB read-only LUN, and [`EMULATED512_IQN`], whose LUN 0 is a 64 MiB
/// LUN with 4096-byte physical blocks.
///
/// The keepalive allows 90 s without an answer (the default is 30 s):
/// iscsi-test-cu is single-threaded and answers no NOP-In while a test
/// sleeps, and Sanitize.Reset sleeps 60 s while a session is open. With the
/// default the session is dropped, libiscsi logs in again, and the new I_T
/// nexus's POWER ON unit attention makes the test's wait loop go round
/// forever (a new session every minute).
///
/// Kept in one place so the format can follow locusd's config as it settles
/// (README of iscsi-target documents the real format).
pub fn locusd_config(chap: Option<&Chap>) -> String {
    let chap = chap
        .map(|c| {
            format!(
                "chap = {{ user = \"{}\", secret = \"{}\" }}\n",
                c.user, c.secret
            )
        })
        .unwrap_or_default();
    format!(
        "nop_timeout_secs = 90\n\n[[target]]\nname = \"{DEFAULT_IQN}\"\n{chap}\n[[target.lun]]\nid = 0\nsize = \"1G\"\n\n\
         [[target]]\nname = \"{READONLY_IQN}\"\n{chap}\n[[target.lun]]\nid = 0\nsize = \"64M\"\nread_only = true\n\n\
         [[target]]\nname = \"{EMULATED512_IQN}\"\n{chap}\n[[target.lun]]\nid = 0\nsize = \"64M\"\nphysical_block_size = 4096\n"
    )
}

/// One process the target consists of.
#[derive(Debug)]
pub(crate) struct Process {
    /// For messages: `locusd`, `tgtd`, `n1 locusd` (so that "locusd exited"
    /// reads as scripts/test.sh greps for it), `redis-server`.
    pub(crate) name: String,
    pub(crate) child: Option<Child>,
    /// Its stdout and stderr.
    pub(crate) log: PathBuf,
    /// The product: SIGTERM must make it exit 0 within [`STOP_TIMEOUT`].
    product: bool,
    /// Stops on SIGTERM (tgtd does not: it is killed straight away).
    honours_term: bool,
}

/// How one process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The process, as in messages.
    pub name: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// It needed SIGKILL.
    pub killed: bool,
    /// It is the product, whose clean exit is checked.
    pub product: bool,
}

impl Exit {
    /// `Some(reason)` when a product process did not exit 0 on SIGTERM.
    pub fn problem(&self) -> Option<String> {
        (self.product && (self.killed || !self.status.success())).then(|| {
            format!(
                "{} did not exit 0 on SIGTERM ({}{})",
                self.name,
                self.status,
                if self.killed { ", needed SIGKILL" } else { "" }
            )
        })
    }
}

impl Process {
    /// Spawns `cmd` with stdin closed and stdout/stderr into `log`.
    pub(crate) fn spawn(
        name: &str,
        cmd: &mut Command,
        log: PathBuf,
        product: bool,
        honours_term: bool,
    ) -> Result<Self> {
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Process {
            name: name.to_owned(),
            child: Some(child),
            log,
            product,
            honours_term,
        })
    }

    /// Polls until `addr` accepts a TCP connection, the process exits, or
    /// `deadline` passes.
    pub(crate) fn wait_tcp(&mut self, addr: SocketAddr, deadline: Instant) -> Result<()> {
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            self.check_alive(&format!("before accepting connections on {addr}"))?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept connections on {addr} within {}s",
                    self.name,
                    READY_TIMEOUT.as_secs(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An error if the process has exited.
    pub(crate) fn check_alive(&mut self, when: &str) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited ({status}) {when}", self.name);
            }
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after a bounded wait (straight away for a
    /// process that ignores SIGTERM). `None` if it was already stopped.
    pub(crate) fn stop(&mut self) -> Result<Option<Exit>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let exit = |status, killed| Exit {
            name: self.name.clone(),
            status,
            killed,
            product: self.product,
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(exit(status, false)));
        }
        if self.honours_term {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait()? {
                    return Ok(Some(exit(status, false)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        child.kill()?;
        let status = child.wait()?;
        Ok(Some(exit(status, true)))
    }
}

/// A running target; stopped and cleaned up on drop.
#[derive(Debug)]
pub struct RunningTarget {
    kind: TargetKind,
    /// In stop order: the process serving the LUN first (for a mirrored
    /// cluster the writer `n1`, then the other nodes, then Redis).
    procs: Vec<Process>,
    addr: SocketAddr,
    /// A second portal of the same process, to the same LUN (multipath).
    addr2: Option<SocketAddr>,
    /// tgtd's control port (`-C`), for `tgtadm`.
    control: Option<u16>,
    /// The metadata store and nodes of a mirrored cluster.
    cluster: Option<Cluster>,
    /// Where the processes' logs are copied once they have stopped.
    keep_logs: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// Picks a free loopback TCP port (bind to port 0, read it, release it).
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// Picks `n` distinct free loopback TCP ports (all bound at once, then
/// released). No port is handed out twice by one process: tests that run
/// in parallel threads each start their own servers, and a port that one
/// of them picked and released must not become another one's "free" port
/// (that race let a redis-server fail to bind while the readiness check
/// connected to another test's `locusd` on the same port).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(n);
    // Each port taken is kept bound until the end, so the kernel offers a
    // new one on the next bind; a bounded number of tries covers ports
    // that this process already handed out.
    for _ in 0..n + 1000 {
        if ports.len() == n {
            break;
        }
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        held.push(l);
    }
    if ports.len() < n {
        bail!("could not find {n} loopback ports that this process has not used yet");
    }
    Ok(ports)
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

/// The error for a locusd path that holds no binary.
pub(crate) fn check_locusd(bin: &Path) -> Result<()> {
    if !bin.is_file() {
        bail!(
            "the locusd binary is not at {}: build it with `cargo build --release --bin locusd`, \
             or pass --locusd PATH (or set LOCUSD)",
            bin.display()
        );
    }
    Ok(())
}

impl RunningTarget {
    /// Starts a fresh target with a fresh temp dir, on free ports, and waits
    /// (bounded) until it accepts connections (a mirrored cluster: until its
    /// writer serves the LUN), configured as `setup` says.
    pub fn start(kind: &TargetKind, setup: &Setup) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("locus-conformance-")
            .tempdir()
            .context("creating the target's temp dir")?;
        let mut t = RunningTarget {
            kind: kind.clone(),
            procs: Vec::new(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            addr2: None,
            control: None,
            cluster: None,
            keep_logs: None,
            dir,
        };
        let started = match kind {
            TargetKind::Locusd(bin) => t.start_locusd(bin, setup),
            TargetKind::Tgtd => t.start_tgtd(setup),
            TargetKind::Mirrored { locusd, copies } => {
                let dir = t.dir.path().to_owned();
                cluster::start(locusd, *copies, setup, &dir, &mut t.procs).map(
                    |([addr, addr2], c)| {
                        t.addr = addr;
                        t.addr2 = Some(addr2);
                        t.cluster = Some(c);
                    },
                )
            }
        };
        match started {
            Ok(()) => Ok(t),
            // The logs' tails go into the message: dropping `t` stops what
            // was started and removes the temp dir with the logs.
            Err(e) if t.procs.is_empty() => Err(e),
            Err(e) => Err(anyhow::anyhow!("{e:#}\n{}", t.log_tail(30))),
        }
    }

    fn start_locusd(&mut self, bin: &Path, setup: &Setup) -> Result<()> {
        check_locusd(bin)?;
        let ports = free_ports(2)?;
        self.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
        let addr2 = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[1]));
        self.addr2 = Some(addr2);
        let cfg = self.dir.path().join("locusd.toml");
        std::fs::write(&cfg, locusd_config(setup.chap.as_ref()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(self.addr.to_string())
            .arg("--listen")
            .arg(addr2.to_string())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--config")
            .arg(cfg);
        let log = self.dir.path().join("target.log");
        self.procs
            .push(Process::spawn("locusd", &mut cmd, log, true, true)?);
        let addr = self.addr;
        self.procs[0].wait_tcp(addr, Instant::now() + READY_TIMEOUT)
    }

    fn start_tgtd(&mut self, setup: &Setup) -> Result<()> {
        let port = free_port()?;
        self.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let c = tgtd_control_port(port);
        self.control = Some(c);
        let mut cmd = Command::new("tgtd");
        cmd.env("MALLOC_MMAP_THRESHOLD_", "67108864")
            .env("MALLOC_TRIM_THRESHOLD_", "268435456")
            .arg("-f")
            .arg("-C")
            .arg(c.to_string())
            .arg("--iscsi")
            .arg(format!("portal={}", self.addr));
        let log = self.dir.path().join("target.log");
        self.procs
            .push(Process::spawn("tgtd", &mut cmd, log, false, false)?);
        let addr = self.addr;
        self.procs[0].wait_tcp(addr, Instant::now() + READY_TIMEOUT)?;
        self.configure_tgtd(setup)
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

    /// `127.0.0.1:PORT` of the portal serving the disk (for a mirrored
    /// cluster, the writer `n1`'s).
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

    /// The target name holding the disk.
    pub fn iqn(&self) -> &'static str {
        self.kind.iqn()
    }

    /// The libiscsi URL of the disk LUN: `iscsi://127.0.0.1:PORT/IQN/LUN`.
    pub fn url(&self) -> String {
        format!("iscsi://{}/{}/{}", self.addr, self.iqn(), self.lun())
    }

    /// The same LUN through a second portal of the process serving it
    /// (locusd listens twice; a mirrored cluster's n1 too), for libiscsi's
    /// MultipathIO tests; `None` for tgtd.
    pub fn url2(&self) -> Option<String> {
        self.addr2
            .map(|a| format!("iscsi://{a}/{}/{}", self.iqn(), self.lun()))
    }

    /// Each of `tests` with the URL of the LUN it needs, served by the
    /// process serving the disk from its config file; none for tgtd.
    pub fn extra_runs(&self, tests: &[(&'static str, ExtraLun)]) -> Vec<(&'static str, String)> {
        if !self.kind.is_locusd() {
            return Vec::new();
        }
        tests
            .iter()
            .map(|&(test, lun)| {
                let url = match lun {
                    ExtraLun::Main => self.url(),
                    ExtraLun::ReadOnly => format!("iscsi://{}/{READONLY_IQN}/0", self.addr),
                    ExtraLun::Emulated512 => {
                        format!("iscsi://{}/{EMULATED512_IQN}/0", self.addr)
                    }
                };
                (test, url)
            })
            .collect()
    }

    /// The PID of the process serving the disk, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.procs
            .first()
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
    }

    /// The PIDs of every process of the target that still runs.
    pub fn pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter_map(|p| p.child.as_ref().map(Child::id))
            .collect()
    }

    /// The mirrored cluster behind the target, if it is one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// The metadata store URL of a mirrored cluster.
    pub fn metadata_url(&self) -> Option<&str> {
        self.cluster.as_ref().map(Cluster::url)
    }

    /// `Some("NAME exited (STATUS)")` if a process of the target has exited
    /// on its own.
    pub fn exited(&mut self) -> Result<Option<String>> {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    return Ok(Some(format!("{} exited ({status})", p.name)));
                }
            }
        }
        Ok(None)
    }

    /// The temp dir (data dirs, logs, LUN file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines of each process's log, for failure reports.
    pub fn log_tail(&self, n: usize) -> String {
        self.procs.iter().map(|p| log_tail(&p.log, n)).collect()
    }

    /// Once every process has stopped, copy their logs (`target.log`, or
    /// `n1.log`.. and `redis.log`) into `dir`, which is emptied first; the
    /// temp dir holding them is removed.
    pub fn keep_logs(&mut self, dir: PathBuf) {
        self.keep_logs = Some(dir);
    }

    /// Stops every process in order (see [`Process::stop`]), without checks.
    /// Returns how each one that was running ended.
    pub fn stop(&mut self) -> Result<Vec<Exit>> {
        let mut exits = Vec::new();
        for p in &mut self.procs {
            exits.extend(p.stop()?);
        }
        if let Some(dest) = self.keep_logs.take() {
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir_all(&dest)
                .with_context(|| format!("creating {}", dest.display()))?;
            for p in &self.procs {
                if let Some(name) = p.log.file_name() {
                    std::fs::copy(&p.log, dest.join(name))
                        .with_context(|| format!("copying {}", p.log.display()))?;
                }
            }
        }
        if let Some(c) = self.control {
            for f in [
                format!("/var/run/tgtd/socket.{c}"),
                format!("/var/run/tgtd/socket.{c}.lock"),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(exits)
    }

    /// Stops the target and checks that it stopped cleanly: every locusd
    /// exits 0 on SIGTERM within 15 s; for a mirrored cluster, once the
    /// writer `n1` has stopped (its last flush done) the store still shows
    /// every block in sync on every node and no error but `n1` being down,
    /// and after every node stopped the copies are identical and hold data.
    /// `Ok(note)` says what was checked beyond the exits (empty for a
    /// single-process target); the error lists every problem, with the logs.
    pub fn finish(mut self) -> Result<String> {
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let mut exits = Vec::new();
        if let Some(first) = self.procs.first_mut() {
            exits.extend(first.stop()?);
        }
        if let Some(c) = &self.cluster {
            match c.check_in_sync() {
                Ok(n) => notes.push(n),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        exits.extend(self.stop()?);
        problems.extend(exits.iter().filter_map(Exit::problem));
        if let Some(c) = &self.cluster {
            match c.compare_copies() {
                Ok(n) => notes.push(n),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        if problems.is_empty() {
            Ok(notes.join("; "))
        } else {
            bail!("{}\n{}", problems.join("\n"), self.log_tail(40))
        }
    }
}

impl Drop for RunningTarget {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping {}: {e:#}", self.kind.name());
        }
    }
}
