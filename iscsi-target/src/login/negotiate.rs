//! Operational parameter negotiation (RFC 7143 §6.2, §13): the target's
//! preferences ([`TargetLimits`]), the negotiated result ([`SessionParams`])
//! and the responder logic ([`Negotiator`]) that turns the initiator's
//! offers into answers.
//!
//! Owns only operational keys and the catch-all for unknown keys. Identity
//! keys (InitiatorName, TargetName, SessionType, InitiatorAlias) and
//! security keys (AuthMethod, CHAP_*) belong to `machine.rs` / `chap.rs` and
//! are skipped here. The target acts purely as responder: it never offers a
//! key the initiator did not send (open-iscsi fails the login on response
//! keys it did not ask for), except its declarative MaxRecvDataSegmentLength.

use super::keys::{self, answer, KeyDef, KeyId, KeyKind};

/// A digest choice for HeaderDigest / DataDigest (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Digest {
    /// No digest (the RFC default).
    #[default]
    None,
    /// CRC32C (Castagnoli) digest.
    Crc32c,
}

impl Digest {
    fn parse(v: &str) -> Option<Self> {
        match v {
            "None" => Some(Digest::None),
            "CRC32C" => Some(Digest::Crc32c),
            _ => None,
        }
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        }
    }
}

/// Which digests the target accepts (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestPolicy {
    /// Accept either; the initiator's order decides.
    #[default]
    Any,
    /// Only `None`.
    NoneOnly,
    /// Only `CRC32C`.
    Crc32cOnly,
}

impl DigestPolicy {
    fn allows(self, d: Digest) -> bool {
        match self {
            DigestPolicy::Any => true,
            DigestPolicy::NoneOnly => d == Digest::None,
            DigestPolicy::Crc32cOnly => d == Digest::Crc32c,
        }
    }
}

/// SessionType (RFC 7143 §13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionType {
    /// A normal session with a named target (the default).
    #[default]
    Normal,
    /// A discovery session (SendTargets only).
    Discovery,
}

impl SessionType {
    /// Parses the wire value.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "Normal" => Some(SessionType::Normal),
            "Discovery" => Some(SessionType::Discovery),
            _ => None,
        }
    }
}

/// TaskReporting (RFC 7143 §13.23). Only `RFC3720` is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskReporting {
    /// RFC 3720 task reporting semantics (the default).
    #[default]
    Rfc3720,
}

/// The target's own preferences and limits for negotiation. Plain data;
/// the session layer may read it directly. Units are bytes, seconds or
/// counts as named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// Bytes we can receive in one data segment; declared to the initiator
    /// (RFC 7143 §13.12, 512..=2^24-1).
    pub max_recv_data_segment_length: u32,
    /// Our MaxBurstLength offer, bytes (§13.13).
    pub max_burst_length: u32,
    /// Our FirstBurstLength, bytes (§13.14).
    pub first_burst_length: u32,
    /// Whether we accept immediate data (§13.11, AND).
    pub immediate_data: bool,
    /// Whether we require an R2T before unsolicited data (§13.10, OR).
    pub initial_r2t: bool,
    /// Our MaxOutstandingR2T (§13.17, min).
    pub max_outstanding_r2t: u16,
    /// Our MaxConnections (§13.2, min).
    pub max_connections: u16,
    /// Highest ErrorRecoveryLevel we support (§13.20, min).
    pub error_recovery_level: u8,
    /// Our DefaultTime2Wait, seconds (§13.15, max).
    pub default_time2wait: u16,
    /// Our DefaultTime2Retain, seconds (§13.16, min).
    pub default_time2retain: u16,
    /// Our DataPDUInOrder (§13.18, OR).
    pub data_pdu_in_order: bool,
    /// Our DataSequenceInOrder (§13.19, OR).
    pub data_sequence_in_order: bool,
    /// Accepted header digests (§13.1).
    pub header_digest: DigestPolicy,
    /// Accepted data digests (§13.1).
    pub data_digest: DigestPolicy,
    /// Highest iSCSIProtocolLevel we implement (RFC 7144; 1 = RFC 7143).
    pub protocol_level: u8,
    /// Cap on login / text request text gathered over continued PDUs.
    pub max_text_len: usize,
}

