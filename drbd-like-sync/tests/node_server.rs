//! The storage role over real sockets: a `node::serve` on `127.0.0.1:0`
//! with copies in a temp dir, reached by `PeerClient` and by raw frames.
//! Covers the operations, the generation fence (and that it survives a
//! restart), authentication, version mismatch and bad frames.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blockmap::types::{ImageName, NodeId};
use bytes::{Bytes, BytesMut};
use drbd_like_sync::node::{
    self, Catalog, CopyError, ImageTable, NodeConfig, PeerClient, StorageNode,
};
use drbd_like_sync::proto::{
    self, ClientHello, ClusterSecret, ErrorCode, Generation, HandshakeConfig, Limits, Message,
    Nonce, Op, Response,
};
use drbd_like_sync::storage::EngineChoice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SIZE: u64 = 8 << 20;

struct Fixed(BTreeMap<String, u64>);

#[async_trait]
impl Catalog for Fixed {
    async fn copy_size(&self, image: &ImageName, _node: &NodeId) -> Result<u64, CopyError> {
        self.0
            .get(image.as_str())
            .copied()
            .ok_or_else(|| CopyError::UnknownImage(image.clone()))
    }
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("node id")
}

fn img() -> ImageName {
    ImageName::new("vm1").expect("image name")
}

fn secret() -> ClusterSecret {
    ClusterSecret::new(b"cluster-secret-for-tests".to_vec())
}

