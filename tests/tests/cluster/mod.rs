//! A mirrored cluster of real processes, for the end-to-end tests of the
//! mirrored write path:
//!
//! - a `redis-server` with `--appendonly yes --appendfsync always` on a free
//!   loopback port, which a test can `kill -9` and start again from its AOF;
//! - N `locusd` processes (`n1`..`nN`), each with its own data dir, portal
//!   and replication port, sharing one cluster secret;
//! - one image ([`IMAGE`]) placed on some of them and served as LUN 0 of
//!   [`IQN`];
//! - `qemu-io` through QEMU's libiscsi driver as the initiator
//!   ([`Initiator`]), one command at a time, and a [`WriteLog`] of what it
//!   acknowledged, checked against every copy file afterwards.
//!
//! Every wait polls a condition with a deadline; none sleeps in place of
//! synchronisation. Process logs stay in the cluster's temp dir and their
//! tails go into every panic message.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blockmap::record::ImageRecord;
use blockmap::types::{ImageName, NodeId};

use crate::common::{built_binary, free_port, locus, Run};

/// The target that serves the image.
pub const IQN: &str = "iqn.2026-12.io.locus:e2e";
/// The image behind LUN 0.
pub const IMAGE: &str = "vm1";
/// The image size (small, so that whole-copy comparisons are quick).
pub const IMAGE_BYTES: u64 = 64 << 20;
/// The out-of-sync granularity the tests create images with, and the unit
/// of the [`WriteLog`].
pub const GRAIN: u64 = 4096;
/// How long a node, a takeover or a tool gets before a test gives up.
pub const LIMIT: Duration = Duration::from_secs(60);

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap_or_else(|e| panic!("kill -{sig}: {e}"));
    assert!(st.success(), "kill -{sig} {} failed", child.id());
}