impl Default for TargetLimits {
    fn default() -> Self {
        Self {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 16,
            max_connections: 1,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            header_digest: DigestPolicy::Any,
            data_digest: DigestPolicy::Any,
            protocol_level: 1,
            max_text_len: super::text::DEFAULT_TEXT_CAP,
        }
    }
}

/// Every negotiated session and connection parameter, typed. `Default`
/// gives the RFC 7143 §13 defaults, which apply to any key not negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// HeaderDigest (§13.1).
    pub header_digest: Digest,
    /// DataDigest (§13.1).
    pub data_digest: Digest,
    /// MaxConnections (§13.2).
    pub max_connections: u16,
    /// InitialR2T (§13.10).
    pub initial_r2t: bool,
    /// ImmediateData (§13.11).
    pub immediate_data: bool,
    /// Initiator's MaxRecvDataSegmentLength: the most we may send in one
    /// data segment, bytes (§13.12).
    pub initiator_mrdsl: u32,
    /// Our declared MaxRecvDataSegmentLength: the most the initiator will
    /// send us, bytes (8192 when we never got to declare it).
    pub target_mrdsl: u32,
    /// MaxBurstLength, bytes (§13.13).
    pub max_burst_length: u32,
    /// FirstBurstLength, bytes (§13.14); never above `max_burst_length`.
    pub first_burst_length: u32,
    /// DefaultTime2Wait, seconds (§13.15).
    pub default_time2wait: u16,
    /// DefaultTime2Retain, seconds (§13.16).
    pub default_time2retain: u16,
    /// MaxOutstandingR2T (§13.17).
    pub max_outstanding_r2t: u16,
    /// DataPDUInOrder (§13.18).
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder (§13.19).
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel (§13.20).
    pub error_recovery_level: u8,
    /// TaskReporting (§13.23).
    pub task_reporting: TaskReporting,
    /// iSCSIProtocolLevel (§13.24, RFC 7144); 0 when not negotiated.
    pub protocol_level: u8,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_mrdsl: 8192,
            target_mrdsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            task_reporting: TaskReporting::Rfc3720,
            protocol_level: 0,
        }
    }
}

/// A negotiation fault that fails the login (status 0x0200, RFC 7143 §6.2,
/// §11.13.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// A key was offered or declared a second time during login.
    #[error("key {0} negotiated more than once")]
    Duplicate(String),
    /// The initiator sent a key that only a target may send.
    #[error("key {0} may only be sent by a target")]
    TargetOnlyKey(String),
    /// A declaration we must not answer carried an invalid value.
    #[error("invalid value {value:?} for declarative key {key}")]
    InvalidDeclaration {
        /// The key.
        key: String,
        /// The offending value.
        value: String,
    },
}

/// Applies the RFC 7143 §6.2 responder rules for one login (or one text
/// exchange) and accumulates the result in [`SessionParams`].
#[derive(Debug, Clone)]
pub struct Negotiator {
    limits: TargetLimits,
    session_type: SessionType,
    params: SessionParams,
    seen: Vec<String>,
    mrdsl_declared: bool,
}

impl Negotiator {
    /// A negotiator for a session of `session_type`, starting from RFC
    /// defaults.
    pub fn new(limits: TargetLimits, session_type: SessionType) -> Self {
        Self {
            limits,
            session_type,
            params: SessionParams::default(),
            seen: Vec::new(),
            mrdsl_declared: false,
        }
    }

    /// The target's limits.
    pub fn limits(&self) -> &TargetLimits {
        &self.limits
    }

    /// The values negotiated so far (RFC defaults for the rest).
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// Consumes the negotiator, returning the parameters.
    pub fn into_params(self) -> SessionParams {
        self.params
    }

    /// Our MaxRecvDataSegmentLength declaration, returned once (RFC 7143
    /// §13.12: each side declares what it can receive). After this call
    /// `params().target_mrdsl` holds the declared value.
    pub fn take_declaration(&mut self) -> Option<(String, String)> {
        if self.mrdsl_declared {
            return None;
        }
        self.mrdsl_declared = true;
        let v = self
            .limits
            .max_recv_data_segment_length
            .clamp(512, (1 << 24) - 1);
        self.params.target_mrdsl = v;
        Some(("MaxRecvDataSegmentLength".into(), v.to_string()))
    }

