//! Unit-level rules of the replication core, one group per invariant
//! (ARCHITECTURE.md). The simulation in `sim.rs` checks them together.

use std::collections::{BTreeMap, BTreeSet};

use blockmap::types::NodeId;
use drbd_like_sync::core::activity_log::{ActivityLog, AlConfig, Begin};
use drbd_like_sync::core::fence::{Admission, Fenced, GenerationGate};
use drbd_like_sync::core::lease::{Lease, LeaseConfig, LeaseEffect, LeaseEvent};
use drbd_like_sync::core::read::{ReadChoice, ReadCopy, ReaderPlace};
use drbd_like_sync::core::reconcile::{
    plan, ExtentCopies, Method, ReconcileEffect, ReconcileEvent, Reconciler,
};
use drbd_like_sync::core::write::{
    AckEvent, BlockView, CopyState, FailReason, FlushPlan, LocationView, MarkDirty, Status,
    WriteFailure, WritePlan,
};
use drbd_like_sync::core::{ByteRange, ExtentIndex, Generation, Millis};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn view(range: ByteRange, locs: &[(&str, CopyState)]) -> BlockView {
    BlockView {
        range,
        locations: locs
            .iter()
            .map(|(s, st)| LocationView {
                node: n(s),
                state: *st,
            })
            .collect(),
    }
}

const IN: CopyState = CopyState::InSync;

fn step(t: &mut drbd_like_sync::core::write::AckTracker, ev: AckEvent) -> (Vec<MarkDirty>, Status) {
    let s = t.step(ev).unwrap_or_else(|e| panic!("{e}"));
    (s.marks, s.status)
}

// ---- invariant 1: protocol C -------------------------------------------

#[test]
fn good_only_after_every_in_sync_copy_accepted() {
    let r = ByteRange::new(0, 4096);
    let p = WritePlan::new(r, &[view(r, &[("a", IN), ("b", IN), ("c", IN)])]).unwrap();
    assert_eq!(p.sends().len(), 3);
    let (mut t, first) = p.start();
    assert!(first.is_empty());
    assert_eq!(step(&mut t, AckEvent::CopyAccepted(n("a"))).1, Status::Wait);
    assert_eq!(step(&mut t, AckEvent::CopyAccepted(n("b"))).1, Status::Wait);
    assert_eq!(step(&mut t, AckEvent::CopyAccepted(n("c"))).1, Status::Good);
}

#[test]
fn failed_copy_is_marked_durably_for_exactly_its_ranges_before_good() {
    let r = ByteRange::new(0, 8192);
    let b0 = ByteRange::new(0, 4096);
    let b1 = ByteRange::new(4096, 4096);
    let p = WritePlan::new(
        r,
        &[
            view(b0, &[("a", IN), ("b", IN)]),
            view(b1, &[("a", IN), ("c", IN)]),
        ],
    )
    .unwrap();
    let (mut t, _) = p.start();
    assert_eq!(step(&mut t, AckEvent::CopyAccepted(n("a"))).1, Status::Wait);
    let (marks, st) = step(&mut t, AckEvent::CopyFailed(n("b"), FailReason::Timeout));
    assert_eq!(st, Status::Wait, "GOOD must wait for the mark");
    assert_eq!(
        marks,
        vec![MarkDirty {
            node: n("b"),
            ranges: vec![b0]
        }]
    );
    assert_eq!(step(&mut t, AckEvent::CopyAccepted(n("c"))).1, Status::Wait);
    assert_eq!(step(&mut t, AckEvent::MarkDurable(n("b"))).1, Status::Good);
}

#[test]
fn zero_accepting_copies_is_check_condition_never_good() {
    let r = ByteRange::new(0, 4096);
    let p = WritePlan::new(r, &[view(r, &[("a", IN), ("b", IN)])]).unwrap();
    let (mut t, _) = p.start();
    assert_eq!(
        step(&mut t, AckEvent::CopyFailed(n("a"), FailReason::Io)).1,
        Status::Wait
    );
    let (marks, st) = step(&mut t, AckEvent::CopyFailed(n("b"), FailReason::Io));
    assert_eq!(st, Status::CheckCondition(WriteFailure::NoCopyAccepted(r)));
    assert_eq!(marks.len(), 1, "failed copies are still marked");
    assert_eq!(step(&mut t, AckEvent::MarkDurable(n("a"))).1, Status::Sent);
    assert_eq!(step(&mut t, AckEvent::MarkDurable(n("b"))).1, Status::Sent);
}

