//! Framed message I/O over a byte stream, shared by the storage server and
//! its client: one read fills the buffer with as many frames as arrived;
//! [`FrameSender`] writes from the task that has the message when the
//! socket takes it, and queues behind a flusher task when it does not.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{self, Limits, Message, ProtoError};

/// A failure of a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("replication connection I/O error")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that do not decode.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
}

/// Reads frames from `R` into a reusable buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: Limits,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that refuses frames beyond `limits`.
    pub fn new(inner: R, limits: Limits) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            limits,
        }
    }

    /// The next message already in the buffer, without reading the socket:
    /// `Ok(None)` when the bytes there do not make a whole frame.
    pub fn buffered(&mut self) -> Result<Option<Message>, WireError> {
        Ok(proto::decode(&mut self.buf, &self.limits)?)
    }

    /// The next message. Cancel-safe: bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Message, WireError> {
        loop {
            if let Some(msg) = proto::decode(&mut self.buf, &self.limits)? {
                return Ok(msg);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }
}

/// Encodes `msgs` into one buffer and writes it with one call.
pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    msgs: &[Message],
    scratch: &mut BytesMut,
) -> Result<(), WireError> {
    scratch.clear();
    for m in msgs {
        proto::encode(m, scratch);
    }
    w.write_all(scratch).await?;
    Ok(())
}

/// Bytes queued on a [`FrameSender`] past which [`FrameSender::wait_room`]
/// holds a producer back (a range stream must not pile the image up in
/// memory behind a slow socket).
pub const QUEUE_ROOM: usize = 4 << 20;

/// The sending half of a replication connection, shared by every task that
/// sends on it (the server's request tasks, a client's callers).
///
/// [`send`](Self::send) never waits. It encodes the messages and, when
/// nothing is queued before them, writes them to the socket from the
/// calling task: at queue depth 1 a frame leaves without a hop to another
/// task (which costs a wakeup on each side of every round trip). What the
/// socket does not take at once is queued in order, and the flusher task
/// writes it as the socket drains. Because `send` is synchronous, no
/// cancelled future can ever cut a frame in half.
///
/// Dropping the sender lets the flusher write what is queued, then close
/// the write side; its `JoinHandle` (from [`spawn`](Self::spawn)) ends
/// then.
pub struct FrameSender {
    shared: std::sync::Arc<SendShared>,
}

struct SendShared {
    wr: tokio::net::tcp::OwnedWriteHalf,
    state: std::sync::Mutex<SendState>,
    /// Wakes the flusher: bytes were queued, the sender closed, or failed.
    wake: tokio::sync::Notify,
    /// Wakes producers in [`FrameSender::wait_room`] as the queue drains.
    room: tokio::sync::Notify,
}

#[derive(Default)]
struct SendState {
    /// Encoded bytes the socket has not taken yet, in order.
    queued: BytesMut,
    /// Where `send` encodes before its direct write.
    scratch: BytesMut,
    /// A write failed: the connection is unusable.
    failed: bool,
    /// The sender was dropped: flush, then end.
    closing: bool,
}

impl SendShared {
    fn state(&self) -> std::sync::MutexGuard<'_, SendState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes as much of `buf` as the socket takes now; the count written.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.wr.try_write(&buf[done..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl FrameSender {
    /// A sender over `wr`, and its flusher task (already spawned).
    pub fn spawn(
        wr: tokio::net::tcp::OwnedWriteHalf,
    ) -> (FrameSender, tokio::task::JoinHandle<()>) {
        let shared = std::sync::Arc::new(SendShared {
            wr,
            state: std::sync::Mutex::new(SendState::default()),
            wake: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        });
        let flusher = tokio::spawn(flush_queued(std::sync::Arc::clone(&shared)));
        (FrameSender { shared }, flusher)
    }

