//! The admission gate of a logical unit's task set: task attributes
//! (SAM-5 §8.6, §8.5 task states). Locus reports one task set per LU shared
//! by every I_T nexus (Control mode page TST=000b, SPC-4 §7.5.8), so "earlier"
//! means earlier arrival at the LU, from any nexus.
//!
//! - SIMPLE enters once every HEAD OF QUEUE task and every earlier ORDERED
//!   task has ended; SIMPLE tasks among themselves run in any order
//!   (QUEUE ALGORITHM MODIFIER 1, unrestricted reordering).
//! - ORDERED enters once every earlier task and every HEAD OF QUEUE task
//!   has ended; later tasks wait for it.
//! - HEAD OF QUEUE enters at once, ahead of every waiting task.
//! - ACA is not supported (NACA=0), and is treated as SIMPLE.
//!
//! A task takes its place when it arrives ([`arrive`], synchronous, in the
//! order the transport starts commands), not when its future first runs.
//!
//! ```text
//!                 SIMPLE, gate clear (atomic count +1, no lock)
//!   arrive --------------------------------------------------> Entered --end--> gone
//!     |                                                          ^
//!     | ORDERED / HEAD OF QUEUE, or SIMPLE while the gate is set |
//!     v                                                          |
//!   (lock) HEAD OF QUEUE ----------------------------------------+
//!     |                                                          |
//!     '--> Waiting (FIFO) --front may enter (pump on each end)---'
//!            |
//!            '--ticket dropped--> gone (pump)
//! ```
//!
//! The fast path: one word holds the count of SIMPLE tasks that entered and
//! a SLOW flag, set (under the lock) while any ORDERED or HEAD OF QUEUE task
//! waits or runs. A SIMPLE task enters with one compare-and-swap while the
//! flag is clear and leaves with one subtraction; only when the flag is set
//! does either take the lock. Because the flag and the count share the
//! word, an ORDERED task that sets the flag sees exactly the SIMPLE tasks
//! that arrived before it, and every one of those that ends after it sees
//! the flag and lets the queue move.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::TaskAttr;

/// Set in [`TaskGate::state`] while the lock holds any waiting or running
/// ORDERED or HEAD OF QUEUE task.
const SLOW: u64 = 1 << 63;

/// The gate of one task set.
#[derive(Debug, Default)]
pub(crate) struct TaskGate {
    /// SIMPLE tasks entered (low bits) and [`SLOW`].
    state: AtomicU64,
    slow: Mutex<Slow>,
}

/// The part of the gate behind the lock.
#[derive(Debug, Default)]
struct Slow {
    /// Tasks waiting to enter, in arrival order.
    queue: VecDeque<Waiter>,
    /// An ORDERED task is running (at most one can: it waits for every
    /// earlier task, and every later one waits for it).
    ordered_running: bool,
    /// HEAD OF QUEUE tasks running.
    hoq_running: u32,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    kind: Kind,
    enter: oneshot::Sender<()>,
}

/// How the gate treats a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Simple,
    Ordered,
    HeadOfQueue,
}

impl From<TaskAttr> for Kind {
    fn from(a: TaskAttr) -> Self {
        match a {
            TaskAttr::Ordered => Kind::Ordered,
            TaskAttr::HeadOfQueue => Kind::HeadOfQueue,
            TaskAttr::Simple | TaskAttr::Aca => Kind::Simple,
        }
    }
}

/// Something that owns a gate (a logical unit; the gate itself in tests).
pub(crate) trait GateOwner {
    /// The gate of this task set.
    fn gate(&self) -> &TaskGate;
}

impl GateOwner for TaskGate {
    fn gate(&self) -> &TaskGate {
        self
    }
}

/// A task's place in the task set, taken at arrival. [`Ticket::enter`]
/// waits until the task may run. Dropping it gives the place up.
pub(crate) struct Ticket<P>
where
    P: Deref,
    P::Target: GateOwner,
{
    owner: Option<P>,
    kind: Kind,
    waiting: Option<(u64, oneshot::Receiver<()>)>,
}

/// A task that entered the task set: it ends when this is dropped.
pub(crate) struct Entered<P>
where
    P: Deref,
    P::Target: GateOwner,
{
    owner: P,
    kind: Kind,
}

/// Takes the place of a task with attribute `attr` in `owner`'s task set,
/// now (SAM-5 §8.6).
pub(crate) fn arrive<P>(owner: P, attr: TaskAttr) -> Ticket<P>
where
    P: Deref,
    P::Target: GateOwner,
{
    let kind = Kind::from(attr);
    let waiting = owner.gate().arrive(kind);
    Ticket {
        owner: Some(owner),
        kind,
        waiting,
    }
}

