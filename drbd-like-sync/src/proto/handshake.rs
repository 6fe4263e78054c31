//! The connection handshake: version check and mutual authentication by
//! HMAC-SHA-256 challenge-response over the shared cluster secret
//! (invariant 8, ARCHITECTURE.md). Sans-IO: each side is a machine that is fed
//! the messages it receives and says what to send; nonces come from the
//! caller, so runs are deterministic under test.
//!
//! ```text
//!   client                                                server
//!   ClientHandshake::new ---ClientHello(v, id_c, n_c)---> AwaitClientHello
//!   AwaitServerHello                                        | v ≠ ours: Fatal(VERSION_MISMATCH)
//!        |           <--ServerHello(v, id_s, n_s, P_s)---  AwaitProof
//!        | v ≠ ours: Fatal(VERSION_MISMATCH)                |
//!        | P_s bad:  Fatal(AUTH_FAILED)                     |
//!   AwaitVerdict     ----ClientProof(P_c)--------------->   | P_c bad: Fatal(AUTH_FAILED)
//!        |           <--Accept-----------------------------  Done(id_c)
//!   Done(id_s)
//!
//!   any state --Fatal from peer / message out of place--> Failed (stays Failed)
//! ```
//!
//! The proofs are HMAC-SHA-256 keyed with the cluster secret over one
//! transcript, told apart by a direction label so neither can be reflected
//! as the other:
//!
//! ```text
//!   P_s = HMAC(secret, "locus-repl server->client" || T)
//!   P_c = HMAC(secret, "locus-repl client->server" || T)
//!   T   = version u16 || u8 len || id_c || u8 len || id_s || n_c (32) || n_s (32)
//! ```
//!
//! `P_s` answers the client's fresh challenge `n_c`, `P_c` the server's
//! `n_s`, so a proof recorded on another connection does not verify.
//! Tags are checked with [`Mac::verify_slice`], in constant time. A wrong
//! secret on either side makes both sides fail with
//! [`ProtoError::AuthFailed`]: the side whose check failed sends
//! `Fatal(AUTH_FAILED)` and the other maps it to the same error. A failed
//! machine accepts nothing more; the caller closes the connection after
//! sending what the last step returned.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::message::{ClientHello, ClientProof, Fatal, Message, ServerHello};
use super::{ErrorCode, NodeId, Nonce, ProtoError, Tag, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

const SERVER_LABEL: &[u8] = b"locus-repl server->client";
const CLIENT_LABEL: &[u8] = b"locus-repl client->server";

/// The shared cluster secret. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// Wraps the secret bytes (use at least 32 random bytes).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        ClusterSecret(bytes.into())
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// What one side brings to a handshake.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// This node's id, sent in its hello and bound into both proofs.
    pub node_id: NodeId,
    /// The cluster secret both sides must share.
    pub secret: ClusterSecret,
}

/// What the caller does after feeding a message to a machine.
#[derive(Debug)]
pub enum Step {
    /// Send this message and wait for the peer's next one.
    Send(Message),
    /// Send `send` if any; the connection is authenticated with `peer`.
    Done {
        /// The last handshake message to send.
        send: Option<Message>,
        /// The peer's node id, bound into its HMAC. Proving the secret
        /// proves cluster membership only: the caller checks that this is
        /// the node it meant to reach (client) or one it serves (server).
        peer: NodeId,
    },
    /// Send `send` if any (a `Fatal` frame), then close the connection.
    Failed {
        /// The `Fatal` frame telling the peer why; `None` when the peer
        /// already ended the handshake itself.
        send: Option<Message>,
        /// Why.
        error: ProtoError,
    },
}

/// The machines' common failure: the error and whether to tell the peer.
struct Fail {
    error: ProtoError,
    tell_peer: bool,
}

impl From<ProtoError> for Fail {
    fn from(error: ProtoError) -> Self {
        Fail {
            error,
            tell_peer: true,
        }
    }
}

