//! The mirrored cluster target: a real Redis metadata store and N `locusd`
//! nodes serving one LUN whose image has a copy on every node.
//!
//! Owns setting the cluster up the way an operator would (README, "Mirrored
//! LUNs"), and the checks that the LUN really stayed mirrored:
//!
//! 1. `redis-server --appendonly yes --appendfsync always --save ""` on a free
//!    port, its files in the temp dir;
//! 2. a cluster secret file (32 random bytes, base64, mode 600);
//! 3. `locus node add nI --address 127.0.0.1:RPORT_I --site s1` for each
//!    node, then `locusd --node nI --metadata URL --data-dir DIR_I
//!    --cluster-secret-file SECRET --listen 127.0.0.1:IPORT_I`, each polled
//!    until its portal and its replication port accept connections;
//! 4. `locus image create lun0 --size 1G --location n1,..,nN --hypervisor n1
//!    --logical-block-size 512` (default block size and granularity),
//!    `locus target create iqn.2026-11.io.locus:mirrored` (CHAP with `locus
//!    target chap set` when asked), `locus target lun add ... lun0 --lun 0`;
//! 5. `iscsi-inq` on n1's portal, polled until n1 (the only hypervisor, so
//!    the writer) serves LUN 0, within 30 s; then every block must be in sync
//!    on every node.
//!
//! When a suite is done ([`crate::target::RunningTarget::finish`]): n1 is
//! stopped first (its last flush reaches every copy), the store must still
//! show every block in sync on every node and no error but n1 being down;
//! then the other nodes and Redis stop, and the N copies
//! (`DIR_I/images/lun0.img`) must be byte-for-byte identical and not all
//! zeros.
//!
//! Every process's output is kept in a log in the temp dir (`redis.log`,
//! `n1.log`, ...), whose tails go into every error.

use crate::proc;
use crate::target::{
    check_locusd, free_ports, locusd_config, Process, Setup, LOGICAL_BLOCK_SIZE, LUN_BYTES,
    MIRRORED_IQN, READY_TIMEOUT,
};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The most nodes a cluster may have (their ids are `n1`..`n9`).
pub const MAX_COPIES: usize = 9;
/// The image behind the mirrored LUN.
pub const IMAGE: &str = "lun0";
/// The site label of every node.
pub const SITE: &str = "s1";
/// The time limit of one `locus` or `iscsi-inq` command.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// A running cluster's store and nodes (the processes belong to the
/// [`crate::target::RunningTarget`]).
#[derive(Debug)]
pub struct Cluster {
    url: String,
    locus: PathBuf,
    nodes: Vec<String>,
    copies: Vec<PathBuf>,
    portals: Vec<SocketAddr>,
    /// Indexes of the nodes holding the image now, and of its writer
    /// (all of them and n1, until a migration moves it).
    placed: std::sync::Mutex<(Vec<usize>, usize)>,
}