#[test]
fn one_subrange_without_an_accepting_copy_is_check_condition() {
    let b0 = ByteRange::new(0, 4096);
    let b1 = ByteRange::new(4096, 4096);
    let p = WritePlan::new(
        ByteRange::new(0, 8192),
        &[view(b0, &[("a", IN)]), view(b1, &[("b", IN)])],
    )
    .unwrap();
    let (mut t, _) = p.start();
    step(&mut t, AckEvent::CopyAccepted(n("a")));
    let (_, st) = step(&mut t, AckEvent::CopyFailed(n("b"), FailReason::Io));
    assert_eq!(st, Status::CheckCondition(WriteFailure::NoCopyAccepted(b1)));
    assert_eq!(step(&mut t, AckEvent::MarkDurable(n("b"))).1, Status::Sent);
}

#[test]
fn failed_mark_is_check_condition() {
    let r = ByteRange::new(0, 4096);
    let (mut t, _) = WritePlan::new(r, &[view(r, &[("a", IN), ("b", IN)])])
        .unwrap()
        .start();
    step(&mut t, AckEvent::CopyAccepted(n("a")));
    step(&mut t, AckEvent::CopyFailed(n("b"), FailReason::Timeout));
    let (_, st) = step(&mut t, AckEvent::MarkFailed(n("b")));
    assert_eq!(st, Status::CheckCondition(WriteFailure::MarkFailed(n("b"))));
}

#[test]
fn out_of_sync_copies_get_nothing_and_partly_dirty_ones_are_marked_first() {
    let r = ByteRange::new(0, 4096);
    let p = WritePlan::new(
        r,
        &[view(
            r,
            &[
                ("a", IN),
                ("d", CopyState::Dirty),
                ("p", CopyState::PartlyDirty),
            ],
        )],
    )
    .unwrap();
    assert_eq!(p.sends().keys().cloned().collect::<Vec<_>>(), vec![n("a")]);
    let (mut t, first) = p.start();
    assert_eq!(
        first,
        vec![MarkDirty {
            node: n("p"),
            ranges: vec![r]
        }]
    );
    assert_eq!(step(&mut t, AckEvent::CopyAccepted(n("a"))).1, Status::Wait);
    assert_eq!(step(&mut t, AckEvent::MarkDurable(n("p"))).1, Status::Good);
    assert!(WritePlan::new(r, &[view(r, &[("d", CopyState::Dirty)])]).is_err());
}

