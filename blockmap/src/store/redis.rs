//! The Redis metadata store (`redis://[:password@]host:port/db`).
//!
//! # Key layout
//!
//! | key | type | contents |
//! |---|---|---|
//! | `locus:images` | set | names of all images |
//! | `locus:image:{name}` | hash | `version` (integer), `header` (JSON [`Image`]), `generation` (integer; authoritative over the header's copy) |
//! | `locus:image:{name}:runs` | hash | start block → `end;node=s,node=s` ([`crate::placement::Run`]) |
//! | `locus:oos:{name}:{node}:{chunk}` | string | dirty bitmap chunk *k*: bit *j* is granularity unit *k*·65536+*j* (`SETBIT`/`BITCOUNT`/`BITPOS` order); absent when clean |
//! | `locus:oos:{name}:{node}:chunks` | set | indexes of the chunks that exist |
//! | `locus:lease:{name}` | hash | `holder`, `generation`, `expires` (Unix ms): the write lease |
//! | `locus:al:{name}` | hash | `generation`, `extent_size`: owner of the activity log |
//! | `locus:al:{name}:extents` | set | hot extent indexes |
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
//!
//! The writer primitives are Lua scripts (`src/store/lua/*.lua`, sent once
//! with `EVALSHA`, so one round trip each): `mark.lua` (mark/clear dirty
//! bits with `SETBIT`/`SETRANGE` on the touched chunks only, `HINCRBY
//! version`, `PUBLISH`), `acquire.lua`, `lease.lua` (renew, release) and
//! `al.lua` (activity log). Each checks the image's `generation` field
//! first. They touch keys derived from their arguments (chunk keys), so they
//! assume a single Redis server, not Redis Cluster.
//!
//! # Durability
//!
//! A mark is durable when the script returns only if Redis runs with
//! `appendonly yes` and `appendfsync always` (Redis then fsyncs the AOF
//! before it replies). With the default `everysec` up to a second of marks
//! can be lost on a crash of the Redis host, which breaks invariant 1
//! (ARCHITECTURE.md). Configure production servers that way.

use super::{ChangeFeed, Durability, MetadataStore, Versioned};
use crate::bitmap::DirtyBitmap;
use crate::change::{Change, DocKind};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::record::{BitmapChange, ImageRecord};
use crate::types::{ByteSize, ImageName, NodeId, UnixMillis};
use crate::writer::{ActivityLog, Lease, MarkOutcome};
use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Change-feed channel.
pub const CHANNEL: &str = "locus:changes";
const IMAGES: &str = "locus:images";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts per reconnection (after the first), at most
/// [`RECONNECT_MAX_DELAY_MS`] apart: a command that finds Redis restarting
/// waits about a second for it, then fails.
const RECONNECT_TRIES: usize = 5;
/// Growth of the delay between two attempts.
const RECONNECT_FACTOR_MS: u64 = 2;
/// The longest delay between two attempts, in milliseconds.
const RECONNECT_MAX_DELAY_MS: u64 = 200;

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
fn lease_key(name: &str) -> String {
    format!("locus:lease:{name}")
}
fn al_key(name: &str) -> String {
    format!("locus:al:{name}")
}
fn al_set_key(name: &str) -> String {
    format!("locus:al:{name}:extents")
}

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// The writer scripts, hashed once per handle.
struct Scripts {
    mark: redis::Script,
    acquire: redis::Script,
    lease: redis::Script,
    al: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| redis::Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            mark: s(include_str!("lua/mark.lua")),
            acquire: s(include_str!("lua/acquire.lua")),
            lease: s(include_str!("lua/lease.lua")),
            al: s(include_str!("lua/al.lua")),
        }
    }
}

fn fenced(name: &ImageName, generation: u64, reply: &[String]) -> Error {
    Error::Fenced {
        image: name.clone(),
        generation,
        current: reply.get(1).and_then(|c| c.parse().ok()).unwrap_or(0),
    }
}

fn doc_key(kind: DocKind) -> String {
    format!("locus:{}", kind.as_str())
}