/// A storage node serving in a temp dir; stopped (and flushed) on `stop`.
struct Node {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start_in(dir: tempfile::TempDir) -> Node {
        let catalog = Arc::new(Fixed([("vm1".to_string(), SIZE)].into()));
        let table = Arc::new(ImageTable::new(
            id("store-a"),
            dir.path(),
            EngineChoice::Auto.into(),
            catalog,
        ));
        let node = Arc::new(StorageNode::new(
            NodeConfig::new(id("store-a"), secret()),
            table,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(node::serve(listener, node, rx));
        Node {
            addr,
            dir,
            shutdown: tx,
            task,
        }
    }

    async fn start() -> Node {
        Node::start_in(tempfile::tempdir().expect("tempdir")).await
    }

    async fn stop(self) -> tempfile::TempDir {
        let _ = self.shutdown.send(true);
        self.task.await.expect("node task");
        self.dir
    }
}

async fn client_with(
    addr: SocketAddr,
    secret: ClusterSecret,
) -> Result<PeerClient, node::ClientError> {
    let cfg = HandshakeConfig {
        node_id: id("writer"),
        secret,
    };
    PeerClient::connect(
        addr,
        cfg,
        Some(&id("store-a")),
        Limits::default(),
        Duration::from_secs(5),
    )
    .await
}

async fn client(addr: SocketAddr) -> PeerClient {
    client_with(addr, secret()).await.expect("connect")
}

async fn read(c: &PeerClient, g: u64, offset: u64, len: u32) -> Bytes {
    match c
        .call(&img(), Generation(g), Op::Read { offset, len })
        .await
    {
        Ok(Response::Ok { data, .. }) => data,
        other => panic!("read: {other:?}"),
    }
}

async fn write(
    c: &PeerClient,
    g: u64,
    offset: u64,
    data: &'static [u8],
) -> Result<Response, node::ClientError> {
    c.call(
        &img(),
        Generation(g),
        Op::Write {
            offset,
            data: Bytes::from_static(data),
            fua: true,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_reach_the_copy_file() {
    let n = Node::start().await;
    let c = client(n.addr).await;
    write(&c, 1, 4096, b"hello copy").await.expect("write");
    assert_eq!(&read(&c, 1, 4096, 10).await[..], b"hello copy");
    c.call(&img(), Generation(1), Op::Flush)
        .await
        .expect("flush");
    // The copy is the sparse file of the image's size in the data dir.
    let file = n.dir.path().join("images/vm1.img");
    let on_disk = std::fs::read(&file).expect("copy file");
    assert_eq!(on_disk.len() as u64, SIZE);
    assert_eq!(&on_disk[4096..4106], b"hello copy");

    // Checksums: per chunk, equal to the checksum of the bytes.
    let sums = match c
        .call(
            &img(),
            Generation(1),
            Op::Checksum {
                offset: 0,
                len: 16384,
                chunk: 8192,
            },
        )
        .await
        .expect("checksum")
    {
        Response::Checksums { sums, .. } => sums,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        sums,
        vec![
            proto::chunk_checksum(&on_disk[..8192]),
            proto::chunk_checksum(&on_disk[8192..16384])
        ]
    );

    // Zeroes and discard read back as zeroes.
    c.call(
        &img(),
        Generation(1),
        Op::WriteZeroes {
            offset: 4096,
            len: 4,
        },
    )
    .await
    .expect("zeroes");
    assert_eq!(&read(&c, 1, 4096, 10).await[..], b"\0\0\0\0o copy");
    c.call(
        &img(),
        Generation(1),
        Op::Discard {
            offset: 0,
            len: 1 << 20,
        },
    )
    .await
    .expect("discard");
    assert!(read(&c, 1, 0, 8192).await.iter().all(|&b| b == 0));

    // A stream covers the range in order with chunks and holes.
    write(&c, 1, 2 << 20, b"data in the middle")
        .await
        .expect("write");
    let mut rx = c
        .start(
            &img(),
            Generation(1),
            Op::StreamRange {
                offset: 0,
                len: 4 << 20,
            },
        )
        .expect("stream");
    let mut pos = 0u64;
    let mut seen_data = false;
    loop {
        match rx.recv().await.expect("stream response") {
            Response::StreamChunk { offset, data, .. } => {
                assert_eq!(offset, pos);
                if offset <= 2 << 20 && (2 << 20) < offset + data.len() as u64 {
                    let at = ((2 << 20) - offset) as usize;
                    assert_eq!(&data[at..at + 18], b"data in the middle");
                    seen_data = true;
                }
                pos += data.len() as u64;
            }
            Response::StreamHole { offset, len, .. } => {
                assert_eq!(offset, pos);
                pos += len;
            }
            Response::StreamEnd { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pos, 4 << 20, "the stream covers the range");
    assert!(seen_data, "the written bytes come as a chunk");

    // Out of range, unknown image: clear errors with stable codes.
    let e = c
        .call(
            &img(),
            Generation(1),
            Op::Read {
                offset: SIZE - 1,
                len: 2,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, node::ClientError::Remote { reply, .. } if reply.code == ErrorCode::OUT_OF_RANGE),
        "{e}"
    );
    let other = ImageName::new("nope").unwrap();
    let e = c.call(&other, Generation(1), Op::Flush).await.unwrap_err();
    assert!(
        matches!(&e, node::ClientError::Remote { reply, .. } if reply.code == ErrorCode::UNKNOWN_IMAGE),
        "{e}"
    );
    assert!(e.to_string().contains("nope"), "{e}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_generation_is_fenced_and_the_fence_survives_a_restart() {
    let n = Node::start().await;
    let old = client(n.addr).await;
    let new = client(n.addr).await;
    write(&old, 3, 0, b"from writer 3")
        .await
        .expect("gen 3 writes");
    write(&new, 4, 0, b"from writer 4")
        .await
        .expect("gen 4 writes");
    let e = write(&old, 3, 0, b"zombie write!").await.unwrap_err();
    assert_eq!(e.fenced_at(), Some(Generation(4)), "{e}");
    assert!(e.to_string().contains("fenced"), "{e}");
    // Reads of the old writer are fenced too, and its write did not land.
    assert!(old
        .call(&img(), Generation(3), Op::Read { offset: 0, len: 4 })
        .await
        .is_err());
    assert_eq!(&read(&new, 4, 0, 13).await[..], b"from writer 4");

    let dir = n.stop().await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("images/vm1.gen"))
            .unwrap()
            .trim(),
        "4"
    );
    let n = Node::start_in(dir).await;
    let old = client(n.addr).await;
    let e = write(&old, 3, 0, b"zombie again").await.unwrap_err();
    assert_eq!(
        e.fenced_at(),
        Some(Generation(4)),
        "restart keeps the fence: {e}"
    );
    assert_eq!(&read(&old, 4, 0, 13).await[..], b"from writer 4");
    n.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_on_both_sides() {
    let n = Node::start().await;
    let e = client_with(n.addr, ClusterSecret::new(b"not the secret".to_vec()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("handshake"), "{e}");
    let chain = format!("{:?}", e);
    assert!(chain.contains("AuthFailed"), "{chain}");
    // The node keeps serving others.
    let c = client(n.addr).await;
    write(&c, 1, 0, b"still fine").await.expect("write");
    n.stop().await;
}

#[tokio::test]
async fn the_wrong_node_at_an_address_is_refused() {
    let n = Node::start().await;
    let cfg = HandshakeConfig {
        node_id: id("writer"),
        secret: secret(),
    };
    let e = PeerClient::connect(
        n.addr,
        cfg,
        Some(&id("store-b")),
        Limits::default(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("store-a") && e.to_string().contains("store-b"),
        "{e}"
    );
    n.stop().await;
}

/// Reads frames from a raw socket until the node closes it.
async fn frames_until_close(s: &mut TcpStream) -> Vec<Message> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        while let Some(m) =
            proto::decode(&mut buf, &Limits::default()).expect("node sends valid frames")
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

#[tokio::test]
async fn another_protocol_version_gets_an_error_naming_both() {
    let n = Node::start().await;
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    let mut out = BytesMut::new();
    proto::encode(
        &Message::ClientHello(ClientHello {
            version: proto::PROTOCOL_VERSION + 1,
            node_id: id("future"),
            nonce: Nonce([7; 32]),
        }),
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let got = frames_until_close(&mut s).await;
    let [Message::Fatal(f)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(f.code, ErrorCode::VERSION_MISMATCH);
    let v = proto::PROTOCOL_VERSION;
    assert!(
        f.message.contains(&v.to_string()) && f.message.contains(&(v + 1).to_string()),
        "{}",
        f.message
    );
    n.stop().await;
}

#[tokio::test]
async fn oversized_and_truncated_frames_close_the_connection_only() {
    let n = Node::start().await;
    // A header announcing 4 GiB: refused on the header alone.
    let mut s = TcpStream::connect(n.addr).await.unwrap();
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
    let mut s = TcpStream::connect(n.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0x00, 0x01, b'L', b'O'])
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    assert!(frames_until_close(&mut s).await.is_empty());
    // Others are served all along.
    let c = client(n.addr).await;
    write(&c, 1, 0, b"unaffected").await.expect("write");
    n.stop().await;
}
