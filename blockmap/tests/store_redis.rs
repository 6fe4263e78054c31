//! The conformance suite against a real redis-server, plus Redis failure
//! modes and size checks.

mod common;
mod conformance;

use blockmap::error::ErrorKind;
use blockmap::image::ImageSpec;
use blockmap::ops;
use blockmap::placement::SyncState;
use blockmap::store::redis::RedisStore;
use blockmap::store::MetadataStore;
use blockmap::types::ByteSize;
use common::redis::RedisServer;
use conformance::{img, n, Store};
use std::sync::Arc;

async fn connect(srv: &RedisServer) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(&srv.url)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

async fn store(srv: &RedisServer) -> Store {
    connect(srv).await
}

#[tokio::test]
async fn images_roundtrip() {
    let srv = RedisServer::start();
    conformance::images_roundtrip(store(&srv).await).await;
}

#[tokio::test]
async fn placement_walkthrough() {
    let srv = RedisServer::start();
    conformance::placement_walkthrough(store(&srv).await).await;
}

#[tokio::test]
async fn dirty_bitmaps() {
    let srv = RedisServer::start();
    conformance::dirty_bitmaps(store(&srv).await).await;
}

#[tokio::test]
async fn nodes_and_targets() {
    let srv = RedisServer::start();
    conformance::nodes_and_targets(store(&srv).await).await;
}

