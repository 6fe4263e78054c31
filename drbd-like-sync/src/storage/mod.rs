//! Block storage engines behind one async trait.
//!
//! This module owns the byte-addressed backing store of a logical unit and
//! of a storage node's copy of an image: the [`BlockBackend`] trait, its
//! error type, and three engines (`uring`, `pool`, `memory`). Both roles of
//! a node use this one set: the target role for its LUNs and its local
//! copies, the storage role for the copies it serves to peers. It knows
//! nothing about SCSI (no LBAs, no sense data) and nothing about iSCSI; the
//! SCSI layer converts LBAs to byte offsets and maps [`StorageErrorKind`]
//! onto sense codes.

use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

mod fileops;
pub mod memory;
pub mod pool;
pub mod uring;

pub use fileops::Tuning;
pub use memory::MemoryBackend;
pub use pool::PoolBackend;
pub use uring::UringBackend;

/// Stable classification of a [`StorageError`]; the SCSI layer maps each
/// kind onto a sense code (SBC-3 4.18 / SPC-4 4.5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The backing store ran out of space (ENOSPC/EDQUOT).
    NoSpace,
    /// Any other I/O failure of the backing store.
    Io,
    /// The request reaches beyond the end of the backend.
    OutOfRange,
    /// The engine cannot perform this operation (e.g. no hole punching).
    Unsupported,
    /// The engine's worker has stopped.
    EngineGone,
    /// A backing file could not be opened or has the wrong size.
    Setup,
}

/// The one error of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Out of space on the backing store.
    #[error("no space left on backing store during {op}")]
    NoSpace {
        /// Operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Generic I/O failure.
    #[error("I/O error during {op}")]
    Io {
        /// Operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Range beyond the end of the backend.
    #[error("range {offset}+{len} is beyond the backend size {size}")]
    OutOfRange {
        /// Start of the range in bytes.
        offset: u64,
        /// Length of the range in bytes.
        len: u64,
        /// Backend size in bytes.
        size: u64,
    },
    /// Operation not supported by this engine / filesystem.
    #[error("{op} is not supported by the backing store")]
    Unsupported {
        /// Operation that failed.
        op: &'static str,
        /// The OS error, if any.
        #[source]
        source: Option<io::Error>,
    },
    /// The engine worker thread is gone.
    #[error("storage engine worker has stopped")]
    EngineGone,
    /// Opening or sizing the backing file failed.
    #[error("cannot set up backing file: {reason}")]
    Setup {
        /// What went wrong.
        reason: String,
        /// The OS error, if any.
        #[source]
        source: Option<io::Error>,
    },
}

impl StorageError {
    /// The stable kind of this error.
    pub fn kind(&self) -> StorageErrorKind {
        match self {
            StorageError::NoSpace { .. } => StorageErrorKind::NoSpace,
            StorageError::Io { .. } => StorageErrorKind::Io,
            StorageError::OutOfRange { .. } => StorageErrorKind::OutOfRange,
            StorageError::Unsupported { .. } => StorageErrorKind::Unsupported,
            StorageError::EngineGone => StorageErrorKind::EngineGone,
            StorageError::Setup { .. } => StorageErrorKind::Setup,
        }
    }

    /// Classify an OS error raised by `op` (ENOSPC/EDQUOT become `NoSpace`,
    /// EOPNOTSUPP becomes `Unsupported`).
    pub fn from_io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::NoSpace { op, source },
            Some(libc::EOPNOTSUPP) => StorageError::Unsupported {
                op,
                source: Some(source),
            },
            _ => StorageError::Io { op, source },
        }
    }
}

/// Check that `[offset, offset+len)` lies inside a backend of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), StorageError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(StorageError::OutOfRange { offset, len, size }),
    }
}

