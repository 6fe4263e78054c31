//! io_uring engine: one worker thread per backing file owns a ring.
//!
//! Requests arrive on a channel. Each round the worker drains everything
//! queued, pushes the SQEs of each request, calls `submit_and_wait` once, and
//! reaps all completions, answering each request on its oneshot channel.
//! Submissions are thus batched per poll round. Reads, writes (FUA as
//! `RWF_DSYNC`) and fdatasync go through the ring; a large buffered write
//! goes as a chain of linked SQEs of `fileops::WRITE_PIECE` bytes each, so
//! that it leaves small page-cache folios behind. Hole punching and
//! SEEK_DATA/SEEK_HOLE run on the blocking pool (they are rare).
//!
//! The kernel is probed for io_uring once per process ([`probe`]).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use io_uring::{opcode, types, IoUring};
use tokio::sync::oneshot;

use super::{check_range, fileops, BlockBackend, StorageError, Tuning};

const RING_ENTRIES: u32 = 256;
/// Largest single SQE transfer; longer requests continue as "short" I/O.
const MAX_SQE_LEN: usize = 1 << 30;
/// Most linked write pieces submitted for one request per round (a quarter
/// of the ring); a longer write continues in the next round.
const MAX_CHAIN: usize = 64;

/// A request whose SQEs are in the ring, with what their completions said.
struct Submitted {
    req: InFlight,
    /// Byte count of each SQE, in chain order.
    lens: Vec<u32>,
    /// Completions still to come.
    outstanding: usize,
    /// Result of the first SQE (in chain order) that did not transfer its
    /// whole length, if any.
    first_short: Option<(usize, i32)>,
}

impl Submitted {
    /// Records the completion of SQE `piece`; true when all are in.
    fn on_cqe(&mut self, piece: usize, res: i32) -> bool {
        let full = self.lens.get(piece).is_some_and(|&n| res == n as i32);
        if !full && self.first_short.is_none_or(|(p, _)| piece < p) {
            self.first_short = Some((piece, res));
        }
        self.outstanding -= 1;
        self.outstanding == 0
    }

    /// The whole submission as one result, as if it had been one SQE: bytes
    /// written up to the first break, or that break's error when nothing
    /// was written before it.
    fn chain_result(&self) -> i32 {
        let total = |n: usize| self.lens[..n].iter().map(|&l| l as i32).sum::<i32>();
        match self.first_short {
            None => total(self.lens.len()),
            Some((0, res)) => res,
            Some((p, res)) => total(p) + res.max(0),
        }
    }
}

/// Whether io_uring works on this kernel (probed once: create a ring and
/// complete a NOP). `kernel.io_uring_disabled` or seccomp make this false.
pub fn probe() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let Ok(mut ring) = IoUring::new(4) else {
            return false;
        };
        let nop = opcode::Nop::new().build().user_data(7);
        // SAFETY: a NOP entry references no memory.
        if unsafe { ring.submission().push(&nop) }.is_err() {
            return false;
        }
        if ring.submit_and_wait(1).is_err() {
            return false;
        }
        let ok = ring
            .completion()
            .next()
            .is_some_and(|c| c.user_data() == 7 && c.result() >= 0);
        ok
    })
}

enum Op {
    Read { offset: u64, len: usize },
    Write { offset: u64, data: Bytes, fua: bool },
    Flush,
}

enum Reply {
    Data(Bytes),
    Done,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply, StorageError>>,
}

/// An in-flight request; its buffer stays here (and so at a stable heap
/// address) until the kernel completes the SQE that points at it.
enum InFlight {
    Read {
        buf: BytesMut,
        offset: u64,
        done: usize,
        reply: oneshot::Sender<Result<Reply, StorageError>>,
    },
    Write {
        data: Bytes,
        offset: u64,
        done: usize,
        fua: bool,
        reply: oneshot::Sender<Result<Reply, StorageError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<Reply, StorageError>>,
    },
}

