//! LUNs backed by images of the metadata store, on a real daemon: against a
//! real `redis-server` and against the embedded store. The test registers
//! this daemon's node, creates an image on it and a target mapping it, and
//! checks, without restarting the daemon, that the new target logs in, that
//! READ CAPACITY shows the image's geometry, that a write lands in
//! `<data_dir>/images/<image>.img`, that a new ACL refuses other initiators,
//! and that an image placed only on another node is not served and is
//! reported.

mod common;

#[path = "../../blockmap/tests/common/redis.rs"]
mod redis;

use std::sync::Arc;
use std::time::Duration;

use blockmap::image::{ImageSpec, LogicalBlockSize};
use blockmap::node::Node;
use blockmap::ops;
use blockmap::store::MetadataStore;
use blockmap::types::{ByteSize, ImageName, Iqn, NodeId};
use bytes::{Bytes, BytesMut};
use common::*;
use drbd_like_sync::storage::EngineChoice;
use iscsi_target::daemon::config::Config;
use iscsi_target::daemon::imagelun::image_path;
use iscsi_target::daemon::metadata::StoreSync;
use iscsi_target::daemon::targets::TargetSet;
use iscsi_target::login::TargetDirectory;
use iscsi_target::pdu::{Bhs, LoginFlags};
use iscsi_target::session::TargetLookup;
use tokio::net::TcpListener;
use tokio::sync::watch;

const NODE: &str = "node-a";
const IQN: &str = "iqn.2026-11.io.locus:store-vm1";
const OTHER_INITIATOR: &str = "iqn.2026-11.io.locus.test:intruder";

/// A daemon serving its default target plus the targets of a store.
struct StoreDaemon {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    targets: Arc<TargetSet>,
    sync: Arc<StoreSync>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StoreDaemon {
    async fn start(store: Arc<dyn MetadataStore>) -> StoreDaemon {
        Self::start_with(store, None).await
    }

    async fn start_with(store: Arc<dyn MetadataStore>, reopen: Option<&str>) -> StoreDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::default();
        cfg.targets[0].luns[0].size = "16M".into();
        cfg.data_dir = dir.path().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        cfg.listen = vec![addr];
        let targets = iscsi_target::daemon::build_targets(&cfg, std::slice::from_ref(&listener))
            .expect("targets build");
        let mut sync = StoreSync::new(
            targets.clone(),
            store,
            NodeId::new(NODE).expect("node id"),
            cfg.data_dir.clone(),
            EngineChoice::Auto.into(),
            cfg.targets.iter().map(|t| t.name.clone()),
        );
        if let Some(url) = reopen {
            sync = sync.with_reopen(url);
        }
        let sync = Arc::new(sync);
        sync.reload_all().await.expect("initial load");
        let (tx, rx) = watch::channel(false);
        let feed = tokio::spawn(sync.clone().run(rx.clone()));
        let t = targets.clone();
        let daemon = tokio::spawn(async move {
            iscsi_target::daemon::serve(&cfg, t, vec![listener], rx).await;
        });
        StoreDaemon {
            addr,
            dir,
            targets,
            sync,
            shutdown: tx,
            tasks: vec![feed, daemon],
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            t.await.expect("daemon task ends cleanly");
        }
    }
}

/// Polls `cond` every 20 ms, for at most 10 s.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn iqn() -> Iqn {
    Iqn::new(IQN).expect("iqn")
}

fn name(s: &str) -> ImageName {
    ImageName::new(s).expect("image name")
}

fn spec(image: &str, size: ByteSize, on: &str) -> ImageSpec {
    let mut s = ImageSpec::new(name(image), size, vec![NodeId::new(on).expect("node id")]);
    s.block_size = ByteSize::mib(4);
    s.logical_block_size = LogicalBlockSize::B4096;
    s
}

async fn add_node(store: &dyn MetadataStore, id: &str, port: u16) {
    let node = Node::new(
        NodeId::new(id).expect("node id"),
        &format!("127.0.0.1:{port}"),
        None,
        ByteSize::gib(1),
    )
    .expect("node");
    ops::add_node(store, node).await.expect("add node");
}

