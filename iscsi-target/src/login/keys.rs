//! The table of every text key the target knows, with its negotiation type,
//! where it may be used and its value limits (RFC 7143 §6.2, §13; RFC 7144
//! §13.24 for iSCSIProtocolLevel).
//!
//! This module owns the *rules*; `negotiate.rs` applies them and keeps the
//! negotiated values. Value syntax helpers (numbers, booleans) live here too.

/// Identity of a known key; `negotiate.rs` matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyId {
    /// RFC 7143 §13.1.
    HeaderDigest,
    /// RFC 7143 §13.1.
    DataDigest,
    /// RFC 7143 §13.2.
    MaxConnections,
    /// RFC 7143 §13.3.
    SendTargets,
    /// RFC 7143 §13.4.
    TargetName,
    /// RFC 7143 §13.5.
    InitiatorName,
    /// RFC 7143 §13.6.
    TargetAlias,
    /// RFC 7143 §13.7.
    InitiatorAlias,
    /// RFC 7143 §13.8.
    TargetAddress,
    /// RFC 7143 §13.9.
    TargetPortalGroupTag,
    /// RFC 7143 §13.10.
    InitialR2T,
    /// RFC 7143 §13.11.
    ImmediateData,
    /// RFC 7143 §13.12.
    MaxRecvDataSegmentLength,
    /// RFC 7143 §13.13.
    MaxBurstLength,
    /// RFC 7143 §13.14.
    FirstBurstLength,
    /// RFC 7143 §13.15.
    DefaultTime2Wait,
    /// RFC 7143 §13.16.
    DefaultTime2Retain,
    /// RFC 7143 §13.17.
    MaxOutstandingR2T,
    /// RFC 7143 §13.18.
    DataPduInOrder,
    /// RFC 7143 §13.19.
    DataSequenceInOrder,
    /// RFC 7143 §13.20.
    ErrorRecoveryLevel,
    /// RFC 7143 §13.21.
    SessionType,
    /// RFC 7143 §13.23.
    TaskReporting,
    /// RFC 7143 §13.24 / RFC 7144.
    ProtocolLevel,
    /// RFC 7143 §12.1 (security).
    AuthMethod,
    /// RFC 7143 §12.1.3 CHAP keys.
    ChapA,
    /// CHAP identifier.
    ChapI,
    /// CHAP challenge.
    ChapC,
    /// CHAP name.
    ChapN,
    /// CHAP response.
    ChapR,
    /// RFC 7143 §13.25 obsoleted IFMarker / OFMarker.
    Marker,
    /// RFC 7143 §13.25 obsoleted IFMarkInt / OFMarkInt.
    MarkInt,
}

/// How a key's result is reached (RFC 7143 §6.2.1, §6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Declarative: the sender states a value, the receiver does not answer.
    Declarative,
    /// Boolean, result is OR of both values.
    BoolOr,
    /// Boolean, result is AND of both values.
    BoolAnd,
    /// Numerical, result is the minimum; value must be in `min..=max`.
    NumMin {
        /// Lowest valid value.
        min: u64,
        /// Highest valid value.
        max: u64,
    },
    /// Numerical, result is the maximum; value must be in `min..=max`.
    NumMax {
        /// Lowest valid value.
        min: u64,
        /// Highest valid value.
        max: u64,
    },
    /// List: the responder picks the first offered value it supports.
    List,
    /// Security stage keys, handled by the authentication exchange.
    Security,
    /// Full-feature-phase inquiry (SendTargets).
    Inquiry,
    /// Obsoleted by RFC 7143 §13.25; answered with a fixed value.
    Obsolete,
}

/// Where a key may be used (the "Use:" line of each RFC 7143 §13 entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// LO: leading-only, login only.
    LeadingOnly,
    /// IO: initialize-only, login only, every connection.
    InitializeOnly,
    /// ALL: login and full-feature phase.
    All,
    /// FFP only (SendTargets).
    FullFeatureOnly,
    /// Security stage only (AuthMethod, CHAP_*).
    SecurityOnly,
}

