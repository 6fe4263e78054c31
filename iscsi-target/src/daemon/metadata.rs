//! Serving the targets and LUNs defined in the metadata store, and keeping
//! them current while `locusd` runs.
//!
//! This module owns the link between the store ([`blockmap`]) and the running
//! [`TargetSet`]: opening the store named by `--metadata`, a full reload of
//! every store target, and the change-feed loop that applies target, LUN,
//! ACL, CHAP and image changes without a restart. It knows nothing of the
//! wire: logins read the [`TargetSet`], which this module updates, and the
//! I/O path never waits on the store (it only sees LUNs added or removed).
//!
//! ```text
//!          +-------------+  ok   +-----------+  change  +-------------+
//!   start->| subscribe   |------>| reload all|--------->| apply change|--+
//!          +-------------+       +-----------+          +-------------+  |
//!             ^     | err            | err                 ^   | ok      |
//!             |     v                v                     +---+         |
//!             +--- backoff (100 ms doubling to 5 s) <--- feed ended/err --+
//! ```
//!
//! A store error (Redis down) never tears anything down: what is served keeps
//! being served, and the loop re-subscribes and reloads. Only a definite
//! answer from the store (target deleted, image missing, placement without
//! this node) removes a LUN.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockmap::change::{Change, DocKind};
use blockmap::ops;
use blockmap::store::embedded::EmbeddedStore;
use blockmap::store::MetadataStore;
use blockmap::target::Target;
use blockmap::types::{ImageName, Iqn, NodeId};
use blockmap::{Error as StoreError, ErrorKind};
use tokio::sync::{mpsc, watch};

use crate::daemon::imagelun::{
    build_unit, check_placement, check_serving, ImageBackend, ImageGeometry, PlacementError,
};
use crate::daemon::mirrored::{MirrorContext, MirroredUnit, StoreHandle};
use crate::daemon::targets::{TargetSet, PORTAL_GROUP_TAG};
use crate::login::{ChapCredentials, TargetAuthInfo};
use crate::scsi::LogicalUnit;
use drbd_like_sync::storage::{BlockBackend, EngineConfig};

/// First delay before re-subscribing after the feed ended.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between re-subscription attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a daemon polls the embedded store's change log. Each poll opens
/// and closes the file (so the `locus` CLI can get in), which costs fsyncs.
const EMBEDDED_POLL: Duration = Duration::from_millis(500);

/// Logs a warning when the store does not persist every change before it
/// answers (Redis without `appendonly yes` and `appendfsync always`): an
/// out-of-sync mark acknowledged by such a store can be lost in a crash.
pub async fn warn_if_not_durable(store: &dyn MetadataStore) {
    match store.durability().await {
        Ok(d) if d.durable => {}
        Ok(d) => tracing::warn!(store = %store.describe(), settings = %d.detail,
            "the metadata store does not persist every change before answering: out-of-sync \
             marks can be lost in a crash; run redis-server with --appendonly yes --appendfsync always"),
        Err(e) => tracing::warn!(store = %store.describe(), error = %e,
            "cannot tell whether the metadata store is durable"),
    }
}

/// Opens the store for a daemon: `redis://...`, or a directory (optionally
/// `embedded://DIR`) for the embedded store. The embedded store is opened in
/// "release between operations" mode so that `locus` can use it while
/// `locusd` runs.
pub async fn open_store(url: &str) -> Result<Arc<dyn MetadataStore>, StoreError> {
    match url.strip_prefix("embedded://") {
        Some(dir) => open_embedded(dir),
        None if url.contains("://") => blockmap::store::open(url).await,
        None => open_embedded(url),
    }
}

fn open_embedded(dir: &str) -> Result<Arc<dyn MetadataStore>, StoreError> {
    Ok(Arc::new(
        EmbeddedStore::open(PathBuf::from(dir))?
            .release_between_operations()
            .with_poll_interval(EMBEDDED_POLL),
    ))
}

