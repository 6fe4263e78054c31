//! Blocking file primitives shared by the file-backed engines: sizing,
//! positional I/O, hole punching and SEEK_DATA/SEEK_HOLE. Callers run these
//! on a blocking thread; nothing here is async.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{FileRange, Mapping, StorageError};

/// Open or create `path` with exactly `size` bytes (sparse when created).
pub(crate) fn open_sized(path: &Path, size: u64, allow_grow: bool) -> Result<File, StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StorageError::Setup {
            reason: format!("open {}", path.display()),
            source: Some(e),
        })?;
    let meta = file.metadata().map_err(|e| StorageError::Setup {
        reason: format!("stat {}", path.display()),
        source: Some(e),
    })?;
    let cur = meta.len();
    if cur == size {
        return Ok(file);
    }
    if cur == 0 || (allow_grow && cur < size) {
        file.set_len(size).map_err(|e| StorageError::Setup {
            reason: format!("ftruncate {} to {size}", path.display()),
            source: Some(e),
        })?;
        return Ok(file);
    }
    Err(StorageError::Setup {
        reason: format!(
            "{} has size {cur}, expected {size}{}",
            path.display(),
            if cur < size {
                " (growing not allowed)"
            } else {
                ""
            }
        ),
        source: None,
    })
}

/// Reads the whole range only if the page cache already holds it, without
/// blocking: `preadv2(RWF_NOWAIT)` (Linux 4.14+). `None` means "would block"
/// (or the kernel lacks RWF_NOWAIT): the caller falls back to its engine.
///
/// This is the fast path of every file engine: a cached read completes on the
/// calling task with no thread hand-off, which on a small machine is most of
/// the latency of a 4 KiB read.
pub(crate) fn read_nowait(file: &File, offset: u64, len: usize) -> Option<Bytes> {
    use std::os::unix::io::AsRawFd;
    let mut buf = BytesMut::with_capacity(len);
    let mut done = 0usize;
    while done < len {
        let iov = libc::iovec {
            // SAFETY: the pointer stays within the buffer's capacity (`done < len`
            // <= capacity); the kernel writes at most `len - done` bytes there.
            iov_base: unsafe { buf.spare_capacity_mut().as_mut_ptr().add(done) }.cast(),
            iov_len: len - done,
        };
        let off = i64::try_from(offset + done as u64).ok()?;
        // SAFETY: one valid iovec describing writable memory owned by `buf`.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        if n <= 0 {
            // EAGAIN (not cached), EOPNOTSUPP, or EOF: take the slow path.
            return None;
        }
        done += n as usize;
    }
    // SAFETY: the kernel initialised exactly `done == len` bytes.
    unsafe { buf.set_len(len) };
    Some(buf.freeze())
}

/// cachestat(2): the same number on every architecture (it came after the
/// syscall tables were unified); `libc` does not name it for all targets.
const SYS_CACHESTAT: libc::c_long = 451;

/// Whether this kernel answers cachestat(2) (Linux 6.5+): without it,
/// [`FastPaths::cached_range`] is always `None`. A property of the kernel,
/// so it is probed once per process, on this process's own executable.
pub(crate) fn cachestat_supported() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        File::open("/proc/self/exe").is_ok_and(|exe| pages_cached(&exe, 0, 4096).is_ok())
    })
}