    /// Sends `msgs`, in order after everything sent before. Fails only
    /// when the connection has failed already.
    pub fn send(&self, msgs: &[Message]) -> Result<(), WireError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let mut st = s.state();
        if st.failed {
            return Err(WireError::Closed);
        }
        if !st.queued.is_empty() {
            // Behind bytes the flusher owes: queue, it is awake already.
            for m in msgs {
                proto::encode(m, &mut st.queued);
            }
            return Ok(());
        }
        let st = &mut *st;
        st.scratch.clear();
        for m in msgs {
            proto::encode(m, &mut st.scratch);
        }
        match s.try_write(&st.scratch) {
            Ok(n) if n == st.scratch.len() => Ok(()),
            Ok(n) => {
                bytes::Buf::advance(&mut st.scratch, n);
                std::mem::swap(&mut st.queued, &mut st.scratch);
                s.wake.notify_one();
                Ok(())
            }
            Err(_) => {
                st.failed = true;
                s.wake.notify_one();
                Err(WireError::Closed)
            }
        }
    }

    /// Waits until fewer than [`QUEUE_ROOM`] bytes are queued (or the
    /// connection failed), so that a long producer keeps pace with the
    /// socket. Cancel-safe.
    pub async fn wait_room(&self) {
        loop {
            let drained = self.shared.room.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let st = self.shared.state();
                if st.failed || st.queued.len() < QUEUE_ROOM {
                    return;
                }
            }
            drained.await;
        }
    }

    /// True once a write on the connection failed.
    pub fn is_failed(&self) -> bool {
        self.shared.state().failed
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        self.shared.state().closing = true;
        self.shared.wake.notify_one();
    }
}

/// The flusher: writes queued bytes as the socket drains; once the sender
/// is gone and the queue is empty, ends (dropping the write half closes
/// the write side).
async fn flush_queued(s: std::sync::Arc<SendShared>) {
    loop {
        s.wake.notified().await;
        loop {
            {
                let mut st = s.state();
                if st.failed {
                    s.room.notify_waiters();
                    return;
                }
                if !st.queued.is_empty() {
                    match s.try_write(&st.queued) {
                        Ok(n) => bytes::Buf::advance(&mut st.queued, n),
                        Err(_) => {
                            st.failed = true;
                            s.room.notify_waiters();
                            return;
                        }
                    }
                    s.room.notify_waiters();
                }
                if st.queued.is_empty() {
                    if st.closing {
                        return;
                    }
                    break;
                }
            }
            if s.wr.writable().await.is_err() {
                s.state().failed = true;
                s.room.notify_waiters();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{RequestId, Response};
    use bytes::Bytes;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    fn chunk(i: u64) -> Message {
        Message::Response(Response::Ok {
            id: RequestId(i),
            data: Bytes::from(vec![(i % 251) as u8; 64 * 1024]),
        })
    }

    /// More than the socket holds, sent while nobody reads: `send` never
    /// waits, the rest queues behind the flusher, and every frame arrives
    /// whole and in order; `wait_room` holds a producer back until the
    /// reader drains the queue.
    #[tokio::test]
    async fn frames_queue_in_order_when_the_socket_is_full() {
        let (a, b) = pair().await;
        let (_, wr) = a.into_split();
        let (sender, flusher) = FrameSender::spawn(wr);
        const N: u64 = 200; // 12.5 MiB: far past the socket buffers
        for i in 0..N {
            sender.send(&[chunk(i)]).expect("send");
        }
        let queued = sender.shared.state().queued.len();
        assert!(
            queued >= QUEUE_ROOM,
            "expected a backlog, {queued} bytes queued"
        );
        let room = tokio::spawn(async move {
            sender.wait_room().await;
            let left = sender.shared.state().queued.len();
            drop(sender);
            left
        });
        let mut reader = FrameReader::new(b, Limits::default());
        for i in 0..N {
            match reader.next().await.expect("frame") {
                Message::Response(Response::Ok { id, data }) => {
                    assert_eq!(id, RequestId(i));
                    assert!(data.len() == 64 * 1024 && data.iter().all(|&x| x == (i % 251) as u8));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(room.await.expect("room") < QUEUE_ROOM);
        // The sender is gone and the queue written: the flusher ends and
        // the write side closes.
        flusher.await.expect("flusher");
        assert!(matches!(reader.next().await, Err(WireError::Closed)));
    }

    /// A peer that went away makes `send` fail (after the flusher saw the
    /// write fail), never hang.
    #[tokio::test]
    async fn send_fails_once_the_peer_is_gone() {
        let (a, b) = pair().await;
        drop(b);
        let (_, wr) = a.into_split();
        let (sender, _flusher) = FrameSender::spawn(wr);
        let mut failed = false;
        for i in 0..10_000 {
            if sender.send(&[chunk(i)]).is_err() {
                failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failed && sender.is_failed());
    }
}
