//! The target's login state machine (RFC 7143 §6.3, §11.12, §11.13).
//!
//! Owns stage sequencing (T/C bits, CSG/NSG), first-PDU identity checks,
//! target lookup and ACLs, authentication policy and the final
//! [`LoginResult`]. Delegates key syntax to `text.rs`, operational keys to
//! `negotiate.rs` and CHAP to `chap.rs`. Knows nothing about PDU bytes,
//! sockets, TSIH allocation or session reinstatement: the connection layer
//! does those with the `LoginResult`.
//!
//! ```text
//!             first PDU (CSG=0)                 first PDU (CSG=1)
//!   Start ----------------------> Security      Start ----------> Operational
//!                                   |  \                               |
//!           T=1,NSG=1, auth done    |   \ T=1,NSG=3, auth done         | T=1,NSG=3
//!                                   v    \                             v
//!                             Operational  `------------------> FullFeature
//!                                   |                                  ^
//!                                   `----------------------------------'
//!   any stage --(bad flags / keys / auth / lookup)--> Failed (fatal response)
//! ```

use std::sync::Arc;

use bytes::Bytes;

use super::chap::{ChapCredentials, ChapKeys, ChapServer};
use super::keys::{self, KeyId};
use super::negotiate::{Negotiator, SessionParams, SessionType, TargetLimits};
use super::text::{encode_text, parse_text, TextAccumulator};
use super::{LoginStatus, Stage, TargetAuthInfo, TargetDirectory};

/// The fields of one Login Request the machine needs (RFC 7143 §11.12),
/// filled by the connection layer from the decoded PDU.
#[derive(Debug, Clone, Default)]
pub struct LoginInput {
    /// T bit: the initiator wants to leave the current stage.
    pub transit: bool,
    /// C bit: the text continues in the next PDU.
    pub cont: bool,
    /// Raw CSG field (2 bits; 2 is reserved and rejected).
    pub csg: u8,
    /// Raw NSG field (only meaningful with T=1).
    pub nsg: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH (0 for a new session).
    pub tsih: u16,
    /// CID.
    pub cid: u16,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// The data segment (text keys), padding allowed.
    pub text: Bytes,
}

/// What the connection layer puts into the Login Response (RFC 7143 §11.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutput {
    /// T bit of the response.
    pub transit: bool,
    /// CSG of the response.
    pub csg: Stage,
    /// NSG of the response (equals `csg` when `transit` is false).
    pub nsg: Stage,
    /// Status-Class.
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
    /// Encoded text keys for the data segment.
    pub text: Bytes,
    /// Set on the response that moves to full-feature phase.
    pub done: Option<LoginResult>,
    /// Close the connection after sending this response.
    pub fatal: bool,
}

/// The outcome of a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    /// Normal or Discovery.
    pub session_type: SessionType,
    /// InitiatorName (RFC 7143 §13.5).
    pub initiator_name: String,
    /// InitiatorAlias, if sent.
    pub initiator_alias: Option<String>,
    /// TargetName (Normal sessions).
    pub target_name: Option<String>,
    /// TargetAlias returned to the initiator, if configured.
    pub target_alias: Option<String>,
    /// TargetPortalGroupTag returned to the initiator (Normal sessions);
    /// with the ISID, InitiatorName and TargetName it names the I_T nexus
    /// (RFC 7143 §4.4.2).
    pub portal_group_tag: Option<u16>,
    /// ISID of the request.
    pub isid: [u8; 6],
    /// TSIH of the request (0 = new session).
    pub tsih: u16,
    /// CID of the request.
    pub cid: u16,
    /// Negotiated parameters.
    pub params: SessionParams,
}

/// What one step decided about authentication (RFC 7143 §6.3.1), for the
/// connection layer's failed-authentication throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The CHAP exchange completed: the initiator proved the secret.
    Passed,
    /// Authentication failed (status 0x0201, RFC 7143 §11.13.5): a wrong
    /// or malformed CHAP response, or a required CHAP not done.
    Failed,
}