/// Checks that `node` is in the node registry; logs a warning when it is not
/// (the daemon still starts: an operator may register it later).
pub async fn check_node(store: &dyn MetadataStore, node: &NodeId) {
    match ops::get_node(store, node).await {
        Ok(n) => tracing::info!(node = %node, state = %n.state, "node found in the registry"),
        Err(e) if e.kind() == ErrorKind::NotFound => tracing::warn!(
            node = %node,
            "node '{node}' is not in the node registry of {}: no image can be placed on it \
             until it is registered (`locus node add {node} --address HOST:PORT`); or pass \
             --node with this node's registered id",
            store.describe()
        ),
        Err(e) => tracing::warn!(node = %node, error = %e, "cannot check the node registry"),
    }
}

/// This host's name, the default node id (`/proc/sys/kernel/hostname`).
pub fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| NodeId::new(s.as_str()).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A store LUN that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunProblem {
    /// The target.
    pub target: String,
    /// The LUN number.
    pub lun: u64,
    /// The image it maps.
    pub image: ImageName,
    /// Why it is not served, for operators.
    pub reason: String,
}

/// A logical unit over one image, shared by every LUN that maps the image.
enum Unit {
    /// This node's own copy (the embedded store's single-node rule).
    Local {
        geometry: ImageGeometry,
        lu: Arc<LogicalUnit>,
        backend: Arc<ImageBackend>,
    },
    /// The image's writer over every copy (a shared store).
    Mirrored(MirroredUnit),
}

impl Unit {
    /// Stops serving: in-flight commands on a local copy fail, and what was
    /// written reaches stable storage; a writer flushes every copy and
    /// releases its lease. The handle ends when that is done.
    fn retire(self, img: ImageName) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Unit::Local { backend, .. } => {
                backend.revoke();
                Some(tokio::spawn(async move {
                    if let Err(e) = backend.flush().await {
                        tracing::error!(image = %img, error = %e, "flush of a removed LUN failed");
                    }
                }))
            }
            Unit::Mirrored(m) => m.retire(),
        }
    }
}

/// What this module installed in the [`TargetSet`].
#[derive(Default)]
struct Installed {
    /// Store targets (lower-case IQN) with their last known definition.
    targets: BTreeMap<String, Target>,
    /// LUN number to image, per target, of LUNs actually served.
    served: BTreeMap<String, BTreeMap<u64, ImageName>>,
    /// Images that should be served (the serving rule allows it), per
    /// target and LUN: a writer may still be taking the lease for them.
    wanted: BTreeMap<String, BTreeMap<u64, ImageName>>,
    /// Open image units.
    units: BTreeMap<ImageName, Unit>,
}

