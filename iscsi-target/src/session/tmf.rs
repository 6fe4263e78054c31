//! Task management functions (RFC 7143 §11.5, §11.6; SAM-5 §7) for one
//! connection: what each function decides. No I/O and no state: [`decide`]
//! looks at the request and at what the connection knows ([`TmfView`]) and
//! returns a [`TmfDecision`]; the full-feature loop applies it (aborts in
//! its task table, the reset on the SCSI target, the response, the close).
//!
//! ```text
//!   TMF request + view --decide--> { response, abort scope, reset, close }
//!                                      |
//!   full-feature loop: abort tasks -> apply reset -> send response -> close?
//! ```
//!
//! Aborting a task that is still collecting Data-Out drops it. A task already
//! running on the SCSI layer cannot be recalled from the storage engine; its
//! response is suppressed instead, so the initiator never sees a status for
//! a task it was told is aborted.

use crate::pdu::{Itt, SeqNum, TaskMgmtRequest, TmfFunction, TmfResponseCode};

/// Which of the connection's tasks a function aborts (SAM-5 §7.2-§7.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AbortScope {
    /// The task with this ITT (ABORT TASK).
    Task(Itt),
    /// Every task addressed to this LUN (8-byte wire form).
    Lun(u64),
    /// Every task (target resets).
    All,
}

/// A reset of SCSI state the function asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reset {
    /// LOGICAL UNIT RESET of this LUN (8-byte wire form; SAM-5 §7.7).
    Lun(u64),
    /// TARGET WARM / COLD RESET (SAM-5 §7.10, RFC 7143 §11.5.1).
    Target {
        /// A cold reset.
        cold: bool,
    },
}

/// What the connection knows that a decision needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct TmfView {
    /// The connection holds the task named by RefITT, in any state.
    pub ref_task_held: bool,
    /// The request's LUN exists on the target.
    pub lun_known: bool,
    /// The window's ExpCmdSN.
    pub exp_cmd_sn: SeqNum,
    /// The window's MaxCmdSN.
    pub max_cmd_sn: SeqNum,
}

/// The outcome of one TMF request, applied by the loop in field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TmfDecision {
    /// Tasks to abort first.
    pub abort: Option<AbortScope>,
    /// Then the reset to apply.
    pub reset: Option<Reset>,
    /// The response code of the TMF Response (RFC 7143 §11.6.1).
    pub response: TmfResponseCode,
    /// Close the connection after the response (TARGET COLD RESET).
    pub close: bool,
}

impl TmfDecision {
    fn answer(response: TmfResponseCode) -> Self {
        TmfDecision {
            abort: None,
            reset: None,
            response,
            close: false,
        }
    }

    fn complete(abort: AbortScope, reset: Option<Reset>) -> Self {
        TmfDecision {
            abort: Some(abort),
            reset,
            response: TmfResponseCode::COMPLETE,
            close: false,
        }
    }
}

