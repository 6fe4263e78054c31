//! One TCP connection from accept to close: the login phase (driving
//! [`crate::login::LoginMachine`] with Login Request PDUs), registration of
//! the session, then the full-feature phase.
//!
//! ```text
//!  accept --> Login (LoginMachine::step per PDU) --fail--> Login Response, close
//!                 |
//!                 +--done--> register (reinstatement) --> FullFeature::run --> close
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::ffp::FullFeature;
use super::io::{read_pdu, writer_task, Chunk, Outbox};
use super::registry::{SessionKey, SessionRegistry};
use super::throttle::AuthThrottle;
use super::{ConnParams, SessionControl, TextResponder};
use crate::login::{
    self, AuthVerdict, Digest, LoginInput, LoginMachine, LoginResult, SessionType, TargetDirectory,
    TargetLimits, TextRequestContext,
};
use crate::pdu::{Bhs, Digests, FrameLimits, LoginFlags, LoginRequest, LoginResponse, Pdu, SeqNum};
use crate::scsi::ScsiTarget;

/// How long one login PDU may take to arrive before the login is abandoned.
const LOGIN_PDU_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a connection finds targets: their login view and their SCSI side.
pub trait TargetLookup: TargetDirectory {
    /// The SCSI target behind a target name.
    fn scsi_target(&self, name: &str) -> Option<Arc<ScsiTarget>>;
}

/// Everything a connection needs from the daemon.
pub struct ConnectionContext {
    /// Targets, their auth and their LUNs.
    pub targets: Arc<dyn TargetLookup>,
    /// Live sessions.
    pub registry: Arc<SessionRegistry>,
    /// This daemon's failed-authentication throttle.
    pub auth_throttle: AuthThrottle,
    /// Our negotiation limits.
    pub limits: TargetLimits,
    /// Non-negotiated per-connection settings (queue depth, keepalive).
    pub base: ConnParams,
    /// Daemon shutdown signal.
    pub shutdown: watch::Receiver<bool>,
}

impl ConnectionContext {
    fn directory(&self) -> Arc<dyn TargetDirectory> {
        self.targets.clone()
    }
}

struct Text {
    dir: Arc<dyn TargetDirectory>,
    session_type: SessionType,
    initiator: String,
    target: Option<String>,
}

impl TextResponder for Text {
    fn respond(&self, request: &[u8]) -> Option<Bytes> {
        let ctx = TextRequestContext {
            session_type: self.session_type,
            initiator_name: &self.initiator,
            target_name: self.target.as_deref(),
        };
        login::text_request(ctx, request, self.dir.as_ref()).ok()
    }
}

/// Serves one accepted connection until it closes. Never panics on peer
/// input; every fault ends in a defined answer or a closed socket.
pub async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<ConnectionContext>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Vec<Chunk>>(256);
    // A peer that takes no byte for as long as it may leave a ping
    // unanswered counts as dead (the writer ends; so does the session).
    let writer = tokio::spawn(writer_task(writer, rx, ctx.base.nop_timeout));
    let mut buf = BytesMut::with_capacity(64 * 1024);

    let login = match login_phase(&mut reader, &mut buf, &tx, &ctx, peer).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            drop(tx);
            let _ = writer.await;
            return;
        }
        Err(e) => {
            tracing::info!(%peer, error = %e, "login ended");
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let LoggedIn {
        result,
        exp_cmd_sn,
        stat_sn,
        registration,
    } = login;
    let p = &result.params;
    let params = ConnParams {
        max_recv_data_segment_length: p.target_mrdsl,
        max_xmit_data_segment_length: p.initiator_mrdsl,
        max_burst_length: p.max_burst_length,
        first_burst_length: p.first_burst_length,
        initial_r2t: p.initial_r2t,
        immediate_data: p.immediate_data,
        max_outstanding_r2t: u32::from(p.max_outstanding_r2t),
        header_digest: p.header_digest == Digest::Crc32c,
        data_digest: p.data_digest == Digest::Crc32c,
        ..ctx.base.clone()
    };
    let target_name = result.target_name.clone().unwrap_or_default();
    let scsi = match result.session_type {
        SessionType::Normal => ctx.targets.scsi_target(&target_name),
        SessionType::Discovery => None,
    };
    let nexus = Arc::new(super::iscsi_nexus(
        next_nexus_id(),
        &result.initiator_name,
        result.isid,
    ));
    if let Some(t) = &scsi {
        t.nexus_created(&nexus);
    }
    let text = Arc::new(Text {
        dir: ctx.directory(),
        session_type: result.session_type,
        initiator: result.initiator_name.clone(),
        target: result.target_name.clone(),
    });
    let kill = registration
        .as_ref()
        .map(|r| r.kill.clone())
        .unwrap_or_default();
    tracing::info!(%peer, initiator = %result.initiator_name, target = %target_name,
        kind = ?result.session_type, "session established");
    let ffp = FullFeature::new(
        params,
        scsi.clone(),
        nexus.clone(),
        result.initiator_name.clone(),
        text,
        tx,
        exp_cmd_sn,
        stat_sn,
    );
    let ending = ffp
        .run(
            &mut reader,
            &mut buf,
            SessionControl {
                shutdown: ctx.shutdown.clone(),
                kill,
            },
        )
        .await;
    tracing::info!(%peer, initiator = %result.initiator_name, ?ending, "session ended");
    if let Some(t) = scsi {
        t.nexus_lost(nexus.id);
    }
    drop(registration);
    let _ = writer.await;
}

fn next_nexus_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct LoggedIn {
    result: LoginResult,
    exp_cmd_sn: SeqNum,
    stat_sn: SeqNum,
    registration: Option<super::registry::Registration>,
}