/// Why a login failed; each maps to a Login Response status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Bad T/C/CSG/NSG combination or stage (0x0200).
    #[error("invalid stage transition: {0}")]
    BadTransition(&'static str),
    /// Malformed text (0x0200).
    #[error(transparent)]
    Text(#[from] super::text::TextError),
    /// Negotiation fault, e.g. a key sent twice (0x0200).
    #[error(transparent)]
    Negotiation(#[from] super::negotiate::NegotiationError),
    /// Identity or security key misuse (0x0200).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A required key is missing (0x0207).
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// Unknown TargetName (0x0203).
    #[error("target not found")]
    NotFound,
    /// Initiator not on the target's ACL (0x0202).
    #[error("initiator not authorized for this target")]
    NotAuthorized,
    /// Authentication failed or was skipped (0x0201).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Version-min above what we speak (0x0205).
    #[error("unsupported version")]
    Version,
    /// Unknown SessionType (0x0209).
    #[error("session type not supported")]
    SessionType,
    /// Login PDU after the login finished (0x020B).
    #[error("login already finished")]
    Finished,
}

impl LoginError {
    /// The Login Response status for this failure (RFC 7143 §11.13.5).
    pub fn status(&self) -> LoginStatus {
        match self {
            LoginError::BadTransition(_)
            | LoginError::Text(_)
            | LoginError::Negotiation(_)
            | LoginError::Protocol(_) => LoginStatus::INITIATOR_ERROR,
            LoginError::Missing(_) => LoginStatus::MISSING_PARAMETER,
            LoginError::NotFound => LoginStatus::NOT_FOUND,
            LoginError::NotAuthorized => LoginStatus::AUTHORIZATION_FAILURE,
            LoginError::Auth(_) => LoginStatus::AUTH_FAILURE,
            LoginError::Version => LoginStatus::UNSUPPORTED_VERSION,
            LoginError::SessionType => LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            LoginError::Finished => LoginStatus::INVALID_DURING_LOGIN,
        }
    }
}

/// Authentication progress within the security stage.
#[derive(Debug, Clone)]
enum Auth {
    /// No AuthMethod agreed yet.
    Pending,
    /// AuthMethod=None agreed.
    None,
    /// CHAP in progress or done.
    Chap(ChapServer),
}

/// Per-login context created by the first PDU.
#[derive(Debug)]
struct Ctx {
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target: Option<TargetAuthInfo>,
    creds: Option<ChapCredentials>,
    neg: Negotiator,
    first_response_sent: bool,
}

/// Login machine states (see the module diagram).
#[derive(Debug)]
enum State {
    Start,
    Security(Box<Ctx>, Auth),
    Operational(Box<Ctx>),
    FullFeature,
    Failed,
}

/// The target side of one connection's login. Feed every Login Request
/// through [`LoginMachine::step`] and send back what it returns.
pub struct LoginMachine {
    dir: Arc<dyn TargetDirectory>,
    limits: TargetLimits,
    state: State,
    acc: TextAccumulator,
    pending_stage: Option<Stage>,
    /// InitiatorName of the first PDU, kept past a failure.
    initiator_name: Option<String>,
    /// The authentication verdict of the last step, if it made one.
    verdict: Option<AuthVerdict>,
}

impl std::fmt::Debug for LoginMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginMachine")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The response of a successful step, before it becomes a `LoginOutput`.
struct Reply {
    transit: bool,
    csg: Stage,
    nsg: Stage,
    pairs: Vec<(String, String)>,
    done: Option<LoginResult>,
}

impl LoginMachine {
    /// A machine for a fresh connection.
    pub fn new(dir: Arc<dyn TargetDirectory>, limits: TargetLimits) -> Self {
        let acc = TextAccumulator::new(limits.max_text_len);
        Self {
            dir,
            limits,
            state: State::Start,
            acc,
            pending_stage: None,
            initiator_name: None,
            verdict: None,
        }
    }

    /// The InitiatorName the login declared (RFC 7143 §13.5), also after
    /// it failed; `None` before a first PDU carrying a valid one.
    pub fn initiator_name(&self) -> Option<&str> {
        self.initiator_name.as_deref()
    }

    /// What the last [`LoginMachine::step`] decided about authentication:
    /// `Some` only for the step that completed a CHAP exchange or failed
    /// authentication.
    pub fn auth_verdict(&self) -> Option<AuthVerdict> {
        self.verdict
    }

    /// True once the login reached full-feature phase.
    pub fn is_full_feature(&self) -> bool {
        matches!(self.state, State::FullFeature)
    }

    /// True once the login failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// The stage the login is in: `None` before the first PDU and after a
    /// failure, `Some(FullFeature)` once finished.
    pub fn stage(&self) -> Option<Stage> {
        match self.state {
            State::FullFeature => Some(Stage::FullFeature),
            _ => self.expected_stage(),
        }
    }

    /// The stage the next Login Request must carry as CSG, if any.
    fn expected_stage(&self) -> Option<Stage> {
        match &self.state {
            State::Security(..) => Some(Stage::Security),
            State::Operational(_) => Some(Stage::Operational),
            State::Start | State::FullFeature | State::Failed => None,
        }
    }

    /// Processes one Login Request and returns the Login Response fields.
    /// Never panics on any input; after a fatal output the machine stays
    /// failed and answers every further PDU with 0x020B.
    pub fn step(&mut self, input: &LoginInput) -> LoginOutput {
        let fallback = self
            .expected_stage()
            .or_else(|| Stage::from_bits(input.csg & 3).filter(|s| *s != Stage::FullFeature))
            .unwrap_or(Stage::Security);
        self.verdict = None;
        match self.transition(input) {
            Ok(r) => LoginOutput {
                transit: r.transit,
                csg: r.csg,
                nsg: r.nsg,
                status_class: 0,
                status_detail: 0,
                text: encode_text(&r.pairs),
                done: r.done,
                fatal: false,
            },
            Err(e) => {
                tracing::debug!(error = %e, "login failed");
                if matches!(e, LoginError::Auth(_)) {
                    self.verdict = Some(AuthVerdict::Failed);
                }
                self.state = State::Failed;
                let s = e.status();
                LoginOutput {
                    transit: false,
                    csg: fallback,
                    nsg: fallback,
                    status_class: s.class,
                    status_detail: s.detail,
                    text: Bytes::new(),
                    done: None,
                    fatal: true,
                }
            }
        }
    }

    /// The checked transition function.
    fn transition(&mut self, input: &LoginInput) -> Result<Reply, LoginError> {
        if matches!(self.state, State::FullFeature | State::Failed) {
            return Err(LoginError::Finished);
        }
        let csg = Stage::from_bits(input.csg).ok_or(LoginError::BadTransition("reserved CSG"))?;
        if csg == Stage::FullFeature {
            return Err(LoginError::BadTransition("CSG is FullFeaturePhase"));
        }
        if input.transit && input.cont {
            return Err(LoginError::BadTransition("T and C both set"));
        }
        let nsg = if input.transit {
            let nsg =
                Stage::from_bits(input.nsg).ok_or(LoginError::BadTransition("reserved NSG"))?;
            if nsg <= csg {
                return Err(LoginError::BadTransition("NSG not after CSG"));
            }
            nsg
        } else {
            csg
        };
        match self.expected_stage().or(self.pending_stage) {
            Some(exp) if exp != csg => return Err(LoginError::BadTransition("CSG mismatch")),
            None if matches!(self.state, State::Start) && input.version_min > 0 => {
                return Err(LoginError::Version)
            }
            _ => {}
        }
        if input.cont {
            // Gather continued text; answer with an empty response
            // (RFC 7143 §11.12.3).
            self.acc.push(&input.text)?;
            self.pending_stage = Some(csg);
            return Ok(Reply {
                transit: false,
                csg,
                nsg: csg,
                pairs: Vec::new(),
                done: None,
            });
        }
        self.pending_stage = None;
        let text = self.acc.finish(&input.text)?;
        let pairs = parse_text(&text)?;

        let state = std::mem::replace(&mut self.state, State::Failed);
        let (mut ctx, auth) = match state {
            State::Start => {
                let ctx = self.first_pdu(&pairs, csg)?;
                self.initiator_name = Some(ctx.initiator_name.clone());
                (ctx, Auth::Pending)
            }
            State::Security(ctx, auth) => (ctx, auth),
            State::Operational(ctx) => (ctx, Auth::None),
            State::FullFeature | State::Failed => return Err(LoginError::Finished),
        };
        check_identity_redeclared(&ctx, &pairs)?;

        let mut out: Vec<(String, String)> = Vec::new();
        if !ctx.first_response_sent {
            ctx.first_response_sent = true;
            if let Some(t) = &ctx.target {
                out.push((
                    "TargetPortalGroupTag".into(),
                    t.portal_group_tag.to_string(),
                ));
                if let Some(alias) = &t.alias {
                    out.push(("TargetAlias".into(), alias.clone()));
                }
            }
        }

        let (auth, auth_ok) = if csg == Stage::Security {
            let had_sec = has_security_keys(&pairs);
            let was_done = matches!(&auth, Auth::Chap(s) if s.is_done());
            let auth = security_keys(&ctx, auth, &pairs, &mut out)?;
            let ok = match &auth {
                Auth::Pending | Auth::None => ctx.creds.is_none(),
                Auth::Chap(s) => s.is_done(),
            };
            if ok && !was_done && matches!(auth, Auth::Chap(_)) {
                self.verdict = Some(AuthVerdict::Passed);
            }
            if input.transit && !ok && (!had_sec || matches!(auth, Auth::Pending)) {
                return Err(LoginError::Auth("security stage skipped".into()));
            }
            (auth, ok)
        } else {
            if has_security_keys(&pairs) {
                return Err(LoginError::Protocol("security key outside security stage"));
            }
            (auth, true)
        };

        out.extend(ctx.neg.negotiate(&pairs)?);
        if csg == Stage::Operational {
            out.extend(ctx.neg.take_declaration());
        }

        let transit = input.transit && auth_ok;
        let reply_nsg = if transit { nsg } else { csg };
        let mut done = None;
        self.state = match (csg, transit, reply_nsg) {
            (_, true, Stage::FullFeature) => {
                done = Some(finish(*ctx, input));
                State::FullFeature
            }
            (_, true, _) => State::Operational(ctx),
            (Stage::Security, false, _) => State::Security(ctx, auth),
            _ => State::Operational(ctx),
        };
        Ok(Reply {
            transit,
            csg,
            nsg: reply_nsg,
            pairs: out,
            done,
        })
    }

    /// Handles the identity keys of the first PDU (RFC 7143 §6.3, §13.5,
    /// §13.4, §13.21), target lookup and the ACL.
    fn first_pdu(&self, pairs: &[(String, String)], csg: Stage) -> Result<Box<Ctx>, LoginError> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let initiator_name = get("InitiatorName").ok_or(LoginError::Missing("InitiatorName"))?;
        if !keys::valid_iscsi_name(initiator_name) {
            return Err(LoginError::Protocol("invalid InitiatorName"));
        }
        let session_type = match get("SessionType") {
            None => SessionType::Normal,
            Some(v) => SessionType::parse(v).ok_or(LoginError::SessionType)?,
        };
        let (target, creds) = match session_type {
            SessionType::Discovery => (None, self.dir.discovery_auth()),
            SessionType::Normal => {
                let name = get("TargetName").ok_or(LoginError::Missing("TargetName"))?;
                let t = self.dir.lookup(name).ok_or(LoginError::NotFound)?;
                if let Some(acl) = &t.acl {
                    if !acl.iter().any(|a| a == initiator_name) {
                        return Err(LoginError::NotAuthorized);
                    }
                }
                let creds = t.chap.clone();
                (Some(t), creds)
            }
        };
        if csg == Stage::Operational && creds.is_some() {
            return Err(LoginError::Auth("authentication required".into()));
        }
        Ok(Box::new(Ctx {
            session_type,
            initiator_name: initiator_name.to_owned(),
            initiator_alias: get("InitiatorAlias").map(str::to_owned),
            target,
            creds,
            neg: Negotiator::new(self.limits.clone(), session_type),
            first_response_sent: false,
        }))
    }
}

fn has_security_keys(pairs: &[(String, String)]) -> bool {
    pairs
        .iter()
        .any(|(k, _)| keys::lookup(k).is_some_and(|d| d.usage == keys::KeyUse::SecurityOnly))
}

/// Identity keys may be repeated with the same value (libiscsi resends
/// them in its operational stage) but never changed.
fn check_identity_redeclared(ctx: &Ctx, pairs: &[(String, String)]) -> Result<(), LoginError> {
    for (k, v) in pairs {
        let same = match k.as_str() {
            "InitiatorName" => *v == ctx.initiator_name,
            "InitiatorAlias" => ctx.initiator_alias.as_deref().is_none_or(|a| a == v),
            "SessionType" => SessionType::parse(v) == Some(ctx.session_type),
            "TargetName" => match &ctx.target {
                Some(t) => *v == t.name,
                None => true, // ignored in discovery sessions
            },
            _ => true,
        };
        if !same {
            return Err(LoginError::Protocol("identity key changed during login"));
        }
    }
    Ok(())
}

/// AuthMethod and CHAP_* handling for one security-stage PDU.
fn security_keys(
    ctx: &Ctx,
    mut auth: Auth,
    pairs: &[(String, String)],
    out: &mut Vec<(String, String)>,
) -> Result<Auth, LoginError> {
    let mut chap = ChapKeys::default();
    for (k, v) in pairs {
        let Some(def) = keys::lookup(k) else { continue };
        match def.id {
            KeyId::AuthMethod => {
                if !matches!(auth, Auth::Pending) {
                    return Err(LoginError::Protocol("AuthMethod sent twice"));
                }
                let offered: Vec<&str> = v.split(',').collect();
                auth = if ctx.creds.is_some() {
                    if !offered.contains(&"CHAP") {
                        return Err(LoginError::Auth("CHAP required, not offered".into()));
                    }
                    out.push(("AuthMethod".into(), "CHAP".into()));
                    Auth::Chap(ChapServer::new())
                } else {
                    // Without credentials we can only do None.
                    if !offered.contains(&"None") {
                        return Err(LoginError::Auth("no common AuthMethod".into()));
                    }
                    out.push(("AuthMethod".into(), "None".into()));
                    Auth::None
                };
            }
            KeyId::ChapA => chap.a = Some(v.clone()),
            KeyId::ChapI => chap.i = Some(v.clone()),
            KeyId::ChapC => chap.c = Some(v.clone()),
            KeyId::ChapN => chap.n = Some(v.clone()),
            KeyId::ChapR => chap.r = Some(v.clone()),
            _ => {}
        }
    }
    if !chap.is_empty() {
        let (Auth::Chap(server), Some(creds)) = (&mut auth, &ctx.creds) else {
            return Err(LoginError::Auth("CHAP keys without AuthMethod=CHAP".into()));
        };
        let reply = server
            .step(&chap, creds)
            .map_err(|e| LoginError::Auth(e.to_string()))?;
        out.extend(reply);
    }
    Ok(auth)
}

fn finish(ctx: Ctx, input: &LoginInput) -> LoginResult {
    LoginResult {
        session_type: ctx.session_type,
        initiator_name: ctx.initiator_name,
        initiator_alias: ctx.initiator_alias,
        portal_group_tag: ctx.target.as_ref().map(|t| t.portal_group_tag),
        target_alias: ctx.target.as_ref().and_then(|t| t.alias.clone()),
        target_name: ctx.target.map(|t| t.name),
        isid: input.isid,
        tsih: input.tsih,
        cid: input.cid,
        params: ctx.neg.into_params(),
    }
}