/// Handle on a Redis store. Each handle owns its connections, which
/// reconnect by themselves after a Redis restart: the command that finds
/// the connection broken fails (nothing is replayed), the next one goes
/// out on a new connection.
///
/// `tx_con` carries the WATCH/MULTI/EXEC transactions, one at a time under
/// its lock. A WATCH never carries over to a new connection: every error
/// aborts the transaction, so its EXEC is never sent on a connection that
/// did not WATCH.
pub struct RedisStore {
    client: redis::Client,
    con: ConnectionManager,
    tx_con: tokio::sync::Mutex<ConnectionManager>,
    masked: String,
    bytes_written: AtomicU64,
    scripts: Scripts,
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
            ConnectionManager::new_with_config(
                client.clone(),
                ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    // Each reconnection: a few quick tries, then the next
                    // command starts another.
                    .set_number_of_retries(RECONNECT_TRIES)
                    .set_factor(RECONNECT_FACTOR_MS)
                    .set_max_delay(RECONNECT_MAX_DELAY_MS),
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
        let scripts = Scripts::new();
        // Load the writer scripts now, so that their first use is one round
        // trip too (after a server restart EVALSHA falls back to EVAL once).
        for sc in [&scripts.mark, &scripts.acquire, &scripts.lease, &scripts.al] {
            sc.prepare_invoke()
                .load_async(&mut con)
                .await
                .map_err(unavailable)?;
        }
        Ok(Self {
            client,
            con,
            tx_con: tokio::sync::Mutex::new(tx_con),
            masked,
            bytes_written: AtomicU64::new(0),
            scripts,
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

    async fn exec(&self, con: &mut ConnectionManager, pipe: &redis::Pipeline) -> Result<bool> {
        self.bytes_written
            .fetch_add(pipe.get_packed_pipeline().len() as u64, Ordering::Relaxed);
        let r: Option<Value> = pipe.query_async(con).await.map_err(|e| self.err(e))?;
        Ok(r.is_some())
    }

    async fn unwatch(&self, con: &mut ConnectionManager) -> Result<()> {
        redis::cmd("UNWATCH")
            .query_async::<()>(con)
            .await
            .map_err(|e| self.err(e))
    }

    async fn watch_version(&self, con: &mut ConnectionManager, name: &str) -> Result<Option<u64>> {
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
            pipe.hset(image_key(name), "generation", h.generation)
                .ignore();
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

    async fn invoke(&self, inv: &redis::ScriptInvocation<'_>) -> Result<Vec<String>> {
        let mut con = self.con.clone();
        inv.invoke_async(&mut con).await.map_err(|e| self.err(e))
    }

    /// `mark.lua`; on a refusal, the exact error comes from the record.
    async fn set_bits(
        &self,
        name: &ImageName,
        node: &NodeId,
        generation: u64,
        bits: &[(u64, u64)],
        dirty: bool,
    ) -> Result<MarkOutcome> {
        let n = name.as_str();
        let change = encode(&Change::Dirty {
            name: n.into(),
            node: node.to_string(),
            version: 0,
            dirty,
            bits: bits.to_vec(),
        })?;
        // The version goes last: the script appends it and the brace.
        let prefix = change
            .strip_suffix("0}")
            .filter(|p| p.ends_with(r#","version":"#))
            .ok_or_else(|| Error::CorruptRecord {
                key: CHANNEL.into(),
                why: "a dirty change must serialize its version last".into(),
            })?
            .to_string();
        for _ in 0..crate::ops::MAX_RETRIES {
            let mut inv = self.scripts.mark.prepare_invoke();
            inv.key(image_key(n))
                .key(runs_key(n))
                .key(chunks_key(n, node.as_str()))
                .arg(generation)
                .arg(if dirty { "1" } else { "0" })
                .arg(format!("locus:oos:{n}:{}:", node.as_str()))
                .arg(node.as_str())
                .arg(&prefix);
            for (f, l) in bits {
                inv.arg(*f).arg(*l);
            }
            let r = self.invoke(&inv).await?;
            match r.first().map(String::as_str) {
                Some("ok") => {
                    let version = r.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                    return Ok(MarkOutcome { version });
                }
                Some("missing") => return Err(Error::ImageNotFound(name.clone())),
                Some("fenced") => return Err(fenced(name, generation, &r)),
                _ => {
                    // Bad range or not a location: the model names it.
                    let mut rec = self.load_image(name).await?;
                    rec.set_dirty_bits(node, bits, dirty)?;
                    // Placement changed in between: try again.
                }
            }
        }
        Err(Error::Contended(format!("image '{name}'")))
    }

    /// `lease.lua` (`op` is `renew` or `release`).
    async fn lease_op(
        &self,
        op: &str,
        name: &ImageName,
        holder: &NodeId,
        generation: u64,
        expires: UnixMillis,
    ) -> Result<()> {
        let n = name.as_str();
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(image_key(n))
            .key(lease_key(n))
            .arg(op)
            .arg(holder.as_str())
            .arg(generation)
            .arg(expires.0)
            .arg(encode(&n)?);
        let r = self.invoke(&inv).await?;
        match r.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("missing") => Err(Error::ImageNotFound(name.clone())),
            Some("fenced") => Err(fenced(name, generation, &r)),
            _ => Err(Error::LeaseNotHeld {
                image: name.clone(),
                holder: holder.clone(),
                generation,
            }),
        }
    }

    /// `al.lua`.
    async fn al_op(
        &self,
        op: &str,
        name: &ImageName,
        generation: u64,
        extent_size: Option<ByteSize>,
        extents: &[u64],
    ) -> Result<Vec<String>> {
        let n = name.as_str();
        let mut inv = self.scripts.al.prepare_invoke();
        inv.key(image_key(n))
            .key(al_key(n))
            .key(al_set_key(n))
            .arg(op)
            .arg(generation)
            .arg(extent_size.map_or(String::new(), |s| s.bytes().to_string()));
        for e in extents {
            inv.arg(*e);
        }
        let r = self.invoke(&inv).await?;
        match r.first().map(String::as_str) {
            Some("ok") => Ok(r),
            Some("missing") => Err(Error::ImageNotFound(name.clone())),
            Some("fenced") => Err(fenced(name, generation, &r)),
            _ => Err(Error::ActivityLogNotTakenOver {
                image: name.clone(),
                generation,
                log_generation: r.get(1).and_then(|g| g.parse().ok()).unwrap_or(0),
            }),
        }
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
            pipe.hset(image_key(name), "generation", rec.image.generation)
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
            let mut image: Image = decode(&key, header)?;
            if let Some(g) = head.get("generation").and_then(|g| g.parse().ok()) {
                image.generation = g;
            }
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
            pipe.cmd("HMGET")
                .arg(image_key(n))
                .arg("header")
                .arg("generation");
        }
        let headers: Vec<(Option<String>, Option<u64>)> =
            pipe.query_async(&mut con).await.map_err(|e| self.err(e))?;
        names
            .iter()
            .zip(headers)
            .filter_map(|(n, (h, g))| {
                h.map(|h| {
                    let mut i: Image = decode(&image_key(n), &h)?;
                    if let Some(g) = g {
                        i.generation = g;
                    }
                    Ok(i)
                })
            })
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
        pipe.del(lease_key(n))
            .ignore()
            .del(al_key(n))
            .ignore()
            .del(al_set_key(n))
            .ignore();
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
        let n = name.as_str();
        let expires = now.plus(ttl_ms);
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.key(image_key(n))
            .key(lease_key(n))
            .arg(holder.as_str())
            .arg(now.0)
            .arg(expires.0)
            .arg(encode(&n)?)
            .arg(encode(&holder.as_str())?);
        let r = self.invoke(&inv).await?;
        let num = |i: usize| r.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match r.first().map(String::as_str) {
            Some("ok") => Ok(Lease {
                holder: holder.clone(),
                generation: num(1),
                expires,
            }),
            Some("missing") => Err(Error::ImageNotFound(name.clone())),
            _ => Err(Error::LeaseHeld {
                image: name.clone(),
                holder: NodeId::new(r.get(1).cloned().unwrap_or_default()).map_err(|e| {
                    Error::CorruptRecord {
                        key: lease_key(n),
                        why: e.to_string(),
                    }
                })?,
                generation: num(2),
                expires: UnixMillis(num(3)),
            }),
        }
    }

    async fn renew_lease(
        &self,
        name: &ImageName,
        holder: &NodeId,
        generation: u64,
        ttl_ms: u64,
        now: UnixMillis,
    ) -> Result<Lease> {
        let expires = now.plus(ttl_ms);
        self.lease_op("renew", name, holder, generation, expires)
            .await?;
        Ok(Lease {
            holder: holder.clone(),
            generation,
            expires,
        })
    }

    async fn release_lease(
        &self,
        name: &ImageName,
        holder: &NodeId,
        generation: u64,
    ) -> Result<()> {
        self.lease_op("release", name, holder, generation, UnixMillis(0))
            .await
    }

    async fn durability(&self) -> Result<Durability> {
        let mut con = self.con.clone();
        let got: std::result::Result<Vec<String>, redis::RedisError> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut con)
            .await;
        let pairs = match got {
            Ok(p) => p,
            // CONFIG may be renamed or refused (managed Redis): say so.
            Err(e) => {
                return Ok(Durability {
                    durable: false,
                    detail: format!("cannot read the persistence settings (CONFIG GET: {e})"),
                })
            }
        };
        let get = |key: &str| {
            pairs
                .chunks(2)
                .find(|kv| kv[0] == key)
                .and_then(|kv| kv.get(1).cloned())
                .unwrap_or_else(|| "?".into())
        };
        let (aof, fsync) = (get("appendonly"), get("appendfsync"));
        Ok(Durability {
            durable: aof == "yes" && fsync == "always",
            detail: format!("appendonly {aof}, appendfsync {fsync}"),
        })
    }

    async fn get_lease(&self, name: &ImageName) -> Result<Option<Lease>> {
        let mut con = self.con.clone();
        let n = name.as_str();
        let (exists, (holder, generation, expires)): (
            bool,
            (Option<String>, Option<u64>, Option<u64>),
        ) = redis::pipe()
            .atomic()
            .exists(image_key(n))
            .cmd("HMGET")
            .arg(lease_key(n))
            .arg("holder")
            .arg("generation")
            .arg("expires")
            .query_async(&mut con)
            .await
            .map_err(|e| self.err(e))?;
        if !exists {
            return Err(Error::ImageNotFound(name.clone()));
        }
        match (holder, generation, expires) {
            (Some(h), Some(generation), Some(expires)) => Ok(Some(Lease {
                holder: NodeId::new(h).map_err(|e| Error::CorruptRecord {
                    key: lease_key(n),
                    why: e.to_string(),
                })?,
                generation,
                expires: UnixMillis(expires),
            })),
            _ => Ok(None),
        }
    }

    async fn al_add(&self, name: &ImageName, generation: u64, extents: &[u64]) -> Result<()> {
        self.al_op("add", name, generation, None, extents)
            .await
            .map(drop)
    }

    async fn al_remove(&self, name: &ImageName, generation: u64, extents: &[u64]) -> Result<()> {
        self.al_op("rem", name, generation, None, extents)
            .await
            .map(drop)
    }

    async fn al_get(&self, name: &ImageName) -> Result<ActivityLog> {
        let mut con = self.con.clone();
        let n = name.as_str();
        let (exists, (generation, size), extents): (
            bool,
            (Option<u64>, Option<u64>),
            std::collections::BTreeSet<u64>,
        ) = redis::pipe()
            .atomic()
            .exists(image_key(n))
            .cmd("HMGET")
            .arg(al_key(n))
            .arg("generation")
            .arg("extent_size")
            .smembers(al_set_key(n))
            .query_async(&mut con)
            .await
            .map_err(|e| self.err(e))?;
        if !exists {
            return Err(Error::ImageNotFound(name.clone()));
        }
        Ok(match (generation, size) {
            (Some(generation), Some(size)) => ActivityLog {
                generation,
                extent_size: ByteSize(size),
                extents,
            },
            _ => ActivityLog::default(),
        })
    }

    async fn al_reset(
        &self,
        name: &ImageName,
        generation: u64,
        extent_size: ByteSize,
        extents: &[u64],
    ) -> Result<ActivityLog> {
        super::embedded::check_extent_size(extent_size)?;
        let r = self
            .al_op("reset", name, generation, Some(extent_size), extents)
            .await?;
        let bad = |why: &str| Error::CorruptRecord {
            key: al_key(name.as_str()),
            why: why.into(),
        };
        let old_generation: u64 = r
            .get(1)
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| bad("bad generation"))?;
        if old_generation == 0 {
            return Ok(ActivityLog::default());
        }
        Ok(ActivityLog {
            generation: old_generation,
            extent_size: ByteSize(
                r.get(2)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("bad extent size"))?,
            ),
            extents: r[3..]
                .iter()
                .map(|e| e.parse().map_err(|_| bad("bad extent")))
                .collect::<Result<_>>()?,
        })
    }
}