    fn mark_seen(&mut self, key: &str) -> Result<(), NegotiationError> {
        if self.seen.iter().any(|k| k == key) {
            return Err(NegotiationError::Duplicate(key.to_owned()));
        }
        self.seen.push(key.to_owned());
        Ok(())
    }

    /// Answers every operational, obsolete, vendor or unknown key in
    /// `pairs`, in order, and records the results. Identity and security
    /// keys are skipped (the caller handles them). A key seen in an
    /// earlier call fails with [`NegotiationError::Duplicate`].
    pub fn negotiate(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, NegotiationError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (key, value) in pairs {
            let Some(def) = keys::lookup(key) else {
                self.mark_seen(key)?;
                out.push((key.clone(), answer::NOT_UNDERSTOOD.into()));
                continue;
            };
            if matches!(def.kind, KeyKind::Security)
                || matches!(
                    def.id,
                    KeyId::InitiatorName
                        | KeyId::TargetName
                        | KeyId::SessionType
                        | KeyId::InitiatorAlias
                        | KeyId::AuthMethod
                )
            {
                continue;
            }
            self.mark_seen(key)?;
            if let Some(ans) = self.answer_one(def, value)? {
                out.push((key.clone(), ans));
            }
        }
        // FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14).
        if self.params.first_burst_length > self.params.max_burst_length {
            self.params.first_burst_length = self.params.max_burst_length;
            let fb = self.params.first_burst_length.to_string();
            for (k, v) in out.iter_mut() {
                if k == "FirstBurstLength" && v.as_str() != answer::REJECT {
                    *v = fb.clone();
                }
            }
        }
        Ok(out)
    }

    /// Computes the answer to one offered key; `None` means "no answer"
    /// (declarations).
    fn answer_one(
        &mut self,
        def: &KeyDef,
        value: &str,
    ) -> Result<Option<String>, NegotiationError> {
        let reject = || Ok(Some(answer::REJECT.to_owned()));
        if def.normal_only && self.session_type == SessionType::Discovery {
            return Ok(Some(answer::IRRELEVANT.into()));
        }
        if value.len() > def.max_len {
            return reject();
        }
        let l = &self.limits;
        match def.id {
            KeyId::MaxRecvDataSegmentLength => {
                let v = keys::parse_number(value)
                    .filter(|v| (512..=(1 << 24) - 1).contains(v))
                    .ok_or_else(|| NegotiationError::InvalidDeclaration {
                        key: def.name.into(),
                        value: value.into(),
                    })?;
                self.params.initiator_mrdsl = u32::try_from(v).unwrap_or(8192);
                Ok(None)
            }
            // Keys only a target may send (RFC 7143 §13.6, §13.8, §13.9):
            // an initiator sending one breaks the protocol. Answering it
            // would also duplicate our own declaration of the same key.
            KeyId::TargetAlias | KeyId::TargetAddress | KeyId::TargetPortalGroupTag => {
                Err(NegotiationError::TargetOnlyKey(def.name.into()))
            }
            // An FFP inquiry has no place in a login offer.
            KeyId::SendTargets => reject(),
            KeyId::HeaderDigest | KeyId::DataDigest => {
                let policy = if def.id == KeyId::HeaderDigest {
                    l.header_digest
                } else {
                    l.data_digest
                };
                let Some(d) = value
                    .split(',')
                    .filter_map(Digest::parse)
                    .find(|d| policy.allows(*d))
                else {
                    return reject();
                };
                if def.id == KeyId::HeaderDigest {
                    self.params.header_digest = d;
                } else {
                    self.params.data_digest = d;
                }
                Ok(Some(d.as_str().into()))
            }
            KeyId::TaskReporting => {
                if value.split(',').any(|v| v == "RFC3720") {
                    self.params.task_reporting = TaskReporting::Rfc3720;
                    Ok(Some("RFC3720".into()))
                } else {
                    reject()
                }
            }
            KeyId::Marker => {
                // RFC 7143 §13.25: SHOULD answer Reject, MAY answer No,
                // MUST NOT answer NotUnderstood. "No" keeps RFC 3720-era
                // initiators (which treat it as an AND boolean) happy.
                Ok(Some("No".into()))
            }
            KeyId::MarkInt => reject(),
            _ => self.answer_typed(def, value),
        }
    }

