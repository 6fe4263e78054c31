//! The embedded metadata store: one redb file, `DIR/metadata.redb`.
//!
//! redb locks the file while it is open. By default a handle keeps the file
//! open for its lifetime, shared by every handle of the process on the same
//! path (so the `locus` CLI opens it once per command). A long-running daemon
//! that must let the CLI in calls [`EmbeddedStore::release_between_operations`]:
//! each operation then opens the file, runs one transaction and closes it.
//! A file locked by another process is retried for up to [`BUSY_TIMEOUT`].
//! redb commits are atomic and crash-safe (a torn write leaves the previous
//! commit intact).
//!
//! Tables:
//! - `images`: name → JSON `{version, image}` (the header);
//! - `runs`: (name, start block) → `end;node=s,...` (see [`crate::placement::Run`]);
//! - `bitmaps`: (name, node) → dirty bitmap bytes in Redis bit order;
//! - `docs`: (kind, key) → (version, JSON);
//! - `leases`: name → (holder, generation, expires in Unix ms);
//! - `al`: name → (generation, extent size) and `al_extents`: (name, extent) → ()
//!   (the activity log);
//! - `changes`: sequence → JSON [`Change`] (the last [`CHANGE_LOG_LEN`] only),
//!   polled by [`EmbeddedStore::subscribe`]; `meta["seq"]` is the last sequence.
//!
//! A whole bitmap value is rewritten when it changes; bitmaps stay empty
//! unless writes fail, so this is cheap in practice. The writer primitives
//! (`mark_dirty`, leases, activity log) are one write transaction each,
//! durable when it commits; `mark_dirty` reads the record inside it to check
//! the generation and the location (O(runs), not the Redis O(1) path: the
//! embedded store serves one node).

use super::{ChangeFeed, Durability, MetadataStore, Versioned};
use crate::bitmap::DirtyBitmap;
use crate::change::{Change, DocKind};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::record::{BitmapChange, ImageRecord};
use crate::types::{ByteSize, ImageName, NodeId, UnixMillis};
use crate::writer::{ActivityLog, Lease, MarkOutcome};
use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

const IMAGES: TableDefinition<&str, &str> = TableDefinition::new("images");
const RUNS: TableDefinition<(&str, u64), &str> = TableDefinition::new("runs");
const BITMAPS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("bitmaps");
const DOCS: TableDefinition<(&str, &str), (u64, &str)> = TableDefinition::new("docs");
const CHANGES: TableDefinition<u64, &str> = TableDefinition::new("changes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("leases");
const AL: TableDefinition<&str, (u64, u64)> = TableDefinition::new("al");
const AL_EXTENTS: TableDefinition<(&str, u64), ()> = TableDefinition::new("al_extents");

/// How long an operation waits for another process to release the file.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many changes the change log keeps for pollers.
pub const CHANGE_LOG_LEN: u64 = 1024;
/// File name inside the data directory.
pub const FILE_NAME: &str = "metadata.redb";

/// Handle on an embedded store. Cheap to clone; each clone is independent.
#[derive(Clone)]
pub struct EmbeddedStore {
    path: PathBuf,
    poll_interval: Duration,
    held: Option<Arc<Database>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("held", &self.held.is_some())
            .finish()
    }
}