impl<P> Ticket<P>
where
    P: Deref,
    P::Target: GateOwner,
{
    /// Waits until the task may run. Cancel-safe: dropping the future gives
    /// the place up (or ends the task, if it had just been let in).
    pub async fn enter(mut self) -> Entered<P> {
        if let Some((_, rx)) = &mut self.waiting {
            // An error means the sender was dropped without a send, which
            // only `cancel` does, and only for a dropped ticket.
            let _ = rx.await;
        }
        self.waiting = None;
        let owner = self.owner.take().expect("a ticket enters once");
        Entered {
            owner,
            kind: self.kind,
        }
    }
}

impl<P> Drop for Ticket<P>
where
    P: Deref,
    P::Target: GateOwner,
{
    fn drop(&mut self) {
        let Some(owner) = &self.owner else {
            return; // entered
        };
        match self.waiting.take() {
            Some((id, _rx)) => owner.gate().cancel(id, self.kind),
            None => owner.gate().end(self.kind),
        }
    }
}

impl<P> Entered<P>
where
    P: Deref,
    P::Target: GateOwner,
{
    /// The owner of the task set.
    pub fn owner(&self) -> &P {
        &self.owner
    }
}

impl<P> Drop for Entered<P>
where
    P: Deref,
    P::Target: GateOwner,
{
    fn drop(&mut self) {
        self.owner.gate().end(self.kind);
    }
}