/// How many pages of `[offset, offset + len)` of `file` are in the page
/// cache: cachestat(2), which looks only at the cache and never blocks.
fn pages_cached(file: &File, offset: u64, len: u64) -> std::io::Result<u64> {
    /// `struct cachestat_range` of include/uapi/linux/mman.h.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    /// `struct cachestat` of include/uapi/linux/mman.h.
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live and of
    // the kernel's layout; the fd is owned by `file`.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc == 0 {
        Ok(stat.nr_cache)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The per-engine state of the fast paths that every file engine shares:
/// inline reads and writes on the calling task, and zero-copy READ data.
///
/// Everything here belongs to one engine (one open file), never to the
/// process, so that two nodes running in one test process do not steer
/// each other: the switches come from the [`Tuning`] the engine was opened
/// with, and what the engine learns at run time (the inline-write backoff,
/// a filesystem without NOWAIT writes, a kernel that refuses cachestat)
/// stays with it.
#[derive(Debug)]
pub(crate) struct FastPaths {
    tuning: Tuning,
    /// The file's shared mapping for zero-copy reads, made on first use.
    map: std::sync::OnceLock<Option<Arc<Mapping>>>,
    /// Whether cachestat(2) is worth trying (cleared on ENOSYS/EPERM).
    cachestat: AtomicBool,
    /// Whether `pwritev2(RWF_NOWAIT)` is worth trying (cleared on EOPNOTSUPP).
    nowait_writes: AtomicBool,
    backoff: InlineBackoff,
}

impl FastPaths {
    /// Fast paths with the switches of `tuning`.
    pub(crate) fn new(tuning: Tuning) -> Self {
        FastPaths {
            tuning,
            map: std::sync::OnceLock::new(),
            cachestat: AtomicBool::new(true),
            nowait_writes: AtomicBool::new(true),
            backoff: InlineBackoff::new(),
        }
    }

    /// `[offset, offset + len)` of `file` (of `size` bytes, mapped lazily)
    /// as a [`FileRange`] when every page of it is in the page cache, asked
    /// with cachestat(2), which only looks at the cache and never blocks. A
    /// page evicted between this check and the send is read back in by the
    /// kernel during the send: a short stall on the sending task, never
    /// wrong data.
    pub(crate) fn cached_range(
        &self,
        file: &Arc<File>,
        size: u64,
        offset: u64,
        len: usize,
    ) -> Option<FileRange> {
        if len == 0 || !self.tuning.zero_copy || !self.cachestat.load(Relaxed) {
            return None;
        }
        super::check_range(offset, len as u64, size).ok()?;
        let map = self
            .map
            .get_or_init(|| Mapping::new(file, size).map(Arc::new))
            .as_ref()?;
        let cached = match pages_cached(file, offset, len as u64) {
            Ok(n) => n,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) {
                    self.cachestat.store(false, Relaxed);
                }
                return None;
            }
        };
        let page = page_size();
        let end = offset.checked_add(len as u64)?;
        let pages = end.div_ceil(page) - offset / page;
        if end > map.len as u64 {
            return None;
        }
        (cached >= pages).then(|| FileRange {
            file: Arc::clone(file),
            map: Arc::clone(map),
            offset,
            len,
            hold: None,
        })
    }

    /// Writes small, non-FUA data straight into the page cache on the
    /// calling task, the way a cached read completes inline: a page-cache
    /// copy of at most [`INLINE_WRITE_MAX`] bytes costs microseconds, far
    /// less than two thread hand-offs. `pwritev2(RWF_NOWAIT)` is tried first
    /// (it never blocks); on a filesystem without buffered NOWAIT writes
    /// (ext4 answers EOPNOTSUPP) the plain write is done inline too,
    /// accepting a rare short stall under dirty page throttling. Returns
    /// `None` when the write must go to the engine: FUA (it needs
    /// fdatasync), large writes, EAGAIN, inline writes turned off, or a
    /// backoff after an inline write blocked.
    pub(crate) fn write_inline(
        &self,
        file: &File,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Option<Result<(), StorageError>> {
        if fua || data.len() > INLINE_WRITE_MAX || data.is_empty() || !self.tuning.inline_writes {
            return None;
        }
        if self.backoff.active() {
            return None;
        }
        let switches = voluntary_switches();
        let started = std::time::Instant::now();
        let result = self.write_inline_now(file, offset, data)?;
        self.backoff.observe(started.elapsed(), || {
            switches.is_none() || voluntary_switches() != switches
        });
        Some(result)
    }

    fn write_inline_now(
        &self,
        file: &File,
        offset: u64,
        data: &[u8],
    ) -> Option<Result<(), StorageError>> {
        if !self.nowait_writes.load(Relaxed) {
            return Some(write_at(file, offset, data, false));
        }
        // `pwritev2(RWF_NOWAIT)` piece by piece (see WRITE_PIECE). EAGAIN before
        // anything is written hands the whole write to the engine; after that,
        // or on a short write, the rest is finished with plain pwrites.
        let mut written = 0usize;
        for (at, range) in write_pieces(offset, data.len()) {
            let piece = &data[range.clone()];
            let iov = libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            };
            let off = i64::try_from(at).ok()?;
            // SAFETY: one iovec describing `piece`, which the kernel only reads.
            let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
            if n >= 0 && n as usize == piece.len() {
                written = range.end;
                continue;
            }
            let errno = std::io::Error::last_os_error().raw_os_error();
            if n < 0 && errno == Some(libc::EAGAIN) && written == 0 {
                return None;
            }
            if n < 0 && errno == Some(libc::EOPNOTSUPP) {
                // Learned once: this filesystem has no buffered NOWAIT writes, so
                // skip the extra syscall from now on.
                self.nowait_writes.store(false, Relaxed);
            }
            written = range.start + usize::try_from(n).unwrap_or(0);
            break;
        }
        Some(write_at(
            file,
            offset + written as u64,
            &data[written..],
            false,
        ))
    }
}

