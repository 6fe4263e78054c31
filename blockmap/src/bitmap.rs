//! The per-(image, location) dirty bitmap. Bit `i` covers the bytes
//! `[i * granularity, (i + 1) * granularity)`; a set bit means that location's
//! copy of those bytes is out of sync.
//!
//! The byte layout is Redis's (`SETBIT`/`BITCOUNT`/`BITPOS`): bit `i` is bit
//! `7 - i % 8` of byte `i / 8`, so a Redis string loads as-is. Trailing zero
//! bytes are trimmed so that an all-clean bitmap is empty and costs nothing.

/// A dirty bitmap, trimmed of trailing zero bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    bytes: Vec<u8>,
}

impl DirtyBitmap {
    /// Wraps bytes in Redis bit order (trailing zeros are trimmed).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let mut b = Self { bytes };
        b.trim();
        b
    }

    /// The bytes in Redis bit order, without trailing zeros.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// True when no bit is set.
    pub fn is_clean(&self) -> bool {
        self.bytes.is_empty()
    }

    fn trim(&mut self) {
        while self.bytes.last() == Some(&0) {
            self.bytes.pop();
        }
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: u64) -> bool {
        let byte = (i / 8) as usize;
        self.bytes
            .get(byte)
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// Sets (`dirty = true`) or clears the bits `[first, last)`.
    pub fn set_range(&mut self, first: u64, last: u64, dirty: bool) {
        if first >= last {
            return;
        }
        if dirty {
            let need = last.div_ceil(8) as usize;
            if self.bytes.len() < need {
                self.bytes.resize(need, 0);
            }
        }
        let len_bits = self.bytes.len() as u64 * 8;
        let last = last.min(len_bits.max(if dirty { last } else { 0 }));
        let mut i = first;
        while i < last {
            let byte = (i / 8) as usize;
            if i.is_multiple_of(8) && last - i >= 8 {
                self.bytes[byte] = if dirty { 0xff } else { 0 };
                i += 8;
                continue;
            }
            let mask = 0x80u8 >> (i % 8);
            if dirty {
                self.bytes[byte] |= mask;
            } else {
                self.bytes[byte] &= !mask;
            }
            i += 1;
        }
        self.trim();
    }

    /// Whether any bit in `[first, last)` is set.
    pub fn any_in(&self, first: u64, last: u64) -> bool {
        let last = last.min(self.bytes.len() as u64 * 8);
        let mut i = first;
        while i < last {
            let byte = self.bytes[(i / 8) as usize];
            if i.is_multiple_of(8) && last - i >= 8 {
                if byte != 0 {
                    return true;
                }
                i += 8;
                continue;
            }
            if byte & (0x80 >> (i % 8)) != 0 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Number of set bits (Redis `BITCOUNT`).
    pub fn count(&self) -> u64 {
        self.bytes.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Number of set bits in `[first, last)`.
    pub fn count_in(&self, first: u64, last: u64) -> u64 {
        (first..last.min(self.bytes.len() as u64 * 8))
            .filter(|i| self.get(*i))
            .count() as u64
    }

    /// Byte spans `(offset, new bytes)` where `self` differs from `old`, for
    /// writing only what changed (Redis `SETRANGE`). Spans closer than 16
    /// bytes are merged.
    pub fn changed_spans(&self, old: &DirtyBitmap) -> Vec<(usize, Vec<u8>)> {
        let n = self.bytes.len().max(old.bytes.len());
        let at = |v: &[u8], i: usize| v.get(i).copied().unwrap_or(0);
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for i in 0..n {
            if at(&self.bytes, i) != at(&old.bytes, i) {
                match spans.last_mut() {
                    Some((_, e)) if i - *e < 16 => *e = i + 1,
                    _ => spans.push((i, i + 1)),
                }
            }
        }
        spans
            .into_iter()
            .map(|(s, e)| (s, (s..e).map(|i| at(&self.bytes, i)).collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_in_redis_order() {
        let mut b = DirtyBitmap::default();
        b.set_range(0, 1, true);
        assert_eq!(b.as_bytes(), &[0x80]);
        b.set_range(3, 21, true);
        assert_eq!(b.count(), 19);
        assert!(b.any_in(20, 21));
        assert!(!b.any_in(21, 1000));
        assert_eq!(b.count_in(8, 16), 8);
        b.set_range(0, 64, false);
        assert!(b.is_clean());
    }

    #[test]
    fn spans_cover_only_changes() {
        let old = DirtyBitmap::default();
        let mut new = old.clone();
        new.set_range(8 * 1000, 8 * 1000 + 3, true);
        let spans = new.changed_spans(&old);
        assert_eq!(spans, vec![(1000, vec![0xe0])]);
        let mut back = new.clone();
        back.set_range(0, u64::MAX / 2, false);
        assert_eq!(back.changed_spans(&new), vec![(1000, vec![0])]);
    }
}
