//! Task management functions (RFC 7143 §11.5, §11.6; SAM-5 §7) for one
//! connection: which tasks each function aborts, and the response code.
//!
//! Aborting a task that is still collecting Data-Out drops it. A task already
//! running on the SCSI layer cannot be recalled from the storage engine; its
//! response is suppressed instead, so the initiator never sees a status for
//! a task it was told is aborted.

use super::ffp::FullFeature;
use crate::pdu::{TaskMgmtRequest, TmfFunction, TmfResponseCode};
use crate::scsi::lun_from_wire;

/// Applies a TMF request. Returns the response code, and whether the
/// connection must close after the response (TARGET COLD RESET).
pub(super) fn apply(ffp: &mut FullFeature, t: &TaskMgmtRequest) -> (TmfResponseCode, bool) {
    let lun = t.lun;
    let lun_known = || ffp_lun_exists(ffp, lun);
    match t.function {
        TmfFunction::ABORT_TASK => {
            let found = ffp.abort_where(|itt, _| itt == t.ref_itt);
            if found > 0 {
                return (TmfResponseCode::COMPLETE, false);
            }
            // RFC 7143 §11.5.1: a task we do not hold counts as complete only
            // when its RefCmdSN is inside the window (not yet received) and
            // before the TMF itself; a task that already finished, or was
            // never sent, "does not exist".
            let w = ffp.window();
            let not_yet_received = t.ref_cmd_sn.in_window(w.exp_cmd_sn(), w.max_cmd_sn());
            if not_yet_received && t.ref_cmd_sn.lt(t.cmd_sn) {
                (TmfResponseCode::COMPLETE, false)
            } else {
                (TmfResponseCode::NO_TASK, false)
            }
        }
        TmfFunction::ABORT_TASK_SET | TmfFunction::CLEAR_TASK_SET => {
            if !lun_known() {
                return (TmfResponseCode::NO_LUN, false);
            }
            ffp.abort_where(|_, l| l == lun);
            (TmfResponseCode::COMPLETE, false)
        }
        TmfFunction::LOGICAL_UNIT_RESET => {
            if !lun_known() {
                return (TmfResponseCode::NO_LUN, false);
            }
            ffp.abort_where(|_, l| l == lun);
            let nexus = ffp.nexus().clone();
            if let Some(target) = ffp.target() {
                target.lun_reset(lun_from_wire(lun.to_be_bytes()), &nexus);
            }
            (TmfResponseCode::COMPLETE, false)
        }
        TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => {
            ffp.abort_where(|_, _| true);
            let cold = t.function == TmfFunction::TARGET_COLD_RESET;
            let nexus = ffp.nexus().clone();
            if let Some(target) = ffp.target() {
                target.target_reset(&nexus, cold);
            }
            // A cold reset also drops the connection (RFC 7143 §11.5.1).
            (TmfResponseCode::COMPLETE, cold)
        }
        TmfFunction::CLEAR_ACA => (TmfResponseCode::NOT_SUPPORTED, false),
        // ErrorRecoveryLevel 0 cannot reassign allegiance (RFC 7143 §11.5.1).
        TmfFunction::TASK_REASSIGN => (TmfResponseCode::REASSIGN_UNSUPPORTED, false),
        _ => (TmfResponseCode::REJECTED, false),
    }
}

fn ffp_lun_exists(ffp: &FullFeature, lun: u64) -> bool {
    ffp.target()
        .is_some_and(|t| t.lun(lun_from_wire(lun.to_be_bytes())).is_some())
}
