//! A small cluster in one process: a redis-backed metadata store, storage
//! nodes serving on `127.0.0.1:0` from temp dirs (registered in the node
//! registry), one image placed on some of them, and its write lease taken
//! by node `n0`, the target whose mirror the tests drive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blockmap::image::ImageSpec;
use blockmap::node::Node as NodeEntry;
use blockmap::store::MetadataStore;
use blockmap::types::{ByteSize, ImageName, NodeId, UnixMillis};
use bytes::Bytes;
use drbd_like_sync::core::Generation;
use drbd_like_sync::mirror::{Mirror, MirrorConfig};
use drbd_like_sync::node::{self, ImageTable, NodeConfig, PeerClient, StorageNode, StoreCatalog};
use drbd_like_sync::proto::{ClusterSecret, HandshakeConfig, Limits};
use drbd_like_sync::storage::EngineChoice;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::redis::RedisServer;

/// Node id `s`.
pub fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("node id")
}

/// The cluster secret of the tests.
pub fn secret() -> ClusterSecret {
    ClusterSecret::new(b"mirror-test-cluster-secret".to_vec())
}

/// One storage node.
pub struct TestNode {
    /// Its id (`n0`, `n1`, ...).
    pub id: NodeId,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its copies (shared with the mirror for `n0`).
    pub table: Arc<ImageTable>,
    _dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// Serves again on the same address, with the same copies (a node
    /// that comes back after [`TestNode::stop`]).
    pub async fn restart(&mut self) {
        self.stop().await;
        let sn = Arc::new(StorageNode::new(
            NodeConfig::new(self.id.clone(), secret()),
            Arc::clone(&self.table),
        ));
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        let (tx, rx) = watch::channel(false);
        self.shutdown = tx;
        self.task = Some(tokio::spawn(node::serve(listener, sn, rx)));
    }
}

impl TestNode {
    /// Stops serving: `node::serve` returns (its connections closed) and
    /// its listener is dropped. The copy files stay readable in-process.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            t.await.expect("node task");
        }
    }
}

/// The cluster.
pub struct Cluster {
    /// The store's server.
    pub redis: RedisServer,
    /// The store.
    pub store: Arc<dyn MetadataStore>,
    /// Nodes; `nodes[0]` is the target (`n0`).
    pub nodes: Vec<TestNode>,
    /// The image (`vm1`).
    pub image: ImageName,
    /// The generation of `n0`'s lease.
    pub generation: Generation,
}

impl Cluster {
    /// `sites.len()` nodes `n0..`, each with its site; the image of `size`
    /// bytes placed on the nodes listed in `locations` (indexes).
    pub async fn start(sites: &[Option<&str>], locations: &[usize], size: u64) -> Cluster {
        let mut c = Self::start_unleased(sites, locations, size).await;
        let lease = c
            .store
            .acquire_lease(&c.image, &id("n0"), 600_000, UnixMillis::now())
            .await
            .expect("lease");
        c.generation = Generation(lease.generation);
        c
    }