/// A `redis-server` whose files outlive it, so that it can restart from its
/// AOF on the same port.
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut r = Redis {
            port: free_port(),
            log: dir.join("redis.log"),
            dir,
            child: None,
        };
        r.restart();
        r
    }

    /// Starts the server (again) from the files in its dir, and waits until
    /// it answers PING with its data loaded.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (scripts/install-test-deps.sh): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + LIMIT;
        loop {
            // PONG only once the AOF is loaded (LOADING before that).
            if ping(self.port).is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited with {st}:\n{}", tail(&self.log));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING:\n{}",
                tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `locusd` of the cluster.
pub struct Node {
    /// Its id, `n1`..`nN`.
    pub id: String,
    /// Its site label.
    pub site: String,
    /// Its iSCSI portal.
    pub portal: SocketAddr,
    /// Its replication address (registered with `locus node add`).
    pub repl: SocketAddr,
    /// Its data dir.
    pub dir: PathBuf,
    /// The size of the tmpfs over its images dir, if it has a small disk.
    pub disk: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Its copy of [`IMAGE`].
    pub fn copy_path(&self) -> PathBuf {
        self.dir.join("images").join(format!("{IMAGE}.img"))
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// The iSCSI URL of LUN 0 at its portal.
    pub fn lun_url(&self) -> String {
        format!("iscsi://{}/{IQN}/0", self.portal)
    }
}

/// How to lay a cluster out.
pub struct Layout {
    /// One site label per node (`n1` gets the first).
    pub sites: Vec<&'static str>,
    /// Indexes (0-based) of the nodes holding the image.
    pub locations: Vec<usize>,
    /// Index of the node that serves it.
    pub writer: usize,
    /// The image's block size.
    pub block_size: &'static str,
    /// A node (index) whose images dir is a tmpfs of this size.
    pub small_disk: Option<(usize, &'static str)>,
}

impl Layout {
    /// `n` nodes on one site, the image on all of them, served by `n1`.
    pub fn all_on_one_site(n: usize) -> Layout {
        Layout {
            sites: vec!["s1"; n],
            locations: (0..n).collect(),
            writer: 0,
            block_size: "1M",
            small_disk: None,
        }
    }
}

/// A running cluster. Dropping it kills every process.
pub struct Cluster {
    /// Logs, data dirs, the secret and the Redis files.
    pub tmp: tempfile::TempDir,
    /// The metadata store.
    pub redis: Redis,
    /// `redis://127.0.0.1:PORT/0`.
    pub url: String,
    secret: PathBuf,
    /// The nodes, `nodes[0]` is `n1`.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts Redis and every node, places [`IMAGE`] (granularity
    /// [`GRAIN`]), creates [`IQN`] with it as LUN 0, and waits until the
    /// writer serves it.
    pub fn start(layout: &Layout) -> Cluster {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let redis = Redis::start(tmp.path());
        let url = format!("redis://127.0.0.1:{}/0", redis.port);
        let secret = tmp.path().join("cluster.secret");
        std::fs::write(&secret, "an-e2e-cluster-secret-of-32-bytes\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let nodes = layout
            .sites
            .iter()
            .enumerate()
            .map(|(i, site)| {
                let id = format!("n{}", i + 1);
                let dir = tmp.path().join(&id);
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
                Node {
                    portal: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    repl: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    log: dir.join("locusd.log"),
                    site: (*site).to_owned(),
                    disk: layout
                        .small_disk
                        .filter(|(n, _)| *n == i)
                        .map(|(_, size)| size.to_owned()),
                    dir,
                    id,
                    child: None,
                }
            })
            .collect();
        let mut c = Cluster {
            tmp,
            redis,
            url,
            secret,
            nodes,
        };
        for i in 0..c.nodes.len() {
            let (id, repl, site) = {
                let n = &c.nodes[i];
                (n.id.clone(), n.repl.to_string(), n.site.clone())
            };
            c.locus(&["node", "add", &id, "--address", &repl, "--site", &site])
                .ok();
        }
        for i in 0..c.nodes.len() {
            c.start_node(i);
        }
        let locations: Vec<&str> = layout
            .locations
            .iter()
            .map(|&i| c.nodes[i].id.as_str())
            .collect();
        let size = IMAGE_BYTES.to_string();
        let writer = c.nodes[layout.writer].id.clone();
        c.locus(&[
            "image",
            "create",
            IMAGE,
            "--size",
            &size,
            "--block-size",
            layout.block_size,
            "--granularity",
            "4K",
            "--location",
            &locations.join(","),
            "--hypervisor",
            &writer,
        ])
        .ok();
        c.locus(&["target", "create", IQN]).ok();
        c.locus(&["target", "lun", "add", IQN, IMAGE, "--lun", "0"])
            .ok();
        c.wait_served(layout.writer);
        c
    }

    /// The cluster secret file every node is given, for `locus
    /// --cluster-secret-file` (commands that take a lease themselves).
    pub fn secret_path(&self) -> &Path {
        &self.secret
    }

    /// Runs `locus --metadata URL ARGS`.
    pub fn locus(&self, args: &[&str]) -> Run {
        locus(&self.url, args)
    }

    /// Starts node `i` (again, after a kill), and waits until its portal
    /// and its replication port accept connections.
    pub fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} is already running", n.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap_or_else(|e| panic!("{e}"));
        // A small disk: the node runs in its own mount namespace, with a
        // tmpfs of that size over its images dir (gone when it exits).
        let mut cmd = match &n.disk {
            None => Command::new(built_binary("locusd")),
            Some(size) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "mkdir -p \"$1\" && mount -t tmpfs -o size=\"$2\" locus-e2e \"$1\" \
                         && shift 2 && exec \"$@\"",
                    )
                    .arg("sh")
                    .arg(n.dir.join("images"))
                    .arg(size)
                    .arg(built_binary("locusd"));
                c
            }
        };
        let child = cmd
            .env_remove("LOCUS_METADATA")
            .env_remove("LOCUS_CLUSTER_SECRET_FILE")
            .args(["--node", &n.id, "--metadata", &self.url])
            .arg("--data-dir")
            .arg(&n.dir)
            .arg("--cluster-secret-file")
            .arg(&self.secret)
            .args(["--listen", &n.portal.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start locusd: {e}"));
        n.child = Some(child);
        let deadline = Instant::now() + LIMIT;
        for addr in [n.portal, n.repl] {
            while TcpStream::connect(addr).is_err() {
                if let Some(Ok(Some(st))) = n.child.as_mut().map(Child::try_wait) {
                    panic!("{} exited with {st}:\n{}", n.id, n.log_tail());
                }
                assert!(
                    Instant::now() < deadline,
                    "{} does not listen on {addr}:\n{}",
                    n.id,
                    n.log_tail()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `kill -9` of node `i`; returns once the process is gone.
    pub fn kill_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let mut c = n
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", n.id));
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGTERM to node `i` (it flushes and releases its leases), and waits
    /// until it has exited 0.
    pub fn stop_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(mut c) = n.child.take() else { return };
        signal(&c, "TERM");
        let st = c.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(st.success(), "{} exited with {st}:\n{}", n.id, n.log_tail());
    }

    /// SIGSTOP (`stop = true`) or SIGCONT to node `i`.
    pub fn freeze_node(&mut self, i: usize, stop: bool) {
        let n = &self.nodes[i];
        let c = n
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", n.id));
        signal(c, if stop { "STOP" } else { "CONT" });
    }

    /// Polls `iscsi-inq` at node `i`'s portal until it serves LUN 0.
    pub fn wait_served(&mut self, i: usize) {
        let deadline = Instant::now() + LIMIT;
        let url = self.nodes[i].lun_url();
        loop {
            let out = Command::new("iscsi-inq")
                .arg(&url)
                .output()
                .unwrap_or_else(|e| panic!("iscsi-inq (libiscsi-bin): {e}"));
            if out.status.success() {
                return;
            }
            let n = &mut self.nodes[i];
            if let Some(Ok(Some(st))) = n.child.as_mut().map(Child::try_wait) {
                panic!("{} exited with {st}:\n{}", n.id, n.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "{} does not serve {url}: {}\n{}",
                n.id,
                String::from_utf8_lossy(&out.stderr).trim(),
                n.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls node `i`'s log until it contains `needle`, after `skip`
    /// bytes (the log's length before the event waited for).
    pub fn wait_log(&self, i: usize, skip: usize, needle: &str) {
        let deadline = Instant::now() + LIMIT;
        let n = &self.nodes[i];
        loop {
            let text = n.log_text();
            if text.get(skip..).is_some_and(|t| t.contains(needle)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?}:\n{}",
                n.id,
                n.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The image record as the store has it.
    pub fn record(&self) -> ImageRecord {
        self.with_store(|store, image| async move {
            store
                .load_image(&image)
                .await
                .unwrap_or_else(|e| panic!("load {IMAGE}: {e}"))
        })
    }

    /// Runs `f` with the metadata store and [`IMAGE`]'s name.
    fn with_store<T, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(std::sync::Arc<dyn blockmap::store::MetadataStore>, ImageName) -> F,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let store = blockmap::store::open(&self.url)
                .await
                .unwrap_or_else(|e| panic!("open {}: {e}", self.url));
            f(
                store,
                ImageName::new(IMAGE).unwrap_or_else(|e| panic!("{e}")),
            )
            .await
        })
    }

    /// Marks grains `[first, last)` of `nodes` out-of-sync in the store at
    /// the current generation, as the writer would after failed writes.
    pub fn mark_dirty(&self, nodes: &[&str], first: u64, last: u64) {
        self.with_store(|store, image| async move {
            let rec = store.load_image(&image).await;
            let g = rec.unwrap_or_else(|e| panic!("{e}")).image.generation;
            for n in nodes {
                let node = NodeId::new(*n).unwrap_or_else(|e| panic!("{e}"));
                store
                    .mark_dirty(&image, &node, g, &[(first, last)])
                    .await
                    .unwrap_or_else(|e| panic!("mark {n}: {e}"));
            }
        })
    }

    /// The grains (indexes of [`GRAIN`]-sized ranges) that node `i`'s dirty
    /// bitmap marks out of sync.
    pub fn dirty_grains(&self, i: usize) -> BTreeSet<u64> {
        let rec = self.record();
        assert_eq!(rec.image.granularity.0, GRAIN, "the tests create 4K images");
        let node = NodeId::new(&self.nodes[i].id).unwrap_or_else(|e| panic!("{e}"));
        let Some(bm) = rec.dirty.get(&node) else {
            return BTreeSet::new();
        };
        (0..IMAGE_BYTES / GRAIN).filter(|&g| bm.get(g)).collect()
    }

    /// Reads node `i`'s copy file (a running node's with a small disk
    /// through its mount namespace, `/proc/PID/root/...`).
    pub fn read_copy(&self, i: usize) -> Vec<u8> {
        let n = &self.nodes[i];
        let p = match (&n.disk, &n.child) {
            (Some(_), Some(c)) => Path::new(&format!("/proc/{}/root", c.id()))
                .join(n.copy_path().strip_prefix("/").unwrap_or(&n.copy_path())),
            _ => n.copy_path(),
        };
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The whole LUN read through QEMU's libiscsi driver at node `i`'s
    /// portal (`qemu-img convert`).
    pub fn read_lun(&self, i: usize) -> Vec<u8> {
        let out = self.tmp.path().join("lun.raw");
        let _ = std::fs::remove_file(&out);
        let r: Run = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(self.nodes[i].lun_url())
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("qemu-img (qemu-utils): {e}"))
            .into();
        assert_eq!(
            r.code,
            0,
            "qemu-img convert {} failed: {}{}\n{}",
            self.nodes[i].lun_url(),
            r.stdout,
            r.stderr,
            self.nodes[i].log_tail()
        );
        let data = std::fs::read(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data.len() as u64, IMAGE_BYTES, "the LUN read back short");
        data
    }

    /// The tails of every node's log, for a panic message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.id, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the whole logs of a failed test (the panic has their
            // tails only): target/tmp/mirror-cluster-PID-N/.
            let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "mirror-cluster-{}-{}",
                std::process::id(),
                self.redis.port
            ));
            if std::fs::create_dir_all(&keep).is_ok() {
                for n in &self.nodes {
                    let _ = std::fs::copy(&n.log, keep.join(format!("{}.log", n.id)));
                }
                let _ = std::fs::copy(&self.redis.log, keep.join("redis.log"));
                eprintln!("logs kept in {}", keep.display());
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A frozen process must be woken to die promptly.
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// What one write command came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD: `wrote N/N bytes at offset O`.
    Acked,
    /// An error status (`write failed: ...`).
    Failed(String),
    /// No answer within the wait.
    NoAnswer,
}

/// `qemu-io` on one LUN through QEMU's libiscsi driver, driven one command
/// at a time on its stdin, so that each answer belongs to the last command.
/// The answer is the stdout line (`wrote ...` or `write failed: ...`);
/// stderr carries the SCSI detail of a failure (`iSCSI WRITE10/16 failed
/// at lba ...: SENSE KEY ...`), kept for the message.
pub struct Initiator {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<(bool, String)>,
    url: String,
}

impl Initiator {
    /// Opens node `n`'s LUN 0.
    pub fn open(n: &Node) -> Initiator {
        let url = n.lun_url();
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("qemu-io (qemu-utils): {e}"));
        let stdin = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
        let (tx, lines) = mpsc::channel();
        let outs: [(bool, Box<dyn Read + Send>); 2] = [
            (
                false,
                Box::new(child.stdout.take().unwrap_or_else(|| panic!("stdout"))),
            ),
            (
                true,
                Box::new(child.stderr.take().unwrap_or_else(|| panic!("stderr"))),
            ),
        ];
        for (is_err, out) in outs {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((is_err, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Initiator {
            child,
            stdin,
            lines,
            url,
        }
    }

    /// WRITE of `len` bytes of `pattern` at `offset`, waiting `wait` for
    /// the answer.
    pub fn write(&mut self, offset: u64, len: u64, pattern: u8, wait: Duration) -> Outcome {
        if writeln!(self.stdin, "write -P {pattern} {offset} {len}").is_err() {
            return Outcome::Failed(format!("qemu-io on {} exited", self.url));
        }
        let wrote = format!("wrote {len}/{len} bytes at offset {offset}");
        let deadline = Instant::now() + wait;
        let mut detail = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((true, l)) => detail = l,
                Ok((false, l)) if l.contains(&wrote) => return Outcome::Acked,
                Ok((false, l)) if l.contains("write failed") => {
                    return Outcome::Failed(format!(
                        "{} ({detail})",
                        l.trim_start_matches("qemu-io> ")
                    ))
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return Outcome::NoAnswer,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Outcome::Failed(format!("qemu-io on {} exited ({detail})", self.url))
                }
            }
        }
    }
}

impl Drop for Initiator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator (xorshift), so that a failing run can be
/// replayed from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A write of 1 to 16 grains inside `[start, end)` bytes, and a
    /// pattern byte (never 0, so that a write is never mistaken for a
    /// hole).
    pub fn write_in(&mut self, start: u64, end: u64) -> (u64, u64, u8) {
        let grains = 1 + self.next() % 16;
        let span = (end - start) / GRAIN - grains;
        let offset = start + (self.next() % (span + 1)) * GRAIN;
        (offset, grains * GRAIN, 1 + (self.next() % 255) as u8)
    }
}

/// What every grain of the LUN must hold: the pattern of the last
/// acknowledged write to it (or zeros), or the pattern of a later write
/// whose outcome is unknown (it failed or got no answer: it may have
/// landed, partly or whole).
#[derive(Debug, Clone)]
pub struct WriteLog {
    acked: Vec<u8>,
    maybe: Vec<Vec<u8>>,
    /// Writes acknowledged.
    pub acks: u64,
}

impl Default for WriteLog {
    fn default() -> Self {
        let grains = (IMAGE_BYTES / GRAIN) as usize;
        WriteLog {
            acked: vec![0; grains],
            maybe: vec![Vec::new(); grains],
            acks: 0,
        }
    }
}

/// The grains of `len` bytes at `offset`.
pub fn grains(offset: u64, len: u64) -> std::ops::Range<u64> {
    offset / GRAIN..(offset + len).div_ceil(GRAIN)
}

impl WriteLog {
    /// Records a write and what came of it.
    pub fn record(&mut self, offset: u64, len: u64, pattern: u8, outcome: &Outcome) {
        for g in grains(offset, len) {
            let g = g as usize;
            if *outcome == Outcome::Acked {
                self.acked[g] = pattern;
                self.maybe[g].clear();
            } else {
                self.maybe[g].push(pattern);
            }
        }
        if *outcome == Outcome::Acked {
            self.acks += 1;
        }
    }

    /// Checks `data` (a whole copy, or the LUN read back) grain by grain,
    /// sector by sector, skipping the grains in `skip`. The error names
    /// the first grains that differ.
    pub fn check(&self, what: &str, data: &[u8], skip: &BTreeSet<u64>) -> Result<(), String> {
        assert_eq!(
            data.len() as u64,
            IMAGE_BYTES,
            "{what} is not the image size"
        );
        let mut bad = Vec::new();
        for (g, chunk) in data.chunks(GRAIN as usize).enumerate() {
            if skip.contains(&(g as u64)) {
                continue;
            }
            let ok = chunk.chunks(512).all(|s| {
                let b = s[0];
                s.iter().all(|&x| x == b) && (b == self.acked[g] || self.maybe[g].contains(&b))
            });
            if !ok {
                bad.push(format!(
                    "grain {g} (offset {}): want {:#04x}{}, found {:#04x}..",
                    g as u64 * GRAIN,
                    self.acked[g],
                    if self.maybe[g].is_empty() {
                        String::new()
                    } else {
                        format!(" or one of {:?}", self.maybe[g])
                    },
                    chunk[0]
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: {} grains hold what no acknowledged write left there: {}",
                bad.len(),
                bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ))
        }
    }
}

/// One write of a workload, with when it went out and when it came back.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: u64,
    pub len: u64,
    pub pattern: u8,
    pub issued: Instant,
    pub answered: Instant,
    pub outcome: Outcome,
}

impl Entry {
    pub fn grains(&self) -> std::ops::Range<u64> {
        grains(self.offset, self.len)
    }
}

/// A thread writing random ranges through one initiator, one at a time,
/// until told to stop or until a write gets no answer within `wait`.
pub struct Workload {
    stop: Arc<AtomicBool>,
    entries: Arc<Mutex<Vec<Entry>>>,
    handle: JoinHandle<Initiator>,
}

impl Workload {
    pub fn spawn(mut ini: Initiator, seed: u64, region: (u64, u64), wait: Duration) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (stop.clone(), entries.clone());
        let handle = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            while !s.load(Ordering::SeqCst) {
                let (offset, len, pattern) = rng.write_in(region.0, region.1);
                let issued = Instant::now();
                let outcome = ini.write(offset, len, pattern, wait);
                let done = outcome == Outcome::NoAnswer;
                e.lock().unwrap_or_else(|e| e.into_inner()).push(Entry {
                    offset,
                    len,
                    pattern,
                    issued,
                    answered: Instant::now(),
                    outcome,
                });
                if done {
                    break;
                }
            }
            ini
        });
        Workload {
            stop,
            entries,
            handle,
        }
    }

    pub fn snapshot(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Polls until `done(entries)` holds; panics, with the nodes' logs,
    /// when the thread ends first or `limit` passes.
    pub fn wait_until(
        &self,
        c: &Cluster,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Entry]) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let entries = self.snapshot();
            if done(&entries) {
                return;
            }
            let why = if self.handle.is_finished() {
                "the workload ended"
            } else if Instant::now() >= deadline {
                "the time limit passed"
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            panic!(
                "{why} before {what} ({limit:?}): last writes {:?}\n{}",
                &entries[entries.len().saturating_sub(3)..],
                c.logs()
            );
        }
    }

    /// Polls until `n` more writes are acknowledged than now.
    pub fn wait_more_acks(&self, c: &Cluster, n: usize) {
        let have = acks(&self.snapshot());
        self.wait_until(c, &format!("{n} more acknowledged writes"), LIMIT, |e| {
            acks(e) >= have + n
        });
    }

    /// Stops the thread after its current write; the writes it did.
    pub fn finish(self) -> Vec<Entry> {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.handle.join());
        Arc::try_unwrap(self.entries)
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_else(|a| a.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

pub fn acks(entries: &[Entry]) -> usize {
    entries
        .iter()
        .filter(|e| e.outcome == Outcome::Acked)
        .count()
}

pub fn log_of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> WriteLog {
    let mut log = WriteLog::default();
    for e in entries {
        log.record(e.offset, e.len, e.pattern, &e.outcome);
    }
    log
}

pub fn grains_of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> BTreeSet<u64> {
    entries.into_iter().flat_map(Entry::grains).collect()
}

pub fn check(log: &WriteLog, what: &str, data: &[u8], skip: &BTreeSet<u64>, c: &Cluster) {
    if let Err(e) = log.check(what, data, skip) {
        panic!("{e}\n{}", c.logs());
    }
}

/// Writes `len` bytes of `pattern` at `offset` of a copy file, durably,
/// behind Locus's back.
pub fn write_behind_locus(path: &std::path::Path, offset: u64, len: u64, pattern: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all_at(&vec![pattern; len as usize], offset)
        .and_then(|()| f.sync_all())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// One cluster at a time (each starts several processes; two at once would crowd 2 cores).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
