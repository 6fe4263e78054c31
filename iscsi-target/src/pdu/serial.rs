//! Sequence numbers with serial-number arithmetic (RFC 1982, as RFC 7143
//! §4.2.2.1 requires for CmdSN, StatSN, DataSN and R2TSN).
//!
//! Owns only the comparison rules; it knows nothing of windows or sessions.

use std::cmp::Ordering;
use std::fmt;

/// A 32-bit iSCSI sequence number (CmdSN, ExpCmdSN, MaxCmdSN, StatSN, DataSN,
/// R2TSN). Ordered with RFC 1982 serial arithmetic, never with `<` on the raw
/// value, so that wrap-around at 2^32 is handled.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// The next number, wrapping at 2^32.
    pub fn next(self) -> Self {
        SeqNum(self.0.wrapping_add(1))
    }

    /// `self + n`, wrapping.
    pub fn plus(self, n: u32) -> Self {
        SeqNum(self.0.wrapping_add(n))
    }

    /// RFC 1982 comparison. Two numbers exactly 2^31 apart are undefined in the
    /// RFC; we report them as `None`.
    pub fn serial_cmp(self, other: SeqNum) -> Option<Ordering> {
        let (a, b) = (self.0, other.0);
        if a == b {
            return Some(Ordering::Equal);
        }
        let d = b.wrapping_sub(a);
        match d.cmp(&(1u32 << 31)) {
            Ordering::Less => Some(Ordering::Less),
            Ordering::Greater => Some(Ordering::Greater),
            Ordering::Equal => None,
        }
    }

    /// `self < other` in serial arithmetic.
    pub fn lt(self, other: SeqNum) -> bool {
        self.serial_cmp(other) == Some(Ordering::Less)
    }

    /// `self <= other` in serial arithmetic.
    pub fn le(self, other: SeqNum) -> bool {
        matches!(
            self.serial_cmp(other),
            Some(Ordering::Less | Ordering::Equal)
        )
    }

    /// Whether `self` lies in the closed serial window `[lo, hi]`.
    pub fn in_window(self, lo: SeqNum, hi: SeqNum) -> bool {
        lo.le(self) && self.le(hi)
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_around() {
        let max = SeqNum(u32::MAX);
        assert!(max.lt(SeqNum(0)));
        assert!(max.lt(SeqNum(5)));
        assert!(!SeqNum(5).lt(max));
        assert_eq!(max.next(), SeqNum(0));
    }

    #[test]
    fn window_across_wrap() {
        let lo = SeqNum(u32::MAX - 2);
        let hi = lo.plus(10);
        assert!(SeqNum(1).in_window(lo, hi));
        assert!(!SeqNum(100).in_window(lo, hi));
        assert!(!SeqNum(u32::MAX - 3).in_window(lo, hi));
    }

    #[test]
    fn half_range_is_undefined() {
        assert_eq!(SeqNum(0).serial_cmp(SeqNum(1 << 31)), None);
    }
}