impl InFlight {
    /// The SQEs that carry this request from where it stands, tagged with
    /// `slot` (low 32 bits) and the piece index (high 32 bits).
    ///
    /// A buffered write without FUA goes as a chain of linked SQEs, one per
    /// [`fileops::WRITE_PIECE`] (at most [`MAX_CHAIN`] per round), so that it
    /// leaves small page-cache folios behind as the pool engine's pwrites do.
    /// A link breaks at the first short or failed piece; the rest then
    /// complete with `-ECANCELED` and [`Submitted::chain_result`] reports the
    /// bytes written before the break.
    fn sqes(
        &mut self,
        fd: i32,
        slot: usize,
        out: &mut Vec<io_uring::squeue::Entry>,
        lens: &mut Vec<u32>,
    ) {
        let fd = types::Fd(fd);
        let tag = |piece: usize| slot as u64 | ((piece as u64) << 32);
        match self {
            InFlight::Read {
                buf, offset, done, ..
            } => {
                let n = (buf.len() - *done).min(MAX_SQE_LEN) as u32;
                // SAFETY: `done < buf.len()` while the read is pending.
                let ptr = unsafe { buf.as_mut_ptr().add(*done) };
                lens.push(n);
                out.push(
                    opcode::Read::new(fd, ptr, n)
                        .offset(*offset + *done as u64)
                        .build()
                        .user_data(tag(0)),
                );
            }
            InFlight::Write {
                data,
                offset,
                done,
                fua,
                ..
            } => {
                let rest = data.len() - *done;
                let at = *offset + *done as u64;
                let pieces: Vec<(u64, usize)> = if *fua {
                    // One SQE: RWF_DSYNC syncs the range it wrote.
                    vec![(at, rest.min(MAX_SQE_LEN))]
                } else {
                    fileops::write_pieces(at, rest)
                        .take(MAX_CHAIN)
                        .map(|(o, r)| (o, r.len()))
                        .collect()
                };
                let last = pieces.len() - 1;
                let mut from = *done;
                for (i, (o, n)) in pieces.into_iter().enumerate() {
                    // SAFETY: `from + n <= data.len()`.
                    let ptr = unsafe { data.as_ptr().add(from) };
                    let mut sqe = opcode::Write::new(fd, ptr, n as u32)
                        .offset(o)
                        .rw_flags(if *fua { libc::RWF_DSYNC } else { 0 })
                        .build()
                        .user_data(tag(i));
                    if i < last {
                        sqe = sqe.flags(io_uring::squeue::Flags::IO_LINK);
                    }
                    out.push(sqe);
                    lens.push(n as u32);
                    from += n;
                }
            }
            InFlight::Flush { .. } => {
                lens.push(0);
                out.push(
                    opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(tag(0)),
                );
            }
        }
    }

