//! The simulated cluster: storage nodes, the metadata store, the lossy
//! network and the writers that drive the replication core. `main.rs`
//! states the properties and generates the schedules.

use std::collections::{BTreeMap, BTreeSet};

use blockmap::types::NodeId;
use drbd_like_sync::core::activity_log::{ActivityLog, AlConfig, AlTxn, Begin};
use drbd_like_sync::core::fence::{Admission, GenerationGate};
use drbd_like_sync::core::lease::{Lease, LeaseConfig, LeaseEffect, LeaseEvent, LeaseState};
use drbd_like_sync::core::read::{ReadChoice, ReadCopy, ReaderPlace};
use drbd_like_sync::core::reconcile::{
    plan, ExtentCopies, Method, ReconcileEffect, ReconcileEvent, Reconciler, Side,
};
use drbd_like_sync::core::resync::{
    Batch, BatchCopy, BatchEffect, BatchEvent, BatchState, SourcePiece,
};
use drbd_like_sync::core::write::{
    AckEvent, AckTracker, BlockView, CopyState, FailReason, LocationView, MarkDirty, Status,
    WritePlan,
};
use drbd_like_sync::core::{ByteRange, ExtentIndex, Generation, Millis};

const BLOCK: u64 = 4096;
pub const BLOCKS: u64 = 8;
pub const NODES: usize = 3;
const EXTENT: u64 = 2 * BLOCK;
const LEASE: LeaseConfig = LeaseConfig {
    ttl: Millis(3_000),
    margin: Millis(500),
    renew_after: Millis(1_000),
};
/// A copy with no answer this long after the write was sent has failed.
const IO_TIMEOUT: u64 = 1_000;
/// A renewal with no reply after this long counts as failed.
const RENEW_TIMEOUT: u64 = 800;

fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("n{i}")).unwrap_or_else(|e| panic!("{e}"))
}

fn node_ix(n: &NodeId) -> usize {
    n.as_str()[1..].parse().unwrap_or(usize::MAX)
}

/// One storage node: a stamp per block (0 = never written) and its gate.
#[derive(Debug)]
pub struct Node {
    pub up: bool,
    pub data: Vec<u64>,
    pub gate: GenerationGate,
    pub durable_gen: Generation,
}

impl Node {
    /// Applies the gate; `true` when the op may proceed (a newer generation
    /// is persisted first, synchronously: the node's disk is durable).
    fn admit(&mut self, g: Generation) -> bool {
        match self.gate.check(g) {
            Ok(Admission::Proceed) => true,
            Ok(Admission::PersistFirst(g) | Admission::AwaitPersist(g)) => {
                self.durable_gen = g;
                self.gate.persisted(g);
                true
            }
            Err(_) => false,
        }
    }
}

/// The metadata store: durable; an op either happened or not.
#[derive(Debug, Default)]
pub struct Store {
    down: bool,
    generation: Generation,
    holder: Option<(usize, Millis)>,
    al: BTreeSet<ExtentIndex>,
    dirty: BTreeMap<usize, BTreeSet<u64>>,
}

impl Store {
    pub fn is_dirty(&self, node: usize, block: u64) -> bool {
        self.dirty.get(&node).is_some_and(|d| d.contains(&block))
    }
}

#[derive(Debug, Clone)]
pub enum Msg {
    /// Writer -> node: a write of `stamp` to blocks, with a generation.
    Write {
        writer: usize,
        node: usize,
        id: u64,
        gen: Generation,
        blocks: Vec<u64>,
        stamp: u64,
    },
    /// Node -> writer: the outcome.
    Reply {
        writer: usize,
        node: usize,
        id: u64,
        ok: bool,
    },
    /// Store -> writer: the renewal outcome.
    Renewed { writer: usize, ok: bool },
    /// Writer -> source node: read a block for resync batch `id`.
    SyncRead {
        writer: usize,
        node: usize,
        id: u64,
        gen: Generation,
        block: u64,
    },
    /// Source node -> writer: the block's stamp, or `None` (refused).
    SyncData {
        writer: usize,
        node: usize,
        id: u64,
        stamp: Option<u64>,
    },
    /// Writer -> destination node: the copied stamp.
    SyncWrite {
        writer: usize,
        node: usize,
        id: u64,
        gen: Generation,
        block: u64,
        stamp: u64,
    },
    /// Destination node -> writer: the outcome.
    SyncAck {
        writer: usize,
        node: usize,
        id: u64,
        ok: bool,
    },
}