/// Computes one side's proof over the transcript.
fn transcript_mac(
    secret: &ClusterSecret,
    label: &[u8],
    client: &NodeId,
    server: &NodeId,
    client_nonce: &Nonce,
    server_nonce: &Nonce,
) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&secret.0)
        .expect("HMAC-SHA-256 accepts keys of any length");
    mac.update(label);
    mac.update(&PROTOCOL_VERSION.to_be_bytes());
    for id in [client, server] {
        // Node ids are at most 64 bytes (blockmap), so the length fits a u8.
        mac.update(&[id.as_str().len() as u8]);
        mac.update(id.as_str().as_bytes());
    }
    mac.update(&client_nonce.0);
    mac.update(&server_nonce.0);
    mac
}

fn sign(mac: HmacSha256) -> Tag {
    Tag(mac.finalize().into_bytes().into())
}

/// Maps a `Fatal` frame from the peer to our error: the same variant the
/// peer raised, so both sides agree on what failed.
fn peer_fatal(f: &Fatal) -> Fail {
    let error = match f.code {
        ErrorCode::VERSION_MISMATCH => ProtoError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: f.version,
        },
        ErrorCode::AUTH_FAILED => ProtoError::AuthFailed("the peer refused our proof"),
        code => ProtoError::PeerFatal {
            code,
            message: f.message.clone(),
        },
    };
    Fail {
        error,
        tell_peer: false,
    }
}

/// Our verdict on a peer's version, before anything else of its hello.
fn check_version(theirs: u16) -> Result<(), ProtoError> {
    if theirs != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    Ok(())
}

/// Turns a failed transition into the step the caller acts on.
fn failed(f: Fail) -> Step {
    Step::Failed {
        send: f
            .tell_peer
            .then(|| Message::Fatal(Fatal::for_error(&f.error))),
        error: f.error,
    }
}

/// Client machine states (see the module diagram).
#[derive(Clone, Debug)]
enum ClientState {
    AwaitServerHello,
    AwaitVerdict { server: NodeId },
    Done,
    Failed,
}

impl ClientState {
    fn name(&self) -> &'static str {
        match self {
            ClientState::AwaitServerHello => "AwaitServerHello",
            ClientState::AwaitVerdict { .. } => "AwaitVerdict",
            ClientState::Done => "Done",
            ClientState::Failed => "Failed",
        }
    }
}

/// The connecting side (the writer) of a handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    cfg: HandshakeConfig,
    nonce: Nonce,
    state: ClientState,
}

impl ClientHandshake {
    /// Starts a handshake with a fresh random `nonce`; returns the machine
    /// and the `ClientHello` to send first.
    pub fn new(cfg: HandshakeConfig, nonce: Nonce) -> (Self, Message) {
        let hello = Message::ClientHello(ClientHello {
            version: PROTOCOL_VERSION,
            node_id: cfg.node_id.clone(),
            nonce,
        });
        let machine = ClientHandshake {
            cfg,
            nonce,
            state: ClientState::AwaitServerHello,
        };
        (machine, hello)
    }

    /// True once the server accepted us.
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }

    /// Feeds one message received from the server. Never panics; after a
    /// `Done` or `Failed` step every further call fails with
    /// [`ProtoError::HandshakeOver`] and sends nothing.
    pub fn step(&mut self, msg: &Message) -> Step {
        let state = std::mem::replace(&mut self.state, ClientState::Failed);
        match self.transition(state, msg) {
            Ok((next, step)) => {
                self.state = next;
                step
            }
            Err(f) => failed(f),
        }
    }

    fn transition(&self, state: ClientState, msg: &Message) -> Result<(ClientState, Step), Fail> {
        match (state, msg) {
            (ClientState::Done | ClientState::Failed, _) => Err(Fail {
                error: ProtoError::HandshakeOver,
                tell_peer: false,
            }),
            (_, Message::Fatal(f)) => Err(peer_fatal(f)),
            (ClientState::AwaitServerHello, Message::ServerHello(h)) => {
                check_version(h.version)?;
                let expect = transcript_mac(
                    &self.cfg.secret,
                    SERVER_LABEL,
                    &self.cfg.node_id,
                    &h.node_id,
                    &self.nonce,
                    &h.nonce,
                );
                expect
                    .verify_slice(&h.proof.0)
                    .map_err(|_| ProtoError::AuthFailed("the server's proof did not verify"))?;
                let proof = sign(transcript_mac(
                    &self.cfg.secret,
                    CLIENT_LABEL,
                    &self.cfg.node_id,
                    &h.node_id,
                    &self.nonce,
                    &h.nonce,
                ));
                Ok((
                    ClientState::AwaitVerdict {
                        server: h.node_id.clone(),
                    },
                    Step::Send(Message::ClientProof(ClientProof { proof })),
                ))
            }
            (ClientState::AwaitVerdict { server }, Message::Accept) => Ok((
                ClientState::Done,
                Step::Done {
                    send: None,
                    peer: server,
                },
            )),
            (state, other) => Err(ProtoError::Unexpected {
                state: state.name(),
                got: other.name(),
            }
            .into()),
        }
    }
}

