//! The storage role across processes: a real `locusd --role storage` with a
//! real redis-server, reached over the replication protocol by a client in
//! this test. Covers the replication address from the node registry, the
//! copy file, authentication, the persisted fence across a kill -9, the
//! heartbeat, and the errors an operator gets for a missing secret.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use blockmap::types::{ImageName, NodeId};
use bytes::Bytes;
use common::*;
use drbd_like_sync::node::PeerClient;
use drbd_like_sync::proto::{ClusterSecret, Generation, HandshakeConfig, Limits, Op, Response};

const SECRET: &[u8] = b"a-cluster-secret-of-enough-bytes";

fn secret_file(dir: &std::path::Path, secret: &[u8]) -> String {
    let p = dir.join("cluster.secret");
    std::fs::write(&p, [secret, b"\n"].concat()).unwrap_or_else(|e| panic!("{e}"));
    p.display().to_string()
}

async fn connect(
    addr: SocketAddr,
    secret: &[u8],
) -> Result<PeerClient, drbd_like_sync::node::ClientError> {
    let cfg = HandshakeConfig {
        node_id: NodeId::new("test-writer").unwrap(),
        secret: ClusterSecret::new(secret.to_vec()),
    };
    let want = NodeId::new("store-a").unwrap();
    PeerClient::connect(
        addr,
        cfg,
        Some(&want),
        Limits::default(),
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locusd_role_storage_serves_its_copies_to_authenticated_peers() {
    let srv = redis::RedisServer::start();
    let m = srv.url.as_str();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    locus(
        m,
        &[
            "node",
            "add",
            "store-a",
            "--address",
            &addr.to_string(),
            "--site",
            "s1",
        ],
    )
    .ok();
    locus(
        m,
        &[
            "image",
            "create",
            "vm1",
            "--size",
            "64M",
            "--location",
            "store-a",
        ],
    )
    .ok();

    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let args = [
        "--role",
        "storage",
        "--node",
        "store-a",
        "--metadata",
        m,
        "--cluster-secret-file",
        &secret,
    ];
    let mut node = Locusd::start(dir, &args);
    // No --replication-listen: it listens on the address it was registered with.
    node.wait_listening(addr);

    let c = connect(addr, SECRET).await.expect("authenticated");
    let image = ImageName::new("vm1").unwrap();
    let data = Bytes::from(vec![0x5a; 8192]);
    c.call(
        &image,
        Generation(1),
        Op::Write {
            offset: 1 << 20,
            data: data.clone(),
            fua: true,
        },
    )
    .await
    .expect("write");
    let copy = node.dir.path().join("images/vm1.img");
    let on_disk = std::fs::read(&copy).expect("the copy file");
    assert_eq!(on_disk.len(), 64 << 20, "sparse file of the image's size");
    assert_eq!(&on_disk[1 << 20..(1 << 20) + 8192], &data[..]);
    match c
        .call(
            &image,
            Generation(1),
            Op::Read {
                offset: 1 << 20,
                len: 8192,
            },
        )
        .await
    {
        Ok(Response::Ok { data: got, .. }) => assert_eq!(got, data),
        other => panic!("read: {other:?}"),
    }
    // An image not placed here is refused by name.
    locus(m, &["node", "add", "store-b", "--address", "127.0.0.1:1"]).ok();
    locus(
        m,
        &[
            "image",
            "create",
            "elsewhere",
            "--size",
            "8M",
            "--location",
            "store-b",
        ],
    )
    .ok();
    let e = c
        .call(
            &ImageName::new("elsewhere").unwrap(),
            Generation(1),
            Op::Flush,
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("elsewhere") && e.to_string().contains("store-a"),
        "{e}"
    );

    // A wrong secret is refused, and logged with the peer's address.
    let e = connect(addr, b"not-the-cluster-secret-at-all")
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("AuthFailed"), "{e:?}");
    // A newer writer fences the old one; the fence survives kill -9.
    c.call(&image, Generation(2), Op::Flush)
        .await
        .expect("generation 2");
    drop(c);
    let log = node.log_text();
    assert!(
        log.contains("replication peer refused") && log.contains("127.0.0.1"),
        "{log}"
    );
    node.child.kill().expect("kill -9");
    node.child.wait().expect("reaped");
    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    drop(node);
    let mut node = Locusd::start(dir, &args);
    node.wait_listening(addr);
    let c = connect(addr, SECRET).await.expect("reconnect");
    let e = c.call(&image, Generation(1), Op::Flush).await.unwrap_err();
    assert_eq!(e.fenced_at(), Some(Generation(2)), "{e}");

    // The heartbeat shows the node up in `locus cluster status`.
    let status = locus(m, &["--json", "cluster", "status"]).ok().json();
    let a = status
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"]["id"] == "store-a"))
        .cloned()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(a["state"], "up", "{a}");
    let b = status
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"]["id"] == "store-b"))
        .cloned();
    assert_eq!(
        b.map(|b| b["state"].clone()),
        Some("down".into()),
        "store-b never ran: {status}"
    );
}

#[test]
fn role_storage_without_a_secret_or_address_says_what_is_missing() {
    let srv = redis::RedisServer::start();
    let m = srv.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(built_binary("locusd"))
            .env_remove("LOCUS_METADATA")
            .env_remove("LOCUS_CLUSTER_SECRET_FILE")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("locusd runs");
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--role", "storage", "--node", "nobody", "--metadata", m]);
    assert!(e.contains("--cluster-secret-file"), "{e}");
    let secret = secret_file(dir.path(), SECRET);
    let e = run(&[
        "--role",
        "storage",
        "--node",
        "nobody",
        "--metadata",
        m,
        "--cluster-secret-file",
        &secret,
    ]);
    assert!(e.contains("locus node add nobody --address"), "{e}");
    let short = secret_file(dir.path(), b"short");
    let e = run(&[
        "--role",
        "storage",
        "--node",
        "nobody",
        "--metadata",
        m,
        "--cluster-secret-file",
        &short,
    ]);
    assert!(e.contains("at least 16"), "{e}");
    let e = run(&["--role", "storage", "--node", "nobody"]);
    assert!(e.contains("metadata store"), "{e}");
}

/// `locus image info` shows the write lease: holder, generation, expiry
/// (`lease.holder`, `lease.generation`, `lease.expires` in `--json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_info_shows_the_lease() {
    let srv = redis::RedisServer::start();
    let m = srv.url.as_str();
    locus(m, &["node", "add", "n1", "--address", "127.0.0.1:7001"]).ok();
    locus(
        m,
        &["image", "create", "vm1", "--size", "8M", "--location", "n1"],
    )
    .ok();
    let info = locus(m, &["--json", "image", "info", "vm1"]).ok().json();
    assert_eq!(info["lease"], serde_json::Value::Null, "{info}");
    assert!(locus(m, &["image", "info", "vm1"])
        .ok()
        .stdout
        .contains("lease        free"));

    let store = blockmap::store::open(m).await.expect("store");
    let image = ImageName::new("vm1").unwrap();
    let now = blockmap::types::UnixMillis::now();
    let lease = store
        .acquire_lease(&image, &NodeId::new("n1").unwrap(), 10_000, now)
        .await
        .expect("acquire");
    let info = locus(m, &["--json", "image", "info", "vm1"]).ok().json();
    assert_eq!(info["lease"]["holder"], "n1", "{info}");
    assert_eq!(info["lease"]["generation"], lease.generation, "{info}");
    assert_eq!(info["lease"]["expires"], lease.expires.0, "{info}");
    assert_eq!(
        info["image"]["generation"], lease.generation,
        "the header shows the bumped generation: {info}"
    );
    let text = locus(m, &["image", "info", "vm1"]).ok().stdout;
    assert!(
        text.contains(&format!("held by n1, generation {}", lease.generation)),
        "{text}"
    );
}