impl Msg {
    /// (writer, node, direction): messages on one link arrive in order.
    fn link(&self) -> (usize, usize, u8) {
        match *self {
            Msg::Write { writer, node, .. } => (writer, node, 0),
            Msg::Reply { writer, node, .. } => (writer, node, 1),
            Msg::Renewed { writer, .. } => (writer, usize::MAX, 2),
            Msg::SyncRead { writer, node, .. } | Msg::SyncWrite { writer, node, .. } => {
                (writer, node, 0)
            }
            Msg::SyncData { writer, node, .. } | Msg::SyncAck { writer, node, .. } => {
                (writer, node, 1)
            }
        }
    }
}

#[derive(Debug)]
struct Pending {
    range: ByteRange,
    blocks: Vec<u64>,
    stamp: u64,
    sent_at: Millis,
    tracker: Option<AckTracker>,
    outstanding: BTreeSet<usize>,
    accepted: BTreeSet<usize>,
    planned: BTreeMap<u64, Vec<usize>>,
}

#[derive(Debug)]
struct Writer {
    node: usize,
    alive: bool,
    store_cut: bool,
    cut_from: BTreeSet<usize>,
    lease: Lease,
    al: ActivityLog,
    writes: BTreeMap<u64, Pending>,
    /// Resync batches in flight, each holding its block (the range lock).
    syncs: BTreeMap<u64, SyncBatch>,
}

/// One resync batch of one block into one destination.
#[derive(Debug)]
struct SyncBatch {
    block: u64,
    dest: usize,
    copy: BatchCopy,
    sent_at: Millis,
}

#[derive(Debug, Clone)]
pub enum Op {
    Write(u8, u8),
    ZombieWrite(u8, u8),
    Deliver(u16),
    DeliverAll,
    Drop(u16),
    Timeout,
    CrashNode(u8),
    RestartNode(u8),
    Partition(u8),
    Heal,
    CutStore,
    StoreDown,
    StoreUp,
    Advance(u16),
    CrashWriter,
    Takeover,
    /// The writer crashes, its lease runs out, the next writer takes over;
    /// the crashed writer's messages are still in flight.
    Failover,
    Read(u8),
    /// The current writer starts a resync batch of this block into its
    /// first dirty copy (invariant 6).
    Sync(u8),
}

pub struct Sim {
    pub now: Millis,
    pub nodes: Vec<Node>,
    pub store: Store,
    pub net: Vec<Msg>,
    writers: Vec<Writer>,
    pub next_stamp: u64,
    /// Last acknowledged stamp per block.
    pub acked: BTreeMap<u64, u64>,
    /// Every stamp sent for each block.
    pub issued: BTreeMap<u64, BTreeSet<u64>>,
    pub goods: u64,
}

impl Sim {
    pub fn new() -> Self {
        let nodes = (0..NODES)
            .map(|_| Node {
                up: true,
                data: vec![0; BLOCKS as usize],
                gate: GenerationGate::recover(Generation(0)),
                durable_gen: Generation(0),
            })
            .collect();
        let mut s = Sim {
            now: Millis(0),
            nodes,
            store: Store::default(),
            net: Vec::new(),
            writers: Vec::new(),
            next_stamp: 1,
            acked: BTreeMap::new(),
            issued: BTreeMap::new(),
            goods: 0,
        };
        s.takeover();
        s
    }

    fn current(&self) -> Option<usize> {
        self.writers.len().checked_sub(1)
    }

    fn store_ok(&self, w: usize) -> bool {
        !self.store.down && !self.writers[w].store_cut
    }

    fn reachable(&self, w: usize, n: usize) -> bool {
        self.nodes[n].up && !self.writers[w].cut_from.contains(&n)
    }

