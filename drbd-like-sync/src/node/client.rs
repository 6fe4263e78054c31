//! The client side of a replication connection: what a writer (or a test,
//! or an operator's tool) uses to reach a storage node.
//!
//! [`PeerClient::connect`] runs the handshake (both sides prove the cluster
//! secret) and checks that the node that answered is the one asked for.
//! Then requests are pipelined: each gets a request id and is written by
//! the caller's own task through a [`FrameSender`] (queued behind a flusher
//! when the socket is full), and one reader task hands every response to
//! the caller waiting for that id. When the connection fails, every waiting
//! call fails with [`ClientError::ConnectionLost`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockmap::types::{ImageName, NodeId};
use bytes::BytesMut;
use dashmap::DashMap;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::wire::{self, FrameReader, FrameSender, WireError};
use crate::proto::{
    ClientHandshake, ErrorReply, Generation, HandshakeConfig, Limits, Message, Nonce, Op,
    ProtoError, Request, RequestId, Response, Step,
};

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot connect to storage node at {addr}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed (wrong secret, other protocol version, ...).
    #[error("handshake with storage node at {addr} failed")]
    Handshake {
        /// The address tried.
        addr: SocketAddr,
        /// The protocol's reason, naming versions or the failed proof.
        #[source]
        source: ProtoError,
    },
    /// The handshake did not finish in time.
    #[error("storage node at {addr} did not complete the handshake in time")]
    Timeout {
        /// The address tried.
        addr: SocketAddr,
    },
    /// The node that answered is not the one asked for.
    #[error("the storage node at {addr} is {got}, not {expected}")]
    WrongPeer {
        /// The address tried.
        addr: SocketAddr,
        /// The node asked for.
        expected: NodeId,
        /// The node that proved the secret.
        got: NodeId,
    },
    /// The connection broke before the answer came.
    #[error("the connection to storage node {node} was lost")]
    ConnectionLost {
        /// The peer.
        node: NodeId,
    },
    /// The node answered with an error.
    #[error("storage node {node} refused: {}", .reply.message)]
    Remote {
        /// The peer.
        node: NodeId,
        /// Its answer, with a stable code.
        reply: ErrorReply,
    },
}

impl ClientError {
    /// For a `Fenced` answer, the newest generation the copy has seen.
    pub fn fenced_at(&self) -> Option<Generation> {
        match self {
            ClientError::Remote { reply, .. } => reply.seen_generation(),
            _ => None,
        }
    }
}

type Waiters = DashMap<RequestId, mpsc::UnboundedSender<Response>>;