    /// Booleans and numbers, by the result function in the table.
    fn answer_typed(
        &mut self,
        def: &KeyDef,
        value: &str,
    ) -> Result<Option<String>, NegotiationError> {
        let l = self.limits.clone();
        match def.kind {
            KeyKind::BoolOr | KeyKind::BoolAnd => {
                let Some(theirs) = keys::parse_bool(value) else {
                    return Ok(Some(answer::REJECT.into()));
                };
                let or = def.kind == KeyKind::BoolOr;
                let combine = |ours: bool| if or { theirs || ours } else { theirs && ours };
                let r = match def.id {
                    KeyId::InitialR2T => {
                        self.params.initial_r2t = combine(l.initial_r2t);
                        self.params.initial_r2t
                    }
                    KeyId::ImmediateData => {
                        self.params.immediate_data = combine(l.immediate_data);
                        self.params.immediate_data
                    }
                    KeyId::DataPduInOrder => {
                        self.params.data_pdu_in_order = combine(l.data_pdu_in_order);
                        self.params.data_pdu_in_order
                    }
                    KeyId::DataSequenceInOrder => {
                        self.params.data_sequence_in_order = combine(l.data_sequence_in_order);
                        self.params.data_sequence_in_order
                    }
                    _ => return Ok(Some(answer::REJECT.into())),
                };
                Ok(Some(keys::fmt_bool(r).into()))
            }
            KeyKind::NumMin { min, max } | KeyKind::NumMax { min, max } => {
                let Some(theirs) = keys::parse_number(value).filter(|v| (min..=max).contains(v))
                else {
                    return Ok(Some(answer::REJECT.into()));
                };
                let is_min = matches!(def.kind, KeyKind::NumMin { .. });
                let pick = |ours: u64| {
                    if is_min {
                        theirs.min(ours)
                    } else {
                        theirs.max(ours)
                    }
                };
                let p = &mut self.params;
                // `pick` results lie within the key's range, which fits the
                // field type; the fallbacks are never taken.
                let r = match def.id {
                    KeyId::MaxConnections => {
                        p.max_connections =
                            u16::try_from(pick(l.max_connections.into())).unwrap_or(1);
                        u64::from(p.max_connections)
                    }
                    KeyId::MaxBurstLength => {
                        p.max_burst_length =
                            u32::try_from(pick(l.max_burst_length.into())).unwrap_or(262_144);
                        u64::from(p.max_burst_length)
                    }
                    KeyId::FirstBurstLength => {
                        p.first_burst_length =
                            u32::try_from(pick(l.first_burst_length.into())).unwrap_or(65_536);
                        u64::from(p.first_burst_length)
                    }
                    KeyId::DefaultTime2Wait => {
                        p.default_time2wait =
                            u16::try_from(pick(l.default_time2wait.into())).unwrap_or(2);
                        u64::from(p.default_time2wait)
                    }
                    KeyId::DefaultTime2Retain => {
                        p.default_time2retain =
                            u16::try_from(pick(l.default_time2retain.into())).unwrap_or(20);
                        u64::from(p.default_time2retain)
                    }
                    KeyId::MaxOutstandingR2T => {
                        p.max_outstanding_r2t =
                            u16::try_from(pick(l.max_outstanding_r2t.into())).unwrap_or(1);
                        u64::from(p.max_outstanding_r2t)
                    }
                    KeyId::ErrorRecoveryLevel => {
                        p.error_recovery_level =
                            u8::try_from(pick(l.error_recovery_level.into())).unwrap_or(0);
                        u64::from(p.error_recovery_level)
                    }
                    KeyId::ProtocolLevel => {
                        p.protocol_level = u8::try_from(pick(l.protocol_level.into())).unwrap_or(0);
                        u64::from(p.protocol_level)
                    }
                    _ => return Ok(Some(answer::REJECT.into())),
                };
                Ok(Some(r.to_string()))
            }
            _ => Ok(Some(answer::REJECT.into())),
        }
    }
}

#[cfg(test)]
#[path = "negotiate_tests.rs"]
mod tests;
