//! Identities and units as newtypes: names of images, nodes and targets, block
//! indexes and ranges, byte sizes. Parsing and validation of each lives here so
//! that a value of one of these types is always valid.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

fn check_name(what: &'static str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max {
        return Err(Error::invalid(
            what,
            format!("'{s}' must be 1 to {max} characters"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(Error::invalid(
            what,
            format!("'{s}' contains '{c}'; use letters, digits, '.', '-' and '_'"),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$m:meta])* $t:ident, $what:literal, $max:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $t(String);

        impl $t {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                check_name($what, &s, $max)?;
                Ok(Self(s))
            }
            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// Name of an image: 1-128 characters of `[A-Za-z0-9._-]`.
    ImageName, "image name", 128
);
name_type!(
    /// Id of a node: 1-64 characters of `[A-Za-z0-9._-]`.
    NodeId, "node id", 64
);

/// An iSCSI name (RFC 7143 §4.2.7): `iqn.`, `eui.` or `naa.` form, at most 223
/// bytes, no whitespace. Stored lower-case, as names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Iqn(String);

impl Iqn {
    /// Validates an iSCSI name.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into().to_ascii_lowercase();
        let ok_prefix = ["iqn.", "eui.", "naa."].iter().any(|p| s.starts_with(p));
        if !ok_prefix || s.len() <= 4 || s.len() > 223 {
            return Err(Error::invalid(
                "iSCSI name",
                format!("'{s}' must start with iqn., eui. or naa. and be at most 223 bytes (RFC 7143 4.2.7)"),
            ));
        }
        if s.chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))
        {
            return Err(Error::invalid(
                "iSCSI name",
                format!("'{s}' may only contain letters, digits, '.', '-' and ':'"),
            ));
        }
        Ok(Self(s))
    }
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Iqn {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}
impl From<Iqn> for String {
    fn from(v: Iqn) -> String {
        v.0
    }
}
impl FromStr for Iqn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}
impl fmt::Display for Iqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Index of a block within an image: block `i` covers the bytes
/// `[i * block_size, (i + 1) * block_size)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct BlockIndex(pub u64);

impl fmt::Display for BlockIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A half-open range of blocks `[start, end)`. Never empty once validated by
/// [`BlockRange::new`]. Displayed with an inclusive end, as operators read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockRange {
    /// First block.
    pub start: BlockIndex,
    /// One past the last block.
    pub end: BlockIndex,
}

impl BlockRange {
    /// `[start, end)`; refuses empty ranges.
    pub fn new(start: u64, end: u64) -> Result<Self> {
        if start >= end {
            return Err(Error::invalid(
                "block range",
                format!("start {start} must be below end {end}"),
            ));
        }
        Ok(Self {
            start: BlockIndex(start),
            end: BlockIndex(end),
        })
    }
    /// Number of blocks.
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Always false for a validated range.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &BlockRange) -> Option<BlockRange> {
        let s = self.start.max(other.start);
        let e = self.end.min(other.end);
        (s < e).then_some(BlockRange { start: s, end: e })
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len() == 1 {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end.0 - 1)
        }
    }
}

/// A size in bytes. Parses `8G`, `4M`, `512K`, `1T`, `4096` (binary units;
/// a trailing `iB` or `B` is accepted), displays in the largest exact unit.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }
    /// `n` TiB.
    pub const fn tib(n: u64) -> Self {
        Self(n << 40)
    }
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// For humans: exact when a unit divides it (`4G`), else two decimals
    /// of the largest unit that fits (`3.99T`).
    pub fn human(self) -> String {
        const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, u) in UNITS {
            let unit = 1u64 << shift;
            if self.0 >= unit {
                return if self.0.is_multiple_of(unit) {
                    format!("{}{u}", self.0 >> shift)
                } else {
                    format!("{:.2}{u}", self.0 as f64 / unit as f64)
                };
            }
        }
        self.0.to_string()
    }
}

impl FromStr for ByteSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let t = t
            .strip_suffix("iB")
            .or_else(|| t.strip_suffix("ib"))
            .or_else(|| {
                t.strip_suffix('B')
                    .filter(|r| r.ends_with(|c: char| c.is_ascii_alphabetic()))
            })
            .unwrap_or(t);
        let (num, shift) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    'P' => 50,
                    _ => {
                        return Err(Error::invalid(
                            "size",
                            format!("'{s}': unknown unit '{c}'; use K, M, G, T or P"),
                        ))
                    }
                };
                (&t[..i], shift)
            }
            _ => (t, 0),
        };
        let n: u64 = num.trim().parse().map_err(|_| {
            Error::invalid(
                "size",
                format!("'{s}' is not a size like 8G, 4M, 512K or 4096"),
            )
        })?;
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| Error::invalid("size", format!("'{s}' is too large")))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, u) in UNITS {
            let unit = 1u64 << shift;
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{u}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Seconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }
}

/// Milliseconds since the Unix epoch (wall clock): lease expiry in the
/// metadata store. Wall clocks of nodes differ; a lease holder also stops
/// acknowledging early on its own monotonic clock.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

impl std::fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}s (unix)", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_display() {
        assert_eq!("8G".parse::<ByteSize>().ok(), Some(ByteSize::gib(8)));
        assert_eq!("4M".parse::<ByteSize>().ok(), Some(ByteSize::mib(4)));
        assert_eq!("512K".parse::<ByteSize>().ok(), Some(ByteSize::kib(512)));
        assert_eq!("4MiB".parse::<ByteSize>().ok(), Some(ByteSize::mib(4)));
        assert_eq!("1TB".parse::<ByteSize>().ok(), Some(ByteSize::tib(1)));
        assert_eq!("4096".parse::<ByteSize>().ok(), Some(ByteSize(4096)));
        assert!("4X".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999P".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(4).to_string(), "4M");
        assert_eq!(ByteSize(4097).to_string(), "4097");
        assert_eq!(ByteSize::gib(4).human(), "4G");
        assert_eq!(ByteSize(4190304 << 20).human(), "4.00T");
        assert_eq!(ByteSize(1536 << 20).human(), "1.50G");
        assert_eq!(ByteSize(1000).human(), "1000");
    }

    #[test]
    fn names_are_validated() {
        assert!(ImageName::new("vm-01.disk_0").is_ok());
        assert!(ImageName::new("").is_err());
        assert!(ImageName::new("a b").is_err());
        assert!(NodeId::new("x".repeat(65)).is_err());
        assert!(Iqn::new("iqn.2024-01.org.locus:disk1").is_ok());
        assert_eq!(
            Iqn::new("IQN.2024-01.org.Locus:d")
                .map(|i| i.to_string())
                .ok(),
            Some("iqn.2024-01.org.locus:d".to_string())
        );
        assert!(Iqn::new("target1").is_err());
    }

    #[test]
    fn range_display_is_inclusive() {
        let r = BlockRange::new(0, 10).map(|r| r.to_string()).ok();
        assert_eq!(r.as_deref(), Some("0-9"));
        assert!(BlockRange::new(5, 5).is_err());
    }
}
