//! The task table of one connection: every SCSI task the connection holds,
//! by Initiator Task Tag, each in one state (RFC 7143 §4.2.1 task tags,
//! §10.7 write data, §11.5 task management; SAM-5 §8.5 task lifetime).
//!
//! Pure bookkeeping with no I/O: the loop asks it what a Data-Out, a
//! completion or an abort means, and does the sending itself.
//!
//! ```text
//!   write needing Data-Out
//!   ----------------------> Collecting --all data in--> Running --done--> (gone, respond)
//!                               |                        |    ^
//!   command with all data       |                 abort  |    | (not left by
//!   ------------------------------------------------>    v    |  a 2nd abort)
//!                               |                     Aborted --done--> (gone, no response)
//!                               +--abort / bad Data-Out--> (gone at once)
//! ```
//!
//! `counted` marks a non-immediate command that holds a slot of the CmdSN
//! window (RFC 7143 §3.2.2.1). Every way out of the table hands the flag
//! back exactly once, so the loop can give the slot back and MaxCmdSN
//! advances again: a collecting write when it is dropped or starts
//! running, a running or aborted one when its future completes (the slot
//! stays taken while the storage engine still works on it).

use std::collections::HashMap;

use bytes::Bytes;

use super::super::tmf::AbortScope;
use super::super::write_task::WriteTask;
use crate::pdu::{Itt, ScsiCommand};

/// A write command collecting its Data-Out (RFC 7143 §10.7).
#[derive(Debug)]
pub(super) struct Collecting {
    /// The command PDU.
    pub cmd: ScsiCommand,
    /// The whole CDB (with any Extended CDB AHS).
    pub cdb: Bytes,
    /// The Data-Out collected so far.
    pub data: WriteTask,
    /// Holds a CmdSN window slot.
    pub counted: bool,
}

/// The state of one task the connection holds.
#[derive(Debug)]
enum Task {
    /// Waiting for Data-Out; nothing reached the SCSI layer yet.
    Collecting(Box<Collecting>),
    /// Running on the SCSI layer; its response goes out when it completes.
    Running { lun: u64, counted: bool },
    /// Running, but aborted by task management: the SCSI layer cannot be
    /// recalled, so its response is dropped when it completes (RFC 7143
    /// §11.5.1: no response for a task the initiator was told is aborted).
    Aborted { lun: u64, counted: bool },
}

/// What a completed command means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Completion {
    /// It held a CmdSN window slot, to be given back now.
    pub counted: bool,
    /// It was aborted: send nothing for it.
    pub aborted: bool,
}

/// What an abort found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Aborted {
    /// Tasks matched, in any state (an ABORT TASK for one of them is
    /// answered "Function complete").
    pub found: usize,
    /// Window slots freed at once (collecting writes, which are dropped).
    pub released: u32,
}

/// Every task of one connection, by ITT.
#[derive(Debug, Default)]
pub(super) struct TaskTable {
    tasks: HashMap<Itt, Task>,
}

impl TaskTable {
    /// Whether `itt` names a task still held, in any state: a new command
    /// with it is refused (RFC 7143 §11.17.1, "task in progress").
    pub fn in_use(&self, itt: Itt) -> bool {
        self.tasks.contains_key(&itt)
    }

    /// Tasks held, in any state.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// A write starts collecting Data-Out. The caller checked [`Self::in_use`].
    pub fn collect(&mut self, itt: Itt, c: Collecting) {
        debug_assert!(!self.in_use(itt), "ITT {itt:?} already held");
        self.tasks.insert(itt, Task::Collecting(Box::new(c)));
    }

    /// The collecting write named by `itt`, if that is its state: Data-Out
    /// for a task in any other state (or none) has no place to go.
    pub fn collecting_mut(&mut self, itt: Itt) -> Option<&mut Collecting> {
        match self.tasks.get_mut(&itt) {
            Some(Task::Collecting(c)) => Some(c),
            _ => None,
        }
    }

    /// Takes a collecting write out of the table: its data is complete (it
    /// goes on to [`Self::run`]) or it was terminated.
    pub fn take_collecting(&mut self, itt: Itt) -> Option<Collecting> {
        match self.tasks.remove(&itt) {
            Some(Task::Collecting(c)) => Some(*c),
            Some(other) => {
                // Not collecting: leave it as it was.
                self.tasks.insert(itt, other);
                None
            }
            None => None,
        }
    }

    /// A command went to the SCSI layer.
    pub fn run(&mut self, itt: Itt, lun: u64, counted: bool) {
        debug_assert!(!self.in_use(itt), "ITT {itt:?} already held");
        self.tasks.insert(itt, Task::Running { lun, counted });
    }

