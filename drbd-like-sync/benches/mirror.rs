//! Mirrored writes against one copy, in one process: the same `Mirror`
//! over 1, 2 and 3 copies (the local copy plus peers over loopback, each a
//! real `node::serve`, with a real redis-server as the store), next to the
//! local engine alone. Measures 4 KiB random writes at queue depth 32
//! (IOPS) and at queue depth 1 (median and p99 latency), and the store
//! round trips the steady state costs (Redis `total_commands_processed`
//! before and after: expected 0, since nothing is marked).
//!
//! Run: `cargo bench -p drbd-like-sync --bench mirror` (needs redis-server
//! on PATH). Figures go to BENCHMARKS.md by hand, with the date and load.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::Cluster;
use drbd_like_sync::proto::Op;
use drbd_like_sync::storage::BlockBackend;

const SIZE: u64 = 256 << 20;
const IO: usize = 4096;
const RUN: Duration = Duration::from_secs(4);

/// 4 KiB random writes from `qd` tasks for `RUN`; returns IOPS.
async fn iops(b: Arc<dyn BlockBackend>, qd: usize) -> f64 {
    let data = Bytes::from(vec![0xa5u8; IO]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..qd {
        let b = Arc::clone(&b);
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
            while start.elapsed() < RUN {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (SIZE / IO as u64)) * IO as u64;
                b.write(off, data.clone(), false).await.expect("write");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Runs `one(offset)` (one 4 KiB write) back to back for `RUN`, at
/// scattered offsets; returns (median, p99) in µs.
async fn latency_of<F, Fut>(mut one: F) -> (f64, f64)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut i = 0u64;
    while start.elapsed() < RUN {
        let off = (i * 7919 % (SIZE / IO as u64)) * IO as u64;
        let t = Instant::now();
        one(off).await;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        i += 1;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// 4 KiB writes one at a time through `b`; (median, p99) in µs.
async fn latency(b: Arc<dyn BlockBackend>) -> (f64, f64) {
    let data = Bytes::from(vec![0x5au8; IO]);
    latency_of(|off| {
        let (b, data) = (Arc::clone(&b), data.clone());
        async move { b.write(off, data, false).await.expect("write") }
    })
    .await
}

/// One peer alone: 4 KiB writes one at a time straight through a
/// `PeerClient` (no mirror, no local copy); (median, p99) in µs. What a
/// round trip to a storage node costs by itself.
async fn peer_latency(c: &Cluster, i: usize) -> (f64, f64) {
    let client = Arc::new(c.client(i).await);
    let data = Bytes::from(vec![0x3cu8; IO]);
    latency_of(|offset| {
        let (client, data) = (Arc::clone(&client), data.clone());
        let (image, generation) = (c.image.clone(), c.generation);
        async move {
            let op = Op::Write {
                offset,
                data,
                fua: false,
            };
            client
                .call(&image, generation, op)
                .await
                .expect("peer write");
        }
    })
    .await
}

fn commands(url: &str) -> u64 {
    let port = url
        .trim_start_matches("redis://127.0.0.1:")
        .trim_end_matches("/0");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port, "info", "stats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("backend            4K QD32 IOPS   4K QD1 p50 µs   p99 µs   store cmds/write");
        let sites = [Some("s1"), Some("s1"), Some("s2")];
        for copies in 0..=3usize {
            let c = Cluster::start(&sites, &[0, 1, 2][..copies.max(1)], SIZE).await;
            let (name, b): (String, Arc<dyn BlockBackend>) = if copies == 0 {
                let copy = c.nodes[0].table.get(&c.image).await.expect("local copy");
                ("local engine".into(), Arc::clone(copy.backend()))
            } else {
                (
                    format!(
                        "mirror, {copies} cop{}",
                        if copies == 1 { "y" } else { "ies" }
                    ),
                    Arc::new(c.mirror().await),
                )
            };
            // Warm up: allocate the file's pages once.
            let _ = iops(Arc::clone(&b), 32).await;
            let before = commands(&c.redis.url);
            let q32 = iops(Arc::clone(&b), 32).await;
            let after = commands(&c.redis.url);
            let (p50, p99) = latency(Arc::clone(&b)).await;
            let writes = q32 * RUN.as_secs_f64();
            // info itself is one command per call.
            let per_write = after.saturating_sub(before + 1) as f64 / writes;
            println!("{name:<18} {q32:>13.0}   {p50:>13.1}   {p99:>6.1}   {per_write:>8.4}");
            if copies == 2 {
                let (p50, p99) = peer_latency(&c, 1).await;
                println!(
                    "{:<18} {:>13}   {p50:>13.1}   {p99:>6.1}",
                    "peer alone (n2)", "-"
                );
            }
        }
    });
}