    /// A durable mark from writer `w`; marks are accepted from any
    /// generation (marking dirty is always safe).
    fn mark(&mut self, w: usize, m: &MarkDirty) -> bool {
        if !self.store_ok(w) {
            return false;
        }
        let n = node_ix(&m.node);
        for r in &m.ranges {
            for b in r.offset / BLOCK..r.end().div_ceil(BLOCK) {
                self.store.dirty.entry(n).or_default().insert(b);
            }
        }
        true
    }

    /// An activity-log transaction: refused unless `w` holds the lease.
    fn al_txn(&mut self, w: usize, t: &AlTxn) -> bool {
        let g = self.writers[w].lease.generation();
        if !self.store_ok(w) || g != Some(self.store.generation) {
            return false;
        }
        for e in &t.cool {
            self.store.al.remove(e);
        }
        self.store.al.extend(t.hot.iter().copied());
        true
    }

    // ---- writers ---------------------------------------------------------

    /// A new writer on the next node takes the lease, reconciles, serves.
    fn takeover(&mut self) {
        let now = self.now;
        let expired = self.store.holder.is_none_or(|(_, exp)| exp <= now);
        if self.store.down || !expired {
            // Refused: the current writer stays current.
            let mut l = Lease::new(LEASE);
            let _ = l.step(LeaseEvent::Acquire, now);
            let _ = l.step(LeaseEvent::Refused, now);
            return;
        }
        let w = self.writers.len();
        let old = self.current().map(|o| self.writers[o].node);
        self.writers.push(Writer {
            node: w % NODES,
            alive: true,
            store_cut: false,
            cut_from: BTreeSet::new(),
            lease: Lease::new(LEASE),
            al: ActivityLog::new(AlConfig {
                extent_size: EXTENT,
                capacity: 2,
            }),
            writes: BTreeMap::new(),
            syncs: BTreeMap::new(),
        });
        let _ = self.writers[w].lease.step(LeaseEvent::Acquire, now);
        self.store.generation = self.store.generation.next();
        self.store.holder = Some((w, now.plus(LEASE.ttl)));
        let g = self.store.generation;
        let _ = self.writers[w].lease.step(LeaseEvent::Granted(g), now);
        if self.reconcile(w, old) {
            let _ = self.writers[w].lease.step(LeaseEvent::ReconcileDone, now);
            let hot = self.store.al.clone();
            self.writers[w].al = ActivityLog::resume(self.writers[w].al.config(), hot);
        }
    }

    /// Runs the reconciliation of the store's AL extents synchronously.
    fn reconcile(&mut self, w: usize, old: Option<usize>) -> bool {
        let g = self.store.generation;
        let hot: Vec<ExtentIndex> = self.store.al.iter().copied().collect();
        let extents: Vec<ExtentCopies> = hot
            .iter()
            .map(|&e| {
                let blocks: Vec<u64> = (e.0 * 2..e.0 * 2 + 2).collect();
                let (mut full, mut part) = (vec![], vec![]);
                for n in 0..NODES {
                    let clean = blocks
                        .iter()
                        .filter(|&&b| !self.store.is_dirty(n, b))
                        .count();
                    if clean == blocks.len() {
                        full.push(node_id(n));
                    } else if clean > 0 {
                        part.push(node_id(n));
                    }
                }
                ExtentCopies {
                    extent: e,
                    range: ByteRange::new(e.0 * EXTENT, EXTENT),
                    in_sync: full,
                    partly_in_sync: part,
                }
            })
            .collect();
        let reachable: BTreeSet<NodeId> = (0..NODES)
            .filter(|&n| self.reachable(w, n))
            .map(node_id)
            .collect();
        let distrust = old.map(node_id);
        let Ok(p) = plan(&extents, &reachable, distrust.as_ref()) else {
            return false;
        };
        let (mut rec, mut fx) = Reconciler::start(&p, Method::CopyAll);
        while let Some(f) = fx.pop() {
            let ev = match f {
                ReconcileEffect::Copy {
                    extent, from, to, ..
                } => {
                    let (s, d) = (node_ix(&from), node_ix(&to));
                    if !(self.reachable(w, s) && self.nodes[s].admit(g)) {
                        ReconcileEvent::CopyFailed(extent, to, Side::Source)
                    } else if !(self.reachable(w, d) && self.nodes[d].admit(g)) {
                        ReconcileEvent::CopyFailed(extent, to, Side::Dest)
                    } else {
                        for b in extent.0 * 2..extent.0 * 2 + 2 {
                            self.nodes[d].data[b as usize] = self.nodes[s].data[b as usize];
                        }
                        ReconcileEvent::CopyDone(extent, to)
                    }
                }
                ReconcileEffect::Mark(e, m) => {
                    if self.mark(w, &m) {
                        ReconcileEvent::MarkDurable(e, m.node)
                    } else {
                        ReconcileEvent::MarkFailed(e, m.node)
                    }
                }
            };
            match rec.step(ev) {
                Ok(more) => fx.extend(more),
                Err(_) => return false,
            }
        }
        if !rec.done() {
            return false;
        }
        // (d) the reachable in-sync copies are identical on the hot extents.
        for e in &hot {
            for b in e.0 * 2..e.0 * 2 + 2 {
                let vals: BTreeSet<u64> = (0..NODES)
                    .filter(|&n| self.reachable(w, n) && !self.store.is_dirty(n, b))
                    .map(|n| self.nodes[n].data[b as usize])
                    .collect();
                assert!(
                    vals.len() <= 1,
                    "block {b} differs after reconcile: {vals:?}"
                );
            }
        }
        true
    }