#[test]
fn flush_follows_the_same_rule() {
    let r = ByteRange::new(0, 512);
    let copies: BTreeMap<NodeId, Vec<ByteRange>> = [(n("a"), vec![r]), (n("b"), vec![r])].into();
    let mut t = FlushPlan::new(copies.clone()).unwrap().start();
    step(&mut t, AckEvent::CopyAccepted(n("a")));
    let (marks, st) = step(&mut t, AckEvent::CopyFailed(n("b"), FailReason::Io));
    assert_eq!((marks.len(), st), (1, Status::Wait));
    assert_eq!(step(&mut t, AckEvent::MarkDurable(n("b"))).1, Status::Good);
    let mut t = FlushPlan::new(copies).unwrap().start();
    step(&mut t, AckEvent::CopyFailed(n("a"), FailReason::Io));
    let (_, st) = step(&mut t, AckEvent::CopyFailed(n("b"), FailReason::Io));
    assert!(matches!(st, Status::CheckCondition(_)));
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/core_rules.txt",
        ))),
        ..ProptestConfig::default()
    })]
    /// Random plans and random outcomes, in random order: the tracker says
    /// GOOD exactly when the rule of invariant 1 holds, and never otherwise.
    #[test]
    fn ack_rule_matches_an_oracle(
        blocks in proptest::collection::vec(proptest::collection::vec(0u8..4, 1..4), 1..4),
        outcomes in proptest::collection::vec((any::<bool>(), any::<bool>()), 4),
        order in Just(()).prop_perturb(|_, mut rng| { let mut v: Vec<usize> = (0..4).collect(); for i in (1..4).rev() { v.swap(i, (rng.next_u32() as usize) % (i + 1)); } v }),
    ) {
        let names = ["a", "b", "c", "d"];
        let views: Vec<BlockView> = blocks.iter().enumerate().map(|(i, locs)| {
            let mut set: Vec<&str> = locs.iter().map(|&k| names[k as usize]).collect();
            set.sort(); set.dedup();
            view(ByteRange::new(i as u64 * 4096, 4096), &set.iter().map(|s| (*s, IN)).collect::<Vec<_>>())
        }).collect();
        let plan = WritePlan::new(ByteRange::new(0, 4096 * blocks.len() as u64), &views).unwrap();
        let nodes: Vec<NodeId> = plan.sends().keys().cloned().collect();
        let (mut t, _) = plan.start();
        let mut answer = None;
        let record = |st: Status, answer: &mut Option<Status>| {
            if st != Status::Wait && st != Status::Sent { prop_assert!(answer.is_none()); *answer = Some(st); }
            Ok(())
        };
        for &i in &order {
            let Some(node) = nodes.get(i) else { continue };
            let (accept, mark_ok) = outcomes[i];
            if accept {
                let s = t.step(AckEvent::CopyAccepted(node.clone())).unwrap();
                record(s.status, &mut answer)?;
            } else {
                let s = t.step(AckEvent::CopyFailed(node.clone(), FailReason::Io)).unwrap();
                record(s.status, &mut answer)?;
                let ev = if mark_ok { AckEvent::MarkDurable(node.clone()) } else { AckEvent::MarkFailed(node.clone()) };
                let s = t.step(ev).unwrap();
                record(s.status, &mut answer)?;
            }
        }
        let idx = |node: &NodeId| nodes.iter().position(|x| x == node).unwrap();
        let every_piece_accepted = views.iter().all(|v| v.locations.iter().any(|l| outcomes[idx(&l.node)].0));
        let marks_ok = nodes.iter().enumerate().all(|(i, _)| outcomes[i].0 || outcomes[i].1);
        let good = answer == Some(Status::Good);
        prop_assert_eq!(good, every_piece_accepted && marks_ok);
        prop_assert!(answer.is_some());
    }
}

// ---- invariant 3: reads only from in-sync copies -----------------------

fn rc(node: &str, site: &str, in_sync: bool, lat: Option<u64>) -> ReadCopy {
    ReadCopy {
        node: n(node),
        site: Some(site.into()),
        in_sync,
        latency_us: lat,
    }
}

#[test]
fn read_order_is_local_then_site_then_latency_and_skips_out_of_sync() {
    let place = ReaderPlace {
        node: n("me"),
        site: Some("s1".into()),
    };
    let copies = [
        rc("far-fast", "s2", true, Some(10)),
        rc("near-slow", "s1", true, Some(900)),
        rc("near-fast", "s1", true, Some(100)),
        rc("me", "s1", true, Some(5000)),
        rc("stale", "s1", false, Some(1)),
    ];
    let r = ByteRange::new(0, 512);
    let c = ReadChoice::new(r, &place, &copies).unwrap();
    assert_eq!(
        c.candidates(),
        &[n("me"), n("near-fast"), n("near-slow"), n("far-fast")]
    );
    assert!(ReadChoice::new(r, &place, &[rc("stale", "s1", false, None)]).is_err());
}

#[test]
fn read_failure_marks_the_copy_and_tries_the_next_until_none_is_left() {
    let place = ReaderPlace {
        node: n("me"),
        site: None,
    };
    let r = ByteRange::new(512, 512);
    let mut c = ReadChoice::new(
        r,
        &place,
        &[rc("me", "x", true, None), rc("b", "x", true, None)],
    )
    .unwrap();
    let (next, mark) = c.next_after_failure(&n("me")).unwrap();
    assert_eq!(next, n("b"));
    assert_eq!(
        mark,
        MarkDirty {
            node: n("me"),
            ranges: vec![r]
        }
    );
    assert!(
        c.next_after_failure(&n("me")).is_err(),
        "only the current copy can fail"
    );
    assert!(c.next_after_failure(&n("b")).is_err());
}

// ---- invariant 4: lease and fencing ------------------------------------