/// Databases open in this process, by path, shared by all handles.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Database>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Weak<Database>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    version: u64,
    image: Image,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, checking that the file
    /// is readable. A corrupt file gives [`Error::CorruptFile`] naming it.
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::Unavailable {
            store: dir.display().to_string(),
            why: format!("cannot create the data directory: {e}"),
        })?;
        let path = dir.join(FILE_NAME);
        let path = path.canonicalize().unwrap_or(path);
        let mut s = Self {
            path,
            poll_interval: Duration::from_millis(50),
            held: None,
        };
        let db = s.shared_db()?;
        let tx = db.begin_write().map_err(|e| s.corrupt(e))?;
        tx.open_table(IMAGES).map_err(|e| s.corrupt(e))?;
        tx.open_table(RUNS).map_err(|e| s.corrupt(e))?;
        tx.open_table(BITMAPS).map_err(|e| s.corrupt(e))?;
        tx.open_table(DOCS).map_err(|e| s.corrupt(e))?;
        tx.open_table(CHANGES).map_err(|e| s.corrupt(e))?;
        tx.open_table(META).map_err(|e| s.corrupt(e))?;
        tx.open_table(LEASES).map_err(|e| s.corrupt(e))?;
        tx.open_table(AL).map_err(|e| s.corrupt(e))?;
        tx.open_table(AL_EXTENTS).map_err(|e| s.corrupt(e))?;
        tx.commit().map_err(|e| s.corrupt(e))?;
        s.held = Some(db);
        Ok(s)
    }

    /// Opens the file once per process and shares it between handles.
    fn shared_db(&self) -> Result<Arc<Database>> {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = reg.get(&self.path).and_then(Weak::upgrade) {
            return Ok(db);
        }
        let db = Arc::new(self.open_db()?);
        reg.insert(self.path.clone(), Arc::downgrade(&db));
        Ok(db)
    }

    /// Stops holding the file open: every operation opens and closes it, so
    /// other processes can use the store in between (slower).
    pub fn release_between_operations(mut self) -> Self {
        self.held = None;
        self
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets how often [`MetadataStore::subscribe`] polls the change log.
    pub fn with_poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> Error {
        Error::CorruptFile {
            path: self.path.clone(),
            why: e.to_string(),
        }
    }

    fn open_db(&self) -> Result<Database> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(1);
        loop {
            match Database::create(&self.path) {
                Ok(db) => return Ok(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(Error::Unavailable {
                        store: self.describe(),
                        why: format!(
                            "the file stayed locked by another process for {}s; stop it or retry",
                            BUSY_TIMEOUT.as_secs()
                        ),
                    })
                }
                Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                    if e.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    return Err(Error::Unavailable {
                        store: self.describe(),
                        why: format!("{e}; check the file's permissions"),
                    })
                }
                Err(e) => return Err(self.corrupt(e)),
            }
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self, &Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || match &me.held {
            Some(db) => f(&me, db),
            None => {
                let db = me.open_db()?;
                f(&me, &db)
            }
        })
        .await
        .map_err(|e| Error::Unavailable {
            store: self.describe(),
            why: format!("store task failed: {e}"),
        })?
    }

    fn log_change(&self, tx: &WriteTransaction, change: &Change) -> Result<()> {
        let c = |e: redb::Error| self.corrupt(e);
        let mut meta = tx.open_table(META).map_err(|e| c(e.into()))?;
        let seq = meta
            .get("seq")
            .map_err(|e| c(e.into()))?
            .map_or(0, |v| v.value())
            + 1;
        meta.insert("seq", seq).map_err(|e| c(e.into()))?;
        let mut log = tx.open_table(CHANGES).map_err(|e| c(e.into()))?;
        let json = serde_json::to_string(change).map_err(|e| self.corrupt(e))?;
        log.insert(seq, json.as_str()).map_err(|e| c(e.into()))?;
        if seq > CHANGE_LOG_LEN {
            log.remove(seq - CHANGE_LOG_LEN).map_err(|e| c(e.into()))?;
        }
        Ok(())
    }

    fn load_sync(&self, db: &Database, name: &ImageName) -> Result<ImageRecord> {
        let c = |e: redb::Error| self.corrupt(e);
        let tx = db.begin_read().map_err(|e| c(e.into()))?;
        read_parts(
            self,
            &tx.open_table(IMAGES).map_err(|e| c(e.into()))?,
            &tx.open_table(RUNS).map_err(|e| c(e.into()))?,
            &tx.open_table(BITMAPS).map_err(|e| c(e.into()))?,
            name,
        )
    }

    /// The record as `tx` sees it (tables closed again on return, so the
    /// caller may write them).
    fn load_in(&self, tx: &WriteTransaction, name: &ImageName) -> Result<ImageRecord> {
        let c = |e: redb::Error| self.corrupt(e);
        read_parts(
            self,
            &tx.open_table(IMAGES).map_err(|e| c(e.into()))?,
            &tx.open_table(RUNS).map_err(|e| c(e.into()))?,
            &tx.open_table(BITMAPS).map_err(|e| c(e.into()))?,
            name,
        )
    }

    /// Sets or clears dirty bits: one write transaction.
    async fn set_bits(
        &self,
        name: &ImageName,
        node: &NodeId,
        generation: u64,
        bits: &[(u64, u64)],
        dirty: bool,
    ) -> Result<MarkOutcome> {
        let (name, node, bits) = (name.clone(), node.clone(), bits.to_vec());
        self.run(move |s, db| {
            let tx = db.begin_write().map_err(|e| s.corrupt(e))?;
            let old = s.load_in(&tx, &name)?;
            check_generation(&name, generation, old.image.generation)?;
            if bits.is_empty() {
                return Ok(MarkOutcome {
                    version: old.version,
                });
            }
            let mut new = old.clone();
            new.set_dirty_bits(&node, &bits, dirty)?;
            let version = old.version + 1;
            write_record(s, &tx, Some(&old), &new, version)?;
            s.log_change(
                &tx,
                &Change::Dirty {
                    name: name.to_string(),
                    node: node.to_string(),
                    version,
                    dirty,
                    bits,
                },
            )?;
            tx.commit().map_err(|e| s.corrupt(e))?;
            Ok(MarkOutcome { version })
        })
        .await
    }

    /// Checks the stored lease against `holder` and `generation` (the
    /// renew and release rule).
    fn held_lease(
        &self,
        tx: &WriteTransaction,
        name: &ImageName,
        holder: &NodeId,
        generation: u64,
    ) -> Result<Header> {
        let h = read_header(self, tx, name)?;
        check_generation(name, generation, h.image.generation)?;
        let t = tx.open_table(LEASES).map_err(|e| self.corrupt(e))?;
        let held = t
            .get(name.as_str())
            .map_err(|e| self.corrupt(e))?
            .is_some_and(|v| {
                let (who, g, _) = v.value();
                who == holder.as_str() && g == generation
            });
        if !held {
            return Err(Error::LeaseNotHeld {
                image: name.clone(),
                holder: holder.clone(),
                generation,
            });
        }
        Ok(h)
    }

    /// Adds or removes activity-log extents: one write transaction.
    async fn al_change(
        &self,
        name: &ImageName,
        generation: u64,
        extents: &[u64],
        add: bool,
    ) -> Result<()> {
        let (name, extents) = (name.clone(), extents.to_vec());
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_write().map_err(|e| c(e.into()))?;
            let h = read_header(s, &tx, &name)?;
            check_generation(&name, generation, h.image.generation)?;
            let log_generation = tx
                .open_table(AL)
                .map_err(|e| c(e.into()))?
                .get(name.as_str())
                .map_err(|e| c(e.into()))?
                .map_or(0, |v| v.value().0);
            if log_generation != generation {
                return Err(Error::ActivityLogNotTakenOver {
                    image: name.clone(),
                    generation,
                    log_generation,
                });
            }
            {
                let mut t = tx.open_table(AL_EXTENTS).map_err(|e| c(e.into()))?;
                for e in &extents {
                    if add {
                        t.insert((name.as_str(), *e), ()).map_err(|e| c(e.into()))?;
                    } else {
                        t.remove((name.as_str(), *e)).map_err(|e| c(e.into()))?;
                    }
                }
            }
            tx.commit().map_err(|e| c(e.into()))
        })
        .await
    }
}