/// Starts a cluster of `copies` nodes in `dir`, pushing its processes onto
/// `procs` in stop order (n1, ..., nN, redis-server). Returns n1's two
/// portals (both serve the LUN).
pub(crate) fn start(
    locusd: &Path,
    copies: usize,
    setup: &Setup,
    dir: &Path,
    procs: &mut Vec<Process>,
) -> Result<([SocketAddr; 2], Cluster)> {
    check_locusd(locusd)?;
    let locus = locusd.with_file_name("locus");
    if !locus.is_file() {
        bail!(
            "the locus admin binary is not next to locusd, at {}: build both with \
             `cargo build --release --bins`",
            locus.display()
        );
    }
    if !(2..=MAX_COPIES).contains(&copies) {
        bail!("a mirrored LUN needs 2 to {MAX_COPIES} copies, not {copies}");
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    let ports = free_ports(2 + 2 * copies)?;
    let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let redis = loopback(ports[0]);
    let portals: Vec<SocketAddr> = ports[1..=copies].iter().map(|&p| loopback(p)).collect();
    let replication: Vec<SocketAddr> = ports[copies + 1..=2 * copies]
        .iter()
        .map(|&p| loopback(p))
        .collect();
    // n1's second portal, for libiscsi's multipath tests.
    let portal2 = loopback(ports[2 * copies + 1]);
    let config = dir.join("locusd.toml");
    std::fs::write(&config, locusd_config(setup.chap.as_ref()))?;

    let redis_dir = dir.join("redis");
    std::fs::create_dir(&redis_dir)?;
    let mut cmd = Command::new("redis-server");
    cmd.arg("--bind")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(redis.port().to_string())
        .arg("--dir")
        .arg(&redis_dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]);
    let server = Process::spawn("redis-server", &mut cmd, dir.join("redis.log"), false, true)
        .context("redis-server is installed by scripts/install-test-deps.sh")?;
    procs.push(server);
    wait_redis(&mut procs[0], redis, deadline)?;

    let secret = dir.join("cluster.secret");
    write_secret(&secret)?;
    let nodes: Vec<String> = (1..=copies).map(|i| format!("n{i}")).collect();
    let cluster = Cluster {
        url: format!("redis://{redis}/0"),
        locus,
        copies: nodes
            .iter()
            .map(|n| dir.join(n).join("images").join(format!("{IMAGE}.img")))
            .collect(),
        portals: portals.clone(),
        placed: std::sync::Mutex::new(((0..copies).collect(), 0)),
        nodes,
    };
    for (n, r) in cluster.nodes.iter().zip(&replication) {
        let addr = r.to_string();
        cluster.locus(&["node", "add", n, "--address", &addr, "--site", SITE], &[])?;
    }
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut cmd = Command::new(locusd);
        cmd.arg("--node")
            .arg(n)
            .arg("--metadata")
            .arg(&cluster.url)
            .arg("--data-dir")
            .arg(dir.join(n))
            .arg("--cluster-secret-file")
            .arg(&secret)
            .arg("--listen")
            .arg(portals[i].to_string())
            .arg("--config")
            .arg(&config);
        if i == 0 {
            cmd.arg("--listen").arg(portal2.to_string());
        }
        let log = dir.join(format!("{n}.log"));
        // Before redis-server, which stops last.
        procs.insert(
            i,
            Process::spawn(&format!("{n} locusd"), &mut cmd, log, true, true)?,
        );
    }
    for i in 0..copies {
        procs[i].wait_tcp(portals[i], deadline)?;
        // The storage role logs this probe as a refused peer ("the peer
        // closed the connection"); it proves that the copy can take writes
        // before the writer starts sending them.
        procs[i].wait_tcp(replication[i], deadline)?;
    }

    let size = format!("{}", LUN_BYTES);
    let locations = cluster.nodes.join(",");
    let lbs = LOGICAL_BLOCK_SIZE.to_string();
    cluster.locus(
        &[
            "image",
            "create",
            IMAGE,
            "--size",
            &size,
            "--location",
            &locations,
            "--hypervisor",
            &cluster.nodes[0],
            "--logical-block-size",
            &lbs,
        ],
        &[],
    )?;
    cluster.locus(&["target", "create", MIRRORED_IQN], &[])?;
    if let Some(chap) = &setup.chap {
        cluster.locus(
            &["target", "chap", "set", MIRRORED_IQN, "--user", &chap.user],
            &[("LOCUS_CHAP_SECRET", &chap.secret)],
        )?;
    }
    cluster.locus(
        &["target", "lun", "add", MIRRORED_IQN, IMAGE, "--lun", "0"],
        &[],
    )?;

    let creds = setup
        .chap
        .as_ref()
        .map(|c| format!("{}%{}@", c.user, c.secret))
        .unwrap_or_default();
    let inq = format!("iscsi://{creds}{}/{MIRRORED_IQN}/0", portals[0]);
    wait_served(procs, &inq, portals[0], deadline)?;
    cluster
        .check_in_sync()
        .context("right after n1 started serving the LUN")?;
    Ok(([portals[0], portal2], cluster))
}

