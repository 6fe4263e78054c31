//! Operations on a [`MetadataStore`]: validation against the registry, and
//! read-modify-write with optimistic concurrency (load, apply a pure change
//! from [`crate::record`], commit if the version is unchanged, else retry).
//! The admin CLI and the daemons call these; they never write records directly.

use crate::change::DocKind;
use crate::error::{Error, Result};
use crate::image::{Image, ImageSpec};
use crate::node::{Node, NodeState};
use crate::placement::SyncState;
use crate::record::ImageRecord;
use crate::stats::ImageStats;
use crate::store::MetadataStore;
use crate::target::{Chap, Target};
use crate::types::{BlockRange, ByteSize, ImageName, Iqn, NodeId, UnixTime};
use std::collections::{BTreeMap, BTreeSet};

/// How many times a read-modify-write retries on a version conflict.
pub const MAX_RETRIES: usize = 1000;

/// Loads `name`, applies `f`, commits; retries on conflicts. `f` must be a
/// pure function of the record (it may run several times). Returns the
/// committed record and `f`'s result.
pub async fn update_image<T>(
    store: &dyn MetadataStore,
    name: &ImageName,
    mut f: impl FnMut(&mut ImageRecord) -> Result<T> + Send,
) -> Result<(ImageRecord, T)> {
    for _ in 0..MAX_RETRIES {
        let old = store.load_image(name).await?;
        let mut new = old.clone();
        let out = f(&mut new)?;
        if new == old {
            return Ok((new, out));
        }
        if store.commit_image(&old, &new).await? {
            new.version = old.version + 1;
            return Ok((new, out));
        }
        tokio::task::yield_now().await;
    }
    Err(Error::Contended(format!("image '{name}'")))
}

async fn get_typed<T: serde::de::DeserializeOwned>(
    store: &dyn MetadataStore,
    kind: DocKind,
    key: &str,
) -> Result<Option<(u64, T)>> {
    match store.get_doc(kind, key).await? {
        None => Ok(None),
        Some(v) => {
            let t = serde_json::from_str(&v.value).map_err(|e| Error::CorruptRecord {
                key: format!("{}/{key}", kind.as_str()),
                why: e.to_string(),
            })?;
            Ok(Some((v.version, t)))
        }
    }
}

async fn list_typed<T: serde::de::DeserializeOwned>(
    store: &dyn MetadataStore,
    kind: DocKind,
) -> Result<Vec<T>> {
    store
        .list_docs(kind)
        .await?
        .into_iter()
        .map(|v| {
            serde_json::from_str(&v.value).map_err(|e| Error::CorruptRecord {
                key: format!("{}/{}", kind.as_str(), v.key),
                why: e.to_string(),
            })
        })
        .collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::CorruptRecord {
        key: "(encoding)".into(),
        why: e.to_string(),
    })
}

/// Read-modify-write of a document that must exist (`missing` builds the
/// not-found error).
async fn update_doc<T, R>(
    store: &dyn MetadataStore,
    kind: DocKind,
    key: &str,
    missing: impl Fn() -> Error + Send,
    mut f: impl FnMut(&mut T) -> Result<R> + Send,
) -> Result<(T, R)>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Send,
{
    for _ in 0..MAX_RETRIES {
        let (v, mut doc) = get_typed::<T>(store, kind, key)
            .await?
            .ok_or_else(&missing)?;
        let out = f(&mut doc)?;
        if store
            .put_doc(kind, key, Some(v), Some(to_json(&doc)?))
            .await?
        {
            return Ok((doc, out));
        }
        tokio::task::yield_now().await;
    }
    Err(Error::Contended(format!("{}/{key}", kind.as_str())))
}

// ---- nodes ----

/// Registers a node; [`Error::NodeExists`] if the id is taken.
pub async fn add_node(store: &dyn MetadataStore, node: Node) -> Result<()> {
    if store
        .put_doc(DocKind::Node, node.id.as_str(), None, Some(to_json(&node)?))
        .await?
    {
        Ok(())
    } else {
        Err(Error::NodeExists(node.id))
    }
}

/// One node.
pub async fn get_node(store: &dyn MetadataStore, id: &NodeId) -> Result<Node> {
    get_typed(store, DocKind::Node, id.as_str())
        .await?
        .map(|(_, n)| n)
        .ok_or_else(|| Error::UnknownNode(id.clone()))
}

/// All nodes, sorted by id.
pub async fn list_nodes(store: &dyn MetadataStore) -> Result<Vec<Node>> {
    list_typed(store, DocKind::Node).await
}