fn serving(cfg: LeaseConfig, at: Millis, g: Generation) -> Lease {
    let mut l = Lease::new(cfg);
    l.step(LeaseEvent::Acquire, at).unwrap();
    l.step(LeaseEvent::Granted(g), at).unwrap();
    assert!(!l.may_ack(at), "no ack while reconciling");
    l.step(LeaseEvent::ReconcileDone, at).unwrap();
    l
}

#[test]
fn lease_deadline_is_measured_from_when_the_renewal_was_sent() {
    let cfg = LeaseConfig {
        ttl: Millis(10_000),
        margin: Millis(2_000),
        renew_after: Millis(3_000),
    };
    let mut l = serving(cfg, Millis(0), Generation(1));
    assert!(l.may_ack(Millis(7_999)) && !l.may_ack(Millis(8_000)));
    assert_eq!(
        l.tick(Millis(3_000)),
        vec![LeaseEffect::SendRenew(Generation(1))]
    );
    // The reply is slow: it arrives 4 s after the request was sent.
    l.step(LeaseEvent::RenewOk, Millis(7_000)).unwrap();
    // Deadline = send time 3000 + ttl - margin, not 7000 + ttl - margin.
    assert!(l.may_ack(Millis(10_999)));
    assert!(!l.may_ack(Millis(11_000)));
    assert!(!l.may_ack(Millis(14_000)));
}

#[test]
fn a_writer_that_cannot_renew_stops_acking_before_the_ttl() {
    let cfg = LeaseConfig::default();
    let mut l = serving(cfg, Millis(100), Generation(3));
    let mut now = Millis(100);
    let mut stopped_at = None;
    while now < Millis(100 + cfg.ttl.0) {
        for fx in l.tick(now) {
            match fx {
                LeaseEffect::SendRenew(_) => {
                    l.step(LeaseEvent::RenewFailed, now).map(|_| ()).unwrap()
                }
                LeaseEffect::StopServing => stopped_at = stopped_at.or(Some(now)),
                _ => {}
            }
        }
        if l.may_ack(now) {
            assert!(now.0 < 100 + cfg.ttl.0 - cfg.margin.0);
        }
        now = now.plus(Millis(250));
    }
    assert!(stopped_at.is_some_and(|t| t.0 < 100 + cfg.ttl.0));
    // A takeover grants the next generation.
    let l2 = serving(cfg, now, Generation(3).next());
    assert_eq!(l2.generation(), Some(Generation(4)));
}

#[test]
fn fencing_refuses_older_generations_and_persists_newer_ones_first() {
    let mut g = GenerationGate::recover(Generation(2));
    assert_eq!(g.check(Generation(2)), Ok(Admission::Proceed));
    assert_eq!(
        g.check(Generation(1)),
        Err(Fenced {
            seen: Generation(1),
            current: Generation(2)
        })
    );
    assert_eq!(
        g.check(Generation(3)),
        Ok(Admission::PersistFirst(Generation(3)))
    );
    assert_eq!(
        g.check(Generation(3)),
        Ok(Admission::AwaitPersist(Generation(3)))
    );
    assert_eq!(
        g.check(Generation(2)),
        Err(Fenced {
            seen: Generation(2),
            current: Generation(3)
        })
    );
    assert_eq!(g.durable(), Generation(2));
    g.persisted(Generation(3));
    assert_eq!(g.check(Generation(3)), Ok(Admission::Proceed));
    // A restart recovers the durable value only.
    let mut r = GenerationGate::recover(g.durable());
    assert!(r.check(Generation(2)).is_err());
}

// ---- invariant 5: activity log and reconciliation ----------------------

const MIB4: u64 = 4 << 20;