/// Polls `iscsi-inq` until LUN 0 answers INQUIRY, a process exits, or the
/// deadline passes.
fn wait_served(
    procs: &mut [Process],
    url: &str,
    portal: SocketAddr,
    deadline: Instant,
) -> Result<()> {
    loop {
        let mut cmd = Command::new("iscsi-inq");
        cmd.arg(url);
        let out = proc::run(&mut cmd, TOOL_LIMIT, None)?;
        if out.status.success() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive("before n1 served the mirrored LUN")?;
        }
        if Instant::now() >= deadline {
            bail!(
                "n1 did not serve {MIRRORED_IQN} LUN 0 on {portal} within {}s: \
                 `iscsi-inq iscsi://{portal}/{MIRRORED_IQN}/0` last said ({}): {}",
                READY_TIMEOUT.as_secs(),
                out.status,
                format!("{}{}", out.stdout, out.stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// The metadata store URL, `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Node ids, `n1`..`nN`; `n1` is the writer.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Runs `locus --metadata URL ARGS` with extra environment; its stdout
    /// if it exits 0.
    fn locus(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        let mut cmd = Command::new(&self.locus);
        cmd.arg("--metadata").arg(&self.url).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = proc::run(&mut cmd, TOOL_LIMIT, None)?;
        if !out.status.success() {
            bail!(
                "`locus {}` failed ({}{}): {}",
                args.join(" "),
                out.status,
                if out.timed_out { ", timed out" } else { "" },
                format!("{}{}", out.stdout, out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// The nodes holding the image now, and its writer.
    fn placed(&self) -> (Vec<String>, String) {
        let g = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = g.0.iter().map(|&i| self.nodes[i].clone()).collect();
        (nodes, self.nodes[g.1].clone())
    }

    /// Readies a migration of the LUN to the last node (the kernel suite's
    /// migrate mode): that node stops being a location now, and the
    /// returned shell command (run while the guest waits between its
    /// sessions) moves the image there as an operator would: `location
    /// add`, `image sync`, `image move --to`, `location remove` of every
    /// other node. Returns the new node's portal and the command.
    pub fn prepare_migration(&self) -> Result<(SocketAddr, String)> {
        let last = self.nodes.len() - 1;
        if last < 2 {
            bail!("a migration needs a mirrored LUN of at least 3 nodes");
        }
        let to = &self.nodes[last];
        self.locus(&["location", "remove", IMAGE, to], &[])?;
        self.placed.lock().unwrap_or_else(|p| p.into_inner()).0 = (0..last).collect();
        let l = format!("'{}' --metadata '{}'", self.locus.display(), self.url);
        let mut cmd = format!(
            "set -e; L=\"{l}\"; eval \"$L location add {IMAGE} {to}\"; \
             eval \"$L image sync {IMAGE}\"; eval \"$L image move {IMAGE} --to {to}\""
        );
        for n in &self.nodes[..last] {
            cmd.push_str(&format!("; eval \"$L location remove {IMAGE} {n}\""));
        }
        cmd.push_str(&format!("; eval \"$L image info {IMAGE}\""));
        Ok((self.portals[last], cmd))
    }

    /// Records that the migration prepared by [`Cluster::prepare_migration`]
    /// happened: the last node alone holds and serves the image.
    pub fn migrated(&self) {
        let last = self.nodes.len() - 1;
        *self.placed.lock().unwrap_or_else(|p| p.into_inner()) = (vec![last], last);
    }

    /// `locus image info lun0` must show every block in sync on every node
    /// holding it, and `locus errors` nothing but, when n1 has stopped, n1
    /// being down.
    pub(crate) fn check_in_sync(&self) -> Result<String> {
        let (nodes, _) = self.placed();
        let info = self.locus(&["image", "info", IMAGE], &[])?;
        let placement = placement_in_sync(&info, &nodes)
            .with_context(|| format!("the copies of {IMAGE} are not all in sync"));
        let errors = self.locus(&["errors"], &[])?;
        let errors =
            unexpected_errors(&errors, &self.nodes[0]).context("`locus errors` reports a problem");
        match (placement, errors) {
            (Ok(blocks), Ok(())) => Ok(format!("{blocks} blocks in sync on {}", nodes.join(","))),
            (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
            (Err(p), Err(e)) => bail!("{p:#}\n{e:#}"),
        }
    }

    /// The copies must be identical and hold data (call once every node
    /// has stopped).
    pub(crate) fn compare_copies(&self) -> Result<String> {
        let held: Vec<PathBuf> = {
            let g = self.placed.lock().unwrap_or_else(|p| p.into_inner());
            g.0.iter().map(|&i| self.copies[i].clone()).collect()
        };
        let (bytes, data) = compare_files(&held)?;
        if data == 0 {
            // Zeros can be written data (libiscsi's last SANITIZE OVERWRITE
            // writes a zero pattern over the whole LUN): then the sparse
            // copies have every block allocated. Neither data nor allocated
            // blocks means the suite wrote nothing.
            use std::os::unix::fs::MetadataExt;
            let mut allocated = u64::MAX;
            for c in &held {
                let m = std::fs::metadata(c).with_context(|| format!("{}", c.display()))?;
                allocated = allocated.min(m.blocks() * 512);
            }
            if allocated == 0 || allocated == u64::MAX {
                bail!(
                    "every copy of {IMAGE} is all zeros and unallocated: the suite wrote \
                     nothing, so comparing the copies proves nothing"
                );
            }
            return Ok(format!(
                "copies identical ({} MiB, all zeros, at least {} MiB of it written)",
                bytes >> 20,
                allocated >> 20
            ));
        }
        Ok(format!(
            "copies identical ({} MiB, {data} MiB of it not zero)",
            bytes >> 20
        ))
    }
}

/// Checks the placement table of `locus image info`:
///
/// ```text
/// block size   4M (256 blocks)
/// ...
/// BLOCKS  COUNT  LOCATIONS
/// 0-255   256    n1:in-sync n2:in-sync
/// ```
///
/// Every row must list exactly `nodes`, each `in-sync`, and the rows must
/// cover every block. Returns the number of blocks.
pub fn placement_in_sync(info: &str, nodes: &[String]) -> Result<u64> {
    let total: u64 = info
        .lines()
        .find(|l| l.starts_with("block size"))
        .and_then(|l| l.split_once('(')?.1.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no `block size ... (N blocks)` line in:\n{info}"))?;
    let mut lines = info.lines().skip_while(|l| !l.starts_with("BLOCKS"));
    if lines.next().is_none() {
        bail!("no placement table (BLOCKS COUNT LOCATIONS) in:\n{info}");
    }
    let mut want: Vec<&str> = nodes.iter().map(String::as_str).collect();
    want.sort_unstable();
    let mut problems = Vec::new();
    let mut covered = 0u64;
    for row in lines.take_while(|l| !l.trim().is_empty()) {
        let toks: Vec<&str> = row.split_whitespace().collect();
        let Some(count) = toks.get(1).and_then(|c| c.parse::<u64>().ok()) else {
            bail!("unreadable placement row {row:?} in:\n{info}");
        };
        covered += count;
        // `NODE:STATE`, where STATE may carry a note with spaces:
        // `n2:out-of-sync(1 dirty)`.
        let mut locs: Vec<String> = Vec::new();
        for t in &toks[2..] {
            match locs.last_mut() {
                Some(last) if !t.contains(':') => {
                    last.push(' ');
                    last.push_str(t);
                }
                _ => locs.push((*t).to_owned()),
            }
        }
        let mut seen = Vec::new();
        for loc in &locs {
            let (node, state) = loc.split_once(':').unwrap_or((loc, "?"));
            if state != "in-sync" {
                problems.push(format!("blocks {}: {node} is {state}", toks[0]));
            }
            seen.push(node);
        }
        seen.sort_unstable();
        if seen != want {
            problems.push(format!(
                "blocks {} are on {}, not on {}",
                toks[0],
                seen.join(","),
                want.join(",")
            ));
        }
    }
    if covered != total {
        problems.push(format!("the placement covers {covered} of {total} blocks"));
    }
    if !problems.is_empty() {
        bail!("{}\n{info}", problems.join("; "));
    }
    Ok(total)
}

/// Checks `locus errors`: `no errors`, or at most the row saying that
/// `writer` (stopped on purpose) is down.
pub fn unexpected_errors(errors: &str, writer: &str) -> Result<()> {
    if errors.trim() == "no errors" {
        return Ok(());
    }
    let mut lines = errors.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or_default();
    if !header.starts_with("WHAT") {
        bail!("unexpected output:\n{errors}");
    }
    let bad: Vec<&str> = lines
        .filter(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            !(t.first() == Some(&"node")
                && t.get(1) == Some(&writer)
                && l.trim_end().ends_with("node is down"))
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        bail!("{}\n{errors}", bad.join("\n"))
    }
}

/// Reads until `buf` is full or the file ends; how many bytes were read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Compares files byte for byte. Returns their size and how many MiB of
/// them are not all zeros; the error names the first difference (file,
/// byte offset, LBA of [`LOGICAL_BLOCK_SIZE`]).
pub fn compare_files(paths: &[PathBuf]) -> Result<(u64, u64)> {
    const CHUNK: usize = 1 << 20;
    let Some((first, others)) = paths.split_first() else {
        bail!("no files to compare");
    };
    let open = |p: &PathBuf| File::open(p).with_context(|| format!("opening {}", p.display()));
    let mut base = open(first)?;
    let mut rest = others.iter().map(open).collect::<Result<Vec<_>>>()?;
    let size = base.metadata()?.len();
    for (p, f) in others.iter().zip(&rest) {
        let s = f.metadata()?.len();
        if s != size {
            bail!(
                "{} is {s} bytes but {} is {size} bytes",
                p.display(),
                first.display()
            );
        }
    }
    let mut a = vec![0u8; CHUNK];
    let mut b = vec![0u8; CHUNK];
    let (mut offset, mut data) = (0u64, 0u64);
    loop {
        let n = read_full(&mut base, &mut a)?;
        if n == 0 {
            break;
        }
        for (p, f) in others.iter().zip(rest.iter_mut()) {
            let m = read_full(f, &mut b[..n])?;
            if let Some(i) = (0..n).find(|&i| i >= m || a[i] != b[i]) {
                let at = offset + i as u64;
                bail!(
                    "{} differs from {} at byte {at} (LBA {}): {:#04x} vs {:#04x}",
                    p.display(),
                    first.display(),
                    at / u64::from(LOGICAL_BLOCK_SIZE),
                    b.get(i).copied().unwrap_or_default(),
                    a[i]
                );
            }
        }
        if a[..n].iter().any(|&x| x != 0) {
            data += 1;
        }
        offset += n as u64;
    }
    Ok((size, data))
}

/// Writes a fresh cluster secret: 32 random bytes, base64, mode 600.
fn write_secret(path: &Path) -> Result<()> {
    let mut raw = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{}", base64(&raw))?;
    Ok(())
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Waits until the redis-server that `server` runs answers PING on `addr`.
/// A bare TCP connect is not enough: it would also succeed against any
/// other process that holds the port, with redis-server failing to bind.
fn wait_redis(server: &mut Process, addr: SocketAddr, deadline: Instant) -> Result<()> {
    loop {
        server.check_alive(&format!("before answering PING on {addr}"))?;
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 64];
            if s.write_all(b"PING\r\n").is_ok() {
                if let Ok(n) = s.read(&mut buf) {
                    if buf[..n].starts_with(b"+PONG") {
                        return Ok(());
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "redis-server did not answer PING on {addr} within {}s",
                READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    const INFO: &str = "image        lun0
size         1G (1073741824 bytes, 2097152 logical blocks of 512)
block size   4M (256 blocks)
granularity  64K
generation   1
hypervisors  n1
lease        free (no writer has taken it)
version      2

BLOCKS  COUNT  LOCATIONS
0-255   256    n1:in-sync n2:in-sync
";

    #[test]
    fn base64_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xff; 32]).len(), 44);
    }

    #[test]
    fn placement_all_in_sync() {
        assert_eq!(placement_in_sync(INFO, &nodes(2)).expect("in sync"), 256);
    }

    #[test]
    fn placement_problems_are_found() {
        let out_of_sync = INFO.replace("n2:in-sync", "n2:out-of-sync(1 dirty)");
        let e = placement_in_sync(&out_of_sync, &nodes(2)).expect_err("n2 behind");
        let msg = format!("{e}");
        assert!(
            msg.contains("blocks 0-255: n2 is out-of-sync(1 dirty)"),
            "{msg}"
        );
        assert!(!msg.contains("are on"), "the note is not a node: {msg}");

        let e = placement_in_sync(INFO, &nodes(3)).expect_err("n3 missing");
        assert!(
            format!("{e}").contains("are on n1,n2, not on n1,n2,n3"),
            "{e}"
        );

        let split = INFO.replace(
            "0-255   256    n1:in-sync n2:in-sync",
            "0-99    100    n1:in-sync n2:in-sync\n100-255 156    n1:in-sync",
        );
        let e = placement_in_sync(&split, &nodes(2)).expect_err("part on n1 only");
        assert!(format!("{e}").contains("blocks 100-255 are on n1"), "{e}");

        let short = INFO.replace("0-255   256 ", "0-254   255 ");
        let e = placement_in_sync(&short, &nodes(2)).expect_err("a block missing");
        assert!(format!("{e}").contains("covers 255 of 256 blocks"), "{e}");

        assert!(placement_in_sync("image lun0\n", &nodes(2)).is_err());
    }

    #[test]
    fn errors_allow_only_the_stopped_writer() {
        unexpected_errors("no errors\n", "n1").expect("none");
        let down =
            "WHAT  NODE  IMAGE  SINCE       REASON\nnode  n1    -      1796360138  node is down\n";
        unexpected_errors(down, "n1").expect("the writer was stopped");
        let e = unexpected_errors(&down.replace("n1 ", "n2 "), "n1").expect_err("n2 down");
        assert!(format!("{e}").contains("node  n2"), "{e}");
        let loc = format!(
            "{down}location  n2    lun0   -      3 block(s) out of sync or syncing, 0 dirty region(s) of 64K\n"
        );
        let e = unexpected_errors(&loc, "n1").expect_err("a location in error");
        assert!(format!("{e}").contains("out of sync"), "{e}");
        assert!(unexpected_errors("something else\n", "n1").is_err());
    }

    #[test]
    fn compare_files_finds_the_first_difference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("c{i}"))).collect();
        let size = 3 << 20;
        for p in &paths {
            let f = File::create(p).expect("create");
            f.set_len(size).expect("set_len");
        }
        assert_eq!(compare_files(&paths).expect("all zeros"), (size, 0));

        let write_at = |p: &Path, off: u64, data: &[u8]| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .expect("open");
            f.write_all_at(data, off).expect("write");
        };
        for p in &paths {
            write_at(p, (1 << 20) + 7, b"same");
        }
        assert_eq!(compare_files(&paths).expect("identical"), (size, 1));

        write_at(&paths[2], (2 << 20) + 513, b"x");
        let e = compare_files(&paths).expect_err("c2 differs");
        let msg = format!("{e}");
        assert!(msg.contains("c2 differs from"), "{msg}");
        assert!(
            msg.contains(&format!("at byte {} (LBA 4097)", (2 << 20) + 513)),
            "{msg}"
        );

        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[1])
            .expect("open");
        f.set_len(size - 512).expect("truncate");
        let e = compare_files(&paths).expect_err("c1 shorter");
        assert!(format!("{e}").contains("bytes but"), "{e}");
    }
}