/// Records a heartbeat and state for a node.
pub async fn heartbeat(store: &dyn MetadataStore, id: &NodeId, state: NodeState) -> Result<Node> {
    let (n, ()) = update_doc(
        store,
        DocKind::Node,
        id.as_str(),
        || Error::UnknownNode(id.clone()),
        |n: &mut Node| {
            n.set_state(state);
            n.last_heartbeat = Some(UnixTime::now());
            Ok(())
        },
    )
    .await?;
    Ok(n)
}

/// Unregisters a node; refused while it is a location or hypervisor of an image.
pub async fn remove_node(store: &dyn MetadataStore, id: &NodeId) -> Result<()> {
    for _ in 0..MAX_RETRIES {
        let (v, _) = get_typed::<Node>(store, DocKind::Node, id.as_str())
            .await?
            .ok_or_else(|| Error::UnknownNode(id.clone()))?;
        let mut users = Vec::new();
        for img in store.list_images().await? {
            let rec = store.load_image(&img.name).await?;
            if rec.location_nodes().contains(id) || img.hypervisors.contains(id) {
                users.push(img.name.to_string());
            }
        }
        if !users.is_empty() {
            return Err(Error::NodeInUse {
                node: id.clone(),
                images: users.join(", "),
            });
        }
        if store
            .put_doc(DocKind::Node, id.as_str(), Some(v), None)
            .await?
        {
            return Ok(());
        }
    }
    Err(Error::Contended(format!("node '{id}'")))
}

async fn require_nodes(
    store: &dyn MetadataStore,
    ids: impl IntoIterator<Item = &NodeId>,
) -> Result<()> {
    for id in ids {
        get_node(store, id).await?;
    }
    Ok(())
}

// ---- images ----

/// The record `spec` makes, once its nodes are known to be registered.
async fn valid_record(store: &dyn MetadataStore, spec: &ImageSpec) -> Result<ImageRecord> {
    let rec = ImageRecord::create(spec)?;
    require_nodes(store, spec.locations.iter().chain(&spec.hypervisors)).await?;
    Ok(rec)
}

/// Checks that `spec` could be created now, changing nothing: its geometry
/// is valid, every location and hypervisor is a registered node, and the
/// name is free. For a command that has work to do before it creates the
/// image (`locus image import`); [`create_image`] checks again, the name
/// atomically.
pub async fn check_new_image(store: &dyn MetadataStore, spec: &ImageSpec) -> Result<ImageRecord> {
    let rec = valid_record(store, spec).await?;
    match store.load_image(&spec.name).await {
        Ok(_) => Err(Error::ImageExists(spec.name.clone())),
        Err(Error::ImageNotFound(_)) => Ok(rec),
        Err(e) => Err(e),
    }
}

/// Creates an image; every location and hypervisor must be a registered node.
pub async fn create_image(store: &dyn MetadataStore, spec: &ImageSpec) -> Result<ImageRecord> {
    let mut rec = valid_record(store, spec).await?;
    store.create_image(&rec).await?;
    rec.version = 1;
    Ok(rec)
}

