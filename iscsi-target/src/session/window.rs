//! The CmdSN command window of a session (RFC 7143 §4.2.2.1, §3.2.2.1).
//!
//! Owns ExpCmdSN/MaxCmdSN arithmetic and the reordering of commands that
//! arrive ahead of ExpCmdSN. It knows nothing of what a command is.
//!
//! MaxCmdSN is `ExpCmdSN + depth - 1 - in_flight`, so the window closes as
//! commands queue up: that is the back-pressure that bounds a session's memory.
//! It never decreases: admitting a command raises ExpCmdSN and `in_flight`
//! together, and completing one lowers `in_flight`.

use std::collections::BTreeMap;

use crate::pdu::SeqNum;

/// What to do with a non-immediate command, by its CmdSN.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// CmdSN == ExpCmdSN: deliver now.
    Deliver,
    /// Inside the window but ahead of ExpCmdSN: hold until the gap fills.
    Hold,
    /// Outside the window or a duplicate: silently ignore (RFC 7143 §3.2.2.1).
    Ignore,
}

/// The command window. `T` is whatever the caller holds back for reordering.
#[derive(Debug)]
pub struct CmdWindow<T> {
    exp_cmd_sn: SeqNum,
    depth: u32,
    in_flight: u32,
    held: BTreeMap<u32, T>,
}

impl<T> CmdWindow<T> {
    /// A window starting at `exp_cmd_sn` (the CmdSN of the login's last
    /// request), admitting at most `depth` commands in flight.
    pub fn new(exp_cmd_sn: SeqNum, depth: u32) -> Self {
        CmdWindow {
            exp_cmd_sn,
            depth: depth.max(1),
            in_flight: 0,
            held: BTreeMap::new(),
        }
    }

    /// ExpCmdSN to report.
    pub fn exp_cmd_sn(&self) -> SeqNum {
        self.exp_cmd_sn
    }

    /// MaxCmdSN to report.
    pub fn max_cmd_sn(&self) -> SeqNum {
        let open = self
            .depth
            .saturating_sub(self.in_flight + self.held.len() as u32);
        // ExpCmdSN - 1 + open: an empty window is MaxCmdSN = ExpCmdSN - 1.
        self.exp_cmd_sn.plus(open).plus(u32::MAX)
    }

    /// Classifies a non-immediate command's CmdSN.
    pub fn classify(&self, cmd_sn: SeqNum) -> Admission {
        if cmd_sn == self.exp_cmd_sn {
            Admission::Deliver
        } else if cmd_sn.in_window(self.exp_cmd_sn, self.max_cmd_sn())
            && !self.held.contains_key(&cmd_sn.0)
        {
            Admission::Hold
        } else {
            Admission::Ignore
        }
    }

    /// Admits the command with CmdSN == ExpCmdSN: ExpCmdSN advances and the
    /// command counts as in flight until [`CmdWindow::complete`].
    pub fn admit(&mut self) {
        self.exp_cmd_sn = self.exp_cmd_sn.next();
        self.in_flight += 1;
    }

    /// Holds a command that arrived ahead of ExpCmdSN.
    pub fn hold(&mut self, cmd_sn: SeqNum, item: T) {
        self.held.insert(cmd_sn.0, item);
    }

    /// Takes the held command that is now next in order, if any.
    pub fn take_next_held(&mut self) -> Option<T> {
        self.held.remove(&self.exp_cmd_sn.0)
    }

    /// An admitted command finished (its status was sent or it was aborted).
    pub fn complete(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Commands admitted and not yet complete.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_closes_and_reopens() {
        let mut w: CmdWindow<()> = CmdWindow::new(SeqNum(10), 2);
        assert_eq!(w.max_cmd_sn(), SeqNum(11));
        assert_eq!(w.classify(SeqNum(10)), Admission::Deliver);
        w.admit();
        assert_eq!(w.max_cmd_sn(), SeqNum(11));
        w.admit();
        // Two in flight: window closed, MaxCmdSN = ExpCmdSN - 1.
        assert_eq!(w.max_cmd_sn(), SeqNum(11));
        assert_eq!(w.exp_cmd_sn(), SeqNum(12));
        assert_eq!(w.classify(SeqNum(13)), Admission::Ignore);
        w.complete();
        assert_eq!(w.max_cmd_sn(), SeqNum(12));
    }

    #[test]
    fn out_of_window_and_duplicates_are_ignored() {
        let mut w: CmdWindow<()> = CmdWindow::new(SeqNum(0), 8);
        w.admit();
        assert_eq!(w.classify(SeqNum(0)), Admission::Ignore, "duplicate");
        assert_eq!(w.classify(SeqNum(100)), Admission::Ignore, "too high");
        assert_eq!(w.classify(SeqNum(3)), Admission::Hold);
    }

    #[test]
    fn held_commands_are_released_in_order() {
        let mut w = CmdWindow::new(SeqNum(u32::MAX), 8);
        assert_eq!(w.classify(SeqNum(0)), Admission::Hold);
        w.hold(SeqNum(0), "second");
        assert_eq!(w.take_next_held(), None);
        w.admit(); // CmdSN u32::MAX
        assert_eq!(w.take_next_held(), Some("second"));
    }
}
