//! The storage conformance suite against the mirrored backend: 2-way
//! (local + one peer) and 3-way (local + two peers), over real node
//! servers and a real redis-server, bare and behind a `Writer` (lease
//! gate and activity log). After the suite, every copy holds the same
//! bytes, and no copy was marked dirty.

mod common;

use std::sync::Arc;

use common::cluster::Cluster;
use common::storage_suite::{conformance, SIZE};
use drbd_like_sync::mirror::{Writer, WriterConfig};
use drbd_like_sync::storage::BlockBackend;

async fn run(copies: usize) {
    let sites: Vec<Option<&str>> = (0..copies).map(|_| Some("a")).collect();
    let locs: Vec<usize> = (0..copies).collect();
    let c = Cluster::start(&sites, &locs, SIZE).await;
    let m = Arc::new(c.mirror().await);
    conformance(Arc::clone(&m) as Arc<dyn BlockBackend>).await;
    assert!(m.problems().is_empty(), "{:?}", m.problems());
    let local = c.read_copy(0, 0, SIZE as usize).await;
    for i in 1..copies {
        let other = c.read_copy(i, 0, SIZE as usize).await;
        assert!(local == other, "copy n{i} differs from the local copy");
        assert!(c.dirty_runs(&c.nodes[i].id).await.is_empty());
    }
    let stats = m.stats();
    for n in &c.nodes {
        assert!(
            stats.get(&n.id).is_some_and(|s| s.writes > 0),
            "{}: {stats:?}",
            n.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_mirror_conforms() {
    run(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_way_mirror_conforms() {
    run(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_conforms() {
    let c = Cluster::start_unleased(&[Some("a"), Some("a")], &[0, 1], SIZE).await;
    let w = Writer::take(
        WriterConfig::new(c.config_of(0)),
        Arc::clone(&c.store),
        Arc::clone(&c.nodes[0].table),
    )
    .await
    .expect("take");
    let w = Arc::new(w);
    conformance(Arc::clone(&w) as Arc<dyn BlockBackend>).await;
    assert!(
        w.mirror().problems().is_empty(),
        "{:?}",
        w.mirror().problems()
    );
    assert!(w.al_round_trips() > 0);
    let local = c.read_copy(0, 0, SIZE as usize).await;
    assert!(local == c.read_copy(1, 0, SIZE as usize).await);
}