    /// Apply a completion. Returns `Some(self)` when the request must be
    /// resubmitted (short transfer), `None` when it was answered.
    fn complete(self, res: i32) -> Option<InFlight> {
        let err =
            |op: &'static str| StorageError::from_io(op, std::io::Error::from_raw_os_error(-res));
        match self {
            InFlight::Read {
                mut buf,
                offset,
                mut done,
                reply,
            } => {
                if res < 0 {
                    if res == -libc::EAGAIN || res == -libc::EINTR {
                        return Some(InFlight::Read {
                            buf,
                            offset,
                            done,
                            reply,
                        });
                    }
                    let _ = reply.send(Err(err("read")));
                    return None;
                }
                done += res as usize;
                if res == 0 {
                    // EOF inside the sized file can only be a concurrent
                    // truncate; the rest reads as zeroes.
                    buf[done..].fill(0);
                    done = buf.len();
                }
                if done < buf.len() {
                    return Some(InFlight::Read {
                        buf,
                        offset,
                        done,
                        reply,
                    });
                }
                let _ = reply.send(Ok(Reply::Data(buf.freeze())));
                None
            }
            InFlight::Write {
                data,
                offset,
                mut done,
                fua,
                reply,
            } => {
                if res < 0 {
                    if res == -libc::EAGAIN || res == -libc::EINTR {
                        return Some(InFlight::Write {
                            data,
                            offset,
                            done,
                            fua,
                            reply,
                        });
                    }
                    let _ = reply.send(Err(err("write")));
                    return None;
                }
                done += res as usize;
                if res == 0 && done < data.len() {
                    let _ = reply.send(Err(err("write")));
                    return None;
                }
                if done < data.len() {
                    return Some(InFlight::Write {
                        data,
                        offset,
                        done,
                        fua,
                        reply,
                    });
                }
                let _ = reply.send(Ok(Reply::Done));
                None
            }
            InFlight::Flush { reply } => {
                let r = if res < 0 {
                    Err(err("fdatasync"))
                } else {
                    Ok(Reply::Done)
                };
                let _ = reply.send(r);
                None
            }
        }
    }
}

fn worker(mut ring: IoUring, file: Arc<File>, rx: mpsc::Receiver<Request>) {
    let fd = file.as_raw_fd();
    let mut slots: Vec<Option<Submitted>> = Vec::new();
    let mut entries: Vec<io_uring::squeue::Entry> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut ready: VecDeque<InFlight> = VecDeque::new();
    let mut inflight = 0usize;
    let mut open = true;
    loop {
        // 1. Gather: block only when nothing is in flight or ready.
        if open && inflight == 0 && ready.is_empty() {
            match rx.recv() {
                Ok(r) => ready.push_back(start(r)),
                Err(_) => open = false,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(r) => ready.push_back(start(r)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        if !open && inflight == 0 && ready.is_empty() {
            return;
        }
        // 2. Push the SQEs of as many requests as fit.
        {
            let mut sq = ring.submission();
            while let Some(mut req) = ready.pop_front() {
                entries.clear();
                let mut lens = Vec::with_capacity(1);
                let slot = free.pop().unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() - 1
                });
                req.sqes(fd, slot, &mut entries, &mut lens);
                if sq.capacity() - sq.len() < entries.len() {
                    ready.push_front(req);
                    free.push(slot);
                    break;
                }
                slots[slot] = Some(Submitted {
                    req,
                    lens,
                    outstanding: entries.len(),
                    first_short: None,
                });
                // SAFETY: the entries point into the buffer owned by `slots[slot]`,
                // which is not touched or dropped until all its completions are
                // reaped. There is room for all of them (checked above).
                if unsafe { sq.push_multiple(&entries) }.is_err() {
                    if let Some(sub) = slots[slot].take() {
                        ready.push_front(sub.req);
                    }
                    free.push(slot);
                    break;
                }
                inflight += entries.len();
            }
        }
        // 3. One submit per round; wait for at least one completion.
        let want = usize::from(inflight > 0);
        if let Err(e) = ring.submit_and_wait(want) {
            if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                // The ring is unusable: fail everything in flight and stop.
                for sub in slots.iter_mut().filter_map(Option::take) {
                    fail(sub.req);
                }
                for req in ready.drain(..) {
                    fail(req);
                }
                return;
            }
        }
        // 4. Reap.
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (tag, res) in done {
            let slot = (tag & u64::from(u32::MAX)) as usize;
            let piece = (tag >> 32) as usize;
            let Some(sub) = slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            inflight -= 1;
            if !sub.on_cqe(piece, res) {
                continue;
            }
            let Some(sub) = slots[slot].take() else {
                continue;
            };
            free.push(slot);
            let res = sub.chain_result();
            if let Some(again) = sub.req.complete(res) {
                ready.push_back(again);
            }
        }
    }
}