/// Destroys an image; refused while a target serves it unless `force`
/// (then its LUNs are removed from those targets first). Its statistics go
/// and its sync job go with it. A LUN added concurrently with the destroy may be left pointing
/// at the missing image; the target daemon reports such a LUN as an error.
pub async fn destroy_image(store: &dyn MetadataStore, name: &ImageName, force: bool) -> Result<()> {
    let rec = store.load_image(name).await?;
    let users: Vec<Target> = list_targets(store)
        .await?
        .into_iter()
        .filter(|t| t.luns.values().any(|i| i == name))
        .collect();
    if !users.is_empty() {
        if !force {
            return Err(Error::ImageInUse {
                image: name.clone(),
                targets: users
                    .iter()
                    .map(|t| t.iqn.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        for t in users {
            update_target(store, &t.iqn, |t| {
                t.luns.retain(|_, i| i != name);
                Ok(())
            })
            .await?;
        }
    }
    let mut version = rec.version;
    for _ in 0..MAX_RETRIES {
        if store.delete_image(name, version).await? {
            for kind in [DocKind::Stats, DocKind::Sync] {
                if let Some(v) = store.get_doc(kind, name.as_str()).await? {
                    store
                        .put_doc(kind, name.as_str(), Some(v.version), None)
                        .await?;
                }
            }
            return Ok(());
        }
        version = store.load_image(name).await?.version;
    }
    Err(Error::Contended(format!("image '{name}'")))
}

/// Adds `node` as a location of `start..end` (default: the whole image); its
/// copies start out of sync.
pub async fn add_location(
    store: &dyn MetadataStore,
    name: &ImageName,
    node: &NodeId,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<(ImageRecord, BlockRange)> {
    require_nodes(store, [node]).await?;
    update_image(store, name, |r| {
        let range = r.image.block_range(start, end)?;
        r.add_location(node, range)?;
        Ok(range)
    })
    .await
}

/// Removes `node` as a location of `start..end`; refused (naming the blocks)
/// when a block would lose its last in-sync copy.
pub async fn remove_location(
    store: &dyn MetadataStore,
    name: &ImageName,
    node: &NodeId,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<(ImageRecord, BlockRange)> {
    update_image(store, name, |r| {
        let range = r.image.block_range(start, end)?;
        r.remove_location(node, range)?;
        Ok(range)
    })
    .await
}

/// Sets the sync state of `node`'s copies of `start..end` (resync reports
/// progress and completion through this).
pub async fn set_sync_state(
    store: &dyn MetadataStore,
    name: &ImageName,
    node: &NodeId,
    start: Option<u64>,
    end: Option<u64>,
    state: SyncState,
) -> Result<ImageRecord> {
    Ok(update_image(store, name, |r| {
        let range = r.image.block_range(start, end)?;
        r.set_sync_state(node, range, state)
    })
    .await?
    .0)
}

/// Marks bytes of `node`'s copy dirty (or clean). Writes O(1) bytes to the store.
pub async fn mark_bytes(
    store: &dyn MetadataStore,
    name: &ImageName,
    node: &NodeId,
    offset: u64,
    len: u64,
    dirty: bool,
) -> Result<ImageRecord> {
    Ok(
        update_image(store, name, |r| r.mark_bytes(node, offset, len, dirty))
            .await?
            .0,
    )
}

/// Starts a resync of `node`'s copies of `range` (see
/// [`ImageRecord::begin_sync`]): whole out-of-sync blocks get their dirty
/// bits set and go to syncing, in one commit. Returns the committed record.
pub async fn begin_sync(
    store: &dyn MetadataStore,
    name: &ImageName,
    node: &NodeId,
    range: BlockRange,
) -> Result<ImageRecord> {
    Ok(update_image(store, name, |r| r.begin_sync(node, range))
        .await?
        .0)
}

/// Ends a resync of `node`'s copies of `range` (see
/// [`ImageRecord::finish_sync`]); returns the record and the blocks that
/// went to in-sync.
pub async fn finish_sync(
    store: &dyn MetadataStore,
    name: &ImageName,
    node: &NodeId,
    range: BlockRange,
) -> Result<(ImageRecord, Vec<BlockRange>)> {
    update_image(store, name, |r| r.finish_sync(node, range)).await
}

/// Turns the background resync of an image on or off.
pub async fn set_auto_sync(
    store: &dyn MetadataStore,
    name: &ImageName,
    on: bool,
) -> Result<ImageRecord> {
    Ok(update_image(store, name, |r| {
        r.image.auto_sync = on;
        Ok(())
    })
    .await?
    .0)
}

/// The sync or verify job of an image and its document version, if any.
pub async fn sync_job(
    store: &dyn MetadataStore,
    name: &ImageName,
) -> Result<Option<(u64, crate::sync::SyncJob)>> {
    get_typed(store, DocKind::Sync, name.as_str()).await
}

/// Writes the job of an image iff its document is still at `expected`
/// (`None`: absent). `Ok(false)` when someone changed it meanwhile.
pub async fn put_sync_job(
    store: &dyn MetadataStore,
    name: &ImageName,
    expected: Option<u64>,
    job: &crate::sync::SyncJob,
) -> Result<bool> {
    store
        .put_doc(DocKind::Sync, name.as_str(), expected, Some(to_json(job)?))
        .await
}

/// Bumps and returns the fencing generation through a record commit (an
/// administrative fence: every current writer is refused afterwards). A
/// writer takes the lease with [`MetadataStore::acquire_lease`] instead,
/// which also bumps the generation.
pub async fn bump_generation(store: &dyn MetadataStore, name: &ImageName) -> Result<u64> {
    Ok(update_image(store, name, |r| Ok(r.bump_generation()))
        .await?
        .1)
}

/// Records that `node` should serve `name` from now on (`locus image
/// move`): only it takes the write lease, and the current holder drains,
/// flushes and releases it when it sees the change. `None` goes back to the
/// hypervisor list. The node must be registered.
pub async fn set_writer(
    store: &dyn MetadataStore,
    name: &ImageName,
    node: Option<&NodeId>,
) -> Result<ImageRecord> {
    if let Some(n) = node {
        get_node(store, n).await?;
    }
    Ok(update_image(store, name, |r| {
        r.image.writer = node.cloned();
        Ok(())
    })
    .await?
    .0)
}

/// Replaces an image's statistics (the serving target, every few seconds).
/// Last writer wins: only the lease holder reports.
pub async fn put_stats(store: &dyn MetadataStore, name: &ImageName, st: &ImageStats) -> Result<()> {
    let json = to_json(st)?;
    for _ in 0..MAX_RETRIES {
        let expected = store
            .get_doc(DocKind::Stats, name.as_str())
            .await?
            .map(|v| v.version);
        if store
            .put_doc(DocKind::Stats, name.as_str(), expected, Some(json.clone()))
            .await?
        {
            return Ok(());
        }
    }
    Err(Error::Contended(format!("statistics of image '{name}'")))
}

/// I/O statistics of an image (zeros until a target reports some).
pub async fn image_stats(store: &dyn MetadataStore, name: &ImageName) -> Result<ImageStats> {
    store.load_image(name).await?;
    Ok(get_typed(store, DocKind::Stats, name.as_str())
        .await?
        .map(|(_, s)| s)
        .unwrap_or_default())
}

// ---- targets ----

/// Creates a target with no LUNs.
pub async fn create_target(store: &dyn MetadataStore, iqn: &Iqn) -> Result<Target> {
    let t = Target::new(iqn.clone());
    if store
        .put_doc(DocKind::Target, iqn.as_str(), None, Some(to_json(&t)?))
        .await?
    {
        Ok(t)
    } else {
        Err(Error::TargetExists(iqn.to_string()))
    }
}

/// One target.
pub async fn get_target(store: &dyn MetadataStore, iqn: &Iqn) -> Result<Target> {
    get_typed(store, DocKind::Target, iqn.as_str())
        .await?
        .map(|(_, t)| t)
        .ok_or_else(|| Error::TargetNotFound(iqn.to_string()))
}

/// All targets, sorted by IQN.
pub async fn list_targets(store: &dyn MetadataStore) -> Result<Vec<Target>> {
    list_typed(store, DocKind::Target).await
}

/// Read-modify-write of a target.
pub async fn update_target<R>(
    store: &dyn MetadataStore,
    iqn: &Iqn,
    f: impl FnMut(&mut Target) -> Result<R> + Send,
) -> Result<(Target, R)> {
    update_doc(
        store,
        DocKind::Target,
        iqn.as_str(),
        || Error::TargetNotFound(iqn.to_string()),
        f,
    )
    .await
}

/// Maps an existing image at a LUN (default: lowest free); returns the LUN.
pub async fn add_lun(
    store: &dyn MetadataStore,
    iqn: &Iqn,
    image: &ImageName,
    lun: Option<u64>,
) -> Result<u64> {
    store.load_image(image).await?;
    Ok(update_target(store, iqn, |t| t.add_lun(image.clone(), lun))
        .await?
        .1)
}

/// Unmaps a LUN; returns the image it served.
pub async fn remove_lun(store: &dyn MetadataStore, iqn: &Iqn, lun: u64) -> Result<ImageName> {
    Ok(update_target(store, iqn, |t| {
        t.luns.remove(&lun).ok_or_else(|| Error::LunNotFound {
            target: t.iqn.to_string(),
            lun,
        })
    })
    .await?
    .1)
}

/// Allows an initiator to log in.
pub async fn add_acl(store: &dyn MetadataStore, iqn: &Iqn, initiator: &Iqn) -> Result<Target> {
    Ok(update_target(store, iqn, |t| {
        t.acl.insert(initiator.clone());
        Ok(())
    })
    .await?
    .0)
}

/// Sets (or clears, with `None`) CHAP.
pub async fn set_chap(store: &dyn MetadataStore, iqn: &Iqn, chap: Option<Chap>) -> Result<Target> {
    Ok(update_target(store, iqn, |t| {
        t.chap = chap.clone();
        Ok(())
    })
    .await?
    .0)
}

// ---- cluster views ----

/// One row of `locus cluster status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    /// The node.
    pub node: Node,
    /// Its state by liveness ([`Node::live_state`]): up only while its
    /// heartbeats are fresh.
    pub state: NodeState,
    /// Seconds since its last heartbeat, if it ever sent one.
    pub heartbeat_age_secs: Option<u64>,
    /// Bytes of image blocks stored on it.
    pub used: ByteSize,
    /// Capacity minus used (0 when capacity is unknown).
    pub free: ByteSize,
    /// Images with at least one block on it.
    pub stores: BTreeSet<ImageName>,
    /// Images it may serve as target (it is one of their hypervisors).
    pub serves: BTreeSet<ImageName>,
}

/// Every node with its usage and the images it stores and serves.
pub async fn cluster_status(store: &dyn MetadataStore) -> Result<Vec<NodeStatus>> {
    let nodes = list_nodes(store).await?;
    let now = UnixTime::now();
    let mut rows: BTreeMap<NodeId, NodeStatus> = nodes
        .into_iter()
        .map(|n| {
            (
                n.id.clone(),
                NodeStatus {
                    state: n.live_state(now),
                    heartbeat_age_secs: n.last_heartbeat.map(|t| now.0.saturating_sub(t.0)),
                    node: n,
                    used: ByteSize(0),
                    free: ByteSize(0),
                    stores: BTreeSet::new(),
                    serves: BTreeSet::new(),
                },
            )
        })
        .collect();
    for img in store.list_images().await? {
        let rec = store.load_image(&img.name).await?;
        for run in rec.placement.runs() {
            let bytes = run_bytes(&img, run.range);
            for n in run.locations.keys() {
                if let Some(row) = rows.get_mut(n) {
                    row.used.0 += bytes;
                    row.stores.insert(img.name.clone());
                }
            }
        }
        for h in &img.hypervisors {
            if let Some(row) = rows.get_mut(h) {
                row.serves.insert(img.name.clone());
            }
        }
    }
    Ok(rows
        .into_values()
        .map(|mut r| {
            r.free = ByteSize(r.node.capacity.0.saturating_sub(r.used.0));
            r
        })
        .collect())
}

fn run_bytes(img: &Image, r: BlockRange) -> u64 {
    let bs = img.block_size.bytes();
    (r.end.0 * bs).min(img.size.bytes()) - r.start.0 * bs
}

/// One row of `locus errors`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorReport {
    /// `node`, `copy` (failed under its serving target) or `location`.
    pub what: String,
    /// The node.
    pub node: NodeId,
    /// The image, for a location.
    pub image: Option<ImageName>,
    /// Why it is in error.
    pub reason: String,
    /// Since when, if known.
    pub since: Option<UnixTime>,
}

/// Nodes not up, copies that failed under their serving target (while
/// they stay out of sync), and locations with blocks not in sync.
pub async fn errors(store: &dyn MetadataStore) -> Result<Vec<ErrorReport>> {
    let mut out = Vec::new();
    for n in list_nodes(store).await? {
        if n.state != NodeState::Up {
            out.push(ErrorReport {
                what: "node".into(),
                reason: format!("node is {}", n.state),
                node: n.id,
                image: None,
                since: Some(n.state_since),
            });
        }
    }
    for img in store.list_images().await? {
        let rec = store.load_image(&img.name).await?;
        let mut per_node: BTreeMap<NodeId, (u64, u64)> = BTreeMap::new();
        for run in rec.summary() {
            for l in run.locations {
                let e = per_node.entry(l.node).or_default();
                if l.state != SyncState::InSync && l.dirty_bits == 0 {
                    e.0 += run.blocks.len();
                }
                e.1 += l.dirty_bits;
            }
        }
        let problems =
            match get_typed::<ImageStats>(store, DocKind::Stats, img.name.as_str()).await? {
                Some((_, st)) => st.problems,
                None => Vec::new(),
            };
        for p in problems {
            // A copy that failed and is still out of sync somewhere; once
            // resync clears it, the row goes.
            if per_node.get(&p.node).is_some_and(|(b, d)| *b > 0 || *d > 0) {
                out.push(ErrorReport {
                    what: "copy".into(),
                    node: p.node,
                    image: Some(img.name.clone()),
                    reason: p.reason,
                    since: Some(p.since),
                });
            }
        }
        for (node, (blocks, bits)) in per_node {
            if blocks > 0 || bits > 0 {
                out.push(ErrorReport {
                    what: "location".into(),
                    node,
                    image: Some(img.name.clone()),
                    reason: format!(
                        "{blocks} block(s) out of sync or syncing, {bits} dirty region(s) of {}",
                        img.granularity
                    ),
                    since: None,
                });
            }
        }
    }
    Ok(out)
}
