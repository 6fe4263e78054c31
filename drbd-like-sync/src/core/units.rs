//! Units and identities of the replication core, as newtypes: monotonic time,
//! fencing generations, activity-log extents and byte ranges of an image.
//!
//! Nothing here reads a clock: time is always an input.

use std::fmt;

/// A monotonic instant in milliseconds, supplied by the caller (never read
/// from a clock inside the core, so that simulations control time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + d`, saturating at `u64::MAX`.
    pub fn plus(self, d: Millis) -> Millis {
        Millis(self.0.saturating_add(d.0))
    }
    /// `self - d`, saturating at 0.
    pub fn minus(self, d: Millis) -> Millis {
        Millis(self.0.saturating_sub(d.0))
    }
}

/// The fencing token of an image: it rises by one each time a new writer
/// takes the write lease (invariant 4, ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation a new lease holder gets.
    pub fn next(self) -> Generation {
        Generation(self.0.saturating_add(1))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// Index of an activity-log extent: extent `i` covers the bytes
/// `[i * extent_size, (i + 1) * extent_size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ExtentIndex(pub u64);

/// A half-open byte range `[offset, offset + len)` of an image. May be empty
/// (`len == 0`); helpers that combine ranges drop empty results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl ByteRange {
    /// `[offset, offset + len)`.
    pub const fn new(offset: u64, len: u64) -> Self {
        ByteRange { offset, len }
    }
    /// `[start, end)`; empty when `end <= start`.
    pub fn from_bounds(start: u64, end: u64) -> Self {
        ByteRange {
            offset: start,
            len: end.saturating_sub(start),
        }
    }
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
    /// True when the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The overlap of two ranges, if not empty.
    pub fn intersect(&self, other: &ByteRange) -> Option<ByteRange> {
        let r = ByteRange::from_bounds(self.offset.max(other.offset), self.end().min(other.end()));
        (!r.is_empty()).then_some(r)
    }
    /// True when `other` lies inside `self`.
    pub fn contains(&self, other: &ByteRange) -> bool {
        other.offset >= self.offset && other.end() <= self.end()
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.offset, self.end())
    }
}

/// Sorts ranges, drops empty ones and merges overlapping or adjacent ones.
pub fn coalesce(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort();
    let mut out: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(l) if l.end() >= r.offset => {
                let end = l.end().max(r.end());
                *l = ByteRange::from_bounds(l.offset, end);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_adjacent_and_drops_empty() {
        let r = coalesce(vec![
            ByteRange::new(10, 5),
            ByteRange::new(0, 10),
            ByteRange::new(40, 0),
            ByteRange::new(30, 2),
        ]);
        assert_eq!(r, vec![ByteRange::new(0, 15), ByteRange::new(30, 2)]);
        assert_eq!(
            ByteRange::new(0, 10).intersect(&ByteRange::new(5, 10)),
            Some(ByteRange::new(5, 5))
        );
        assert_eq!(
            ByteRange::new(0, 10).intersect(&ByteRange::new(10, 1)),
            None
        );
    }
}
