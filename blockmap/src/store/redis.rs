//! The Redis metadata store (`redis://[:password@]host:port/db`).
//!
//! # Key layout
//!
//! | key | type | contents |
//! |---|---|---|
//! | `locus:images` | set | names of all images |
//! | `locus:image:{name}` | hash | `version` (integer), `header` (JSON [`Image`]) |
//! | `locus:image:{name}:runs` | hash | start block → `end;node=s,node=s` ([`crate::placement::Run`]) |
//! | `locus:oos:{name}:{node}:{chunk}` | string | dirty bitmap chunk *k*: bit *j* is granularity unit *k*·65536+*j* (`SETBIT`/`BITCOUNT`/`BITPOS` order); absent when clean |
//! | `locus:oos:{name}:{node}:chunks` | set | indexes of the chunks that exist |
//! | `locus:nodes` | hash | node id → `version JSON` |
//! | `locus:targets` | hash | IQN → `version JSON` |
//! | `locus:stats` | hash | image name → `version JSON` |
//! | `locus:changes` | pub/sub channel | JSON [`Change`] per commit |
//!
//! A fresh 1 TiB image with three locations is two small hashes (one run),
//! a few hundred bytes. Changing one block's state writes at most three run
//! fields; marking bytes dirty writes a `SETRANGE` of the changed bitmap bytes.
//! Bitmaps are split into [`CHUNK_BYTES`] chunks, so one dirty bit costs at
//! most 8 KiB of Redis memory wherever it lies (a flat bitmap would allocate
//! every byte before it: 2 MiB per location for 1 TiB at 64 KiB).
//!
//! # Atomicity
//!
//! Every write is `WATCH locus:image:{name}` (or the document hash), a version
//! check, then `MULTI … EXEC` that also bumps the version and `PUBLISH`es the
//! change. An aborted `EXEC` is reported as a conflict and the caller
//! ([`crate::ops`]) retries from a fresh read. Transactions run on a connection
//! of their own, one at a time per handle, so `WATCH` state is never shared.

use super::{ChangeFeed, MetadataStore, Versioned};
use crate::bitmap::DirtyBitmap;
use crate::change::{Change, DocKind};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::record::{BitmapChange, ImageRecord};
use crate::types::{ImageName, NodeId};
use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Change-feed channel.
pub const CHANNEL: &str = "locus:changes";
const IMAGES: &str = "locus:images";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

fn image_key(name: &str) -> String {
    format!("locus:image:{name}")
}
fn runs_key(name: &str) -> String {
    format!("locus:image:{name}:runs")
}
/// Bytes per bitmap chunk: 65,536 bits, 4 GiB of image at 64 KiB granularity.
pub const CHUNK_BYTES: usize = 8192;

fn chunk_key(name: &str, node: &str, chunk: usize) -> String {
    format!("locus:oos:{name}:{node}:{chunk}")
}
fn chunks_key(name: &str, node: &str) -> String {
    format!("locus:oos:{name}:{node}:chunks")
}

/// Indexes of the chunks of `bm` that have a bit set.
fn dirty_chunks(bm: &DirtyBitmap) -> Vec<usize> {
    bm.as_bytes()
        .chunks(CHUNK_BYTES)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|b| *b != 0))
        .map(|(i, _)| i)
        .collect()
}
fn doc_key(kind: DocKind) -> String {
    format!("locus:{}", kind.as_str())
}

/// Handle on a Redis store. Each handle owns its connections.
pub struct RedisStore {
    client: redis::Client,
    con: MultiplexedConnection,
    tx_con: tokio::sync::Mutex<MultiplexedConnection>,
    masked: String,
    bytes_written: AtomicU64,
}