impl TaskGate {
    fn lock(&self) -> MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place; `None` when the task may run at once, else its
    /// waiter id and the signal that lets it in.
    fn arrive(&self, kind: Kind) -> Option<(u64, oneshot::Receiver<()>)> {
        if kind == Kind::Simple
            && self
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    (s & SLOW == 0).then_some(s + 1)
                })
                .is_ok()
        {
            return None;
        }
        let mut slow = self.lock();
        self.state.fetch_or(SLOW, Ordering::AcqRel);
        if kind == Kind::HeadOfQueue {
            slow.hoq_running += 1;
            return None;
        }
        let id = slow.next_id;
        slow.next_id += 1;
        let (enter, mut rx) = oneshot::channel();
        slow.queue.push_back(Waiter { id, kind, enter });
        self.pump(&mut slow);
        if rx.try_recv().is_ok() {
            return None;
        }
        Some((id, rx))
    }

    /// Lets in the waiting tasks that may run now, front first; clears
    /// [`SLOW`] when nothing ORDERED or HEAD OF QUEUE is left.
    fn pump(&self, slow: &mut Slow) {
        while let Some(front) = slow.queue.front() {
            if slow.ordered_running || slow.hoq_running > 0 {
                break;
            }
            if front.kind == Kind::Ordered {
                if self.state.load(Ordering::Acquire) & !SLOW != 0 {
                    break; // earlier SIMPLE tasks still run
                }
                slow.ordered_running = true;
            } else {
                // Under the lock with SLOW set, no fast-path update races.
                self.state.fetch_add(1, Ordering::AcqRel);
            }
            if let Some(w) = slow.queue.pop_front() {
                // The receiver lives until its ticket's `cancel` has run,
                // which waits for this lock.
                let _ = w.enter.send(());
            }
        }
        if slow.queue.is_empty() && !slow.ordered_running && slow.hoq_running == 0 {
            self.state.fetch_and(!SLOW, Ordering::AcqRel);
        }
    }

    /// A task that entered has ended.
    fn end(&self, kind: Kind) {
        if kind == Kind::Simple && self.state.fetch_sub(1, Ordering::AcqRel) & SLOW == 0 {
            return;
        }
        let mut slow = self.lock();
        match kind {
            Kind::Simple => {}
            Kind::Ordered => slow.ordered_running = false,
            Kind::HeadOfQueue => slow.hoq_running = slow.hoq_running.saturating_sub(1),
        }
        self.pump(&mut slow);
    }

    /// A waiting ticket was dropped: leave the queue, or, if it was let in
    /// meanwhile, end the task.
    fn cancel(&self, id: u64, kind: Kind) {
        let mut slow = self.lock();
        if let Some(pos) = slow.queue.iter().position(|w| w.id == id) {
            slow.queue.remove(pos);
            self.pump(&mut slow);
            return;
        }
        drop(slow);
        self.end(kind);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;

    use futures::FutureExt;

    use super::*;

    type T = Ticket<Arc<TaskGate>>;
    type In = Entered<Arc<TaskGate>>;
    /// A ticket's `enter` future, polled by hand.
    type Waiting = Option<Pin<Box<dyn Future<Output = In>>>>;

    fn gate() -> Arc<TaskGate> {
        Arc::new(TaskGate::default())
    }

    /// Enters now, or `None` if the task has to wait.
    fn try_enter(t: T) -> Option<In> {
        Box::pin(t.enter()).now_or_never()
    }

    fn pending(t: T) -> Waiting {
        Some(Box::pin(t.enter()))
    }

    /// Polls a waiting ticket once.
    fn ready(t: &mut Waiting) -> Option<In> {
        t.as_mut()?.as_mut().now_or_never()
    }

    #[test]
    fn simple_tasks_take_the_fast_path_and_leave_no_state() {
        let g = gate();
        let a = try_enter(arrive(g.clone(), TaskAttr::Simple)).expect("enters at once");
        let b = try_enter(arrive(g.clone(), TaskAttr::Simple)).expect("enters at once");
        assert_eq!(g.state.load(Ordering::Relaxed), 2);
        drop((a, b));
        assert_eq!(g.state.load(Ordering::Relaxed), 0);
        assert!(g.lock().queue.is_empty());
    }

    #[test]
    fn ordered_waits_for_earlier_and_holds_back_later() {
        let g = gate();
        let s1 = try_enter(arrive(g.clone(), TaskAttr::Simple)).expect("enters at once");
        let mut o = pending(arrive(g.clone(), TaskAttr::Ordered));
        let mut s2 = pending(arrive(g.clone(), TaskAttr::Simple));
        assert!(ready(&mut o).is_none(), "an earlier SIMPLE still runs");
        assert!(ready(&mut s2).is_none(), "a later SIMPLE waits for ORDERED");
        drop(s1);
        let o = ready(&mut o).expect("ORDERED enters once the earlier one ended");
        assert!(ready(&mut s2).is_none(), "still behind the ORDERED task");
        drop(o);
        let s2 = ready(&mut s2).expect("SIMPLE enters after the ORDERED one");
        drop(s2);
        assert_eq!(g.state.load(Ordering::Relaxed), 0, "fast path again");
    }

    #[test]
    fn position_is_taken_at_arrival_not_at_first_poll() {
        let g = gate();
        // Arrives first, but is not polled until after the ORDERED task.
        let early = arrive(g.clone(), TaskAttr::Simple);
        let mut o = pending(arrive(g.clone(), TaskAttr::Ordered));
        assert!(ready(&mut o).is_none(), "the earlier SIMPLE counts");
        let early = try_enter(early).expect("it had its place already");
        assert!(ready(&mut o).is_none());
        drop(early);
        assert!(ready(&mut o).is_some());
    }

    #[test]
    fn head_of_queue_goes_first_and_holds_back_the_rest() {
        let g = gate();
        let s1 = try_enter(arrive(g.clone(), TaskAttr::Simple)).expect("enters at once");
        let mut o = pending(arrive(g.clone(), TaskAttr::Ordered));
        let h = try_enter(arrive(g.clone(), TaskAttr::HeadOfQueue))
            .expect("HEAD OF QUEUE does not wait for earlier tasks");
        let mut s2 = pending(arrive(g.clone(), TaskAttr::Simple));
        drop(s1);
        assert!(ready(&mut o).is_none(), "ORDERED waits for HEAD OF QUEUE");
        drop(h);
        let o = ready(&mut o).expect("then ORDERED");
        assert!(ready(&mut s2).is_none());
        drop(o);
        assert!(ready(&mut s2).is_some());
    }

    #[test]
    fn a_dropped_waiting_ticket_gives_its_place_up() {
        let g = gate();
        let s1 = try_enter(arrive(g.clone(), TaskAttr::Simple)).expect("enters at once");
        let o = arrive(g.clone(), TaskAttr::Ordered);
        let mut s2 = pending(arrive(g.clone(), TaskAttr::Simple));
        drop(o);
        let e2 = ready(&mut s2).expect("nothing ORDERED is ahead any more");
        drop((s1, e2));
        assert_eq!(g.state.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_ticket_let_in_but_dropped_before_entering_ends_its_task() {
        let g = gate();
        let s1 = try_enter(arrive(g.clone(), TaskAttr::Simple)).expect("enters at once");
        let o = arrive(g.clone(), TaskAttr::Ordered);
        let mut s2 = pending(arrive(g.clone(), TaskAttr::Simple));
        drop(s1); // lets the ORDERED task in; its ticket was never polled
        drop(o);
        let e2 = ready(&mut s2).expect("the ORDERED task ended with its ticket");
        let mut o2 = pending(arrive(g.clone(), TaskAttr::Ordered));
        assert!(ready(&mut o2).is_none(), "s2 is still running");
        drop(e2);
        assert!(ready(&mut o2).is_some());
    }
}