#[test]
fn steady_state_working_set_costs_no_store_round_trips() {
    let mut al = ActivityLog::new(AlConfig {
        extent_size: MIB4,
        capacity: 4,
    });
    let w = |e: u64| ByteRange::new(e * MIB4 + 4096, 4096);
    for e in 0..4 {
        match al.begin_write(w(e)).unwrap() {
            Begin::Wait(Some(t)) => assert!(al.extents_persisted(t.id).unwrap().is_none()),
            other => panic!("{other:?}"),
        }
        al.end_write(w(e)).unwrap();
    }
    let warm = al.round_trips();
    assert_eq!(warm, 4);
    for i in 0..1000 {
        assert_eq!(al.begin_write(w(i % 4)).unwrap(), Begin::Go);
        al.end_write(w(i % 4)).unwrap();
    }
    assert_eq!(
        al.round_trips(),
        warm,
        "working-set writes cost no round trip"
    );
    // A fifth extent evicts the least recently used one, in the same txn.
    let Begin::Wait(Some(t)) = al.begin_write(w(9)).unwrap() else {
        panic!()
    };
    assert_eq!((t.hot.len(), t.cool.len()), (1, 1));
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/core_rules.txt",
        ))),
        ..ProptestConfig::default()
    })]
    /// Random begin/end/persist schedules against a model store: the store's
    /// hot set always covers every extent of every write that was let go.
    #[test]
    fn persisted_hot_set_covers_every_write_in_flight(
        ops in proptest::collection::vec((0u8..3, 0u64..12, 1u64..3), 1..200),
    ) {
        let mut al = ActivityLog::new(AlConfig { extent_size: 1024, capacity: 3 });
        let mut store: BTreeSet<ExtentIndex> = BTreeSet::new();
        let mut txns = std::collections::VecDeque::new();
        let mut held: Vec<ByteRange> = Vec::new();
        let mut sent: Vec<ByteRange> = Vec::new();
        for (op, at, len) in ops {
            match op {
                0 => {
                    let r = ByteRange::new(at * 1024 + 100, len * 1024);
                    match al.begin_write(r) {
                        Ok(Begin::Go) => sent.push(r),
                        Ok(Begin::Wait(t)) => { txns.extend(t); held.push(r) }
                        Err(_) => {}
                    }
                }
                1 => if let Some(t) = txns.pop_front() {
                    for e in &t.cool { store.remove(e); }
                    store.extend(t.hot.iter().copied());
                    txns.extend(al.extents_persisted(t.id).unwrap());
                    let (ready, still): (Vec<_>, Vec<_>) = held.drain(..).partition(|r| al.ready(*r));
                    held = still;
                    sent.extend(ready);
                },
                _ => if !sent.is_empty() {
                    let r = sent.remove(at as usize % sent.len());
                    al.end_write(r).unwrap();
                },
            }
            for r in &sent {
                for e in al.extents_of(*r) {
                    prop_assert!(store.contains(&e), "extent {:?} in flight but not persisted", e);
                }
            }
        }
    }
}

#[test]
fn reconciliation_marks_unreachable_copies_and_the_old_writers_own() {
    let x = |e: u64, copies: &[&str]| ExtentCopies {
        extent: ExtentIndex(e),
        range: ByteRange::new(e * MIB4, MIB4),
        in_sync: copies.iter().map(|s| n(s)).collect(),
        partly_in_sync: vec![],
    };
    let reachable: BTreeSet<NodeId> = [n("old"), n("b"), n("c")].into();
    let p = plan(
        &[x(0, &["old", "b", "c", "down"]), x(1, &["b"])],
        &reachable,
        Some(&n("old")),
    )
    .unwrap();
    assert_eq!(p[0].source, n("b"));
    assert_eq!(p[0].dests, vec![n("c")]);
    assert_eq!(p[0].marks, vec![n("old"), n("down")]);
    assert!(p[1].dests.is_empty() && p[1].marks.is_empty());
    let (mut r, fx) = Reconciler::start(&p, Method::CopyAll);
    let marks = fx
        .iter()
        .filter(|f| matches!(f, ReconcileEffect::Mark(..)))
        .count();
    assert_eq!((fx.len(), marks), (3, 2));
    assert!(!r.done());
    r.step(ReconcileEvent::MarkDurable(ExtentIndex(0), n("old")))
        .unwrap();
    r.step(ReconcileEvent::MarkDurable(ExtentIndex(0), n("down")))
        .unwrap();
    assert!(!r.done(), "serving waits for every copy");
    r.step(ReconcileEvent::CopyDone(ExtentIndex(0), n("c")))
        .unwrap();
    assert!(r.done());
    assert!(plan(&[x(2, &["old", "down"])], &reachable, Some(&n("old"))).is_err());
}

// ---- invariant 6: resync batches ----------------------------------------