#[tokio::test]
async fn stale_commit_conflicts() {
    let srv = RedisServer::start();
    conformance::stale_commit_conflicts(store(&srv).await, store(&srv).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_lose_nothing() {
    let srv = RedisServer::start();
    conformance::racing_writers_lose_nothing(store(&srv).await, store(&srv).await, 25).await;
}

#[tokio::test]
async fn change_feed_delivers() {
    let srv = RedisServer::start();
    conformance::change_feed_delivers(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn dirty_marks() {
    let srv = RedisServer::start();
    conformance::dirty_marks(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn stale_generation_is_fenced() {
    let srv = RedisServer::start();
    conformance::stale_generation_is_fenced(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn lease_lifecycle() {
    let srv = RedisServer::start();
    conformance::lease_lifecycle(store(&srv).await, store(&srv).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_acquire_one_wins() {
    let srv = RedisServer::start();
    conformance::racing_acquire_one_wins(store(&srv).await, store(&srv).await, 20).await;
}

#[tokio::test]
async fn activity_log_takeover() {
    let srv = RedisServer::start();
    conformance::activity_log_takeover(store(&srv).await, store(&srv).await).await;
}

#[tokio::test]
async fn redis_down_is_a_clear_error() {
    let port = {
        let srv = RedisServer::start_with_password("unused-password");
        srv.port
    }; // server stopped: nothing listens on the port now
    let e = RedisStore::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .err();
    let e = e.unwrap_or_else(|| panic!("connect to a stopped server succeeded"));
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("cannot reach redis"), "{e}");
}

#[tokio::test]
async fn wrong_or_missing_password_is_a_clear_error() {
    let srv = RedisServer::start_with_password("right-password-123");
    for url in [
        format!("redis://:wrong-password@127.0.0.1:{}/0", srv.port),
        srv.url_without_password(),
    ] {
        let e = RedisStore::connect(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} connected"));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("authentication failed"), "{e}");
        assert!(
            !e.to_string().contains("wrong-password"),
            "password leaked: {e}"
        );
    }
    assert!(RedisStore::connect(&srv.url).await.is_ok());
}

/// Scale: a 1 TiB, 4 MiB-block, 3-location image is small in Redis, and one
/// block's state change sends O(1) bytes.
#[tokio::test]
async fn terabyte_image_is_small_and_changes_are_o1() {
    let srv = RedisServer::start();
    let s = connect(&srv).await;
    conformance::add_nodes(&*s, &["a", "b", "c"]).await;
    let name = img("big");
    let spec = ImageSpec::new(name.clone(), ByteSize::tib(1), vec![n("a"), n("b"), n("c")]);
    ops::create_image(&*s, &spec)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mem = s
        .image_memory_usage(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(mem < 1 << 20, "1 TiB image uses {mem} bytes in redis");
    let before = s.bytes_written();
    ops::set_sync_state(
        &*s,
        &name,
        &n("b"),
        Some(131_072),
        Some(131_073),
        SyncState::OutOfSync,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let sent = s.bytes_written() - before;
    assert!(sent < 1024, "one block change sent {sent} bytes");
    let before = s.bytes_written();
    ops::mark_bytes(&*s, &name, &n("c"), 700 << 30, 4096, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = s.bytes_written() - before;
    assert!(sent < 1024, "one dirty mark sent {sent} bytes");
    let r = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.placement.runs().len(), 3);
    assert_eq!(r.dirty.get(&n("c")).map(|b| b.count()), Some(1));
    let mem = s
        .image_memory_usage(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        mem < 64 << 10,
        "one dirty bit far into the image costs {mem} bytes"
    );
    // Clearing removes every bitmap key.
    ops::mark_bytes(&*s, &name, &n("c"), 700 << 30, 4096, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(srv.url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("locus:oos:*")
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(keys.is_empty(), "{keys:?}");
}

/// A `MONITOR` connection: lists the commands clients send, without the
/// ones scripts run inside the server (`[0 lua]`).
struct Monitor(std::io::BufReader<std::net::TcpStream>);

impl Monitor {
    fn start(port: u16) -> Self {
        use std::io::{BufRead, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .ok();
        s.write_all(b"MONITOR\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
        assert!(line.starts_with("+OK"), "{line}");
        Self(r)
    }

    /// Client commands seen until `ECHO marker` (sent after the operation).
    fn client_commands_until(&mut self, marker: &str) -> Vec<String> {
        use std::io::BufRead;
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            self.0
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("monitor: {e}"));
            if line.contains(marker) {
                return out;
            }
            if !line.contains("lua]") {
                out.push(line.trim().to_string());
            }
        }
    }
}

/// Asserts that exactly one client command (an EVALSHA) reached the server
/// since the last check.
async fn check(what: &str, mon: &mut Monitor, con: &mut redis::aio::MultiplexedConnection) {
    let marker = format!("marker-{what}");
    redis::cmd("ECHO")
        .arg(&marker)
        .query_async::<String>(con)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cmds = mon.client_commands_until(&marker);
    assert_eq!(cmds.len(), 1, "{what} sent {cmds:#?}");
    assert!(
        cmds[0].to_lowercase().contains("\"evalsha\""),
        "{what}: {}",
        cmds[0]
    );
}

/// Invariant 1 on the hot path: a dirty mark (and an activity-log add, and
/// a renewal) is one command on the wire — one EVALSHA, one round trip —
/// whatever the bitmap holds.
#[tokio::test]
async fn writer_primitives_are_one_round_trip() {
    let srv = RedisServer::start();
    if srv.port == 0 {
        return; // an external server: MONITOR may see other clients
    }
    let s = connect(&srv).await;
    conformance::add_nodes(&*s, &["a", "b"]).await;
    let name = img("rt");
    ops::create_image(
        &*s,
        &ImageSpec::new(name.clone(), ByteSize::tib(1), vec![n("a"), n("b")]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let now = blockmap::types::UnixMillis(1);
    let lease = s
        .acquire_lease(&name, &n("a"), 1000, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let g = lease.generation;
    s.al_reset(&name, g, ByteSize::mib(4), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Scripts are loaded at connect: even the first use is one command.
    s.mark_dirty(&name, &n("b"), g, &[(0, 1)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(srv.url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut mon = Monitor::start(srv.port);
    s.mark_dirty(
        &name,
        &n("b"),
        g,
        &[(5 << 21, (5 << 21) + 3), (1 << 10, 1 << 12)],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    check("mark_dirty", &mut mon, &mut con).await;
    s.clear_dirty(&name, &n("b"), g, &[(0, 1)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    check("clear_dirty", &mut mon, &mut con).await;
    s.al_add(&name, g, &[1, 2])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    check("al_add", &mut mon, &mut con).await;
    s.renew_lease(&name, &n("a"), g, 1000, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    check("renew_lease", &mut mon, &mut con).await;
    let r = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.dirty.get(&n("b")).map(|b| b.count()), Some(3 + 3072));
}

/// The store reports whether Redis persists every change before it answers
/// (appendonly yes, appendfsync always): the test servers do, and a server
/// switched to `everysec` is reported as not durable, naming the setting.
#[tokio::test]
async fn durability_follows_the_persistence_settings() {
    let srv = RedisServer::start();
    let s = connect(&srv).await;
    let d = s.durability().await.expect("durability");
    assert!(d.durable, "{d:?}");
    assert_eq!(d.detail, "appendonly yes, appendfsync always");
    let client = redis::Client::open(srv.url.as_str()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query_async(&mut con)
        .await
        .expect("config set");
    let d = s.durability().await.expect("durability");
    assert!(!d.durable, "{d:?}");
    assert!(d.detail.contains("appendfsync everysec"), "{d:?}");
}

#[tokio::test]
async fn a_handle_reconnects_after_a_redis_restart_and_the_aof_kept_every_mark() {
    let mut srv = RedisServer::start();
    if std::env::var("LOCUS_TEST_REDIS_URL").is_ok() {
        return; // an external server cannot be restarted here
    }
    let s = connect(&srv).await;
    conformance::add_nodes(&*s, &["a", "b"]).await;
    let name = img("restart");
    ops::create_image(
        &*s,
        &conformance::spec("restart", ByteSize::mib(64), &["a", "b"]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let g = s
        .acquire_lease(&name, &n("a"), 60_000, blockmap::types::UnixMillis::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .generation;
    s.mark_dirty(&name, &n("b"), g, &[(1, 2)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    srv.restart();
    // The first command may find the old connection broken (and fail,
    // never replayed); within a few the handle is on a new connection, and
    // the mark made before the crash is still there.
    let mut last = None;
    for _ in 0..5 {
        match s.mark_dirty(&name, &n("b"), g, &[(7, 9)]).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                last = Some(e);
            }
        }
    }
    assert!(
        last.is_none(),
        "no reconnection after the restart: {last:?}"
    );
    let rec = s.load_image(&name).await.unwrap_or_else(|e| panic!("{e}"));
    let bm = rec
        .dirty
        .get(&n("b"))
        .unwrap_or_else(|| panic!("no bitmap"));
    assert!(
        bm.get(1) && bm.get(7) && bm.get(8) && bm.count() == 3,
        "{bm:?}"
    );
    // Transactions (WATCH/MULTI/EXEC) have their own connection: it
    // reconnects the same way.
    let mut done = None;
    for _ in 0..5 {
        match ops::set_sync_state(&*s, &name, &n("b"), None, None, SyncState::OutOfSync).await {
            Ok(r) => {
                done = Some(r);
                break;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        }
    }
    assert!(done.is_some(), "no transaction after the restart");
}
