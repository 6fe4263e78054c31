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
//! - `changes`: sequence → JSON [`Change`] (the last [`CHANGE_LOG_LEN`] only),
//!   polled by [`EmbeddedStore::subscribe`]; `meta["seq"]` is the last sequence.
//!
//! A whole bitmap value is rewritten when it changes; bitmaps stay empty
//! unless writes fail, so this is cheap in practice.

use super::{ChangeFeed, MetadataStore, Versioned};
use crate::bitmap::DirtyBitmap;
use crate::change::{Change, DocKind};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::record::{BitmapChange, ImageRecord};
use crate::types::{ImageName, NodeId};
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
        let images = tx.open_table(IMAGES).map_err(|e| c(e.into()))?;
        let Some(h) = images.get(name.as_str()).map_err(|e| c(e.into()))? else {
            return Err(Error::ImageNotFound(name.clone()));
        };
        let h: Header = decode(&format!("images/{name}"), h.value())?;
        let runs_t = tx.open_table(RUNS).map_err(|e| c(e.into()))?;
        let mut runs = BTreeMap::new();
        for item in runs_t
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
            .map_err(|e| c(e.into()))?
        {
            let (k, v) = item.map_err(|e| c(e.into()))?;
            runs.insert(k.value().1, v.value().to_string());
        }
        let bm_t = tx.open_table(BITMAPS).map_err(|e| c(e.into()))?;
        let mut dirty = BTreeMap::new();
        for item in bm_t.range((name.as_str(), "")..).map_err(|e| c(e.into()))? {
            let (k, v) = item.map_err(|e| c(e.into()))?;
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
}