/// Server machine states (see the module diagram).
#[derive(Clone, Debug)]
enum ServerState {
    AwaitClientHello,
    AwaitProof { client: NodeId, client_nonce: Nonce },
    Done,
    Failed,
}

impl ServerState {
    fn name(&self) -> &'static str {
        match self {
            ServerState::AwaitClientHello => "AwaitClientHello",
            ServerState::AwaitProof { .. } => "AwaitProof",
            ServerState::Done => "Done",
            ServerState::Failed => "Failed",
        }
    }
}

/// The accepting side (the storage node) of a handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    cfg: HandshakeConfig,
    nonce: Nonce,
    state: ServerState,
}

impl ServerHandshake {
    /// A machine for a freshly accepted connection, with a fresh random
    /// `nonce` (a reused nonce lets recorded client proofs replay).
    pub fn new(cfg: HandshakeConfig, nonce: Nonce) -> Self {
        ServerHandshake {
            cfg,
            nonce,
            state: ServerState::AwaitClientHello,
        }
    }

    /// True once the client proved the secret.
    pub fn is_done(&self) -> bool {
        matches!(self.state, ServerState::Done)
    }

    /// Feeds one message received from the client. Never panics; after a
    /// `Done` or `Failed` step every further call fails with
    /// [`ProtoError::HandshakeOver`] and sends nothing.
    pub fn step(&mut self, msg: &Message) -> Step {
        let state = std::mem::replace(&mut self.state, ServerState::Failed);
        match self.transition(state, msg) {
            Ok((next, step)) => {
                self.state = next;
                step
            }
            Err(f) => failed(f),
        }
    }

    fn transition(&self, state: ServerState, msg: &Message) -> Result<(ServerState, Step), Fail> {
        match (state, msg) {
            (ServerState::Done | ServerState::Failed, _) => Err(Fail {
                error: ProtoError::HandshakeOver,
                tell_peer: false,
            }),
            (_, Message::Fatal(f)) => Err(peer_fatal(f)),
            (ServerState::AwaitClientHello, Message::ClientHello(h)) => {
                check_version(h.version)?;
                let proof = sign(transcript_mac(
                    &self.cfg.secret,
                    SERVER_LABEL,
                    &h.node_id,
                    &self.cfg.node_id,
                    &h.nonce,
                    &self.nonce,
                ));
                let hello = Message::ServerHello(ServerHello {
                    version: PROTOCOL_VERSION,
                    node_id: self.cfg.node_id.clone(),
                    nonce: self.nonce,
                    proof,
                });
                Ok((
                    ServerState::AwaitProof {
                        client: h.node_id.clone(),
                        client_nonce: h.nonce,
                    },
                    Step::Send(hello),
                ))
            }
            (
                ServerState::AwaitProof {
                    client,
                    client_nonce,
                },
                Message::ClientProof(p),
            ) => {
                transcript_mac(
                    &self.cfg.secret,
                    CLIENT_LABEL,
                    &client,
                    &self.cfg.node_id,
                    &client_nonce,
                    &self.nonce,
                )
                .verify_slice(&p.proof.0)
                .map_err(|_| ProtoError::AuthFailed("the client's proof did not verify"))?;
                Ok((
                    ServerState::Done,
                    Step::Done {
                        send: Some(Message::Accept),
                        peer: client,
                    },
                ))
            }
            (state, other) => Err(ProtoError::Unexpected {
                state: state.name(),
                got: other.name(),
            }
            .into()),
        }
    }
}