/// One row of the key table.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    /// Key name as sent on the wire (case-sensitive, RFC 7143 §6.1).
    pub name: &'static str,
    /// Typed identity.
    pub id: KeyId,
    /// Negotiation type.
    pub kind: KeyKind,
    /// Where it may be used.
    pub usage: KeyUse,
    /// Irrelevant in a Discovery session (RFC 7143 §13: "Irrelevant when
    /// SessionType=Discovery").
    pub normal_only: bool,
    /// Longest value accepted, in bytes.
    pub max_len: usize,
}

const MAX_24: u64 = (1 << 24) - 1;

const fn def(
    name: &'static str,
    id: KeyId,
    kind: KeyKind,
    usage: KeyUse,
    normal_only: bool,
    max_len: usize,
) -> KeyDef {
    KeyDef {
        name,
        id,
        kind,
        usage,
        normal_only,
        max_len,
    }
}

use KeyId as K;
use KeyKind as T;
use KeyUse as U;

/// Every key the target understands. Anything else (including `X-` and
/// `X#` vendor keys) is answered `NotUnderstood` (RFC 7143 §6.2, §13.22).
#[rustfmt::skip]
pub static KEY_TABLE: &[KeyDef] = &[
    def("HeaderDigest", K::HeaderDigest, T::List, U::InitializeOnly, false, 255),
    def("DataDigest", K::DataDigest, T::List, U::InitializeOnly, false, 255),
    def("MaxConnections", K::MaxConnections, T::NumMin { min: 1, max: 65535 }, U::LeadingOnly, true, 255),
    def("SendTargets", K::SendTargets, T::Inquiry, U::FullFeatureOnly, false, 255),
    def("TargetName", K::TargetName, T::Declarative, U::InitializeOnly, false, 223),
    def("InitiatorName", K::InitiatorName, T::Declarative, U::InitializeOnly, false, 223),
    def("TargetAlias", K::TargetAlias, T::Declarative, U::All, false, 255),
    def("InitiatorAlias", K::InitiatorAlias, T::Declarative, U::All, false, 255),
    def("TargetAddress", K::TargetAddress, T::Declarative, U::All, false, 255),
    def("TargetPortalGroupTag", K::TargetPortalGroupTag, T::Declarative, U::InitializeOnly, false, 255),
    def("InitialR2T", K::InitialR2T, T::BoolOr, U::LeadingOnly, true, 255),
    def("ImmediateData", K::ImmediateData, T::BoolAnd, U::LeadingOnly, true, 255),
    def("MaxRecvDataSegmentLength", K::MaxRecvDataSegmentLength, T::Declarative, U::All, false, 255),
    def("MaxBurstLength", K::MaxBurstLength, T::NumMin { min: 512, max: MAX_24 }, U::LeadingOnly, true, 255),
    def("FirstBurstLength", K::FirstBurstLength, T::NumMin { min: 512, max: MAX_24 }, U::LeadingOnly, true, 255),
    def("DefaultTime2Wait", K::DefaultTime2Wait, T::NumMax { min: 0, max: 3600 }, U::LeadingOnly, false, 255),
    def("DefaultTime2Retain", K::DefaultTime2Retain, T::NumMin { min: 0, max: 3600 }, U::LeadingOnly, false, 255),
    def("MaxOutstandingR2T", K::MaxOutstandingR2T, T::NumMin { min: 1, max: 65535 }, U::LeadingOnly, true, 255),
    def("DataPDUInOrder", K::DataPduInOrder, T::BoolOr, U::LeadingOnly, true, 255),
    def("DataSequenceInOrder", K::DataSequenceInOrder, T::BoolOr, U::LeadingOnly, true, 255),
    def("ErrorRecoveryLevel", K::ErrorRecoveryLevel, T::NumMin { min: 0, max: 2 }, U::LeadingOnly, false, 255),
    def("SessionType", K::SessionType, T::Declarative, U::LeadingOnly, false, 255),
    def("TaskReporting", K::TaskReporting, T::List, U::LeadingOnly, true, 255),
    def("iSCSIProtocolLevel", K::ProtocolLevel, T::NumMin { min: 0, max: 31 }, U::LeadingOnly, false, 255),
    def("AuthMethod", K::AuthMethod, T::List, U::SecurityOnly, false, 255),
    def("CHAP_A", K::ChapA, T::Security, U::SecurityOnly, false, 255),
    def("CHAP_I", K::ChapI, T::Security, U::SecurityOnly, false, 255),
    def("CHAP_C", K::ChapC, T::Security, U::SecurityOnly, false, 8192),
    def("CHAP_N", K::ChapN, T::Security, U::SecurityOnly, false, 255),
    def("CHAP_R", K::ChapR, T::Security, U::SecurityOnly, false, 8192),
    def("IFMarker", K::Marker, T::Obsolete, U::InitializeOnly, false, 255),
    def("OFMarker", K::Marker, T::Obsolete, U::InitializeOnly, false, 255),
    def("IFMarkInt", K::MarkInt, T::Obsolete, U::InitializeOnly, false, 255),
    def("OFMarkInt", K::MarkInt, T::Obsolete, U::InitializeOnly, false, 255),
];