    /// As [`Cluster::start`], but nobody holds the lease yet
    /// (`generation` is 0): for tests of `Writer::take`.
    pub async fn start_unleased(sites: &[Option<&str>], locations: &[usize], size: u64) -> Cluster {
        let redis = RedisServer::start();
        let store = blockmap::store::open(&redis.url).await.expect("store");
        let mut nodes = Vec::new();
        for (i, site) in sites.iter().enumerate() {
            let nid = id(&format!("n{i}"));
            let dir = tempfile::tempdir().expect("tempdir");
            let table = Arc::new(ImageTable::new(
                nid.clone(),
                dir.path(),
                EngineChoice::Auto.into(),
                Arc::new(StoreCatalog(Arc::clone(&store))),
            ));
            let sn = Arc::new(StorageNode::new(
                NodeConfig::new(nid.clone(), secret()),
                Arc::clone(&table),
            ));
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(node::serve(listener, sn, rx));
            let entry = NodeEntry::new(
                nid.clone(),
                &addr.to_string(),
                site.map(str::to_string),
                ByteSize(0),
            )
            .expect("node entry");
            blockmap::ops::add_node(store.as_ref(), entry)
                .await
                .expect("register node");
            nodes.push(TestNode {
                id: nid,
                addr,
                table,
                _dir: dir,
                shutdown: tx,
                task: Some(task),
            });
        }
        let image = ImageName::new("vm1").expect("image name");
        let locs = locations.iter().map(|i| nodes[*i].id.clone()).collect();
        let spec = ImageSpec::new(image.clone(), ByteSize(size), locs);
        blockmap::ops::create_image(store.as_ref(), &spec)
            .await
            .expect("create image");
        Cluster {
            redis,
            store,
            nodes,
            image,
            generation: Generation(0),
        }
    }

    /// Node `i`'s handshake.
    pub fn handshake_of(&self, i: usize) -> HandshakeConfig {
        HandshakeConfig {
            node_id: self.nodes[i].id.clone(),
            secret: secret(),
        }
    }

    /// The mirror config of node `i` (short timeouts as in
    /// [`Cluster::config`]); the generation is the writer's to fill in.
    pub fn config_of(&self, i: usize) -> MirrorConfig {
        let mut cfg = self.config();
        cfg.handshake = self.handshake_of(i);
        cfg.generation = Generation(0);
        cfg
    }

    /// The mirror config of `n0` at the lease's generation, with short
    /// timeouts (a dead peer costs at most `copy_timeout` once).
    pub fn config(&self) -> MirrorConfig {
        let mut cfg = MirrorConfig::new(self.image.clone(), self.generation, self.handshake());
        cfg.copy_timeout = Duration::from_secs(2);
        cfg.mark_timeout = Duration::from_secs(3);
        cfg.connect_timeout = Duration::from_secs(1);
        cfg.site = Some("a".into());
        cfg
    }

    /// `n0`'s handshake.
    pub fn handshake(&self) -> HandshakeConfig {
        HandshakeConfig {
            node_id: id("n0"),
            secret: secret(),
        }
    }

    /// Opens `n0`'s mirror with `cfg`.
    pub async fn mirror_with(&self, cfg: MirrorConfig) -> Mirror {
        Mirror::open(
            cfg,
            Arc::clone(&self.store),
            Arc::clone(&self.nodes[0].table),
        )
        .await
        .expect("open mirror")
    }

    /// Opens `n0`'s mirror with [`Cluster::config`].
    pub async fn mirror(&self) -> Mirror {
        self.mirror_with(self.config()).await
    }

    /// A client to node `i` (as `n0`).
    pub async fn client(&self, i: usize) -> PeerClient {
        PeerClient::connect(
            self.nodes[i].addr,
            self.handshake(),
            Some(&self.nodes[i].id),
            Limits::default(),
            Duration::from_secs(5),
        )
        .await
        .expect("connect")
    }

    /// Reads node `i`'s copy file directly (works after it stopped).
    pub async fn read_copy(&self, i: usize, offset: u64, len: usize) -> Bytes {
        let copy = self.nodes[i].table.get(&self.image).await.expect("copy");
        copy.backend().read(offset, len).await.expect("read copy")
    }

    /// The dirty bit ranges of `node` in the store, as `[first, last)` runs.
    pub async fn dirty_runs(&self, node: &NodeId) -> Vec<(u64, u64)> {
        let rec = self.store.load_image(&self.image).await.expect("load");
        let Some(bm) = rec.dirty.get(node) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for i in 0..rec.image.bitmap_bits() {
            if bm.get(i) {
                match out.last_mut() {
                    Some((_, l)) if *l == i => *l = i + 1,
                    _ => out.push((i, i + 1)),
                }
            }
        }
        out
    }
}
