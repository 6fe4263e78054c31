//! Test harness: a real `redis-server` on a free loopback port in a temp dir,
//! killed on drop. `LOCUS_TEST_REDIS_URL` overrides it with an existing
//! server (a scratch database that the tests flush; run with
//! `--test-threads=1` then).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server (or an external one).
pub struct RedisServer {
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    /// URL to connect with (including the password, if any).
    pub url: String,
    /// The port.
    pub port: u16,
    password: Option<String>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    l.local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends PING and returns the first reply line, if the server answers.
fn ping(port: u16) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

impl RedisServer {
    /// Starts a server without a password (or uses `LOCUS_TEST_REDIS_URL`).
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("LOCUS_TEST_REDIS_URL") {
            flush(&url);
            return Self {
                child: None,
                _dir: None,
                url,
                port: 0,
                password: None,
            };
        }
        Self::spawn(None)
    }

    /// Starts a private server that requires `password` (never external).
    pub fn start_with_password(password: &str) -> Self {
        Self::spawn(Some(password))
    }

    fn spawn(password: Option<&str>) -> Self {
        let bin = std::env::var("LOCUS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                // Durability as the write path needs it: a dirty mark is
                // durable only once Redis has fsynced it (invariant 1).
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if let Some(p) = password {
                cmd.args(["--requirepass", p]);
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-server not found ({bin}): run scripts/install-test-deps.sh, \
                     or set LOCUS_TEST_REDIS_URL to a scratch redis database"
                ),
                Err(e) => panic!("cannot start {bin}: {e}"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut delay = Duration::from_millis(2);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!("redis-server exited with {status} (port {port} taken?)");
                    break;
                }
                match ping(port) {
                    Some(r) if r.starts_with("+PONG") || r.starts_with("-NOAUTH") => {
                        let url = match password {
                            Some(p) => format!("redis://:{p}@127.0.0.1:{port}/0"),
                            None => format!("redis://127.0.0.1:{port}/0"),
                        };
                        return Self {
                            child: Some(child),
                            _dir: Some(dir),
                            url,
                            port,
                            password: password.map(str::to_owned),
                        };
                    }
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("redis-server on port {port} did not answer PING within 10 s");
                    }
                    _ => {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_millis(50));
                    }
                }
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// The URL without a password (for wrong-password tests).
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn flush(url: &str) {
    let rest = url.trim_start_matches("redis://");
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a.trim_start_matches(':').to_string()), h),
        None => (None, rest),
    };
    let (hostport, db) = hostpart.split_once('/').unwrap_or((hostpart, "0"));
    let mut s = TcpStream::connect(hostport)
        .unwrap_or_else(|e| panic!("LOCUS_TEST_REDIS_URL {hostport}: {e}"));
    let mut cmds = String::new();
    if let Some(a) = auth {
        cmds.push_str(&format!("AUTH {a}\r\n"));
    }
    cmds.push_str(&format!("SELECT {db}\r\nFLUSHDB\r\n"));
    s.write_all(cmds.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let want = cmds.matches("\r\n").count();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.iter().filter(|b| **b == b'\n').count() < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!("LOCUS_TEST_REDIS_URL: FLUSHDB got no reply"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        !got.starts_with(b"-"),
        "FLUSHDB failed: {}",
        String::from_utf8_lossy(&got)
    );
}

impl RedisServer {
    /// Kills the server now (SIGKILL), as a crash would; a no-op for an
    /// external `LOCUS_TEST_REDIS_URL` server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl RedisServer {
    /// Kills the server (SIGKILL) and starts it again on the same port
    /// from the same files (its AOF), as after a crash; returns once it
    /// answers PING with its data loaded.
    pub fn restart(&mut self) {
        let Some(dir) = self._dir.as_ref().map(|d| d.path().to_owned()) else {
            panic!("an external LOCUS_TEST_REDIS_URL server cannot be restarted");
        };
        self.stop();
        let bin = std::env::var("LOCUS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server exited with {status} on restart (port {} taken?)",
                    self.port
                );
            }
            if ping(self.port).is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH")) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