fn mask(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

impl RedisStore {
    /// Connects and checks the server answers (and accepts our password).
    pub async fn connect(url: &str) -> Result<Self> {
        let masked = mask(url);
        let client = redis::Client::open(url).map_err(|e| {
            Error::invalid(
                "metadata URL",
                format!("{masked}: {e}; use redis://[:password@]host:port/db"),
            )
        })?;
        let connect = || async {
            client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(CONNECT_TIMEOUT)
                        .set_response_timeout(RESPONSE_TIMEOUT),
                )
                .await
        };
        let unavailable = |e: redis::RedisError| map_err(&masked, e);
        let mut con = connect().await.map_err(unavailable)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        let tx_con = connect().await.map_err(unavailable)?;
        Ok(Self {
            client,
            con,
            tx_con: tokio::sync::Mutex::new(tx_con),
            masked,
            bytes_written: AtomicU64::new(0),
        })
    }

    /// Bytes of write commands (MULTI…EXEC payloads) this handle has sent:
    /// lets benchmarks and tests check that a small change sends little.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    fn err(&self, e: redis::RedisError) -> Error {
        map_err(&self.masked, e)
    }

    async fn exec(&self, con: &mut MultiplexedConnection, pipe: &redis::Pipeline) -> Result<bool> {
        self.bytes_written
            .fetch_add(pipe.get_packed_pipeline().len() as u64, Ordering::Relaxed);
        let r: Option<Value> = pipe.query_async(con).await.map_err(|e| self.err(e))?;
        Ok(r.is_some())
    }

    async fn unwatch(&self, con: &mut MultiplexedConnection) -> Result<()> {
        redis::cmd("UNWATCH")
            .query_async::<()>(con)
            .await
            .map_err(|e| self.err(e))
    }

    async fn watch_version(
        &self,
        con: &mut MultiplexedConnection,
        name: &str,
    ) -> Result<Option<u64>> {
        redis::cmd("WATCH")
            .arg(image_key(name))
            .query_async::<()>(&mut *con)
            .await
            .map_err(|e| self.err(e))?;
        let v: Option<u64> = con
            .hget(image_key(name), "version")
            .await
            .map_err(|e| self.err(e))?;
        Ok(v)
    }

    fn publish(pipe: &mut redis::Pipeline, change: &Change) -> Result<()> {
        let json = serde_json::to_string(change).map_err(|e| Error::CorruptRecord {
            key: CHANNEL.into(),
            why: e.to_string(),
        })?;
        pipe.cmd("PUBLISH").arg(CHANNEL).arg(json).ignore();
        Ok(())
    }

    /// Queues `new.diff(old)` on `pipe`.
    fn queue_diff(
        pipe: &mut redis::Pipeline,
        old: &ImageRecord,
        new: &ImageRecord,
        version: u64,
    ) -> Result<()> {
        let name = new.image.name.as_str();
        let diff = new.diff(old);
        if let Some(h) = &diff.header {
            pipe.hset(image_key(name), "header", encode(h)?).ignore();
        }
        pipe.hset(image_key(name), "version", version).ignore();
        if !diff.runs_del.is_empty() {
            pipe.hdel(runs_key(name), diff.runs_del.clone()).ignore();
        }
        if !diff.runs_set.is_empty() {
            pipe.hset_multiple(runs_key(name), &diff.runs_set).ignore();
        }
        let empty = DirtyBitmap::default();
        for (node_id, ch) in &diff.bitmaps {
            let node = node_id.as_str();
            let set = chunks_key(name, node);
            match ch {
                BitmapChange::Delete => {
                    let oldb = old.dirty.get(node_id).unwrap_or(&empty);
                    for c in dirty_chunks(oldb) {
                        pipe.del(chunk_key(name, node, c)).ignore();
                    }
                    pipe.del(&set).ignore();
                }
                BitmapChange::Spans(spans) => {
                    let newb = new.dirty.get(node_id).unwrap_or(&empty).as_bytes();
                    for (off, bytes) in spans {
                        let (mut off, mut bytes) = (*off, bytes.as_slice());
                        while !bytes.is_empty() {
                            let c = off / CHUNK_BYTES;
                            let local = off % CHUNK_BYTES;
                            let take = bytes.len().min(CHUNK_BYTES - local);
                            let lo = (c * CHUNK_BYTES).min(newb.len());
                            let hi = ((c + 1) * CHUNK_BYTES).min(newb.len());
                            if newb[lo..hi].iter().all(|b| *b == 0) {
                                pipe.del(chunk_key(name, node, c)).ignore();
                                pipe.srem(&set, c).ignore();
                            } else {
                                pipe.cmd("SETRANGE")
                                    .arg(chunk_key(name, node, c))
                                    .arg(local)
                                    .arg(&bytes[..take])
                                    .ignore();
                                pipe.sadd(&set, c).ignore();
                            }
                            off += take;
                            bytes = &bytes[take..];
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Memory Redis reports for every key of an image (`MEMORY USAGE`), bytes.
    pub async fn image_memory_usage(&self, name: &ImageName) -> Result<u64> {
        let mut con = self.con.clone();
        let rec = self.load_image(name).await?;
        let mut keys = vec![image_key(name.as_str()), runs_key(name.as_str())];
        for (node, bm) in &rec.dirty {
            let node = node.as_str();
            keys.push(chunks_key(name.as_str(), node));
            keys.extend(
                dirty_chunks(bm)
                    .into_iter()
                    .map(|c| chunk_key(name.as_str(), node, c)),
            );
        }
        let mut total = 0;
        for k in keys {
            let v: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&k)
                .query_async(&mut con)
                .await
                .map_err(|e| self.err(e))?;
            total += v.unwrap_or(0);
        }
        Ok(total)
    }
}

fn map_err(store: &str, e: redis::RedisError) -> Error {
    let code = e.code().unwrap_or("");
    let why = if e.kind() == redis::ErrorKind::AuthenticationFailed
        || code == "NOAUTH"
        || code == "WRONGPASS"
    {
        format!("authentication failed ({e}); put the right password in the URL: redis://:PASSWORD@host:port/db")
    } else if e.is_connection_refusal() || e.is_io_error() || e.is_timeout() {
        format!("cannot reach redis ({e}); is redis-server running there? check --metadata or LOCUS_METADATA")
    } else {
        format!("redis error: {e}")
    };
    Error::Unavailable {
        store: store.to_string(),
        why,
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::CorruptRecord {
        key: "(encoding)".into(),
        why: e.to_string(),
    })
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::CorruptRecord {
        key: key.into(),
        why: e.to_string(),
    })
}

fn split_doc(key: &str, raw: &str) -> Result<(u64, String)> {
    raw.split_once(' ')
        .and_then(|(v, j)| Some((v.parse().ok()?, j.to_string())))
        .ok_or_else(|| Error::CorruptRecord {
            key: key.into(),
            why: "expected 'version json'".into(),
        })
}

#[async_trait]
impl MetadataStore for RedisStore {
    fn describe(&self) -> String {
        format!("redis store {}", self.masked)
    }

    async fn create_image(&self, rec: &ImageRecord) -> Result<()> {
        let name = rec.image.name.as_str();
        let mut con = self.tx_con.lock().await;
        loop {
            if self.watch_version(&mut con, name).await?.is_some() {
                self.unwatch(&mut con).await?;
                return Err(Error::ImageExists(rec.image.name.clone()));
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.hset(image_key(name), "header", encode(&rec.image)?)
                .ignore();
            let empty = ImageRecord {
                placement: crate::placement::Placement::from_runs(vec![], 0)?,
                dirty: BTreeMap::new(),
                image: rec.image.clone(),
                version: 0,
            };
            Self::queue_diff(&mut pipe, &empty, rec, 1)?;
            pipe.sadd(IMAGES, name).ignore();
            Self::publish(
                &mut pipe,
                &Change::Image {
                    name: name.into(),
                    version: 1,
                },
            )?;
            if self.exec(&mut con, &pipe).await? {
                return Ok(());
            }
        }
    }

    async fn load_image(&self, name: &ImageName) -> Result<ImageRecord> {
        let mut con = self.con.clone();
        let n = name.as_str();
        loop {
            let (head, runs): (BTreeMap<String, String>, BTreeMap<u64, String>) = redis::pipe()
                .atomic()
                .hgetall(image_key(n))
                .hgetall(runs_key(n))
                .query_async(&mut con)
                .await
                .map_err(|e| self.err(e))?;
            let (Some(version), Some(header)) = (head.get("version"), head.get("header")) else {
                return Err(Error::ImageNotFound(name.clone()));
            };
            let key = image_key(n);
            let version: u64 = version.parse().map_err(|_| Error::CorruptRecord {
                key: key.clone(),
                why: "bad version".into(),
            })?;
            let image: Image = decode(&key, header)?;
            let mut rec = ImageRecord::from_parts(image, runs, BTreeMap::new(), version)?;
            let nodes: Vec<NodeId> = rec.location_nodes().into_iter().collect();
            let mut pipe = redis::pipe();
            for node in &nodes {
                pipe.smembers(chunks_key(n, node.as_str()));
            }
            let chunk_lists: Vec<Vec<usize>> =
                pipe.query_async(&mut con).await.map_err(|e| self.err(e))?;
            let mut pipe = redis::pipe();
            pipe.atomic().hget(image_key(n), "version");
            let mut wanted = Vec::new();
            for (node, chunks) in nodes.iter().zip(&chunk_lists) {
                for c in chunks {
                    pipe.get(chunk_key(n, node.as_str(), *c));
                    wanted.push((node.clone(), *c));
                }
            }
            let mut vals: Vec<Value> = pipe.query_async(&mut con).await.map_err(|e| self.err(e))?;
            let chunks = vals.split_off(1.min(vals.len()));
            let again: Option<u64> = vals
                .first()
                .and_then(|v| redis::from_redis_value(v).ok())
                .flatten();
            if again != Some(version) {
                continue; // changed between the reads: read again
            }
            let mut raw: BTreeMap<NodeId, Vec<u8>> = BTreeMap::new();
            for ((node, c), v) in wanted.into_iter().zip(chunks) {
                if let Value::BulkString(bytes) = v {
                    let buf = raw.entry(node).or_default();
                    let at = c * CHUNK_BYTES;
                    if buf.len() < at + bytes.len() {
                        buf.resize(at + bytes.len(), 0);
                    }
                    buf[at..at + bytes.len()].copy_from_slice(&bytes);
                }
            }
            for (node, bytes) in raw {
                let bm = DirtyBitmap::from_bytes(bytes);
                if !bm.is_clean() {
                    rec.dirty.insert(node, bm);
                }
            }
            return Ok(rec);
        }
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        let mut con = self.con.clone();
        let mut names: Vec<String> = con.smembers(IMAGES).await.map_err(|e| self.err(e))?;
        names.sort();
        let mut pipe = redis::pipe();
        for n in &names {
            pipe.hget(image_key(n), "header");
        }
        let headers: Vec<Option<String>> =
            pipe.query_async(&mut con).await.map_err(|e| self.err(e))?;
        names
            .iter()
            .zip(headers)
            .filter_map(|(n, h)| h.map(|h| decode(&image_key(n), &h)))
            .collect()
    }

    async fn commit_image(&self, old: &ImageRecord, new: &ImageRecord) -> Result<bool> {
        let name = old.image.name.as_str();
        let mut con = self.tx_con.lock().await;
        match self.watch_version(&mut con, name).await? {
            None => {
                self.unwatch(&mut con).await?;
                return Err(Error::ImageNotFound(old.image.name.clone()));
            }
            Some(v) if v != old.version => {
                self.unwatch(&mut con).await?;
                return Ok(false);
            }
            Some(_) => {}
        }
        let version = old.version + 1;
        let mut pipe = redis::pipe();
        pipe.atomic();
        Self::queue_diff(&mut pipe, old, new, version)?;
        Self::publish(
            &mut pipe,
            &Change::Image {
                name: name.into(),
                version,
            },
        )?;
        self.exec(&mut con, &pipe).await
    }

    async fn delete_image(&self, name: &ImageName, version: u64) -> Result<bool> {
        let n = name.as_str();
        let mut con = self.tx_con.lock().await;
        match self.watch_version(&mut con, n).await? {
            None => {
                self.unwatch(&mut con).await?;
                return Err(Error::ImageNotFound(name.clone()));
            }
            Some(v) if v != version => {
                self.unwatch(&mut con).await?;
                return Ok(false);
            }
            Some(_) => {}
        }
        // The version is watched, so the runs read here are the ones we delete.
        let runs: BTreeMap<u64, String> =
            con.hgetall(runs_key(n)).await.map_err(|e| self.err(e))?;
        let mut nodes = std::collections::BTreeSet::new();
        for (s, v) in &runs {
            nodes.extend(crate::placement::Run::decode(*s, v)?.locations.into_keys());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(image_key(n))
            .ignore()
            .del(runs_key(n))
            .ignore();
        for node in nodes {
            let chunks: Vec<usize> = con
                .smembers(chunks_key(n, node.as_str()))
                .await
                .map_err(|e| self.err(e))?;
            for c in chunks {
                pipe.del(chunk_key(n, node.as_str(), c)).ignore();
            }
            pipe.del(chunks_key(n, node.as_str())).ignore();
        }
        pipe.srem(IMAGES, n).ignore();
        Self::publish(&mut pipe, &Change::ImageDeleted { name: n.into() })?;
        self.exec(&mut con, &pipe).await
    }

    async fn get_doc(&self, kind: DocKind, key: &str) -> Result<Option<Versioned>> {
        let mut con = self.con.clone();
        let raw: Option<String> = con
            .hget(doc_key(kind), key)
            .await
            .map_err(|e| self.err(e))?;
        raw.map(|r| {
            let (version, value) = split_doc(&format!("{}/{key}", doc_key(kind)), &r)?;
            Ok(Versioned {
                key: key.into(),
                version,
                value,
            })
        })
        .transpose()
    }

    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Versioned>> {
        let mut con = self.con.clone();
        let all: BTreeMap<String, String> =
            con.hgetall(doc_key(kind)).await.map_err(|e| self.err(e))?;
        all.into_iter()
            .map(|(k, r)| {
                let (version, value) = split_doc(&format!("{}/{k}", doc_key(kind)), &r)?;
                Ok(Versioned {
                    key: k,
                    version,
                    value,
                })
            })
            .collect()
    }

    async fn put_doc(
        &self,
        kind: DocKind,
        key: &str,
        expected: Option<u64>,
        value: Option<String>,
    ) -> Result<bool> {
        let hash = doc_key(kind);
        let mut con = self.tx_con.lock().await;
        loop {
            redis::cmd("WATCH")
                .arg(&hash)
                .query_async::<()>(&mut *con)
                .await
                .map_err(|e| self.err(e))?;
            let raw: Option<String> = con.hget(&hash, key).await.map_err(|e| self.err(e))?;
            let current = raw
                .map(|r| split_doc(&format!("{hash}/{key}"), &r).map(|(v, _)| v))
                .transpose()?;
            if current != expected {
                self.unwatch(&mut con).await?;
                return Ok(false);
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            match &value {
                Some(v) => {
                    pipe.hset(&hash, key, format!("{} {v}", expected.unwrap_or(0) + 1))
                        .ignore();
                }
                None => {
                    pipe.hdel(&hash, key).ignore();
                }
            }
            Self::publish(
                &mut pipe,
                &Change::Doc {
                    kind,
                    key: key.into(),
                },
            )?;
            // An abort may come from another field of the same hash: re-check.
            if self.exec(&mut con, &pipe).await? {
                return Ok(true);
            }
        }
    }

    async fn subscribe(&self) -> Result<ChangeFeed> {
        let mut ps = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| self.err(e))?;
        ps.subscribe(CHANNEL).await.map_err(|e| self.err(e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let masked = self.masked.clone();
        let task = tokio::spawn(async move {
            let mut stream = ps.into_on_message();
            while let Some(msg) = stream.next().await {
                let item = msg
                    .get_payload::<String>()
                    .map_err(|e| map_err(&masked, e))
                    .and_then(|p| decode::<Change>(CHANNEL, &p));
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(Err(Error::Unavailable {
                    store: masked,
                    why: "the change feed connection closed".into(),
                }))
                .await;
        });
        Ok(ChangeFeed::new(rx, task))
    }
}