/// Keeps the [`TargetSet`] in step with the targets of a metadata store.
/// Config-file targets are never touched: a store target with the same name
/// is refused with an error in the log.
pub struct StoreSync {
    targets: Arc<TargetSet>,
    /// The current handle; replaced after a failure when `reopen` is set.
    store: Arc<std::sync::RwLock<Arc<dyn MetadataStore>>>,
    /// The URL to open a fresh handle from after the store failed (a Redis
    /// connection does not come back by itself after a server restart).
    reopen: Option<String>,
    node: NodeId,
    data_dir: PathBuf,
    engine: EngineConfig,
    /// Lower-case names of the config-file targets.
    reserved: BTreeSet<String>,
    state: tokio::sync::Mutex<Installed>,
    problems: Mutex<BTreeMap<(String, u64), LunProblem>>,
    /// Set for a shared store: image LUNs are served through their writer.
    mirroring: Option<Arc<MirrorContext>>,
    /// Writers report here when their LUN appears or goes.
    wake_tx: mpsc::UnboundedSender<ImageName>,
    wake_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<ImageName>>,
    /// Units being retired (flushing, releasing their lease).
    retiring: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl StoreSync {
    /// A sync for `targets` (which already holds the config-file targets,
    /// named in `config_targets`) from `store`, as node `node`, with image
    /// copies under `data_dir/images`.
    pub fn new(
        targets: Arc<TargetSet>,
        store: Arc<dyn MetadataStore>,
        node: NodeId,
        data_dir: PathBuf,
        engine: EngineConfig,
        config_targets: impl IntoIterator<Item = String>,
    ) -> Self {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        StoreSync {
            targets,
            store: Arc::new(std::sync::RwLock::new(store)),
            reopen: None,
            node,
            data_dir,
            engine,
            reserved: config_targets
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            state: tokio::sync::Mutex::new(Installed::default()),
            problems: Mutex::new(BTreeMap::new()),
            mirroring: None,
            wake_tx,
            wake_rx: tokio::sync::Mutex::new(wake_rx),
            retiring: Mutex::new(Vec::new()),
        }
    }

    /// Serves image LUNs through their mirrored writer (a shared store
    /// with storage nodes): the serving rule becomes
    /// [`check_serving`], and a LUN appears once its writer holds the
    /// lease and has reconciled. Without this, an image is served from
    /// this node's own copy ([`check_placement`]).
    pub fn with_mirroring(mut self, ctx: MirrorContext) -> Self {
        self.mirroring = Some(Arc::new(ctx));
        self
    }

    /// Stops every writer: each flushes its copies and releases its lease
    /// (at shutdown, after the initiators logged out).
    pub async fn close_all(&self) {
        let mut st = self.state.lock().await;
        let units = std::mem::take(&mut st.units);
        drop(st);
        let mut handles: Vec<_> = units
            .into_iter()
            .filter_map(|(img, u)| u.retire(img))
            .collect();
        handles.extend(
            self.retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );
        for h in handles {
            let _ = h.await;
        }
    }

    fn store_handle(&self) -> StoreHandle {
        let cell = Arc::clone(&self.store);
        Arc::new(move || cell.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// After a store failure, open a fresh handle from `url` before
    /// re-subscribing (what [`start`] does).
    pub fn with_reopen(mut self, url: &str) -> Self {
        self.reopen = Some(url.to_string());
        self
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The current store handle (replaced after a failure when the sync
    /// reopens the store).
    pub fn store(&self) -> Arc<dyn MetadataStore> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The store LUNs that are not served, and why (also logged at error
    /// level when they appear).
    pub fn problems(&self) -> Vec<LunProblem> {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Loads every store target; on a store error nothing changes.
    pub async fn reload_all(&self) -> Result<(), StoreError> {
        let list = ops::list_targets(&*self.store()).await?;
        let mut st = self.state.lock().await;
        let images = self.evaluate_images(list.iter()).await?;
        let keep: BTreeSet<String> = list
            .iter()
            .map(|t| t.iqn.as_str().to_ascii_lowercase())
            .collect();
        let gone: Vec<String> = st
            .targets
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.drop_target(&mut st, &k);
        }
        for t in list {
            self.apply_target(&mut st, t, &images);
        }
        self.collect_units(&mut st);
        Ok(())
    }

    /// Applies one change from the feed. A store error leaves everything as
    /// it was (the caller re-subscribes and reloads).
    pub async fn apply_change(&self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::Doc {
                kind: DocKind::Target,
                key,
            } => {
                let Ok(iqn) = Iqn::new(key.as_str()) else {
                    tracing::warn!(key, "change feed: ignoring a target with an invalid name");
                    return Ok(());
                };
                let t = match ops::get_target(&*self.store(), &iqn).await {
                    Ok(t) => Some(t),
                    Err(e) if e.kind() == ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                let mut st = self.state.lock().await;
                match t {
                    Some(t) => {
                        let images = self.evaluate_images(std::iter::once(&t)).await?;
                        self.apply_target(&mut st, t, &images);
                    }
                    None => self.drop_target(&mut st, &key.to_ascii_lowercase()),
                }
                self.collect_units(&mut st);
            }
            Change::Image { name, .. } | Change::ImageDeleted { name } => {
                self.reapply(&name).await?;
            }
            Change::Doc { .. } | Change::Dirty { .. } | Change::Lease { .. } => {}
        }
        Ok(())
    }

    /// Evaluates again every target that maps image `name`.
    async fn reapply(&self, name: &str) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        let users: Vec<Target> = st
            .targets
            .values()
            .filter(|t| t.luns.values().any(|i| i.as_str() == name))
            .cloned()
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        let images = self.evaluate_images(users.iter()).await?;
        for t in users {
            self.apply_target(&mut st, t, &images);
        }
        self.collect_units(&mut st);
        Ok(())
    }

    /// For every image the targets map: its geometry if this node may serve
    /// it, or why not. A store error (not a definite answer) aborts.
    async fn evaluate_images<'a>(
        &self,
        targets: impl Iterator<Item = &'a Target>,
    ) -> Result<BTreeMap<ImageName, Result<ImageGeometry, String>>, StoreError> {
        let mut out = BTreeMap::new();
        let store = self.store();
        for t in targets {
            for img in t.luns.values() {
                if out.contains_key(img) {
                    continue;
                }
                let verdict = match store.load_image(img).await {
                    Ok(rec) => match &self.mirroring {
                        None => check_placement(&rec, &self.node).map_err(|e| e.to_string()),
                        Some(m) => check_serving(&rec, &self.node, m.handshake.is_some())
                            .map_err(|e| e.to_string()),
                    }
                    .map(|()| ImageGeometry::of(&rec)),
                    Err(StoreError::ImageNotFound(_)) => {
                        Err(PlacementError::ImageMissing { image: img.clone() }.to_string())
                    }
                    Err(e) => return Err(e),
                };
                out.insert(img.clone(), verdict);
            }
        }
        Ok(out)
    }

    /// Installs or updates one store target and its LUNs.
    fn apply_target(
        &self,
        st: &mut Installed,
        t: Target,
        images: &BTreeMap<ImageName, Result<ImageGeometry, String>>,
    ) {
        let key = t.iqn.as_str().to_ascii_lowercase();
        if self.reserved.contains(&key) {
            tracing::error!(target = %t.iqn, "store target ignored: the config file defines a \
                target of the same name");
            return;
        }
        let scsi = self.targets.upsert_target(auth_of(&t));
        let served = st.served.entry(key.clone()).or_default();
        // LUNs no longer mapped.
        let unmapped: Vec<u64> = served
            .keys()
            .filter(|l| !t.luns.contains_key(l))
            .copied()
            .collect();
        for l in unmapped {
            scsi.remove_lun(l);
            served.remove(&l);
            tracing::info!(target = %t.iqn, lun = l, "LUN removed");
        }
        if let Some(w) = st.wanted.get_mut(&key) {
            w.retain(|l, _| t.luns.contains_key(l));
        }
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(tk, l), _| tk != &key || t.luns.contains_key(l));
        for (&l, img) in &t.luns {
            let verdict = images
                .get(img)
                .cloned()
                .unwrap_or_else(|| Err(format!("image '{img}' was not evaluated")));
            let wanted = st.wanted.entry(key.clone()).or_default();
            if verdict.is_ok() {
                wanted.insert(l, img.clone());
            } else {
                wanted.remove(&l);
            }
            let verdict = verdict.and_then(|g| self.unit(&mut st.units, img, g));
            match verdict {
                Ok(lu) => {
                    if !scsi.lun(l).is_some_and(|cur| Arc::ptr_eq(&cur, &lu)) {
                        scsi.add_lun(l, lu);
                        let from = if self.mirroring.is_some() {
                            "the image's writer (every in-sync copy)"
                        } else {
                            "this node's copy of the image"
                        };
                        tracing::info!(target = %t.iqn, lun = l, image = %img, node = %self.node,
                            from, "LUN served");
                    }
                    st.served
                        .entry(key.clone())
                        .or_default()
                        .insert(l, img.clone());
                    self.set_problem(&key, l, None);
                }
                Err(reason) => {
                    if st.served.get_mut(&key).and_then(|s| s.remove(&l)).is_some() {
                        scsi.remove_lun(l);
                    }
                    self.set_problem(
                        &key,
                        l,
                        Some(LunProblem {
                            target: t.iqn.to_string(),
                            lun: l,
                            image: img.clone(),
                            reason,
                        }),
                    );
                }
            }
        }
        st.targets.insert(key, t);
    }

    /// Records (or clears) a LUN's problem, logging it when it is new.
    fn set_problem(&self, key: &str, lun: u64, p: Option<LunProblem>) {
        let mut map = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        let k = (key.to_string(), lun);
        match p {
            Some(p) => {
                if map.get(&k).is_none_or(|old| old.reason != p.reason) {
                    if self.mirroring.is_some() {
                        // In a cluster most nodes do not serve most images
                        // (not the holder, still taking the lease): normal.
                        tracing::info!(target = %p.target, lun, image = %p.image,
                            node = %self.node, "LUN not served here: {}", p.reason);
                    } else {
                        tracing::error!(target = %p.target, lun, image = %p.image,
                            node = %self.node, "LUN not served: {}", p.reason);
                    }
                }
                map.insert(k, p);
            }
            None => {
                map.remove(&k);
            }
        }
    }

    /// The unit of `img` with geometry `g`: its local copy, opened if
    /// needed, or its writer, started if needed (its LUN is an error until
    /// the writer serves).
    fn unit(
        &self,
        units: &mut BTreeMap<ImageName, Unit>,
        img: &ImageName,
        g: ImageGeometry,
    ) -> Result<Arc<LogicalUnit>, String> {
        match units.get(img) {
            Some(Unit::Local {
                geometry,
                lu,
                backend,
            }) if *geometry == g && !backend.is_revoked() && self.mirroring.is_none() => {
                return Ok(lu.clone())
            }
            Some(Unit::Mirrored(m)) if m.geometry == g && self.mirroring.is_some() => {
                return m.lu()
            }
            _ => {}
        }
        if let Some(old) = units.remove(img) {
            self.retire(old, img);
        }
        if let Some(ctx) = &self.mirroring {
            let m = MirroredUnit::start(
                Arc::clone(ctx),
                self.store_handle(),
                img.clone(),
                g,
                self.wake_tx.clone(),
            );
            let lu = m.lu();
            units.insert(img.clone(), Unit::Mirrored(m));
            return lu;
        }
        let (lu, backend) = build_unit(&self.data_dir, img, g, self.engine)?;
        units.insert(
            img.clone(),
            Unit::Local {
                geometry: g,
                lu: lu.clone(),
                backend,
            },
        );
        Ok(lu)
    }

    fn retire(&self, u: Unit, img: &ImageName) {
        if let Some(h) = u.retire(img.clone()) {
            let mut r = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
            r.retain(|h| !h.is_finished());
            r.push(h);
        }
    }

    /// Removes a store target and all its LUNs.
    fn drop_target(&self, st: &mut Installed, key: &str) {
        if st.targets.remove(key).is_none() {
            return;
        }
        if let Some(scsi) = self.targets.remove_target(key) {
            for l in scsi.lun_ids() {
                scsi.remove_lun(l);
            }
        }
        st.served.remove(key);
        st.wanted.remove(key);
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(tk, _), _| tk != key);
        tracing::info!(target = key, "target removed");
    }

    /// Closes units no served LUN uses any more; in-flight commands on them
    /// fail instead of writing to a copy that is no longer served.
    fn collect_units(&self, st: &mut Installed) {
        let used: BTreeSet<&ImageName> = st
            .served
            .values()
            .chain(st.wanted.values())
            .flat_map(|m| m.values())
            .collect();
        let unused: Vec<ImageName> = st
            .units
            .keys()
            .filter(|i| !used.contains(i))
            .cloned()
            .collect();
        for img in unused {
            if let Some(u) = st.units.remove(&img) {
                // What was written before the LUN went away reaches stable
                // storage, as at shutdown; a writer also gives its lease back.
                self.retire(u, &img);
            }
        }
    }

    /// Runs the change-feed loop until `shutdown` becomes true: subscribe,
    /// reload everything, apply changes; when the feed ends or the store
    /// fails, back off (100 ms doubling to 5 s) and start again. Never panics.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let store = self.store();
            let feed = tokio::select! {
                _ = shutdown.changed() => return,
                f = store.subscribe() => f,
            };
            let failure = match feed {
                Err(e) => e,
                Ok(mut feed) => match self.reload_all().await {
                    Err(e) => e,
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        let mut wake = self.wake_rx.lock().await;
                        loop {
                            let item = tokio::select! {
                                _ = shutdown.changed() => return,
                                i = feed.next() => i,
                                Some(img) = wake.recv() => {
                                    // A writer's LUN appeared or went.
                                    if let Err(e) = self.reapply(img.as_str()).await {
                                        break e;
                                    }
                                    continue;
                                }
                            };
                            match item {
                                Some(Ok(change)) => {
                                    if let Err(e) = self.apply_change(change).await {
                                        break e;
                                    }
                                }
                                Some(Err(e)) => break e,
                                None => {
                                    break StoreError::Unavailable {
                                        store: store.describe(),
                                        why: "the change feed ended".into(),
                                    }
                                }
                            }
                        }
                    }
                },
            };
            tracing::warn!(error = %failure, retry_in_ms = backoff.as_millis() as u64,
                "metadata change feed interrupted; re-subscribing and reloading");
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if let Some(url) = &self.reopen {
                match open_store(url).await {
                    Ok(fresh) => {
                        *self.store.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reopen the metadata store"),
                }
            }
        }
    }
}