/// Looks a key up by its exact (case-sensitive) name.
pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    KEY_TABLE.iter().find(|d| d.name == name)
}

/// The reserved answer values (RFC 7143 §6.2).
pub mod answer {
    /// The value is invalid or out of range.
    pub const REJECT: &str = "Reject";
    /// The key does not apply here (e.g. a Normal-only key in a Discovery session).
    pub const IRRELEVANT: &str = "Irrelevant";
    /// The key is unknown to the responder.
    pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
}

/// Parses a numerical value: decimal, or hex with a `0x`/`0X` prefix
/// (RFC 7143 §6.1 "numerical-value"). At most 64 bits; anything else is
/// `None`.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parses a boolean value, exactly `Yes` or `No` (RFC 7143 §6.1 "boolean-value").
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Formats a boolean as `Yes`/`No`.
pub fn fmt_bool(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// True for vendor-specific keys: `X-` (reversed domain) or `X#` (IANA)
/// prefixes (RFC 7143 §6.1, §13.22). They are answered `NotUnderstood`.
pub fn is_vendor_key(name: &str) -> bool {
    name.starts_with("X-") || name.starts_with("X#")
}

/// Loose check of an iSCSI name (RFC 7143 §4.2.7): `iqn.`, `eui.` or `naa.`
/// prefix, 1..=223 bytes, no spaces or control characters.
pub fn valid_iscsi_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa."))
        && name.len() <= 223
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_unique_and_lookup_works() {
        for (i, a) in KEY_TABLE.iter().enumerate() {
            for b in &KEY_TABLE[i + 1..] {
                assert_ne!(a.name, b.name);
            }
            assert_eq!(lookup(a.name).map(|d| d.id), Some(a.id));
        }
        assert!(lookup("headerdigest").is_none(), "keys are case-sensitive");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("262144"), Some(262_144));
        assert_eq!(parse_number("0x40000"), Some(0x40000));
        assert_eq!(parse_number("007"), Some(7));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }

    #[test]
    fn booleans_and_names() {
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert!(valid_iscsi_name("iqn.2004-10.com.example:disk1"));
        assert!(valid_iscsi_name("eui.02004567A425678D"));
        assert!(!valid_iscsi_name("disk1"));
        assert!(!valid_iscsi_name("iqn.a b"));
        assert!(is_vendor_key("X-com.example.foo"));
        assert!(is_vendor_key("X#1234"));
        assert!(!is_vendor_key("Xfoo"));
    }
}