/// The switches of the fast paths, chosen when an engine is opened (the
/// binary reads them from its config and environment; library code never
/// does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Hand out [`FileRange`]s for cached READ data (zero-copy sends).
    pub zero_copy: bool,
    /// Do small buffered writes inline on the calling task. Inline writes
    /// cost about half the CPU per 4 KiB write, but a write to a page still
    /// under writeback waits for that I/O on the calling task (measured in
    /// BENCHMARKS.md).
    pub inline_writes: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            zero_copy: true,
            inline_writes: true,
        }
    }
}

/// The page size, asked once (a property of the machine).
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no memory arguments.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).unwrap_or(4096)
    })
}

/// Largest buffered write done inline on the calling task (bytes).
pub(crate) const INLINE_WRITE_MAX: usize = 256 * 1024;

/// Backs inline writes off after one of them blocked. A buffered write that
/// lands on a page under writeback waits for that I/O (stable pages); done
/// inline, the wait would stall the whole connection, so for a short while
/// writes go to the engine's threads, where they wait in parallel.
#[derive(Debug)]
struct InlineBackoff {
    epoch: std::time::Instant,
    /// Nanoseconds since `epoch` until which inline writes are off.
    until: AtomicU64,
}

impl InlineBackoff {
    /// An inline write slower than this blocked in the kernel.
    const BLOCKED: Duration = Duration::from_micros(200);
    /// How long writes then avoid the inline path.
    const BACKOFF: Duration = Duration::from_millis(200);

    fn new() -> Self {
        InlineBackoff {
            epoch: std::time::Instant::now(),
            until: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn active(&self) -> bool {
        let until = self.until.load(Relaxed);
        until != 0 && self.now() < until
    }

    /// Backs off when an inline write took longer than [`Self::BLOCKED`]
    /// and `slept()` says its thread slept meanwhile. Wall time alone is not
    /// enough: on a busy machine a write that never waited is often
    /// preempted for longer than that, and backing off then sends every
    /// write for 200 ms through the engine, where io_uring runs buffered
    /// writes to one file one at a time (measured: a 2-way mirror's 4 KiB
    /// QD32 writes lost a third of their IOPS to such false backoffs).
    fn observe(&self, took: Duration, slept: impl FnOnce() -> bool) {
        if took > Self::BLOCKED && slept() {
            self.until.store(
                self.now().saturating_add(Self::BACKOFF.as_nanos() as u64),
                Relaxed,
            );
        }
    }
}

/// The calling thread's voluntary context switches so far (`ru_nvcsw`): a
/// thread that slept in the kernel (on a page under writeback, say) counts
/// one, a thread that was only preempted does not. `None` when unavailable
/// (then every slow write counts as one that slept).
fn voluntary_switches() -> Option<i64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given,
    // which points at a zeroed value of that type; RUSAGE_THREAD (Linux
    // 2.6.26+) reads only the calling thread's counters.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised and, on success, filled by the kernel.
    Some(unsafe { ru.assume_init() }.ru_nvcsw)
}

/// Runs `f` on tokio's blocking pool with the file: the slow path of every
/// file engine (a read that is not cached, hole punching, allocation
/// queries).
pub(crate) async fn on_blocking_pool<T, F>(file: &Arc<File>, f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce(&File) -> Result<T, StorageError> + Send + 'static,
{
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || f(&file))
        .await
        .map_err(|_| StorageError::EngineGone)?
}

/// pread the whole range.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> Result<Bytes, StorageError> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| StorageError::from_io("read", e))?;
    Ok(buf.freeze())
}

/// Largest piece of one buffered write that the engines hand to the kernel
/// at once, on boundaries aligned to its size.
///
/// The kernel sizes a page-cache folio by the write that creates it, so one
/// 1 MiB `pwrite` leaves a 1 MiB folio behind. ext4 walks every buffer head
/// of a folio on each later write into it: a 4 KiB write into a 1 MiB folio
/// costs about 47 µs of CPU more than into a 4 KiB one (measured with
/// `qemu-img bench` 4 KiB writes after a sequential 1 MiB fill, BENCHMARKS.md).
/// Writing in 64 KiB pieces keeps folios at most 64 KiB, which bounds that
/// walk to 16 buffer heads for a few extra syscalls per large write.
pub(crate) const WRITE_PIECE: usize = 64 * 1024;

/// Splits `[offset, offset + len)` at multiples of [`WRITE_PIECE`]; yields
/// `(file offset, range within the buffer)`.
pub(crate) fn write_pieces(
    offset: u64,
    len: usize,
) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset + done as u64;
        let to_boundary = WRITE_PIECE - (at % WRITE_PIECE as u64) as usize;
        let n = to_boundary.min(len - done);
        let piece = (at, done..done + n);
        done += n;
        Some(piece)
    })
}