/// The login view of a store target. An empty ACL allows every initiator,
/// as an absent `acl` does in the config file (`blockmap::target::Target::acl`
/// documents the same; `locus target --help` says it).
fn auth_of(t: &Target) -> TargetAuthInfo {
    TargetAuthInfo {
        name: t.iqn.to_string(),
        alias: None,
        acl: (!t.acl.is_empty()).then(|| t.acl.iter().map(|i| i.to_string()).collect()),
        chap: t.chap.as_ref().map(|c| ChapCredentials {
            user: c.initiator.user.clone(),
            secret: c.initiator.secret.as_bytes().to_vec(),
            mutual: c
                .mutual
                .as_ref()
                .map(|m| (m.user.clone(), m.secret.as_bytes().to_vec())),
        }),
        portal_group_tag: PORTAL_GROUP_TAG,
    }
}

/// Whether `url` names a store shared between nodes (Redis), where image
/// LUNs are mirrored; the embedded store is a single node's.
pub fn is_shared_store(url: &str) -> bool {
    url.contains("://") && !url.starts_with("embedded://")
}

/// Opens the store named in the config, checks the node, loads every store
/// target into `targets` and starts the change-feed loop. With `mirroring`
/// (a shared store), image LUNs are served through their writers. Fails (with the
/// store's own message: unreachable, wrong password, corrupt file) when the
/// store cannot be opened or read at start.
pub async fn start(
    url: &str,
    node: &str,
    targets: Arc<TargetSet>,
    cfg: &crate::daemon::config::Config,
    mirroring: Option<MirrorContext>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<StoreSync>, tokio::task::JoinHandle<()>), StoreError> {
    let node = NodeId::new(node)?;
    let store = open_store(url).await?;
    warn_if_not_durable(&*store).await;
    check_node(&*store, &node).await;
    let engine = cfg.engine_config();
    let mut sync = StoreSync::new(
        targets,
        store,
        node,
        cfg.data_dir.clone(),
        engine,
        cfg.targets.iter().map(|t| t.name.clone()),
    )
    .with_reopen(url);
    if let Some(m) = mirroring {
        sync = sync.with_mirroring(m);
    }
    let sync = Arc::new(sync);
    sync.reload_all().await?;
    let task = tokio::spawn(sync.clone().run(shutdown));
    Ok((sync, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iqn(s: &str) -> Iqn {
        Iqn::new(s).expect("iqn")
    }

    #[test]
    fn an_empty_acl_allows_every_initiator_a_listed_one_only_those() {
        let mut t = Target::new(iqn("iqn.2026-11.io.locus:t"));
        assert_eq!(auth_of(&t).acl, None, "no ACL: everyone may log in");
        t.acl.insert(iqn("iqn.2026-11.io.locus.test:a"));
        assert_eq!(
            auth_of(&t).acl,
            Some(vec!["iqn.2026-11.io.locus.test:a".to_owned()])
        );
    }
}