/// `locus cluster status` warns on stderr when Redis does not persist every
/// change before it answers, and says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_warns_about_a_store_that_is_not_durable() {
    let srv = redis::RedisServer::start();
    let m = srv.url.as_str();
    let quiet = locus(m, &["cluster", "status"]).ok();
    assert!(!quiet.stderr.contains("warning"), "{}", quiet.stderr);
    let client = ::redis::Client::open(m).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .query_async(&mut con)
        .await
        .unwrap();
    let warned = locus(m, &["--json", "cluster", "status"]).ok();
    assert!(
        warned.stderr.contains("appendonly no") && warned.stderr.contains("--appendfsync always"),
        "{}",
        warned.stderr
    );
    assert!(warned.json().is_array(), "stdout stays the JSON rows");
}

/// Reads frames from a raw socket until the node closes it.
async fn frames_until_close(s: &mut tokio::net::TcpStream) -> Vec<drbd_like_sync::proto::Message> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    loop {
        while let Some(m) = drbd_like_sync::proto::decode(&mut buf, &Limits::default())
            .expect("the node sends valid frames")
        {
            out.push(m);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the node did not close the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locusd_answers_another_version_and_bad_frames_and_keeps_serving() {
    use drbd_like_sync::proto::{self, ClientHello, ErrorCode, Message, Nonce};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let srv = redis::RedisServer::start();
    let m = srv.url.as_str();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a = addr.to_string();
    locus(m, &["node", "add", "store-a", "--address", &a]).ok();
    locus(
        m,
        &[
            "image",
            "create",
            "vm1",
            "--size",
            "8M",
            "--location",
            "store-a",
        ],
    )
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let args = [
        "--role",
        "storage",
        "--node",
        "store-a",
        "--metadata",
        m,
        "--cluster-secret-file",
        &secret,
    ];
    let mut node = Locusd::start(dir, &args);
    node.wait_listening(addr);
    let c = connect(addr, SECRET).await.expect("authenticated");

    // Another protocol version: a Fatal naming both versions.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = bytes::BytesMut::new();
    proto::encode(
        &Message::ClientHello(ClientHello {
            version: proto::PROTOCOL_VERSION + 1,
            node_id: NodeId::new("future").unwrap(),
            nonce: Nonce([7; 32]),
        }),
        &mut hello,
    );
    s.write_all(&hello).await.unwrap();
    let got = frames_until_close(&mut s).await;
    let [Message::Fatal(f)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(f.code, ErrorCode::VERSION_MISMATCH);
    let (v, theirs) = (proto::PROTOCOL_VERSION, proto::PROTOCOL_VERSION + 1);
    assert!(
        f.message.contains(&format!("version {v}")) && f.message.contains(&format!("{theirs}")),
        "{}",
        f.message
    );

    // A header announcing 4 GiB: refused on the header alone.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0x00, 0x01])
        .await
        .unwrap();
    let got = frames_until_close(&mut s).await;
    let [Message::Fatal(f)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(f.code, ErrorCode::PROTOCOL);
    assert!(f.message.contains("exceeds the limit"), "{}", f.message);

    // A truncated frame, then the peer goes away: the node just closes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0x00, 0x01, b'L', b'O'])
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    assert!(frames_until_close(&mut s).await.is_empty());

    // The authenticated peer was served all along, and still is.
    let image = ImageName::new("vm1").unwrap();
    let data = Bytes::from(vec![0x3c; 4096]);
    c.call(
        &image,
        Generation(1),
        Op::Write {
            offset: 0,
            data: data.clone(),
            fua: true,
        },
    )
    .await
    .expect("write after the bad peers");
    match c
        .call(
            &image,
            Generation(1),
            Op::Read {
                offset: 0,
                len: 4096,
            },
        )
        .await
    {
        Ok(Response::Ok { data: got, .. }) => assert_eq!(got, data),
        other => panic!("read: {other:?}"),
    }
    // Each refused peer is in the log with its address and the reason.
    let log = node.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("replication peer refused") && l.contains("127.0.0.1:"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains(&format!("version {theirs}")))
            && refused.iter().any(|l| l.contains("exceeds the limit")),
        "{log}"
    );
    assert!(node.child.try_wait().unwrap().is_none(), "locusd exited");
}