/// Runs one command and returns (status, Data-In bytes).
async fn command(w: &mut Wire, cdb: &[u8], len: u32, read: bool, data: Bytes) -> (u8, Bytes) {
    let write = !data.is_empty();
    let cmd = w.scsi_command(cdb, len, read, write, data);
    w.send(&cmd).await;
    let mut out = BytesMut::new();
    loop {
        let p = w.recv().await.expect("response");
        match &p.bhs {
            Bhs::DataIn(d) => {
                out.extend_from_slice(&p.data);
                if let Some(s) = d.status {
                    return (s, out.freeze());
                }
            }
            Bhs::ScsiResponse(s) => return (s.status, out.freeze()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Login status (class, detail) of a first login step by `initiator`.
async fn login_status(addr: std::net::SocketAddr, initiator: &str) -> (u8, u8) {
    let mut w = Wire::connect(addr).await;
    let r = w
        .login_step(
            LoginFlags {
                transit: true,
                cont: false,
                csg: 0,
                nsg: 1,
            },
            &[
                ("InitiatorName", initiator),
                ("TargetName", IQN),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
        )
        .await;
    let Bhs::LoginResponse(lr) = &r.bhs else {
        panic!("expected a Login Response, got {:?}", r.bhs)
    };
    (lr.status_class, lr.status_detail)
}

/// The whole scenario; `admin` is the operator's store handle, `daemon` the
/// daemon's (they may be the same handle).
async fn scenario(admin: Arc<dyn MetadataStore>, daemon: Arc<dyn MetadataStore>) {
    let admin = &*admin;
    let d = StoreDaemon::start(daemon).await;
    assert!(d.targets.lookup(IQN).is_none(), "no store target yet");

    // A node for this daemon, an image on it, a target with it as LUN 0.
    add_node(admin, NODE, 7901).await;
    ops::create_image(admin, &spec("vm1", ByteSize::mib(16), NODE))
        .await
        .expect("create image");
    ops::create_target(admin, &iqn())
        .await
        .expect("create target");
    ops::add_lun(admin, &iqn(), &name("vm1"), Some(0))
        .await
        .expect("add lun");
    wait_for("LUN 0 of the new target", || {
        d.targets
            .scsi_target(IQN)
            .is_some_and(|t| t.lun(0).is_some())
    })
    .await;
    assert!(
        d.targets
            .visible_targets(INITIATOR)
            .iter()
            .any(|t| t.name == IQN),
        "SendTargets lists the new target"
    );

    // Login, READ CAPACITY (16): 16 MiB of 4096-byte blocks.
    let mut w = Wire::connect(d.addr).await;
    w.login(IQN, &[]).await;
    w.expect_power_on_ua().await;
    let mut rc16 = [0u8; 16];
    rc16[0] = 0x9e;
    rc16[1] = 0x10;
    rc16[13] = 32;
    let (status, data) = command(&mut w, &rc16, 32, true, Bytes::new()).await;
    assert_eq!(status, 0, "READ CAPACITY (16) succeeds");
    let last_lba = u64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
    let block_len = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    assert_eq!(block_len, 4096, "logical block size of the image");
    assert_eq!(last_lba, (16 << 20) / 4096 - 1, "image size");

    // WRITE then READ at LBA 3, and the bytes are in the image file.
    let payload: Bytes = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let (status, _) = command(&mut w, &rw10(0x2a, 3, 1), 4096, false, payload.clone()).await;
    assert_eq!(status, 0, "WRITE (10) succeeds");
    let (status, back) = command(&mut w, &rw10(0x28, 3, 1), 4096, true, Bytes::new()).await;
    assert_eq!(status, 0, "READ (10) succeeds");
    assert_eq!(back, payload, "read back what was written");
    let (status, _) = command(
        &mut w,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        0,
        false,
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 0, "SYNCHRONIZE CACHE succeeds");
    let file = std::fs::read(image_path(d.dir.path(), &name("vm1"))).expect("image file");
    assert_eq!(file.len(), 16 << 20, "image file has the image's size");
    assert_eq!(
        &file[3 * 4096..4 * 4096],
        &payload[..],
        "data in the image file"
    );

    // The empty ACL of a new target lets every initiator in (as documented
    // on `blockmap::target::Target::acl` and in `locus target --help`).
    // An ACL: other initiators are refused at their next login (02/02).
    assert_eq!(login_status(d.addr, OTHER_INITIATOR).await, (0, 0));
    ops::add_acl(admin, &iqn(), &Iqn::new(INITIATOR).expect("iqn"))
        .await
        .expect("add acl");
    wait_for("the ACL", || {
        d.targets.lookup(IQN).is_some_and(|t| t.acl.is_some())
    })
    .await;
    assert_eq!(
        login_status(d.addr, OTHER_INITIATOR).await,
        (2, 2),
        "an initiator outside the ACL is refused"
    );
    assert_eq!(login_status(d.addr, INITIATOR).await, (0, 0));
    w.ping().await;

    // CHAP: required from the next login on (AuthMethod=None fails 02/01),
    // and cleared again.
    let cred = blockmap::target::ChapCredential::new("user1", "secret-secret-12").expect("cred");
    ops::set_chap(
        admin,
        &iqn(),
        Some(blockmap::target::Chap {
            initiator: cred,
            mutual: None,
        }),
    )
    .await
    .expect("set chap");
    wait_for("CHAP", || {
        d.targets.lookup(IQN).is_some_and(|t| t.chap.is_some())
    })
    .await;
    assert_eq!(
        login_status(d.addr, INITIATOR).await,
        (2, 1),
        "CHAP is required"
    );
    ops::set_chap(admin, &iqn(), None)
        .await
        .expect("clear chap");
    wait_for("CHAP cleared", || {
        d.targets.lookup(IQN).is_some_and(|t| t.chap.is_none())
    })
    .await;
    assert_eq!(login_status(d.addr, INITIATOR).await, (0, 0));

    // An image placed only on another node is not served, and is reported.
    add_node(admin, "node-b", 7902).await;
    ops::create_image(admin, &spec("remote", ByteSize::mib(8), "node-b"))
        .await
        .expect("create remote image");
    ops::add_lun(admin, &iqn(), &name("remote"), Some(1))
        .await
        .expect("map remote image");
    wait_for("the problem report for LUN 1", || {
        d.sync.problems().iter().any(|p| p.lun == 1)
    })
    .await;
    let p = d
        .sync
        .problems()
        .into_iter()
        .find(|p| p.lun == 1)
        .expect("problem");
    assert_eq!(p.image, name("remote"));
    assert!(
        p.reason.contains("'remote'")
            && p.reason.contains("'node-a'")
            && p.reason.contains("blocks 0-1"),
        "reason names image, node and blocks: {}",
        p.reason
    );
    let scsi = d.targets.scsi_target(IQN).expect("target");
    assert!(scsi.lun(1).is_none(), "LUN 1 not served");
    assert!(scsi.lun(0).is_some(), "LUN 0 still served");
    assert!(
        !image_path(d.dir.path(), &name("remote")).exists(),
        "no local copy was created"
    );

    // Adding this node as an in-sync location makes it servable.
    ops::add_location(
        admin,
        &name("remote"),
        &NodeId::new(NODE).expect("id"),
        None,
        None,
    )
    .await
    .expect("add location");
    for state in [
        blockmap::placement::SyncState::Syncing,
        blockmap::placement::SyncState::InSync,
    ] {
        ops::set_sync_state(
            admin,
            &name("remote"),
            &NodeId::new(NODE).expect("id"),
            None,
            None,
            state,
        )
        .await
        .expect("mark in sync");
    }
    wait_for("LUN 1 served", || scsi.lun(1).is_some()).await;
    assert!(d.sync.problems().is_empty(), "{:?}", d.sync.problems());

    // Unmapping LUN 0 removes it from the running target.
    ops::remove_lun(admin, &iqn(), 0).await.expect("remove lun");
    wait_for("LUN 0 removed", || scsi.lun(0).is_none()).await;

    drop(w);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_luns_on_redis() {
    let srv = redis::RedisServer::start();
    let admin = blockmap::store::open(&srv.url).await.expect("admin store");
    let daemon = iscsi_target::daemon::metadata::open_store(&srv.url)
        .await
        .expect("daemon store");
    scenario(admin, daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_luns_on_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One process: the daemon and the operator share the open file.
    let store: Arc<dyn MetadataStore> = Arc::new(
        blockmap::store::embedded::EmbeddedStore::open(dir.path().to_owned())
            .expect("embedded store")
            .with_poll_interval(Duration::from_millis(20)),
    );
    scenario(store.clone(), store).await;
}

#[tokio::test]
async fn unreachable_store_is_a_clear_error() {
    let e = match iscsi_target::daemon::metadata::open_store("redis://127.0.0.1:1/0").await {
        Ok(_) => panic!("port 1 has no redis"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("unavailable"), "{e}");
    let e = match iscsi_target::daemon::metadata::open_store("ftp://x").await {
        Ok(_) => panic!("not a store URL"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("redis://"), "{e}");
}

/// A redis-server on a given loopback port (to restart one in place),
/// killed on drop.
struct FixedRedis {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl FixedRedis {
    fn start(port: u16) -> FixedRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (see scripts/install-test-deps.sh)");
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return FixedRedis { child, _dir: dir };
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("redis-server on port {port} exited: {st}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        panic!("redis-server on port {port} did not come up");
    }
}

impl Drop for FixedRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_resubscribes_and_reloads() {
    if std::env::var("LOCUS_TEST_REDIS_URL").is_ok() {
        return; // needs a private server it can kill
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let first = FixedRedis::start(port);
    let admin = blockmap::store::open(&url).await.expect("admin store");
    let daemon_store = iscsi_target::daemon::metadata::open_store(&url)
        .await
        .expect("daemon store");
    let d = StoreDaemon::start_with(daemon_store, Some(&url)).await;
    add_node(&*admin, NODE, 7901).await;
    ops::create_image(&*admin, &spec("vm1", ByteSize::mib(8), NODE))
        .await
        .expect("create image");
    ops::create_target(&*admin, &iqn()).await.expect("target");
    ops::add_lun(&*admin, &iqn(), &name("vm1"), Some(0))
        .await
        .expect("lun");
    wait_for("LUN 0 served", || {
        d.targets
            .scsi_target(IQN)
            .is_some_and(|t| t.lun(0).is_some())
    })
    .await;

    // Redis goes away: what is served stays served.
    drop(first);
    drop(admin);
    let mut w = Wire::connect(d.addr).await;
    w.login(IQN, &[]).await;
    w.expect_power_on_ua().await;
    let (status, _) = command(&mut w, &rw10(0x28, 0, 1), 4096, true, Bytes::new()).await;
    assert_eq!(status, 0, "I/O does not depend on the store");

    // It comes back empty (no persistence): the daemon re-subscribes, and
    // its full reload drops the old target; a new one appears live.
    let _second = FixedRedis::start(port);
    let admin = blockmap::store::open(&url)
        .await
        .expect("admin store again");
    wait_for("the full reload after the restart", || {
        d.targets.lookup(IQN).is_none()
    })
    .await;
    let iqn2 = Iqn::new("iqn.2026-11.io.locus:after-restart").expect("iqn");
    add_node(&*admin, NODE, 7901).await;
    ops::create_image(&*admin, &spec("vm2", ByteSize::mib(8), NODE))
        .await
        .expect("create image");
    ops::create_target(&*admin, &iqn2).await.expect("target");
    ops::add_lun(&*admin, &iqn2, &name("vm2"), Some(0))
        .await
        .expect("lun");
    wait_for("the new target after the restart", || {
        d.targets
            .scsi_target(iqn2.as_str())
            .is_some_and(|t| t.lun(0).is_some())
    })
    .await;
    drop(w);
    d.stop().await;
}

/// `daemon::run` with a store refreshes this node's heartbeat while it runs
/// (so `locus cluster status` sees real liveness) and records the node down
/// when it shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_beats_while_it_runs_and_records_down_at_shutdown() {
    let srv = redis::RedisServer::start();
    let admin = blockmap::store::open(&srv.url).await.expect("admin store");
    add_node(&*admin, "hb-node", 7900).await;
    let id = NodeId::new("hb-node").expect("node id");
    let before = ops::get_node(&*admin, &id).await.expect("node");
    assert_eq!(
        before.last_heartbeat, None,
        "no heartbeat before locusd runs"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::default();
    cfg.targets[0].luns[0].size = "16M".into();
    cfg.data_dir = dir.path().to_owned();
    cfg.metadata = Some(srv.url.clone());
    cfg.node = Some("hb-node".into());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (tx, rx) = watch::channel(false);
    let daemon = tokio::spawn(iscsi_target::daemon::run(cfg, vec![listener], rx));

    let mut beat = None;
    for _ in 0..500 {
        let n = ops::get_node(&*admin, &id).await.expect("node");
        if n.last_heartbeat.is_some() {
            beat = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let beat = beat.expect("a heartbeat within 10 s of start");
    assert_eq!(beat.state, blockmap::node::NodeState::Up);

    tx.send(true).expect("shutdown");
    daemon.await.expect("daemon task").expect("daemon ran");
    let after = ops::get_node(&*admin, &id).await.expect("node");
    assert_eq!(after.state, blockmap::node::NodeState::Down, "{after:?}");
}