    /// A command's future completed: the task leaves the table. The one
    /// place that decides whether its response is sent.
    pub fn complete(&mut self, itt: Itt) -> Completion {
        match self.tasks.remove(&itt) {
            Some(Task::Running { counted, .. }) => Completion {
                counted,
                aborted: false,
            },
            Some(Task::Aborted { counted, .. }) => Completion {
                counted,
                aborted: true,
            },
            Some(Task::Collecting(c)) => {
                // Only a started command has a future: this cannot be its
                // completion. Keep the write and send nothing.
                self.tasks.insert(itt, Task::Collecting(c));
                Completion {
                    counted: false,
                    aborted: true,
                }
            }
            None => Completion {
                counted: false,
                aborted: false,
            },
        }
    }

    /// Aborts the tasks in `scope` (SAM-5 §7.2, §7.3): collecting writes
    /// are dropped (their slots are in [`Aborted::released`]); running
    /// commands become [`Task::Aborted`] and keep their slot until they
    /// complete.
    pub fn abort(&mut self, scope: AbortScope) -> Aborted {
        let mut out = Aborted::default();
        self.tasks.retain(|&itt, task| {
            let lun = match task {
                Task::Collecting(c) => c.cmd.lun,
                Task::Running { lun, .. } | Task::Aborted { lun, .. } => *lun,
            };
            let hit = match scope {
                AbortScope::Task(t) => t == itt,
                AbortScope::Lun(l) => l == lun,
                AbortScope::All => true,
            };
            if !hit {
                return true;
            }
            out.found += 1;
            match task {
                Task::Collecting(c) => {
                    out.released += u32::from(c.counted);
                    false
                }
                Task::Running { lun, counted } => {
                    *task = Task::Aborted {
                        lun: *lun,
                        counted: *counted,
                    };
                    true
                }
                Task::Aborted { .. } => true,
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{SeqNum, TaskAttr};
    use crate::session::ConnParams;

    fn collecting(itt: u32, lun: u64, counted: bool) -> Collecting {
        Collecting {
            cmd: ScsiCommand {
                immediate: false,
                final_: true,
                read: false,
                write: true,
                attr: TaskAttr::Simple,
                lun,
                itt: Itt(itt),
                expected_len: 512,
                cmd_sn: SeqNum(0),
                exp_stat_sn: SeqNum(0),
                cdb: [0; 16],
            },
            cdb: Bytes::new(),
            data: WriteTask::new(512, Bytes::new(), true, &ConnParams::default()),
            counted,
        }
    }

    #[test]
    fn a_write_collects_then_runs_then_completes_once() {
        let mut t = TaskTable::default();
        t.collect(Itt(1), collecting(1, 0, true));
        assert!(t.in_use(Itt(1)));
        assert!(t.collecting_mut(Itt(1)).is_some());
        let c = t.take_collecting(Itt(1)).expect("collecting");
        t.run(Itt(1), c.cmd.lun, c.counted);
        assert!(t.collecting_mut(Itt(1)).is_none(), "running takes no data");
        assert!(t.take_collecting(Itt(1)).is_none());
        assert!(t.in_use(Itt(1)), "still held while running");
        assert_eq!(
            t.complete(Itt(1)),
            Completion {
                counted: true,
                aborted: false
            }
        );
        assert!(!t.in_use(Itt(1)));
        assert_eq!(
            t.complete(Itt(1)),
            Completion {
                counted: false,
                aborted: false
            },
            "a second completion gives back no slot"
        );
    }

    #[test]
    fn abort_drops_collecting_and_marks_running() {
        let mut t = TaskTable::default();
        t.collect(Itt(1), collecting(1, 3, true));
        t.run(Itt(2), 3, true);
        t.run(Itt(3), 4, true);
        let a = t.abort(AbortScope::Lun(3));
        assert_eq!(
            a,
            Aborted {
                found: 2,
                released: 1
            }
        );
        assert!(!t.in_use(Itt(1)), "the collecting write is gone");
        assert!(t.in_use(Itt(2)), "the running one stays until it completes");
        // Aborting it again still finds it (ABORT TASK answers COMPLETE).
        assert_eq!(t.abort(AbortScope::Task(Itt(2))).found, 1);
        assert_eq!(
            t.complete(Itt(2)),
            Completion {
                counted: true,
                aborted: true
            }
        );
        assert_eq!(
            t.complete(Itt(3)),
            Completion {
                counted: true,
                aborted: false
            },
            "another LUN is untouched"
        );
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn abort_all_and_abort_of_nothing() {
        let mut t = TaskTable::default();
        assert_eq!(t.abort(AbortScope::Task(Itt(9))), Aborted::default());
        t.collect(Itt(1), collecting(1, 0, false));
        t.run(Itt(2), 1, false);
        let a = t.abort(AbortScope::All);
        assert_eq!((a.found, a.released), (2, 0), "immediate: no slot");
        assert!(t.complete(Itt(2)).aborted);
    }
}