mod resync_rules {
    use super::n;
    use drbd_like_sync::core::resync::{
        batches, dirty_bytes, Batch, BatchCopy, BatchEffect, BatchError, BatchEvent, BatchLimits,
        BatchState, Pacer, SourcePiece,
    };
    use drbd_like_sync::core::{ByteRange, Millis};

    #[test]
    fn dirty_bits_become_batches_with_one_source_list_each() {
        // Bits of 4 KiB; the image ends 1 KiB into bit 9.
        let dirty = dirty_bytes(&[(0, 2), (2, 4), (8, 10)], 4096, 8 * 4096 + 4096 + 1024);
        assert_eq!(
            dirty,
            vec![ByteRange::new(0, 16384), ByteRange::new(32768, 5120)]
        );
        // Two parts with different in-sync copies; the second has only the
        // destination itself: it cannot be copied, and is named.
        let pieces = vec![
            (ByteRange::new(0, 32768), vec![n("a"), n("b")]),
            (ByteRange::new(32768, 5120), vec![n("b")]),
        ];
        let limits = BatchLimits {
            max_span: 8192,
            max_parts: 4,
        };
        let (got, orphans) = batches(&n("b"), &dirty, &pieces, limits);
        assert_eq!(
            got.iter().map(|b| b.range).collect::<Vec<_>>(),
            vec![ByteRange::new(0, 8192), ByteRange::new(8192, 8192)]
        );
        assert!(got.iter().all(|b| b.sources == vec![n("a")]));
        assert_eq!(orphans, vec![ByteRange::new(32768, 5120)]);
        // Scattered small ranges share a batch, within its span and count.
        let scattered: Vec<ByteRange> = (0..6).map(|i| ByteRange::new(i * 8192, 4096)).collect();
        let one = vec![(ByteRange::new(0, 1 << 20), vec![n("a")])];
        let limits = BatchLimits {
            max_span: 1 << 20,
            max_parts: 4,
        };
        let (got, _) = batches(&n("b"), &scattered, &one, limits);
        assert_eq!(
            got.iter()
                .map(|b| (b.range, b.parts.len()))
                .collect::<Vec<_>>(),
            vec![
                (ByteRange::new(0, 3 * 8192 + 4096), 4),
                (ByteRange::new(4 * 8192, 8192 + 4096), 2)
            ]
        );
        assert_eq!(got[0].bytes(), 4 * 4096);
    }

    #[test]
    fn holes_join_the_data_batches_around_them() {
        use drbd_like_sync::core::resync::join_holes;
        let b = |off: u64, len: u64| Batch {
            dest: n("c"),
            range: ByteRange::new(off, len),
            parts: vec![ByteRange::new(off, len)],
            sources: vec![n("a")],
        };
        let limits = BatchLimits {
            max_span: 8 << 20,
            max_parts: 8,
        };
        // 4 MiB of data, a 1 GiB hole, 4 MiB, a hole, 4 MiB: the holes ride
        // along with the batch before them, whose data stays within 8 MiB.
        let list = vec![
            (b(0, 4 << 20), false),
            (b(4 << 20, 1 << 30), true),
            (b((1 << 30) + (4 << 20), 4 << 20), false),
            (b((1 << 30) + (8 << 20), 1 << 20), true),
            (b((1 << 30) + (9 << 20), 4 << 20), false),
        ];
        let got = join_holes(list, limits);
        assert_eq!(
            got.iter()
                .map(|b| (b.range, b.parts.len()))
                .collect::<Vec<_>>(),
            vec![
                (ByteRange::new(0, (1 << 30) + (9 << 20)), 4),
                (ByteRange::new((1 << 30) + (9 << 20), 4 << 20), 1),
            ]
        );
    }

    fn batch() -> Batch {
        Batch {
            dest: n("c"),
            range: ByteRange::new(0, 8192),
            parts: vec![ByteRange::new(0, 8192)],
            sources: vec![n("a"), n("b")],
        }
    }