/// An authenticated, pipelined connection to one storage node.
pub struct PeerClient {
    peer: NodeId,
    next_id: AtomicU64,
    out: FrameSender,
    waiters: Arc<Waiters>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PeerClient {
    /// Connects to `addr`, runs the handshake as `cfg.node_id` within
    /// `timeout`, and, when `expect` is given, checks that the node that
    /// proved the secret is that one.
    pub async fn connect(
        addr: SocketAddr,
        cfg: HandshakeConfig,
        expect: Option<&NodeId>,
        limits: Limits,
        timeout: Duration,
    ) -> Result<PeerClient, ClientError> {
        let fut = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| ClientError::Connect { addr, source })?;
            let _ = stream.set_nodelay(true);
            let (rd, mut wr) = stream.into_split();
            let mut reader = FrameReader::new(rd, limits);
            let mut scratch = BytesMut::new();
            let (mut machine, hello) = ClientHandshake::new(cfg, Nonce(rand::random()));
            let hs_err = |e: WireError| match e {
                WireError::Proto(source) => ClientError::Handshake { addr, source },
                WireError::Io(source) => ClientError::Connect { addr, source },
                WireError::Closed => ClientError::Connect {
                    addr,
                    source: std::io::ErrorKind::ConnectionReset.into(),
                },
            };
            wire::write_all(&mut wr, &[hello], &mut scratch)
                .await
                .map_err(hs_err)?;
            let peer = loop {
                let msg = reader.next().await.map_err(hs_err)?;
                match machine.step(&msg) {
                    Step::Send(m) => wire::write_all(&mut wr, &[m], &mut scratch)
                        .await
                        .map_err(hs_err)?,
                    Step::Done { send, peer } => {
                        if let Some(m) = send {
                            wire::write_all(&mut wr, &[m], &mut scratch)
                                .await
                                .map_err(hs_err)?;
                        }
                        break peer;
                    }
                    Step::Failed { send, error } => {
                        if let Some(m) = send {
                            let _ = wire::write_all(&mut wr, &[m], &mut scratch).await;
                        }
                        return Err(ClientError::Handshake {
                            addr,
                            source: error,
                        });
                    }
                }
            };
            if let Some(want) = expect {
                if *want != peer {
                    return Err(ClientError::WrongPeer {
                        addr,
                        expected: want.clone(),
                        got: peer,
                    });
                }
            }
            Ok((peer, reader, wr))
        };
        let (peer, reader, wr) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout { addr })??;
        let waiters: Arc<Waiters> = Arc::new(DashMap::new());
        // The flusher ends by itself once `out` is dropped.
        let (out, _flusher) = FrameSender::spawn(wr);
        let reader = tokio::spawn(receive_loop(reader, Arc::clone(&waiters)));
        Ok(PeerClient {
            peer,
            next_id: AtomicU64::new(1),
            out,
            waiters,
            reader,
        })
    }

    /// The node at the other end.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    /// True once the connection has ended (the peer closed it, or it
    /// failed): every later request fails at once with
    /// [`ClientError::ConnectionLost`], and the caller should reconnect.
    pub fn is_closed(&self) -> bool {
        self.reader.is_finished() || self.out.is_failed()
    }

    /// Sends one request and returns the channel its responses arrive on.
    pub fn start(
        &self,
        image: &ImageName,
        generation: Generation,
        op: Op,
    ) -> Result<mpsc::UnboundedReceiver<Response>, ClientError> {
        if self.is_closed() {
            return Err(self.lost());
        }
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiters.insert(id, tx);
        // The reader may have ended between the check and the insert; it
        // clears the waiters on its way out, so look again.
        if self.is_closed() {
            self.waiters.remove(&id);
            return Err(self.lost());
        }
        let req = Message::Request(Request {
            id,
            image: image.clone(),
            generation,
            op,
        });
        // Written from this task when the socket takes it at once.
        if self.out.send(&[req]).is_err() {
            self.waiters.remove(&id);
            return Err(self.lost());
        }
        Ok(rx)
    }

    /// One request with one response (everything but `StreamRange`). An
    /// `Error` response becomes [`ClientError::Remote`].
    pub async fn call(
        &self,
        image: &ImageName,
        generation: Generation,
        op: Op,
    ) -> Result<Response, ClientError> {
        let mut rx = self.start(image, generation, op)?;
        match rx.recv().await {
            Some(Response::Error(reply)) => Err(ClientError::Remote {
                node: self.peer.clone(),
                reply,
            }),
            Some(r) => Ok(r),
            None => Err(self.lost()),
        }
    }

    fn lost(&self) -> ClientError {
        ClientError::ConnectionLost {
            node: self.peer.clone(),
        }
    }
}

/// Hands each response to its waiter; ends (failing every waiter) when the
/// connection does.
async fn receive_loop(
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    waiters: Arc<Waiters>,
) {
    loop {
        let resp = match reader.next().await {
            Ok(Message::Response(r)) => r,
            Ok(Message::Fatal(f)) => {
                tracing::warn!(code = %f.code, message = %f.message, "storage node closed the connection");
                break;
            }
            Ok(other) => {
                tracing::warn!(frame = other.name(), "unexpected frame from a storage node");
                break;
            }
            Err(_) => break,
        };
        let (id, last) = match &resp {
            Response::Ok { id, .. }
            | Response::Checksums { id, .. }
            | Response::StreamEnd { id } => (*id, true),
            Response::Error(e) => (e.id, true),
            Response::StreamChunk { id, .. } | Response::StreamHole { id, .. } => (*id, false),
        };
        if last {
            if let Some((_, tx)) = waiters.remove(&id) {
                let _ = tx.send(resp);
            }
        } else if let Some(tx) = waiters.get(&id) {
            let _ = tx.send(resp);
        }
    }
    waiters.clear();
}