fn fail(req: InFlight) {
    let reply = match req {
        InFlight::Read { reply, .. }
        | InFlight::Write { reply, .. }
        | InFlight::Flush { reply } => reply,
    };
    let _ = reply.send(Err(StorageError::EngineGone));
}

fn start(r: Request) -> InFlight {
    match r.op {
        Op::Read { offset, len } => InFlight::Read {
            buf: BytesMut::zeroed(len),
            offset,
            done: 0,
            reply: r.reply,
        },
        Op::Write { offset, data, fua } => InFlight::Write {
            data,
            offset,
            done: 0,
            fua,
            reply: r.reply,
        },
        Op::Flush => InFlight::Flush { reply: r.reply },
    }
}

/// File-backed engine driven by an io_uring worker thread.
#[derive(Debug)]
pub struct UringBackend {
    tx: mpsc::Sender<Request>,
    file: Arc<File>,
    size: u64,
    /// Inline reads and writes, zero-copy READ data.
    fast: fileops::FastPaths,
}

impl UringBackend {
    /// Start a worker thread with its own ring for `file`, with the default
    /// fast paths.
    pub fn new(file: File, size: u64) -> Result<Self, StorageError> {
        Self::with_tuning(file, size, Tuning::default())
    }

    /// Start a worker thread with its own ring for `file`, with the fast
    /// paths of `tuning`.
    pub fn with_tuning(file: File, size: u64, tuning: Tuning) -> Result<Self, StorageError> {
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| StorageError::Setup {
            reason: "io_uring_setup".into(),
            source: Some(e),
        })?;
        let file = Arc::new(file);
        let (tx, rx) = mpsc::channel();
        let wfile = Arc::clone(&file);
        std::thread::Builder::new()
            .name("locus-uring".into())
            .spawn(move || worker(ring, wfile, rx))
            .map_err(|e| StorageError::Setup {
                reason: "spawn io_uring worker".into(),
                source: Some(e),
            })?;
        Ok(UringBackend {
            tx,
            file,
            size,
            fast: fileops::FastPaths::new(tuning),
        })
    }

    async fn call(&self, op: Op) -> Result<Reply, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .map_err(|_| StorageError::EngineGone)?;
        rx.await.map_err(|_| StorageError::EngineGone)?
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> Result<T, StorageError> + Send + 'static,
    {
        fileops::on_blocking_pool(&self.file, f).await
    }
}

#[async_trait]
impl BlockBackend for UringBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn engine_name(&self) -> &'static str {
        "uring"
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        check_range(offset, len as u64, self.size)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if let Some(data) = fileops::read_nowait(&self.file, offset, len) {
            return Ok(data);
        }
        match self.call(Op::Read { offset, len }).await? {
            Reply::Data(b) => Ok(b),
            Reply::Done => Err(StorageError::EngineGone),
        }
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError> {
        check_range(offset, data.len() as u64, self.size)?;
        if let Some(done) = self.fast.write_inline(&self.file, offset, &data, fua) {
            return done;
        }
        if data.is_empty() {
            return if fua { self.flush().await } else { Ok(()) };
        }
        self.call(Op::Write { offset, data, fua }).await.map(|_| ())
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.call(Op::Flush).await.map(|_| ())
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        check_range(offset, len, self.size)?;
        self.blocking(move |f| fileops::discard(f, offset, len))
            .await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError> {
        check_range(offset, len, self.size)?;
        self.blocking(move |f| fileops::write_zeroes(f, offset, len, unmap))
            .await
    }
    fn cached_range(&self, offset: u64, len: usize) -> Option<super::FileRange> {
        self.fast.cached_range(&self.file, self.size, offset, len)
    }
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError> {
        if offset >= self.size {
            return Err(StorageError::OutOfRange {
                offset,
                len: 1,
                size: self.size,
            });
        }
        let size = self.size;
        self.blocking(move |f| fileops::allocation(f, offset, size))
            .await
    }
}
