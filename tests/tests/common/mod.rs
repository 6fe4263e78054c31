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

/// A free loopback TCP port (bound, then released), never the same one
/// twice in this process: tests run in parallel threads, and a port that
/// one of them picked must not be "free" for another.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let port = l
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        if handed_out.insert(port) {
            return port;
        }
        // Keep it bound so that the next bind gets another port.
        held.push(l);
    }
}

/// A `locusd` child process with its own data dir; killed (SIGKILL) on
/// drop unless it was stopped before.
pub struct Locusd {
    /// The process.
    pub child: std::process::Child,
    /// Its data dir.
    pub dir: tempfile::TempDir,
    /// Its stderr log file.
    pub log: std::path::PathBuf,
}

impl Locusd {
    /// Starts `locusd ARGS --data-dir DIR` with stderr to `DIR/locusd.log`.
    pub fn start(dir: tempfile::TempDir, args: &[&str]) -> Locusd {
        let log = dir.path().join("locusd.log");
        let err = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(built_binary("locusd"))
            .env_remove("LOCUS_METADATA")
            .env_remove("LOCUS_CLUSTER_SECRET_FILE")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start locusd: {e}"));
        Locusd { child, dir, log }
    }

    /// Waits until `addr` accepts connections (or the process exits).
    pub fn wait_listening(&mut self, addr: std::net::SocketAddr) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(addr).is_ok() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("locusd exited with {st}: {}", self.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("locusd did not listen on {addr}: {}", self.log_text());
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Locusd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
