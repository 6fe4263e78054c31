//! Scale figures for issue 3: a 1 TiB image with 4 MiB blocks and three
//! locations, in Redis (a real redis-server on a loopback port) and in the
//! embedded store. Prints a table of figures, then runs criterion on the
//! latency-sensitive operations. Run with `cargo bench -p blockmap`.
#![allow(missing_docs)]

#[path = "../tests/common/redis.rs"]
mod redis_harness;

use blockmap::image::ImageSpec;
use blockmap::node::Node;
use blockmap::ops;
use blockmap::placement::SyncState;
use blockmap::store::embedded::EmbeddedStore;
use blockmap::store::redis::RedisStore;
use blockmap::store::MetadataStore;
use blockmap::types::{ByteSize, ImageName, NodeId};
use criterion::Criterion;
use std::time::{Duration, Instant};

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn spec(name: &str) -> ImageSpec {
    ImageSpec::new(
        ImageName::new(name).unwrap_or_else(|e| panic!("{e}")),
        ByteSize::tib(1),
        vec![n("a"), n("b"), n("c")],
    )
}

async fn add_nodes(s: &dyn MetadataStore) {
    for id in ["a", "b", "c"] {
        let node = Node::new(n(id), "127.0.0.1:7000", None, ByteSize::tib(8))
            .unwrap_or_else(|e| panic!("{e}"));
        ops::add_node(s, node)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn info_stat(con: &mut redis::aio::MultiplexedConnection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn timed<F: std::future::Future<Output = T>, T>(f: F) -> (Duration, T) {
    let t = Instant::now();
    let out = f.await;
    (t.elapsed(), out)
}

async fn figures(store: &dyn MetadataStore, label: &str) {
    add_nodes(store).await;
    let mut creates = Vec::new();
    for i in 0..10 {
        let (d, r) = timed(ops::create_image(store, &spec(&format!("big{i}")))).await;
        r.unwrap_or_else(|e| panic!("{e}"));
        creates.push(d);
    }
    let name = ImageName::new("big0").unwrap_or_else(|e| panic!("{e}"));
    let mut infos = Vec::new();
    for _ in 0..20 {
        let (d, r) = timed(async { store.load_image(&name).await.map(|r| r.summary()) }).await;
        r.unwrap_or_else(|e| panic!("{e}"));
        infos.push(d);
    }
    // Fragment the placement: 1000 scattered one-block state changes.
    for i in 0..1000u64 {
        let b = i * 257;
        ops::set_sync_state(
            store,
            &name,
            &n("b"),
            Some(b),
            Some(b + 1),
            SyncState::OutOfSync,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut frag = Vec::new();
    for _ in 0..20 {
        let (d, r) = timed(async { store.load_image(&name).await.map(|r| r.summary()) }).await;
        r.unwrap_or_else(|e| panic!("{e}"));
        frag.push(d);
    }
    println!(
        "[{label}] create 1 TiB / 4 MiB / 3 locations: median {:?}, max {:?}",
        median(creates.clone()),
        creates.iter().max()
    );
    println!(
        "[{label}] image info (load + summary), 1 run:     median {:?}",
        median(infos)
    );
    println!(
        "[{label}] image info after 1000 scattered changes (2001 runs): median {:?}",
        median(frag)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let srv = redis_harness::RedisServer::start();
    let store = rt
        .block_on(RedisStore::connect(&srv.url))
        .unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(srv.url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let mut con = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap_or_else(|e| panic!("{e}"));

    println!("== Locus blockmap scale figures ==");
    rt.block_on(async {
        add_nodes(&store).await;
        let mem_before = info_stat(&mut con, "memory", "used_memory").await;
        ops::create_image(&store, &spec("mem")).await.unwrap_or_else(|e| panic!("{e}"));
        let mem_after = info_stat(&mut con, "memory", "used_memory").await;
        let name = ImageName::new("mem").unwrap_or_else(|e| panic!("{e}"));
        let usage = store.image_memory_usage(&name).await.unwrap_or_else(|e| panic!("{e}"));
        println!("[redis] 1 TiB image: MEMORY USAGE of its keys {usage} bytes; INFO used_memory delta {} bytes (includes allocator and client-buffer noise)", mem_after.saturating_sub(mem_before));

        let net0 = info_stat(&mut con, "stats", "total_net_input_bytes").await;
        let w0 = store.bytes_written();
        ops::set_sync_state(&store, &name, &n("b"), Some(100_000), Some(100_001), SyncState::OutOfSync)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let w1 = store.bytes_written();
        let net1 = info_stat(&mut con, "stats", "total_net_input_bytes").await;
        println!(
            "[redis] one block state change: {} bytes in MULTI/EXEC; server received {} bytes in all (incl. reads and the INFO call)",
            w1 - w0,
            net1 - net0
        );
        let w0 = store.bytes_written();
        ops::mark_bytes(&store, &name, &n("c"), 512 << 30, 4096, true).await.unwrap_or_else(|e| panic!("{e}"));
        println!("[redis] one 4 KiB dirty mark: {} bytes in MULTI/EXEC", store.bytes_written() - w0);
        let usage2 = store.image_memory_usage(&name).await.unwrap_or_else(|e| panic!("{e}"));
        println!("[redis] after one dirty mark at 512 GiB: MEMORY USAGE {usage2} bytes (bitmaps are chunked: one bit costs at most one 8 KiB chunk)");
    });

    rt.block_on(async {
        let redis_db = RedisStore::connect(&srv.url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        redis::cmd("FLUSHDB")
            .query_async::<()>(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        figures(&redis_db, "redis").await;
    });
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let emb = EmbeddedStore::open(dir.path().to_path_buf()).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(figures(&emb, "embedded"));

    // Criterion on the hot admin paths (Redis).
    let name = ImageName::new("big0").unwrap_or_else(|e| panic!("{e}"));
    let mut c = Criterion::default().configure_from_args().sample_size(20);
    c.bench_function("redis/image_info_1TiB_2001_runs", |b| {
        b.iter(|| rt.block_on(async { store.load_image(&name).await.map(|r| r.summary().len()) }))
    });
    let mut flip = false;
    c.bench_function("redis/one_block_state_change", |b| {
        b.iter(|| {
            flip = !flip;
            let st = if flip {
                SyncState::Syncing
            } else {
                SyncState::OutOfSync
            };
            rt.block_on(ops::set_sync_state(
                &store,
                &name,
                &n("b"),
                Some(257),
                Some(258),
                st,
            ))
        })
    });
    c.final_summary();
}