/// A byte-addressed block store. All methods are cancel-safe in the sense
/// that dropping the future never corrupts the engine, but a dropped write
/// may or may not have reached the medium.
#[async_trait]
pub trait BlockBackend: Send + Sync + 'static {
    /// Size in bytes; fixed for the lifetime of the backend.
    fn size(&self) -> u64;
    /// Short engine name ("uring", "pool", "memory") for logs and tests.
    fn engine_name(&self) -> &'static str;
    /// Read `len` bytes at `offset`. Unwritten or discarded areas read as zeroes.
    async fn read(&self, offset: u64, len: usize) -> Result<Bytes, StorageError>;
    /// Write `data` at `offset`; with `fua` the data is on stable storage
    /// (fdatasync) before `Ok` (SBC-3 5.40 FUA).
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), StorageError>;
    /// Make all completed writes durable (fdatasync; SBC-3 5.24 SYNCHRONIZE CACHE).
    async fn flush(&self) -> Result<(), StorageError>;
    /// Deallocate a range (punch hole, keep size). Reads return zeroes afterwards.
    async fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError>;
    /// Zero a range; with `unmap` the range may be deallocated instead.
    async fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), StorageError>;
    /// Allocation state at `offset`: `(mapped, extent length in bytes from offset)`
    /// for the run of identical state that starts there (SEEK_DATA/SEEK_HOLE).
    async fn allocation(&self, offset: u64) -> Result<(bool, u64), StorageError>;
    /// `[offset, offset + len)` as a [`FileRange`] when this backend is a file
    /// and the page cache holds every page of the range (cachestat(2), Linux
    /// 6.5+); `None` otherwise, and then the caller reads as usual. Never
    /// blocks (the first call of a file engine maps the file).
    fn cached_range(&self, offset: u64, len: usize) -> Option<FileRange> {
        let _ = (offset, len);
        None
    }
}

/// A range of a backing file, all of it in the page cache when it was
/// handed out, that a transport may send to its socket straight from the
/// page cache (write(2) from a shared mapping of the file) instead of
/// copying it into a buffer first: one copy per Data-In byte instead of
/// two.
///
/// Unlike [`Bytes`], the content is not a snapshot: a later write to the
/// range shows through until it is sent. Only plain READ data goes this way
/// (overlapping commands in flight together have no order, SAM-5 8.6),
/// never data that is checked, digested or written back (see
/// `scsi::lu::ZeroCopy`).
#[derive(Clone)]
pub struct FileRange {
    file: Arc<std::fs::File>,
    map: Arc<Mapping>,
    offset: u64,
    len: usize,
    /// Released when the last slice of the range is dropped (after the send).
    hold: Option<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for FileRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRange")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl FileRange {
    /// Byte length.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Offset of the range in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Address of the range in the file's shared mapping, valid for
    /// [`len`](Self::len) bytes while `self` lives.
    ///
    /// Only for system calls that copy from it (write(2), writev(2)): user
    /// space must never read through it. The kernel then reports a page
    /// that cannot be read in (an I/O error, a truncated file) as EFAULT
    /// from that call, where a read in user space would raise SIGBUS.
    pub fn kernel_ptr(&self) -> *const u8 {
        // The range lies inside the mapping: `cached_range` checked it
        // against the file size the mapping covers, and slices shrink it.
        self.map.ptr.cast::<u8>().wrapping_add(self.offset as usize)
    }
    /// `len` bytes from `start` within this range (clamped to it).
    pub fn slice(&self, start: usize, len: usize) -> FileRange {
        let start = start.min(self.len);
        FileRange {
            file: Arc::clone(&self.file),
            map: Arc::clone(&self.map),
            offset: self.offset + start as u64,
            len: len.min(self.len - start),
            hold: self.hold.clone(),
        }
    }
    /// Keeps `guard` alive until every slice of this range is dropped.
    pub fn held_by(mut self, guard: Arc<dyn Send + Sync>) -> FileRange {
        self.hold = Some(guard);
        self
    }
    /// The content now, read into memory (pread): the fallback for sinks
    /// that cannot send from the mapping. Blocking, like any pread.
    pub fn read_now(&self) -> Result<Bytes, StorageError> {
        fileops::read_at(&self.file, self.offset, self.len)
    }
}

/// A read-only shared mapping of a whole backing file, made once per file
/// engine on the first zero-copy read. See [`FileRange::kernel_ptr`] for
/// the one way it is used.
pub(crate) struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.len).finish()
    }
}

