//! RFC 7143 login: text keys, operational negotiation, CHAP, SendTargets
//! discovery and the login state machine.
//!
//! This module is pure logic. It owns the meaning of Login and Text PDU
//! *data segments* and of the login stage fields (T, C, CSG, NSG, status).
//! It must not know about sockets, PDU byte layout or sessions: the
//! connection layer decodes a Login Request into a [`LoginInput`], calls
//! [`LoginMachine::step`], and encodes the [`LoginOutput`] into a Login
//! Response. Target configuration comes in through [`TargetDirectory`].
//!
//! Files: `text.rs` (key=value codec), `keys.rs` (key table and value
//! syntax), `negotiate.rs` (operational keys, [`TargetLimits`],
//! [`SessionParams`]), `chap.rs` (CHAP), `discovery.rs` (SendTargets and the
//! full-feature Text Request handler), `machine.rs` (the login machine).

pub mod chap;
pub mod discovery;
pub mod keys;
pub mod machine;
pub mod negotiate;
pub mod text;

pub use chap::{ChapAlgorithm, ChapCredentials};
pub use discovery::{text_request, DiscoveredTarget, Portal, TextRequestContext};
pub use machine::{AuthVerdict, LoginInput, LoginMachine, LoginOutput, LoginResult};
pub use negotiate::{Digest, DigestPolicy, SessionParams, SessionType, TargetLimits};
pub use text::{encode_text, parse_text, TextAccumulator, TextError};

/// A login stage, the CSG/NSG field of Login PDUs (RFC 7143 §11.12.3).
/// The raw value 2 is reserved and has no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// 0: SecurityNegotiation.
    Security,
    /// 1: LoginOperationalNegotiation.
    Operational,
    /// 3: FullFeaturePhase.
    FullFeature,
}

impl Stage {
    /// Decodes the 2-bit CSG/NSG field; 2 (reserved) gives `None`.
    pub fn from_bits(v: u8) -> Option<Self> {
        match v {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }

    /// The 2-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Stage::Security => 0,
            Stage::Operational => 1,
            Stage::FullFeature => 3,
        }
    }
}

/// Login Response status class and detail (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus {
    /// Status-Class: 0 success, 1 redirection, 2 initiator error, 3 target error.
    pub class: u8,
    /// Status-Detail within the class.
    pub detail: u8,
}

impl LoginStatus {
    /// 0x0000 Success.
    pub const SUCCESS: Self = Self::new(0, 0);
    /// 0x0200 Initiator error (miscellaneous, incl. protocol errors).
    pub const INITIATOR_ERROR: Self = Self::new(2, 0);
    /// 0x0201 Authentication failure.
    pub const AUTH_FAILURE: Self = Self::new(2, 1);
    /// 0x0202 Authorization failure (initiator not allowed on this target).
    pub const AUTHORIZATION_FAILURE: Self = Self::new(2, 2);
    /// 0x0203 Target not found.
    pub const NOT_FOUND: Self = Self::new(2, 3);
    /// 0x0205 Unsupported version.
    pub const UNSUPPORTED_VERSION: Self = Self::new(2, 5);
    /// 0x0207 Missing parameter.
    pub const MISSING_PARAMETER: Self = Self::new(2, 7);
    /// 0x0209 Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self::new(2, 9);
    /// 0x020B Invalid request during login.
    pub const INVALID_DURING_LOGIN: Self = Self::new(2, 0x0b);
    /// 0x0300 Target error.
    pub const TARGET_ERROR: Self = Self::new(3, 0);

    const fn new(class: u8, detail: u8) -> Self {
        Self { class, detail }
    }
}

/// What the login machine needs to know about one target (RFC 7143 §12,
/// ACLs and aliases are local policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAuthInfo {
    /// The target's iSCSI name.
    pub name: String,
    /// TargetAlias returned at login (RFC 7143 §13.6), if any.
    pub alias: Option<String>,
    /// Initiator names allowed to log in; `None` allows every initiator.
    pub acl: Option<Vec<String>>,
    /// CHAP credentials; `Some` makes CHAP mandatory for this target.
    pub chap: Option<ChapCredentials>,
    /// TargetPortalGroupTag of the portal this connection arrived on
    /// (RFC 7143 §13.9).
    pub portal_group_tag: u16,
}

/// The target configuration as seen by login. Implemented by the session
/// layer over its config / metadata store; must be cheap and must not block.
pub trait TargetDirectory: Send + Sync {
    /// The target named `target_name`, or `None` when unknown (0x0203).
    fn lookup(&self, target_name: &str) -> Option<TargetAuthInfo>;
    /// CHAP credentials required for discovery sessions; `None` = no auth.
    fn discovery_auth(&self) -> Option<ChapCredentials>;
    /// Targets this initiator may see via SendTargets (ACL-filtered).
    fn visible_targets(&self, initiator_name: &str) -> Vec<DiscoveredTarget>;
}