#[derive(Debug, thiserror::Error)]
enum LoginPhaseError {
    #[error(transparent)]
    Stream(#[from] super::io::StreamError),
    #[error("no login PDU within {0:?}")]
    Timeout(Duration),
    #[error("first PDU is not a Login Request")]
    NotLogin,
    #[error("login rejected: status {0:#06x}")]
    Refused(u16),
}

async fn login_phase(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    out: &Outbox,
    ctx: &ConnectionContext,
    peer: SocketAddr,
) -> Result<Option<LoggedIn>, LoginPhaseError> {
    let mut machine = LoginMachine::new(ctx.directory(), ctx.limits.clone());
    let mut stat_sn: Option<SeqNum> = None;
    loop {
        let raw = match tokio::time::timeout(
            LOGIN_PDU_TIMEOUT,
            read_pdu(reader, buf, &FrameLimits::LOGIN),
        )
        .await
        {
            Err(_) => return Err(LoginPhaseError::Timeout(LOGIN_PDU_TIMEOUT)),
            Ok(r) => match r? {
                Some(raw) => raw,
                None => return Ok(None),
            },
        };
        let req = match Pdu::decode(&raw) {
            Ok(Pdu {
                bhs: Bhs::LoginRequest(req),
                data,
                ..
            }) => (req, data),
            // RFC 7143 §6.1: anything but a Login Request before login
            // completes is a protocol error; the connection is dropped.
            _ => return Err(LoginPhaseError::NotLogin),
        };
        let (req, data) = req;
        let sn = *stat_sn.get_or_insert(req.exp_stat_sn);
        // TSIH != 0 asks to add a connection to an existing session; Locus
        // negotiates MaxConnections=1 (RFC 7143 §11.13.5: 0x0206 or 0x020a).
        if req.tsih != 0 {
            let detail = if ctx.registry.has_tsih(req.tsih) {
                0x06
            } else {
                0x0a
            };
            send_login_response(
                out,
                &req,
                sn,
                ctx,
                2,
                detail,
                LoginFlags {
                    transit: false,
                    cont: false,
                    csg: req.flags.csg,
                    nsg: req.flags.csg,
                },
                Bytes::new(),
                0,
            )
            .await;
            return Err(LoginPhaseError::Refused(0x0200 | u16::from(detail)));
        }
        let output = machine.step(&LoginInput {
            transit: req.flags.transit,
            cont: req.flags.cont,
            csg: req.flags.csg,
            nsg: req.flags.nsg,
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
            version_max: req.version_max,
            version_min: req.version_min,
            text: data,
        });
        stat_sn = Some(sn.next());
        if let Some(verdict) = machine.auth_verdict() {
            throttle(ctx, &machine, peer, verdict).await;
        }
        let flags = LoginFlags {
            transit: output.transit,
            cont: false,
            csg: output.csg.bits(),
            nsg: output.nsg.bits(),
        };
        if output.fatal || output.status_class != 0 {
            send_login_response(
                out,
                &req,
                sn,
                ctx,
                output.status_class,
                output.status_detail,
                flags,
                output.text,
                0,
            )
            .await;
            return Err(LoginPhaseError::Refused(
                u16::from(output.status_class) << 8 | u16::from(output.status_detail),
            ));
        }
        let Some(result) = output.done else {
            send_login_response(out, &req, sn, ctx, 0, 0, flags, output.text, 0).await;
            continue;
        };
        // Login succeeds: reinstate and register Normal sessions, then send
        // the final response with the TSIH.
        let registration = match result.session_type {
            SessionType::Normal => Some(
                ctx.registry
                    .register(SessionKey {
                        initiator: result.initiator_name.clone(),
                        isid: req.isid,
                        target: result.target_name.clone().unwrap_or_default(),
                    })
                    .await,
            ),
            SessionType::Discovery => None,
        };
        let tsih = registration.as_ref().map_or(1, |r| r.tsih);
        send_login_response(out, &req, sn, ctx, 0, 0, flags, output.text, tsih).await;
        return Ok(Some(LoggedIn {
            result,
            exp_cmd_sn: req.cmd_sn,
            stat_sn: sn.next(),
            registration,
        }));
    }
}

/// Holds back the answer to a CHAP verdict as long as the daemon's
/// [`AuthThrottle`] says, sleeping in this connection's task; a throttled
/// peer is logged at warn level.
async fn throttle(
    ctx: &ConnectionContext,
    machine: &LoginMachine,
    peer: SocketAddr,
    verdict: AuthVerdict,
) {
    let initiator = machine.initiator_name();
    let delay = ctx
        .auth_throttle
        .judge(initiator, peer.ip(), verdict, std::time::Instant::now());
    if delay.is_zero() {
        return;
    }
    tracing::warn!(%peer, initiator = initiator.unwrap_or("-"), ?verdict, ?delay,
        "repeated authentication failures: answer delayed");
    tokio::time::sleep(delay).await;
}

#[allow(clippy::too_many_arguments)]
async fn send_login_response(
    out: &Outbox,
    req: &LoginRequest,
    stat_sn: SeqNum,
    ctx: &ConnectionContext,
    status_class: u8,
    status_detail: u8,
    flags: LoginFlags,
    text: Bytes,
    tsih: u16,
) {
    let pdu = Pdu::new(
        Bhs::LoginResponse(LoginResponse {
            flags,
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih,
            itt: req.itt,
            stat_sn,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn.plus(ctx.base.queue_depth.max(1) - 1),
            status_class,
            status_detail,
        }),
        text,
    );
    let mut parts = Vec::new();
    pdu.encode(Digests::default(), &mut parts);
    let _ = out.send(parts.into_iter().map(Chunk::Mem).collect()).await;
}