    #[test]
    fn bits_clear_only_after_the_destination_flushed() {
        let (mut b, fx) = BatchCopy::start::<bytes::Bytes>(batch());
        assert_eq!(fx, BatchEffect::Read { from: n("a") });
        // The first source fails; the second answers with data and a hole.
        assert_eq!(
            b.step::<bytes::Bytes>(BatchEvent::SourceFailed("down".into())),
            BatchEffect::Read { from: n("b") }
        );
        let pieces = vec![
            SourcePiece::Data(0, bytes::Bytes::from(vec![7u8; 4096])),
            SourcePiece::Hole(ByteRange::new(4096, 4096)),
        ];
        assert!(matches!(
            b.step(BatchEvent::SourceRead(pieces)),
            BatchEffect::Write(_)
        ));
        assert_eq!(b.bytes(), (4096, 4096));
        // A clear asked for before the flush is a shell bug: refused.
        let mut early = b.clone();
        assert_eq!(
            early.step::<bytes::Bytes>(BatchEvent::Cleared),
            BatchEffect::Finished
        );
        assert!(matches!(
            early.state(),
            BatchState::Failed(BatchError::Unexpected { .. })
        ));
        assert_eq!(
            b.step::<bytes::Bytes>(BatchEvent::Written),
            BatchEffect::Flush
        );
        assert_eq!(
            b.step::<bytes::Bytes>(BatchEvent::Flushed),
            BatchEffect::Clear
        );
        assert_eq!(
            b.step::<bytes::Bytes>(BatchEvent::Cleared),
            BatchEffect::Finished
        );
        assert_eq!(b.state(), &BatchState::Done);
    }

    #[test]
    fn a_failed_batch_keeps_its_bits() {
        // Pieces that do not tile the range are refused (a short source).
        let (mut b, _) = BatchCopy::start::<bytes::Bytes>(batch());
        let short = vec![SourcePiece::Data(0, bytes::Bytes::from(vec![1u8; 100]))];
        assert_eq!(b.step(BatchEvent::SourceRead(short)), BatchEffect::Finished);
        assert!(matches!(
            b.state(),
            BatchState::Failed(BatchError::NoSource(_))
        ));
        // The destination fails its flush: no clear is asked for.
        let (mut b, _) = BatchCopy::start::<bytes::Bytes>(batch());
        let hole = vec![SourcePiece::<bytes::Bytes>::Hole(ByteRange::new(0, 8192))];
        b.step(BatchEvent::SourceRead(hole));
        b.step::<bytes::Bytes>(BatchEvent::Written);
        assert_eq!(
            b.step::<bytes::Bytes>(BatchEvent::DestFailed("ENOSPC".into())),
            BatchEffect::Finished
        );
        assert!(matches!(
            b.state(),
            BatchState::Failed(BatchError::Dest { .. })
        ));
        // No source at all.
        let mut none = batch();
        none.sources.clear();
        let (b, fx) = BatchCopy::start::<bytes::Bytes>(none);
        assert_eq!(fx, BatchEffect::Finished);
        assert!(matches!(
            b.state(),
            BatchState::Failed(BatchError::NoSource(_))
        ));
    }

    #[test]
    fn the_pacer_keeps_to_its_rate() {
        // 1 MB/s: 10 batches of 100 kB take a second, after a 1 s burst.
        let mut p = Pacer::new(1_000_000);
        let mut now = Millis(10_000);
        for _ in 0..10 {
            now = p.spent(now, 100_000);
        }
        assert_eq!(now, Millis(10_000), "the first second is a burst");
        for _ in 0..10 {
            now = p.spent(now, 100_000);
        }
        assert_eq!(now, Millis(11_000));
        // Unpaced.
        let mut u = Pacer::new(0);
        assert_eq!(u.spent(Millis(5), u64::MAX), Millis(5));
    }
}

#[test]
fn verify_keeps_the_majority_and_breaks_ties_by_preference() {
    use drbd_like_sync::core::verify::judge;
    let sums = vec![
        (n("a"), vec![1, 2, 3, 4]),
        (n("b"), vec![1, 9, 3, 5]),
        (n("c"), vec![1, 2, 7, 6]),
    ];
    let d = judge(&sums, &[n("c"), n("a"), n("b")]);
    let got: Vec<(usize, Vec<NodeId>, Vec<NodeId>)> = d
        .into_iter()
        .map(|d| (d.chunk, d.majority, d.differ))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, vec![n("a"), n("c")], vec![n("b")]),
            (2, vec![n("a"), n("b")], vec![n("c")]),
            // Three-way split: the preferred copy (c) wins.
            (3, vec![n("c")], vec![n("a"), n("b")]),
        ]
    );
}