/// Decides a TMF request (RFC 7143 §11.5.1).
pub(super) fn decide(t: &TaskMgmtRequest, view: TmfView) -> TmfDecision {
    let lun = t.lun;
    match t.function {
        TmfFunction::ABORT_TASK => {
            if view.ref_task_held {
                return TmfDecision::complete(AbortScope::Task(t.ref_itt), None);
            }
            // RFC 7143 §11.5.1: a task we do not hold counts as complete only
            // when its RefCmdSN is inside the window (not yet received) and
            // before the TMF itself; a task that already finished, or was
            // never sent, "does not exist".
            let not_yet_received = t.ref_cmd_sn.in_window(view.exp_cmd_sn, view.max_cmd_sn);
            if not_yet_received && t.ref_cmd_sn.lt(t.cmd_sn) {
                TmfDecision::answer(TmfResponseCode::COMPLETE)
            } else {
                TmfDecision::answer(TmfResponseCode::NO_TASK)
            }
        }
        TmfFunction::ABORT_TASK_SET | TmfFunction::CLEAR_TASK_SET if view.lun_known => {
            TmfDecision::complete(AbortScope::Lun(lun), None)
        }
        TmfFunction::LOGICAL_UNIT_RESET if view.lun_known => {
            TmfDecision::complete(AbortScope::Lun(lun), Some(Reset::Lun(lun)))
        }
        TmfFunction::ABORT_TASK_SET
        | TmfFunction::CLEAR_TASK_SET
        | TmfFunction::LOGICAL_UNIT_RESET => TmfDecision::answer(TmfResponseCode::NO_LUN),
        TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => {
            let cold = t.function == TmfFunction::TARGET_COLD_RESET;
            TmfDecision {
                // A cold reset also drops the connection (RFC 7143 §11.5.1).
                close: cold,
                ..TmfDecision::complete(AbortScope::All, Some(Reset::Target { cold }))
            }
        }
        TmfFunction::CLEAR_ACA => TmfDecision::answer(TmfResponseCode::NOT_SUPPORTED),
        // ErrorRecoveryLevel 0 cannot reassign allegiance (RFC 7143 §11.5.1).
        TmfFunction::TASK_REASSIGN => TmfDecision::answer(TmfResponseCode::REASSIGN_UNSUPPORTED),
        _ => TmfDecision::answer(TmfResponseCode::REJECTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(function: TmfFunction) -> TaskMgmtRequest {
        TaskMgmtRequest {
            immediate: true,
            function,
            lun: 0,
            itt: Itt(50),
            ref_itt: Itt(7),
            cmd_sn: SeqNum(10),
            exp_stat_sn: SeqNum(0),
            ref_cmd_sn: SeqNum(9),
            exp_data_sn: 0,
        }
    }

    fn view(ref_task_held: bool, lun_known: bool) -> TmfView {
        TmfView {
            ref_task_held,
            lun_known,
            exp_cmd_sn: SeqNum(9),
            max_cmd_sn: SeqNum(20),
        }
    }

    #[test]
    fn abort_task_of_a_held_task_aborts_it() {
        let d = decide(&req(TmfFunction::ABORT_TASK), view(true, true));
        assert_eq!(d.abort, Some(AbortScope::Task(Itt(7))));
        assert_eq!(d.response, TmfResponseCode::COMPLETE);
        assert!(!d.close && d.reset.is_none());
    }

    #[test]
    fn abort_task_of_a_task_not_held_depends_on_ref_cmd_sn() {
        // RefCmdSN 9 is in the window and before the TMF's CmdSN 10.
        let d = decide(&req(TmfFunction::ABORT_TASK), view(false, true));
        assert_eq!((d.abort, d.response), (None, TmfResponseCode::COMPLETE));
        // Already received and finished: RefCmdSN below ExpCmdSN.
        let mut t = req(TmfFunction::ABORT_TASK);
        t.ref_cmd_sn = SeqNum(5);
        let d = decide(&t, view(false, true));
        assert_eq!((d.abort, d.response), (None, TmfResponseCode::NO_TASK));
    }

    #[test]
    fn lun_functions_need_the_lun() {
        for f in [
            TmfFunction::ABORT_TASK_SET,
            TmfFunction::CLEAR_TASK_SET,
            TmfFunction::LOGICAL_UNIT_RESET,
        ] {
            let d = decide(&req(f), view(false, false));
            assert_eq!(d, TmfDecision::answer(TmfResponseCode::NO_LUN), "{f:?}");
            let d = decide(&req(f), view(false, true));
            assert_eq!(d.abort, Some(AbortScope::Lun(0)));
            assert_eq!(d.response, TmfResponseCode::COMPLETE);
        }
        let d = decide(&req(TmfFunction::LOGICAL_UNIT_RESET), view(false, true));
        assert_eq!(d.reset, Some(Reset::Lun(0)));
    }

    #[test]
    fn target_resets_abort_everything_and_cold_closes() {
        let warm = decide(&req(TmfFunction::TARGET_WARM_RESET), view(false, false));
        assert_eq!(warm.abort, Some(AbortScope::All));
        assert_eq!(warm.reset, Some(Reset::Target { cold: false }));
        assert!(!warm.close);
        let cold = decide(&req(TmfFunction::TARGET_COLD_RESET), view(false, false));
        assert_eq!(cold.reset, Some(Reset::Target { cold: true }));
        assert!(cold.close);
    }

    #[test]
    fn unsupported_functions_are_answered_without_effects() {
        for (f, code) in [
            (TmfFunction::CLEAR_ACA, TmfResponseCode::NOT_SUPPORTED),
            (
                TmfFunction::TASK_REASSIGN,
                TmfResponseCode::REASSIGN_UNSUPPORTED,
            ),
            (TmfFunction(99), TmfResponseCode::REJECTED),
        ] {
            assert_eq!(decide(&req(f), view(true, true)), TmfDecision::answer(code));
        }
    }
}