    pub fn serving(&self, w: usize) -> bool {
        self.writers[w].alive && self.writers[w].lease.may_ack(self.now)
    }

    /// Writer `w` starts a write of `len` blocks at `block`.
    pub fn write(&mut self, w: usize, block: u64, len: u64) {
        let end = (block + len).min(BLOCKS);
        let range = ByteRange::new(block * BLOCK, (end - block) * BLOCK);
        if !self.serving(w) {
            return;
        }
        // The initiator never overlaps its own writes in this model, and a
        // write to a block that a resync batch holds waits (here: is not
        // issued; the range lock of the shell).
        if self.writers[w]
            .writes
            .values()
            .any(|p| p.range.intersect(&range).is_some())
            || self.writers[w]
                .syncs
                .values()
                .any(|s| (block..end).contains(&s.block))
        {
            return;
        }
        let begin = self.writers[w].al.begin_write(range);
        let ready = match begin {
            Ok(Begin::Go) => true,
            Ok(Begin::Wait(mut txn)) => {
                while let Some(t) = txn {
                    txn = if self.al_txn(w, &t) {
                        self.writers[w].al.extents_persisted(t.id).ok().flatten()
                    } else {
                        self.writers[w].al.txn_failed(t.id).ok().flatten()
                    };
                }
                self.writers[w].al.ready(range)
            }
            Err(_) => return,
        };
        if !ready {
            let _ = self.writers[w].al.end_write(range);
            return;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let blocks: Vec<u64> = (block..end).collect();
        let views: Vec<BlockView> = blocks
            .iter()
            .map(|&b| BlockView {
                range: ByteRange::new(b * BLOCK, BLOCK),
                locations: (0..NODES)
                    .map(|n| LocationView {
                        node: node_id(n),
                        state: if self.store.is_dirty(n, b) {
                            CopyState::Dirty
                        } else {
                            CopyState::InSync
                        },
                    })
                    .collect(),
            })
            .collect();
        let Ok(plan) = WritePlan::new(range, &views) else {
            let _ = self.writers[w].al.end_write(range);
            return;
        };
        let planned = blocks
            .iter()
            .map(|&b| {
                let ns = (0..NODES).filter(|&n| !self.store.is_dirty(n, b)).collect();
                (b, ns)
            })
            .collect();
        let gen = self.writers[w].lease.generation().unwrap_or_default();
        let targets: Vec<usize> = plan.sends().keys().map(node_ix).collect();
        let (tracker, first) = plan.start();
        assert!(
            first.is_empty(),
            "block-granular sim has no partly dirty copy"
        );
        for &n in &targets {
            self.net.push(Msg::Write {
                writer: w,
                node: n,
                id: stamp,
                gen,
                blocks: blocks.clone(),
                stamp,
            });
        }
        for &b in &blocks {
            self.issued.entry(b).or_default().insert(stamp);
        }
        self.writers[w].writes.insert(
            stamp,
            Pending {
                range,
                blocks,
                stamp,
                sent_at: self.now,
                tracker: Some(tracker),
                outstanding: targets.into_iter().collect(),
                accepted: BTreeSet::new(),
                planned,
            },
        );
    }

    /// Feeds one event to write `id` of writer `w`, persisting marks and
    /// answering the initiator.
    fn feed(&mut self, w: usize, id: u64, ev: AckEvent) {
        let mut queue = vec![ev];
        while let Some(ev) = queue.pop() {
            let Some(p) = self.writers[w].writes.get_mut(&id) else {
                return;
            };
            let Some(t) = p.tracker.as_mut() else { return };
            if let AckEvent::CopyAccepted(n) | AckEvent::CopyFailed(n, _) = &ev {
                if !p.outstanding.remove(&node_ix(n)) {
                    continue; // a late reply after a timeout
                }
                if matches!(ev, AckEvent::CopyAccepted(_)) {
                    p.accepted.insert(node_ix(n));
                }
            }
            let Ok(step) = t.step(ev) else { continue };
            for m in step.marks {
                let ok = self.mark(w, &m);
                queue.push(if ok {
                    AckEvent::MarkDurable(m.node)
                } else {
                    AckEvent::MarkFailed(m.node)
                });
            }
            match step.status {
                Status::Wait | Status::Sent => {}
                Status::Good => self.answer(w, id, true),
                Status::CheckCondition(_) => self.answer(w, id, false),
            }
        }
    }

    fn answer(&mut self, w: usize, id: u64, good: bool) {
        let Some(p) = self.writers[w].writes.remove(&id) else {
            return;
        };
        let _ = self.writers[w].al.end_write(p.range);
        // GOOD from the tracker still needs the lease (invariant 4).
        if !(good && self.serving(w)) {
            return;
        }
        // One writer: no newer generation was granted.
        assert_eq!(
            self.writers[w].lease.generation(),
            Some(self.store.generation),
            "a writer acknowledged after its lease passed on"
        );
        for b in &p.blocks {
            // (c) an accepting copy for every block, the rest marked.
            let planned = &p.planned[b];
            assert!(
                planned.iter().any(|n| p.accepted.contains(n)),
                "GOOD with no accepting copy"
            );
            for n in planned {
                assert!(p.accepted.contains(n) || self.store.is_dirty(*n, *b));
            }
            self.acked.insert(*b, p.stamp);
        }
        self.goods += 1;
    }

    /// Fails every copy of writer `w` still outstanding on a write sent at
    /// or before `before` (the writer's I/O timeout).
    fn fail_outstanding(&mut self, w: usize, before: Millis) {
        self.fail_syncs(w, before);
        let ids: Vec<(u64, Vec<usize>)> = self.writers[w]
            .writes
            .iter()
            .filter(|(_, p)| p.sent_at <= before)
            .map(|(id, p)| (*id, p.outstanding.iter().copied().collect()))
            .collect();
        for (id, ns) in ids {
            for n in ns {
                // A timed-out copy's connection is reset: what it had not
                // yet received is discarded, so an old write can never land
                // on top of a newer one. The replication protocol must give
                // the same guarantee (a per-connection epoch on the node).
                self.net.retain(
                    |m| !matches!(*m, Msg::Write { writer, node, .. } if writer == w && node == n),
                );
                self.feed(w, id, AckEvent::CopyFailed(node_id(n), FailReason::Timeout));
            }
        }
    }

    // ---- resync (invariant 6) -------------------------------------------

    /// Writer `w` starts a batch copying block `b` into the first copy that
    /// is dirty there, from the in-sync copies, holding the block.
    pub fn start_sync(&mut self, w: usize, b: u64) {
        if !self.serving(w) {
            return;
        }
        let range = ByteRange::new(b * BLOCK, BLOCK);
        let held = self.writers[w]
            .writes
            .values()
            .any(|p| p.range.intersect(&range).is_some())
            || self.writers[w].syncs.values().any(|s| s.block == b);
        let Some(dest) = (0..NODES).find(|&n| self.store.is_dirty(n, b)) else {
            return;
        };
        if held {
            return;
        }
        let sources = (0..NODES)
            .filter(|&n| !self.store.is_dirty(n, b))
            .map(node_id)
            .collect();
        let id = self.next_stamp;
        self.next_stamp += 1;
        let (copy, fx) = BatchCopy::start::<(u64, u64)>(Batch {
            dest: node_id(dest),
            range,
            parts: vec![range],
            sources,
        });
        self.writers[w].syncs.insert(
            id,
            SyncBatch {
                block: b,
                dest,
                copy,
                sent_at: self.now,
            },
        );
        self.sync_effect(w, id, fx);
    }

    /// Performs one effect of batch `id`, feeding back what completes at once.
    fn sync_effect(&mut self, w: usize, id: u64, mut fx: BatchEffect<(u64, u64)>) {
        loop {
            let Some(sb) = self.writers[w].syncs.get(&id) else {
                return;
            };
            let (block, dest) = (sb.block, sb.dest);
            let gen = self.writers[w].lease.generation().unwrap_or_default();
            let ev = match fx {
                BatchEffect::Read { from } => {
                    self.net.push(Msg::SyncRead {
                        writer: w,
                        node: node_ix(&from),
                        id,
                        gen,
                        block,
                    });
                    return;
                }
                BatchEffect::Write(pieces) => {
                    let Some(SourcePiece::Data(_, (stamp, _))) = pieces.first() else {
                        unreachable!("a simulated block is one data piece")
                    };
                    self.net.push(Msg::SyncWrite {
                        writer: w,
                        node: dest,
                        id,
                        gen,
                        block,
                        stamp: *stamp,
                    });
                    return;
                }
                // Simulated disks are stable once written.
                BatchEffect::Flush => BatchEvent::Flushed,
                BatchEffect::Clear => {
                    // Generation-checked, as the store's clear_dirty is.
                    let current = self.writers[w].lease.generation() == Some(self.store.generation);
                    if self.store_ok(w) && current {
                        if let Some(d) = self.store.dirty.get_mut(&dest) {
                            d.remove(&block);
                        }
                        BatchEvent::Cleared
                    } else {
                        BatchEvent::ClearFailed("store".into())
                    }
                }
                BatchEffect::Finished => {
                    // The batch lets go of its block.
                    self.writers[w].syncs.remove(&id);
                    return;
                }
            };
            let Some(sb) = self.writers[w].syncs.get_mut(&id) else {
                return;
            };
            fx = sb.copy.step(ev);
        }
    }

    /// Feeds an event from the network to batch `id`.
    fn sync_feed(&mut self, w: usize, id: u64, ev: BatchEvent<(u64, u64)>) {
        if !self.writers[w].alive {
            return;
        }
        let Some(sb) = self.writers[w].syncs.get_mut(&id) else {
            return;
        };
        let fx = sb.copy.step(ev);
        if matches!(sb.copy.state(), BatchState::Failed(_) | BatchState::Done) {
            debug_assert!(matches!(fx, BatchEffect::Finished));
        }
        self.sync_effect(w, id, fx);
    }

    /// Fails the resync batches of writer `w` sent at or before `before`:
    /// their links are reset (nothing they still carry lands) and their
    /// blocks are let go, bits still set.
    fn fail_syncs(&mut self, w: usize, before: Millis) {
        let late: Vec<u64> = self.writers[w]
            .syncs
            .iter()
            .filter(|(_, s)| s.sent_at <= before)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.net.retain(|m| {
                !matches!(*m, Msg::SyncRead { writer, id: i, .. }
                    | Msg::SyncWrite { writer, id: i, .. } if writer == w && i == id)
            });
            self.writers[w].syncs.remove(&id);
        }
    }