/// pwrite the whole buffer in [`WRITE_PIECE`]s, then fdatasync when `fua`.
pub(crate) fn write_at(
    file: &File,
    offset: u64,
    data: &[u8],
    fua: bool,
) -> Result<(), StorageError> {
    for (at, range) in write_pieces(offset, data.len()) {
        file.write_all_at(&data[range], at)
            .map_err(|e| StorageError::from_io("write", e))?;
    }
    if fua {
        file.sync_data()
            .map_err(|e| StorageError::from_io("fdatasync", e))?;
    }
    Ok(())
}

/// fdatasync.
pub(crate) fn flush(file: &File) -> Result<(), StorageError> {
    file.sync_data()
        .map_err(|e| StorageError::from_io("fdatasync", e))
}

fn fallocate(file: &File, mode: i32, offset: u64, len: u64, op: &'static str) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let l = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let _ = op;
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file`
    // and stays open for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, l) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Punch a hole (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).
pub(crate) fn discard(file: &File, offset: u64, len: u64) -> Result<(), StorageError> {
    if len == 0 {
        return Ok(());
    }
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
        "discard",
    )
    .map_err(|e| StorageError::from_io("discard", e))
}

/// Zero a range: punch a hole when `unmap`, else FALLOC_FL_ZERO_RANGE, and
/// if the filesystem refuses either, write zeroes.
pub(crate) fn write_zeroes(
    file: &File,
    offset: u64,
    len: u64,
    unmap: bool,
) -> Result<(), StorageError> {
    if len == 0 {
        return Ok(());
    }
    let mode = if unmap {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    };
    match fallocate(file, mode, offset, len, "write_zeroes") {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            const CHUNK: u64 = 1 << 20;
            let zeroes = vec![0u8; CHUNK.min(len) as usize];
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                let n = (end - pos).min(CHUNK) as usize;
                file.write_all_at(&zeroes[..n], pos)
                    .map_err(|e| StorageError::from_io("write_zeroes", e))?;
                pos += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(StorageError::from_io("write_zeroes", e)),
    }
}

fn lseek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek with SEEK_DATA/SEEK_HOLE only inspects the file; the fd is owned
    // by `file`. The engines never rely on the shared file position (they use
    // positional I/O), so moving it is harmless.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if rc >= 0 {
        Ok(Some(rc as u64))
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// `(mapped, extent length)` at `offset` using SEEK_DATA / SEEK_HOLE.
pub(crate) fn allocation(file: &File, offset: u64, size: u64) -> Result<(bool, u64), StorageError> {
    let map = |e| StorageError::from_io("allocation", e);
    match lseek(file, offset, libc::SEEK_DATA).map_err(map)? {
        Some(data) if data == offset => {
            let hole = lseek(file, offset, libc::SEEK_HOLE)
                .map_err(map)?
                .unwrap_or(size)
                .min(size);
            Ok((true, hole.saturating_sub(offset).max(1)))
        }
        Some(data) => Ok((false, data.min(size) - offset)),
        None => Ok((false, size - offset)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_slow_write_that_slept_backs_off() {
        let slow = InlineBackoff::BLOCKED * 2;
        let b = InlineBackoff::new();
        b.observe(slow, || false);
        assert!(!b.active(), "preempted, never slept: no backoff");
        b.observe(InlineBackoff::BLOCKED / 2, || true);
        assert!(!b.active(), "fast: no backoff");
        b.observe(slow, || true);
        assert!(b.active(), "slow and slept: back off");
    }

    #[test]
    fn a_sleep_counts_as_a_voluntary_switch_and_spinning_does_not() {
        let before = voluntary_switches().expect("getrusage(RUSAGE_THREAD)");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after_sleep = voluntary_switches().expect("getrusage");
        assert!(after_sleep > before, "{before} -> {after_sleep}");
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        assert_eq!(
            voluntary_switches(),
            Some(after_sleep),
            "a spin never sleeps"
        );
    }

    use super::*;

    #[test]
    fn write_pieces_split_on_aligned_boundaries_and_cover_the_range() {
        let p = WRITE_PIECE as u64;
        let got: Vec<_> = write_pieces(p - 10, 2 * WRITE_PIECE).collect();
        assert_eq!(
            got,
            vec![
                (p - 10, 0..10),
                (p, 10..10 + WRITE_PIECE),
                (2 * p, 10 + WRITE_PIECE..2 * WRITE_PIECE),
            ]
        );
        assert_eq!(
            write_pieces(0, 4096).collect::<Vec<_>>(),
            vec![(0, 0..4096)]
        );
        assert_eq!(write_pieces(7, 0).count(), 0);
        let covered: usize = write_pieces(12345, 5 << 20).map(|(_, r)| r.len()).sum();
        assert_eq!(covered, 5 << 20);
    }
}