// SAFETY: the mapping is only an address range handed to system calls;
// nothing in user space reads or writes through it, so sharing it between
// threads cannot race.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` (its full size) read-only and shared;
    /// `None` if the system refuses (address space, file system).
    pub(crate) fn new(file: &std::fs::File, len: u64) -> Option<Mapping> {
        use std::os::unix::io::AsRawFd;
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a fresh mapping at an address the kernel picks; the fd is
        // open for the call and the mapping keeps its own reference.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no FileRange
        // (which holds an Arc to it) is left.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Whether file engines can hand out [`FileRange`]s on this kernel: it has
/// cachestat(2) (Linux 6.5+). An engine opened with
/// [`Tuning::zero_copy`] off never does.
pub fn zero_copy_available() -> bool {
    fileops::cachestat_supported()
}

/// Which engine `open_file` should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring when the probe succeeds, else pool.
    Auto,
    /// io_uring; fails if the kernel refuses io_uring.
    Uring,
    /// Thread-pool pread/pwrite.
    Pool,
}

impl EngineChoice {
    /// Parse `pool`, `uring` or `auto` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(EngineChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Some(EngineChoice::Uring),
            "pool" => Some(EngineChoice::Pool),
            _ => None,
        }
    }
}

/// Concrete engines after resolution of [`EngineChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedEngine {
    /// io_uring engine.
    Uring,
    /// Thread-pool engine.
    Pool,
}

/// Resolve a choice given the io_uring probe result. Pure, so that the
/// fallback logic is testable.
pub fn resolve_engine(
    choice: EngineChoice,
    uring_ok: bool,
) -> Result<ResolvedEngine, StorageError> {
    match choice {
        EngineChoice::Pool => Ok(ResolvedEngine::Pool),
        EngineChoice::Uring if uring_ok => Ok(ResolvedEngine::Uring),
        EngineChoice::Uring => Err(StorageError::Setup {
            reason: "io_uring is not available on this kernel".into(),
            source: None,
        }),
        EngineChoice::Auto if uring_ok => Ok(ResolvedEngine::Uring),
        EngineChoice::Auto => Ok(ResolvedEngine::Pool),
    }
}

/// How file engines are opened: which engine, and the switches of its fast
/// paths. Chosen by the binary (config file, command line, environment)
/// and passed down; the storage layer reads no environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Engine selection.
    pub choice: EngineChoice,
    /// Fast-path switches.
    pub tuning: Tuning,
}

impl EngineConfig {
    /// `choice` with the default fast paths (all on).
    pub fn new(choice: EngineChoice) -> Self {
        EngineConfig {
            choice,
            tuning: Tuning::default(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::new(EngineChoice::Auto)
    }
}

impl From<EngineChoice> for EngineConfig {
    fn from(choice: EngineChoice) -> Self {
        EngineConfig::new(choice)
    }
}

/// Options for [`open_file_with`].
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Engine selection and tuning.
    pub engine: EngineConfig,
    /// Allow an existing smaller file to be extended to `size_bytes`.
    pub allow_grow: bool,
}

/// Open (or create sparse) a backing file of exactly `size_bytes` bytes.
/// An existing file of a different size is refused.
pub fn open_file(
    path: &Path,
    size_bytes: u64,
    engine: impl Into<EngineConfig>,
) -> Result<Arc<dyn BlockBackend>, StorageError> {
    open_file_with(
        path,
        size_bytes,
        OpenOptions {
            engine: engine.into(),
            allow_grow: false,
        },
    )
}

/// [`open_file`] with explicit options.
pub fn open_file_with(
    path: &Path,
    size_bytes: u64,
    opts: OpenOptions,
) -> Result<Arc<dyn BlockBackend>, StorageError> {
    let resolved = resolve_engine(opts.engine.choice, uring::probe())?;
    let file = fileops::open_sized(path, size_bytes, opts.allow_grow)?;
    let tuning = opts.engine.tuning;
    match resolved {
        ResolvedEngine::Pool => Ok(Arc::new(PoolBackend::with_tuning(file, size_bytes, tuning))),
        ResolvedEngine::Uring => Ok(Arc::new(UringBackend::with_tuning(
            file, size_bytes, tuning,
        )?)),
    }
}