/// [`Error::Fenced`] unless `generation` is the image's `current` one.
fn check_generation(name: &ImageName, generation: u64, current: u64) -> Result<()> {
    if generation == current {
        Ok(())
    } else {
        Err(Error::Fenced {
            image: name.clone(),
            generation,
            current,
        })
    }
}

fn read_header(s: &EmbeddedStore, tx: &WriteTransaction, name: &ImageName) -> Result<Header> {
    let t = tx.open_table(IMAGES).map_err(|e| s.corrupt(e))?;
    let v = t.get(name.as_str()).map_err(|e| s.corrupt(e))?;
    match v {
        None => Err(Error::ImageNotFound(name.clone())),
        Some(h) => decode(&format!("images/{name}"), h.value()),
    }
}

fn write_header(s: &EmbeddedStore, tx: &WriteTransaction, h: &Header) -> Result<()> {
    let json = encode(h)?;
    tx.open_table(IMAGES)
        .map_err(|e| s.corrupt(e))?
        .insert(h.image.name.as_str(), json.as_str())
        .map_err(|e| s.corrupt(e))?;
    Ok(())
}

fn read_al<A, X>(s: &EmbeddedStore, al: &A, ext: &X, name: &ImageName) -> Result<ActivityLog>
where
    A: ReadableTable<&'static str, (u64, u64)>,
    X: ReadableTable<(&'static str, u64), ()>,
{
    let c = |e: redb::StorageError| s.corrupt(e);
    let Some(v) = al.get(name.as_str()).map_err(c)? else {
        return Ok(ActivityLog::default());
    };
    let (generation, size) = v.value();
    let mut extents = std::collections::BTreeSet::new();
    for item in ext
        .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
        .map_err(c)?
    {
        extents.insert(item.map_err(c)?.0.value().1);
    }
    Ok(ActivityLog {
        generation,
        extent_size: ByteSize(size),
        extents,
    })
}

/// Reads an image record from open tables (of a read or a write transaction).
fn read_parts<I, R, B>(
    s: &EmbeddedStore,
    images: &I,
    runs_t: &R,
    bm_t: &B,
    name: &ImageName,
) -> Result<ImageRecord>
where
    I: ReadableTable<&'static str, &'static str>,
    R: ReadableTable<(&'static str, u64), &'static str>,
    B: ReadableTable<(&'static str, &'static str), &'static [u8]>,
{
    let c = |e: redb::StorageError| s.corrupt(e);
    let Some(h) = images.get(name.as_str()).map_err(c)? else {
        return Err(Error::ImageNotFound(name.clone()));
    };
    let h: Header = decode(&format!("images/{name}"), h.value())?;
    let mut runs = BTreeMap::new();
    for item in runs_t
        .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
        .map_err(c)?
    {
        let (k, v) = item.map_err(c)?;
        runs.insert(k.value().1, v.value().to_string());
    }
    let mut dirty = BTreeMap::new();
    for item in bm_t.range((name.as_str(), "")..).map_err(c)? {
        let (k, v) = item.map_err(c)?;
        let (img, node) = k.value();
        if img != name.as_str() {
            break;
        }
        let node = NodeId::new(node).map_err(|e| Error::CorruptRecord {
            key: format!("bitmaps/{name}"),
            why: e.to_string(),
        })?;
        dirty.insert(node, DirtyBitmap::from_bytes(v.value().to_vec()));
    }
    ImageRecord::from_parts(h.image, runs, dirty, h.version)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::CorruptRecord {
        key: key.into(),
        why: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::CorruptRecord {
        key: "(encoding)".into(),
        why: e.to_string(),
    })
}

/// Applies `new.diff(old)` (or, when `old` is `None`, all of `new`) in `tx`.
fn write_record(
    s: &EmbeddedStore,
    tx: &WriteTransaction,
    old: Option<&ImageRecord>,
    new: &ImageRecord,
    version: u64,
) -> Result<()> {
    let c = |e: redb::Error| s.corrupt(e);
    let name = new.image.name.as_str();
    let header = encode(&Header {
        version,
        image: new.image.clone(),
    })?;
    tx.open_table(IMAGES)
        .map_err(|e| c(e.into()))?
        .insert(name, header.as_str())
        .map_err(|e| c(e.into()))?;
    let empty;
    let old = match old {
        Some(o) => o,
        None => {
            empty = ImageRecord {
                placement: crate::placement::Placement::from_runs(vec![], 0)?,
                dirty: BTreeMap::new(),
                image: new.image.clone(),
                version: 0,
            };
            &empty
        }
    };
    let diff = new.diff(old);
    let mut runs = tx.open_table(RUNS).map_err(|e| c(e.into()))?;
    for k in &diff.runs_del {
        runs.remove((name, *k)).map_err(|e| c(e.into()))?;
    }
    for (k, v) in &diff.runs_set {
        runs.insert((name, *k), v.as_str())
            .map_err(|e| c(e.into()))?;
    }
    let mut bms = tx.open_table(BITMAPS).map_err(|e| c(e.into()))?;
    for (node, ch) in &diff.bitmaps {
        match ch {
            BitmapChange::Delete => {
                bms.remove((name, node.as_str())).map_err(|e| c(e.into()))?;
            }
            BitmapChange::Spans(_) => {
                let bytes = new.dirty.get(node).map(|b| b.as_bytes()).unwrap_or(&[]);
                bms.insert((name, node.as_str()), bytes)
                    .map_err(|e| c(e.into()))?;
            }
        }
    }
    Ok(())
}

fn stored_version(s: &EmbeddedStore, tx: &WriteTransaction, name: &str) -> Result<Option<u64>> {
    let t = tx.open_table(IMAGES).map_err(|e| s.corrupt(e))?;
    let v = t.get(name).map_err(|e| s.corrupt(e))?;
    match v {
        None => Ok(None),
        Some(h) => Ok(Some(
            decode::<Header>(&format!("images/{name}"), h.value())?.version,
        )),
    }
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded store {}", self.path.display())
    }

    async fn create_image(&self, rec: &ImageRecord) -> Result<()> {
        let rec = rec.clone();
        self.run(move |s, db| {
            let tx = db.begin_write().map_err(|e| s.corrupt(e))?;
            if stored_version(s, &tx, rec.image.name.as_str())?.is_some() {
                return Err(Error::ImageExists(rec.image.name.clone()));
            }
            // A fresh record: write every run and bitmap.
            write_record(s, &tx, None, &rec, 1)?;
            s.log_change(
                &tx,
                &Change::Image {
                    name: rec.image.name.to_string(),
                    version: 1,
                },
            )?;
            tx.commit().map_err(|e| s.corrupt(e))
        })
        .await
    }

    async fn load_image(&self, name: &ImageName) -> Result<ImageRecord> {
        let name = name.clone();
        self.run(move |s, db| s.load_sync(db, &name)).await
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        self.run(|s, db| {
            let tx = db.begin_read().map_err(|e| s.corrupt(e))?;
            let t = tx.open_table(IMAGES).map_err(|e| s.corrupt(e))?;
            let mut out = Vec::new();
            for item in t.iter().map_err(|e| s.corrupt(e))? {
                let (k, v) = item.map_err(|e| s.corrupt(e))?;
                out.push(decode::<Header>(&format!("images/{}", k.value()), v.value())?.image);
            }
            Ok(out)
        })
        .await
    }

    async fn commit_image(&self, old: &ImageRecord, new: &ImageRecord) -> Result<bool> {
        let (old, new) = (old.clone(), new.clone());
        self.run(move |s, db| {
            let tx = db.begin_write().map_err(|e| s.corrupt(e))?;
            match stored_version(s, &tx, old.image.name.as_str())? {
                None => return Err(Error::ImageNotFound(old.image.name.clone())),
                Some(v) if v != old.version => return Ok(false),
                Some(_) => {}
            }
            let version = old.version + 1;
            write_record(s, &tx, Some(&old), &new, version)?;
            s.log_change(
                &tx,
                &Change::Image {
                    name: new.image.name.to_string(),
                    version,
                },
            )?;
            tx.commit().map_err(|e| s.corrupt(e))?;
            Ok(true)
        })
        .await
    }

    async fn delete_image(&self, name: &ImageName, version: u64) -> Result<bool> {
        let name = name.clone();
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_write().map_err(|e| c(e.into()))?;
            let n = name.as_str();
            match stored_version(s, &tx, n)? {
                None => return Err(Error::ImageNotFound(name.clone())),
                Some(v) if v != version => return Ok(false),
                Some(_) => {}
            }
            tx.open_table(IMAGES)
                .map_err(|e| c(e.into()))?
                .remove(n)
                .map_err(|e| c(e.into()))?;
            {
                let mut runs = tx.open_table(RUNS).map_err(|e| c(e.into()))?;
                runs.retain_in((n, 0)..=(n, u64::MAX), |_, _| false)
                    .map_err(|e| c(e.into()))?;
                let mut bms = tx.open_table(BITMAPS).map_err(|e| c(e.into()))?;
                bms.retain(|(img, _), _| img != n)
                    .map_err(|e| c(e.into()))?;
                let mut leases = tx.open_table(LEASES).map_err(|e| c(e.into()))?;
                leases.remove(n).map_err(|e| c(e.into()))?;
                let mut al = tx.open_table(AL).map_err(|e| c(e.into()))?;
                al.remove(n).map_err(|e| c(e.into()))?;
                let mut ext = tx.open_table(AL_EXTENTS).map_err(|e| c(e.into()))?;
                ext.retain_in((n, 0)..=(n, u64::MAX), |_, _| false)
                    .map_err(|e| c(e.into()))?;
            }
            s.log_change(
                &tx,
                &Change::ImageDeleted {
                    name: n.to_string(),
                },
            )?;
            tx.commit().map_err(|e| c(e.into()))?;
            Ok(true)
        })
        .await
    }

    async fn get_doc(&self, kind: DocKind, key: &str) -> Result<Option<Versioned>> {
        let key = key.to_string();
        self.run(move |s, db| {
            let tx = db.begin_read().map_err(|e| s.corrupt(e))?;
            let t = tx.open_table(DOCS).map_err(|e| s.corrupt(e))?;
            let v = t
                .get((kind.as_str(), key.as_str()))
                .map_err(|e| s.corrupt(e))?;
            Ok(v.map(|v| {
                let (version, value) = v.value();
                Versioned {
                    key: key.clone(),
                    version,
                    value: value.to_string(),
                }
            }))
        })
        .await
    }

    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Versioned>> {
        self.run(move |s, db| {
            let tx = db.begin_read().map_err(|e| s.corrupt(e))?;
            let t = tx.open_table(DOCS).map_err(|e| s.corrupt(e))?;
            let mut out = Vec::new();
            for item in t.range((kind.as_str(), "")..).map_err(|e| s.corrupt(e))? {
                let (k, v) = item.map_err(|e| s.corrupt(e))?;
                let (kd, key) = k.value();
                if kd != kind.as_str() {
                    break;
                }
                let (version, value) = v.value();
                out.push(Versioned {
                    key: key.to_string(),
                    version,
                    value: value.to_string(),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn put_doc(
        &self,
        kind: DocKind,
        key: &str,
        expected: Option<u64>,
        value: Option<String>,
    ) -> Result<bool> {
        let key = key.to_string();
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_write().map_err(|e| c(e.into()))?;
            {
                let mut t = tx.open_table(DOCS).map_err(|e| c(e.into()))?;
                let k = (kind.as_str(), key.as_str());
                let current = t.get(k).map_err(|e| c(e.into()))?.map(|v| v.value().0);
                if current != expected {
                    return Ok(false);
                }
                match &value {
                    Some(v) => {
                        t.insert(k, (expected.unwrap_or(0) + 1, v.as_str()))
                            .map_err(|e| c(e.into()))?;
                    }
                    None => {
                        t.remove(k).map_err(|e| c(e.into()))?;
                    }
                }
            }
            s.log_change(
                &tx,
                &Change::Doc {
                    kind,
                    key: key.clone(),
                },
            )?;
            tx.commit().map_err(|e| c(e.into()))?;
            Ok(true)
        })
        .await
    }

    async fn subscribe(&self) -> Result<ChangeFeed> {
        let read_seq = |s: &EmbeddedStore, db: &Database| -> Result<u64> {
            let tx = db.begin_read().map_err(|e| s.corrupt(e))?;
            let t = tx.open_table(META).map_err(|e| s.corrupt(e))?;
            let v = t.get("seq").map_err(|e| s.corrupt(e))?;
            Ok(v.map_or(0, |v| v.value()))
        };
        let mut last = self.run(move |s, db| read_seq(s, db)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.poll_interval);
            loop {
                tick.tick().await;
                let from = last;
                let batch = me
                    .run(move |s, db| {
                        let rtx = db.begin_read().map_err(|e| s.corrupt(e))?;
                        let t = rtx.open_table(CHANGES).map_err(|e| s.corrupt(e))?;
                        let mut out = Vec::new();
                        for item in t.range(from + 1..).map_err(|e| s.corrupt(e))? {
                            let (k, v) = item.map_err(|e| s.corrupt(e))?;
                            out.push((k.value(), decode::<Change>("changes", v.value())?));
                        }
                        Ok(out)
                    })
                    .await;
                match batch {
                    Ok(batch) => {
                        if batch.first().is_some_and(|(seq, _)| *seq > last + 1) {
                            let _ = tx
                                .send(Err(Error::Unavailable {
                                    store: me.describe(),
                                    why: "the change feed fell behind the change log; subscribe again and reload".into(),
                                }))
                                .await;
                            return;
                        }
                        for (seq, ch) in batch {
                            last = seq;
                            if tx.send(Ok(ch)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(ChangeFeed::new(rx, task))
    }

    async fn mark_dirty(
        &self,
        name: &ImageName,
        node: &NodeId,
        generation: u64,
        bits: &[(u64, u64)],
    ) -> Result<MarkOutcome> {
        self.set_bits(name, node, generation, bits, true).await
    }

    async fn clear_dirty(
        &self,
        name: &ImageName,
        node: &NodeId,
        generation: u64,
        bits: &[(u64, u64)],
    ) -> Result<MarkOutcome> {
        self.set_bits(name, node, generation, bits, false).await
    }

    async fn acquire_lease(
        &self,
        name: &ImageName,
        holder: &NodeId,
        ttl_ms: u64,
        now: UnixMillis,
    ) -> Result<Lease> {
        let (name, holder) = (name.clone(), holder.clone());
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_write().map_err(|e| c(e.into()))?;
            let mut h = read_header(s, &tx, &name)?;
            {
                let t = tx.open_table(LEASES).map_err(|e| c(e.into()))?;
                let cur = t.get(name.as_str()).map_err(|e| c(e.into()))?.map(|v| {
                    let (who, g, x) = v.value();
                    (who.to_string(), g, x)
                });
                if let Some((who, generation, expires)) = cur {
                    if who != holder.as_str() && now < UnixMillis(expires) {
                        return Err(Error::LeaseHeld {
                            image: name.clone(),
                            holder: NodeId::new(&who).map_err(|e| Error::CorruptRecord {
                                key: format!("leases/{name}"),
                                why: e.to_string(),
                            })?,
                            generation,
                            expires: UnixMillis(expires),
                        });
                    }
                }
            }
            h.image.generation += 1;
            h.version += 1;
            let lease = Lease {
                holder: holder.clone(),
                generation: h.image.generation,
                expires: now.plus(ttl_ms),
            };
            write_header(s, &tx, &h)?;
            tx.open_table(LEASES)
                .map_err(|e| c(e.into()))?
                .insert(
                    name.as_str(),
                    (holder.as_str(), lease.generation, lease.expires.0),
                )
                .map_err(|e| c(e.into()))?;
            s.log_change(
                &tx,
                &Change::Lease {
                    name: name.to_string(),
                    holder: Some(holder.to_string()),
                    generation: lease.generation,
                    version: h.version,
                },
            )?;
            tx.commit().map_err(|e| c(e.into()))?;
            Ok(lease)
        })
        .await
    }

    async fn renew_lease(
        &self,
        name: &ImageName,
        holder: &NodeId,
        generation: u64,
        ttl_ms: u64,
        now: UnixMillis,
    ) -> Result<Lease> {
        let (name, holder) = (name.clone(), holder.clone());
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_write().map_err(|e| c(e.into()))?;
            s.held_lease(&tx, &name, &holder, generation)?;
            let lease = Lease {
                holder: holder.clone(),
                generation,
                expires: now.plus(ttl_ms),
            };
            tx.open_table(LEASES)
                .map_err(|e| c(e.into()))?
                .insert(
                    name.as_str(),
                    (holder.as_str(), generation, lease.expires.0),
                )
                .map_err(|e| c(e.into()))?;
            tx.commit().map_err(|e| c(e.into()))?;
            Ok(lease)
        })
        .await
    }

    async fn release_lease(
        &self,
        name: &ImageName,
        holder: &NodeId,
        generation: u64,
    ) -> Result<()> {
        let (name, holder) = (name.clone(), holder.clone());
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_write().map_err(|e| c(e.into()))?;
            let h = s.held_lease(&tx, &name, &holder, generation)?;
            tx.open_table(LEASES)
                .map_err(|e| c(e.into()))?
                .remove(name.as_str())
                .map_err(|e| c(e.into()))?;
            s.log_change(
                &tx,
                &Change::Lease {
                    name: name.to_string(),
                    holder: None,
                    generation,
                    version: h.version,
                },
            )?;
            tx.commit().map_err(|e| c(e.into()))
        })
        .await
    }

    async fn durability(&self) -> Result<Durability> {
        Ok(Durability {
            durable: true,
            detail: "embedded store: every commit is fsynced".into(),
        })
    }

    async fn get_lease(&self, name: &ImageName) -> Result<Option<Lease>> {
        let name = name.clone();
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_read().map_err(|e| c(e.into()))?;
            if tx
                .open_table(IMAGES)
                .map_err(|e| c(e.into()))?
                .get(name.as_str())
                .map_err(|e| c(e.into()))?
                .is_none()
            {
                return Err(Error::ImageNotFound(name.clone()));
            }
            let t = tx.open_table(LEASES).map_err(|e| c(e.into()))?;
            let Some(v) = t.get(name.as_str()).map_err(|e| c(e.into()))? else {
                return Ok(None);
            };
            let (who, generation, expires) = v.value();
            Ok(Some(Lease {
                holder: NodeId::new(who).map_err(|e| Error::CorruptRecord {
                    key: format!("leases/{name}"),
                    why: e.to_string(),
                })?,
                generation,
                expires: UnixMillis(expires),
            }))
        })
        .await
    }

    async fn al_add(&self, name: &ImageName, generation: u64, extents: &[u64]) -> Result<()> {
        self.al_change(name, generation, extents, true).await
    }

    async fn al_remove(&self, name: &ImageName, generation: u64, extents: &[u64]) -> Result<()> {
        self.al_change(name, generation, extents, false).await
    }

    async fn al_get(&self, name: &ImageName) -> Result<ActivityLog> {
        let name = name.clone();
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_read().map_err(|e| c(e.into()))?;
            if tx
                .open_table(IMAGES)
                .map_err(|e| c(e.into()))?
                .get(name.as_str())
                .map_err(|e| c(e.into()))?
                .is_none()
            {
                return Err(Error::ImageNotFound(name.clone()));
            }
            read_al(
                s,
                &tx.open_table(AL).map_err(|e| c(e.into()))?,
                &tx.open_table(AL_EXTENTS).map_err(|e| c(e.into()))?,
                &name,
            )
        })
        .await
    }

    async fn al_reset(
        &self,
        name: &ImageName,
        generation: u64,
        extent_size: ByteSize,
        extents: &[u64],
    ) -> Result<ActivityLog> {
        check_extent_size(extent_size)?;
        let (name, extents) = (name.clone(), extents.to_vec());
        self.run(move |s, db| {
            let c = |e: redb::Error| s.corrupt(e);
            let tx = db.begin_write().map_err(|e| c(e.into()))?;
            let h = read_header(s, &tx, &name)?;
            check_generation(&name, generation, h.image.generation)?;
            let old = read_al(
                s,
                &tx.open_table(AL).map_err(|e| c(e.into()))?,
                &tx.open_table(AL_EXTENTS).map_err(|e| c(e.into()))?,
                &name,
            )?;
            {
                let n = name.as_str();
                let mut al = tx.open_table(AL).map_err(|e| c(e.into()))?;
                al.insert(n, (generation, extent_size.bytes()))
                    .map_err(|e| c(e.into()))?;
                let mut t = tx.open_table(AL_EXTENTS).map_err(|e| c(e.into()))?;
                t.retain_in((n, 0)..=(n, u64::MAX), |_, _| false)
                    .map_err(|e| c(e.into()))?;
                for e in &extents {
                    t.insert((n, *e), ()).map_err(|e| c(e.into()))?;
                }
            }
            tx.commit().map_err(|e| c(e.into()))?;
            Ok(old)
        })
        .await
    }
}

/// [`Error::Invalid`] unless an activity-log extent size is a power of two.
pub(crate) fn check_extent_size(extent_size: ByteSize) -> Result<()> {
    if extent_size.bytes().is_power_of_two() {
        Ok(())
    } else {
        Err(Error::invalid(
            "activity-log extent size",
            format!("{extent_size} is not a power of two"),
        ))
    }
}