    // ---- network and time ----------------------------------------------

    /// Delivers message `i` (mod the count), or rather the oldest message
    /// on its link: links are FIFO (as TCP is), the network reorders only
    /// across links.
    fn deliver(&mut self, i: usize) {
        if self.net.is_empty() {
            return;
        }
        let link = self.net[i % self.net.len()].link();
        let Some(j) = self.net.iter().position(|m| m.link() == link) else {
            return;
        };
        let m = self.net.remove(j);
        match m {
            Msg::Write {
                writer,
                node,
                id,
                gen,
                blocks,
                stamp,
            } => {
                if !self.reachable(writer, node) {
                    return;
                }
                let ok = self.nodes[node].admit(gen);
                if ok {
                    for b in blocks {
                        self.nodes[node].data[b as usize] = stamp;
                    }
                }
                self.net.push(Msg::Reply {
                    writer,
                    node,
                    id,
                    ok,
                });
            }
            Msg::Reply {
                writer,
                node,
                id,
                ok,
            } => {
                if !self.writers[writer].alive || self.writers[writer].cut_from.contains(&node) {
                    return;
                }
                let ev = if ok {
                    AckEvent::CopyAccepted(node_id(node))
                } else {
                    AckEvent::CopyFailed(node_id(node), FailReason::Fenced)
                };
                self.feed(writer, id, ev);
            }
            Msg::SyncRead {
                writer,
                node,
                id,
                gen,
                block,
            } => {
                if !self.reachable(writer, node) {
                    return;
                }
                let stamp = self.nodes[node]
                    .admit(gen)
                    .then(|| self.nodes[node].data[block as usize]);
                self.net.push(Msg::SyncData {
                    writer,
                    node,
                    id,
                    stamp,
                });
            }
            Msg::SyncData {
                writer,
                node,
                id,
                stamp,
            } => {
                if self.writers[writer].cut_from.contains(&node) {
                    return;
                }
                let Some(block) = self.writers[writer].syncs.get(&id).map(|s| s.block) else {
                    return;
                };
                let ev = match stamp {
                    Some(st) => {
                        BatchEvent::SourceRead(vec![SourcePiece::Data(block * BLOCK, (st, BLOCK))])
                    }
                    None => BatchEvent::SourceFailed("fenced".into()),
                };
                self.sync_feed(writer, id, ev);
            }
            Msg::SyncWrite {
                writer,
                node,
                id,
                gen,
                block,
                stamp,
            } => {
                if !self.reachable(writer, node) {
                    return;
                }
                let ok = self.nodes[node].admit(gen);
                if ok {
                    self.nodes[node].data[block as usize] = stamp;
                }
                self.net.push(Msg::SyncAck {
                    writer,
                    node,
                    id,
                    ok,
                });
            }
            Msg::SyncAck {
                writer,
                node,
                id,
                ok,
            } => {
                if self.writers[writer].cut_from.contains(&node) {
                    return;
                }
                let ev = if ok {
                    BatchEvent::Written
                } else {
                    BatchEvent::DestFailed("fenced".into())
                };
                self.sync_feed(writer, id, ev);
            }
            Msg::Renewed { writer, ok } => {
                if self.writers[writer].alive {
                    let ev = if ok {
                        LeaseEvent::RenewOk
                    } else {
                        LeaseEvent::RenewFailed
                    };
                    let _ = self.writers[writer].lease.step(ev, self.now);
                }
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus(Millis(ms));
        for w in 0..self.writers.len() {
            if !self.writers[w].alive {
                continue;
            }
            if let LeaseState::Held(h) = self.writers[w].lease.state() {
                if h.renewal.is_some_and(|t| self.now.0 >= t.0 + RENEW_TIMEOUT) {
                    let _ = self.writers[w]
                        .lease
                        .step(LeaseEvent::RenewFailed, self.now);
                }
            }
            let now = self.now;
            self.fail_outstanding(w, now.minus(Millis(IO_TIMEOUT)));
            for fx in self.writers[w].lease.tick(now) {
                match fx {
                    LeaseEffect::SendRenew(g) => {
                        // The store applies the renewal when it is sent; the
                        // reply travels back over the lossy network.
                        let ok = self.store_ok(w)
                            && self.store.generation == g
                            && self
                                .store
                                .holder
                                .is_some_and(|(h, exp)| h == w && exp > now);
                        if ok {
                            self.store.holder = Some((w, now.plus(LEASE.ttl)));
                        }
                        if self.store_ok(w) {
                            self.net.push(Msg::Renewed { writer: w, ok });
                        } else {
                            let _ = self.writers[w].lease.step(LeaseEvent::RenewFailed, now);
                        }
                    }
                    LeaseEffect::StopServing => self.fail_outstanding(w, now),
                    _ => {}
                }
            }
        }
    }

    // ---- properties ----------------------------------------------------

    /// (a)/(b): reads through the read choice, and every in-sync copy.
    fn check_block(&self, b: u64) {
        let acked = self.acked.get(&b).copied().unwrap_or(0);
        let ok = |v: u64| {
            v == acked || (v > acked && self.issued.get(&b).is_some_and(|s| s.contains(&v)))
        };
        let copies: Vec<ReadCopy> = (0..NODES)
            .map(|n| ReadCopy {
                node: node_id(n),
                site: None,
                in_sync: !self.store.is_dirty(n, b),
                latency_us: Some(n as u64),
            })
            .collect();
        for (n, c) in copies.iter().enumerate() {
            if c.in_sync {
                let v = self.nodes[n].data[b as usize];
                assert!(
                    ok(v),
                    "block {b}: in-sync n{n} holds {v}, last acked {acked}"
                );
            }
        }
        let reader = self.current().map(|w| self.writers[w].node).unwrap_or(0);
        let place = ReaderPlace {
            node: node_id(reader),
            site: None,
        };
        let range = ByteRange::new(b * BLOCK, BLOCK);
        let Ok(mut choice) = ReadChoice::new(range, &place, &copies) else {
            return;
        };
        while let Some(c) = choice.current().cloned() {
            let n = node_ix(&c);
            if self.nodes[n].up {
                assert!(!self.store.is_dirty(n, b), "read from an out-of-sync copy");
                assert!(ok(self.nodes[n].data[b as usize]));
                return;
            }
            if choice.next_after_failure(&c).is_err() {
                return;
            }
        }
    }

    /// Runs a schedule, then delivers everything left and checks every block.
    pub fn run(&mut self, ops: &[Op]) {
        self.step_ops(ops);
        self.finish();
    }

    /// Runs a schedule, leaving messages in flight.
    pub fn step_ops(&mut self, ops: &[Op]) {
        for op in ops {
            let cur = self.current().unwrap_or(0);
            match *op {
                Op::Write(b, l) => self.write(cur, b.into(), l.into()),
                Op::ZombieWrite(b, l) => {
                    if let Some(z) = (0..cur).rev().find(|&z| self.writers[z].alive) {
                        self.write(z, b.into(), l.into());
                    }
                }
                Op::Deliver(i) => self.deliver(i.into()),
                Op::DeliverAll => {
                    // Newest first: a reordering of everything in flight.
                    while let Some(last) = self.net.len().checked_sub(1) {
                        self.deliver(last);
                    }
                }
                Op::Drop(i) => {
                    if !self.net.is_empty() {
                        let i = usize::from(i) % self.net.len();
                        self.net.remove(i);
                    }
                }
                Op::Timeout => self.fail_outstanding(cur, self.now),
                Op::CrashNode(n) => self.nodes[usize::from(n)].up = false,
                Op::RestartNode(n) => {
                    let node = &mut self.nodes[usize::from(n)];
                    node.up = true;
                    node.gate = GenerationGate::recover(node.durable_gen);
                }
                Op::Partition(n) => {
                    self.writers[cur].cut_from.insert(n.into());
                }
                Op::Heal => self.writers[cur].cut_from.clear(),
                Op::CutStore => self.writers[cur].store_cut = true,
                Op::StoreDown => self.store.down = true,
                Op::StoreUp => self.store.down = false,
                Op::Advance(ms) => self.advance(ms.into()),
                Op::CrashWriter => {
                    self.writers[cur].alive = false;
                    self.writers[cur].writes.clear();
                    self.writers[cur].syncs.clear();
                }
                Op::Takeover => self.takeover(),
                Op::Failover => {
                    self.writers[cur].alive = false;
                    self.writers[cur].writes.clear();
                    self.writers[cur].syncs.clear();
                    self.advance(LEASE.ttl.0);
                    self.takeover();
                }
                Op::Read(b) => self.check_block(b.into()),
                Op::Sync(b) => self.start_sync(cur, b.into()),
            }
        }
    }

    /// Late and zombie messages all arrive; then every block is checked.
    pub fn finish(&mut self) {
        // Newest first, so that old links (a zombie's) are drained last.
        while let Some(last) = self.net.len().checked_sub(1) {
            self.deliver(last);
        }
        for b in 0..BLOCKS {
            self.check_block(b);
        }
    }
}
