//! Running an external tool with a time limit, capturing (and optionally
//! echoing) its output.
//!
//! Owns the child process: on timeout it is sent SIGTERM (so a script can
//! clean up what it started), then SIGKILL after a grace period. Only the
//! PID we spawned is ever signalled, and only before it is reaped.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Grace period between SIGTERM and SIGKILL on timeout.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// What a finished tool left behind.
#[derive(Debug)]
pub struct Captured {
    /// Exit status (after a kill, the signal).
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// True when the time limit ran out and the tool was killed.
    pub timed_out: bool,
}

/// Runs `cmd` to completion or until `limit`, with stdin closed. With
/// `echo = Some(prefix)`, stdout and stderr lines are also printed as they
/// come, each after `prefix`.
pub fn run(cmd: &mut Command, limit: Duration, echo: Option<&str>) -> Result<Captured> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    for (is_err, stream) in [(false, out), (true, err)] {
        let Some(stream) = stream else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                if tx.send((is_err, line)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut collect = |(is_err, line): (bool, String)| {
        if let Some(prefix) = echo {
            print!("{prefix}{line}");
            if !line.ends_with('\n') {
                println!();
            }
        }
        if is_err { &mut stderr } else { &mut stdout }.push_str(&line);
    };
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let mut termed_at: Option<Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = Instant::now();
        if now >= deadline && termed_at.is_none() {
            timed_out = true;
            termed_at = Some(now);
            send_term(child.id());
        }
        if termed_at.is_some_and(|t| now >= t + KILL_GRACE) {
            child.kill()?;
            break child.wait()?;
        }
        if let Ok(item) = rx.recv_timeout(Duration::from_millis(100)) {
            collect(item);
        }
    };
    // Output still in the pipes (a grandchild may hold them open: do not
    // wait for ever).
    let drain_until = Instant::now() + Duration::from_secs(5);
    while let Ok(item) = rx.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
        collect(item);
    }
    Ok(Captured {
        status,
        stdout,
        stderr,
        timed_out,
    })
}

fn send_term(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the
    // PID is our child's and it has not been reaped (try_wait said so).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_both_streams_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let c = run(&mut cmd, Duration::from_secs(10), None).expect("runs");
        assert_eq!(c.stdout, "out\n");
        assert_eq!(c.stderr, "err\n");
        assert_eq!(c.status.code(), Some(3));
        assert!(!c.timed_out);
    }

    #[test]
    fn kills_on_timeout() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let t0 = Instant::now();
        let c = run(&mut cmd, Duration::from_millis(300), None).expect("runs");
        assert!(c.timed_out);
        assert!(!c.status.success());
        assert_eq!(c.stdout, "started\n");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}
