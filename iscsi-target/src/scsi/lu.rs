//! A logical unit: configuration, per-LU state (write cache mode, unit
//! attentions, reservations) and the dispatch of LU-level commands to the
//! command-family modules (SAM-5 4.6, SBC-3).

use drbd_like_sync::core::ByteRange;
use drbd_like_sync::mirror::range_lock::{RangeGuard, RangeLock};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::gate::{GateOwner, TaskGate};
use super::opcodes::{code::*, OpInfo};
use super::pr::PrState;
use super::sanitize::{self, SanitizeState};
use super::sense::{self, key, Sense};
use super::{inquiry, mode, pr, rw, thin, Nexus, ScsiRequest};
use drbd_like_sync::storage::{BlockBackend, FileRange, StorageError, StorageErrorKind};

/// Largest READ/WRITE transfer accepted, in bytes (VPD B0 MAXIMUM TRANSFER LENGTH).
pub(crate) const MAX_TRANSFER_BYTES: u64 = 8 << 20;
/// Largest WRITE SAME, in bytes of the range written (VPD B0 MAXIMUM WRITE
/// SAME LENGTH is this over the block size, the same as the maximum
/// transfer length: initiators may verify a WRITE SAME with one READ).
pub(crate) const MAX_WRITE_SAME_BYTES: u64 = MAX_TRANSFER_BYTES;
/// Largest UNMAP LBA count (VPD B0).
pub(crate) const MAX_UNMAP_BLOCKS: u64 = 1 << 20;
/// Largest number of UNMAP block descriptors (VPD B0).
pub(crate) const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest COMPARE AND WRITE length, in logical blocks (VPD B0).
pub(crate) const MAX_CAW_BLOCKS: u8 = 128;

/// Static configuration of a logical unit.
#[derive(Debug, Clone)]
pub struct LunConfig {
    /// T10 VENDOR IDENTIFICATION (8 chars, SPC-4 6.6.2).
    pub vendor: String,
    /// PRODUCT IDENTIFICATION (16 chars).
    pub product: String,
    /// PRODUCT REVISION LEVEL (4 chars).
    pub revision: String,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// NAA IEEE Registered Extended designator (NAA 6, 16 bytes, VPD 0x83).
    pub naa_id: [u8; 16],
    /// Logical block size in bytes: 512 or 4096.
    pub logical_block_size: u32,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-4 5.20.2, READ
    /// CAPACITY(16)): 0 when a physical block is one logical block, 3 for
    /// 512-byte logical blocks on 4096-byte physical ones ("512e").
    pub physical_block_exponent: u8,
    /// Thin provisioned: UNMAP, WRITE SAME with UNMAP, LBPME (SBC-3 4.7).
    pub thin: bool,
    /// Initial WCE bit of the caching mode page; with WCE=0 every write is FUA.
    pub write_cache: bool,
    /// Where persistent reservations are persisted (written atomically).
    pub pr_path: Option<PathBuf>,
    /// Write protected: every write fails with DATA PROTECT.
    pub read_only: bool,
    /// ALUA target port group of this target (VPD 0x83, REPORT TARGET PORT GROUPS).
    pub target_port_group: u16,
    /// Bytes per second a SANITIZE OVERWRITE writes at most, 0 for as fast
    /// as the backend goes. A sanitize is bulk background work that runs on
    /// after its command; the pace leaves the node's disk to its other LUNs.
    pub sanitize_rate: u64,
}

/// The default [`LunConfig::sanitize_rate`]: 128 MiB/s, 8 s per GiB.
pub const DEFAULT_SANITIZE_RATE: u64 = 128 << 20;

impl LunConfig {
    /// Defaults for a LU with the given serial: 512-byte blocks, thin,
    /// write cache on, no PR persistence, read-write. The NAA id is derived
    /// from the serial.
    pub fn new(serial: &str) -> Self {
        LunConfig {
            vendor: "LOCUS".into(),
            product: "LOCUS-DISK".into(),
            revision: "0001".into(),
            serial: serial.into(),
            naa_id: naa_from(serial),
            logical_block_size: 512,
            physical_block_exponent: 0,
            thin: true,
            write_cache: true,
            pr_path: None,
            read_only: false,
            target_port_group: 1,
            sanitize_rate: DEFAULT_SANITIZE_RATE,
        }
    }
}

/// Derive a stable NAA 6 (IEEE Registered Extended) id from a name.
pub fn naa_from(name: &str) -> [u8; 16] {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    // NAA=6, then a made-up 24-bit OUI in the locally administered style.
    id[0] = 0x60 | (id[0] & 0x0f);
    id
}

/// Errors creating a [`LogicalUnit`].
#[derive(Debug, thiserror::Error)]
pub enum LunError {
    /// Block size is not 512 or 4096.
    #[error("logical block size {0} is not 512 or 4096")]
    BlockSize(u32),
    /// Backend size is not a positive multiple of the block size.
    #[error("backend size {size} is not a positive multiple of the block size {block}")]
    Size {
        /// Backend size in bytes.
        size: u64,
        /// Block size in bytes.
        block: u32,
    },
    /// The persistent reservation file could not be read or parsed.
    #[error("cannot load persistent reservations from {path}")]
    PrLoad {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Mutable per-LU state, behind one mutex (never held across an await).
#[derive(Debug, Default)]
pub(crate) struct LuState {
    /// Pending unit attentions per nexus, oldest first.
    pub ua: HashMap<u64, VecDeque<(u8, u8)>>,
    /// Nexuses that have addressed this LU (they get reset UAs).
    pub known: HashSet<u64>,
    /// Initiator port and relative port of each known nexus.
    pub port_of: HashMap<u64, (String, u16)>,
    /// Holder of a RESERVE(6)/(10) reservation.
    pub legacy: Option<u64>,
    /// Persistent reservations.
    pub pr: PrState,
    /// Per nexus, the `abort_gen` of the last PREEMPT AND ABORT that
    /// aborted its tasks: a command of that nexus that started before it
    /// ends with TASK ABORTED.
    pub aborted_at: HashMap<u64, u64>,
    /// Held EXTENDED COPY results per (nexus, list identifier):
    /// (segments processed, bytes copied) (SPC-4 6.18.3).
    pub copies: HashMap<(u64, u8), (u16, u64)>,
    /// Sanitize operation running or failed (SBC-4 4.11).
    pub sanitize: SanitizeState,
}

impl LuState {
    /// Remember a nexus (and its port) that reset and reservation UAs reach.
    fn note_nexus(&mut self, n: &Nexus) {
        if self.known.insert(n.id) {
            let port = (n.initiator_port.clone(), n.relative_port);
            self.port_of.insert(n.id, port);
        }
    }

    /// Queue a UA for every known nexus except `except`.
    pub fn ua_others(&mut self, except: Option<u64>, ua: (u8, u8)) {
        let ids: Vec<u64> = self
            .known
            .iter()
            .copied()
            .filter(|&n| Some(n) != except)
            .collect();
        for n in ids {
            self.push_ua(n, ua);
        }
    }

    /// Queue a UA for one nexus (deduplicated).
    pub fn push_ua(&mut self, nexus: u64, ua: (u8, u8)) {
        let q = self.ua.entry(nexus).or_default();
        if !q.contains(&ua) {
            q.push_back(ua);
        }
    }

    /// Drop one pending UA of a nexus (REPORT LUNS clears 3F/0E).
    pub fn clear_ua(&mut self, nexus: u64, ua: (u8, u8)) {
        if let Some(q) = self.ua.get_mut(&nexus) {
            q.retain(|&u| u != ua);
            if q.is_empty() {
                self.ua.remove(&nexus);
            }
        }
    }

    fn pop_ua(&mut self, nexus: u64) -> Option<Sense> {
        let q = self.ua.get_mut(&nexus)?;
        let (asc, ascq) = q.pop_front()?;
        if q.is_empty() {
            self.ua.remove(&nexus);
        }
        Some(Sense::new(key::UNIT_ATTENTION, asc, ascq))
    }
}

/// Failure of a command short of a GOOD status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// CHECK CONDITION with sense data.
    Check(Sense),
    /// RESERVATION CONFLICT (no sense data).
    Conflict,
    /// TASK ABORTED: another nexus's PREEMPT AND ABORT aborted the command.
    Aborted,
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Self {
        Fail::Check(s)
    }
}

/// Result of a command: Data-In (possibly empty) or a failure.
pub(crate) type CmdResult = Result<Bytes, Fail>;

/// Data-In of a command as the LU produced it: in memory, or, for a plain
/// READ whose transport allows it, a cached range of the backing file.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Bytes in memory.
    Mem(Bytes),
    /// A range of the backing file, to be sent from the page cache.
    File(FileRange),
}

/// Zero-copy READ data of one LU: whether READ data may still go out as
/// [`FileRange`]s, and how many of those are still being sent.
///
/// A range is sent after the READ has released `io_lock`, so it can show
/// part of a later write. For plain writes that is allowed: commands in
/// flight together have no order (SAM-5 8.6, SIMPLE task attribute), and
/// the READ is not complete until its data has reached the initiator. The
/// exclusive writers (COMPARE AND WRITE, ORWRITE, WRITE ATOMIC) promise
/// more, so the first of them to run on a LU turns zero-copy off for the
/// life of the LU and waits until every range already handed out has been
/// given to the socket ([`ZeroCopy::stop`]).
#[derive(Debug, Default)]
pub(crate) struct ZeroCopy {
    off: AtomicBool,
    sending: Arc<Sending>,
}

#[derive(Debug, Default)]
struct Sending {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts one range handed out until its last slice is dropped.
struct SendGuard(Arc<Sending>);

impl Drop for SendGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ZeroCopy {
    /// The cached range `[off, off + len)` of `backend`, counted until sent,
    /// or `None` (zero-copy stopped, not a file, or not all cached).
    pub(crate) fn range(
        &self,
        backend: &dyn BlockBackend,
        off: u64,
        len: usize,
    ) -> Option<FileRange> {
        if self.off.load(Ordering::SeqCst) {
            return None;
        }
        let range = backend.cached_range(off, len)?;
        self.sending.count.fetch_add(1, Ordering::SeqCst);
        let guard = SendGuard(Arc::clone(&self.sending));
        // Checked again after counting: `stop` either sees this range in
        // the count or this check sees `off`.
        if self.off.load(Ordering::SeqCst) {
            return None;
        }
        Some(range.held_by(Arc::new(guard)))
    }

    /// Turns zero-copy off for good and waits until no range is being sent.
    pub(crate) async fn stop(&self) {
        self.off.store(true, Ordering::SeqCst);
        loop {
            let idle = self.sending.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.sending.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Everything a command handler needs about the request.
pub(crate) struct Ctx<'a> {
    pub nexus: &'a Nexus,
    pub req: &'a ScsiRequest,
    pub info: &'static OpInfo,
    pub target_name: &'a str,
    /// The target, for commands that address other LUs (EXTENDED COPY).
    pub target: &'a super::ScsiTarget,
}

impl Ctx<'_> {
    pub fn cdb(&self) -> &[u8] {
        &self.req.cdb
    }
}

/// A logical unit backed by a [`BlockBackend`].
pub struct LogicalUnit {
    pub(crate) cfg: LunConfig,
    pub(crate) backend: Arc<dyn BlockBackend>,
    pub(crate) block_size: u32,
    pub(crate) blocks: u64,
    pub(crate) wce: AtomicBool,
    /// SWP of the Control mode page (SPC-4 7.5.8): writes are refused.
    pub(crate) swp: AtomicBool,
    pub(crate) state: Mutex<LuState>,
    /// Byte ranges in use: reads and writes hold theirs shared; COMPARE AND
    /// WRITE, ORWRITE and WRITE ATOMIC hold theirs exclusively, so that
    /// their read-modify-write is atomic against every command that touches
    /// the same blocks and stalls no other (SBC-3 §5.2). With a mirrored
    /// image this LU is the image's single writer, so the atomicity holds
    /// across every copy.
    io_lock: RangeLock,
    /// Zero-copy READ data (see [`ZeroCopy`]).
    pub(crate) zero_copy: ZeroCopy,
    /// Taken by each PERSISTENT RESERVE OUT for its whole run, so that
    /// reservation changes persist and apply in order without holding
    /// `state` across the file write.
    pub(crate) pr_turn: tokio::sync::Mutex<()>,
    /// Bumped by each PREEMPT AND ABORT that aborts tasks; a command that
    /// sees it unchanged at its end was not aborted (see `aborted_at`).
    abort_gen: AtomicU64,
    /// The task set's admission gate: task attributes (SAM-5 §8.6).
    gate: TaskGate,
}

impl GateOwner for LogicalUnit {
    fn gate(&self) -> &TaskGate {
        &self.gate
    }
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("serial", &self.cfg.serial)
            .field("block_size", &self.block_size)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl LogicalUnit {
    /// Create a LU over `backend`, loading persisted reservations from
    /// `cfg.pr_path` when that file exists.
    pub fn new(cfg: LunConfig, backend: Arc<dyn BlockBackend>) -> Result<Self, LunError> {
        let bs = cfg.logical_block_size;
        if bs != 512 && bs != 4096 {
            return Err(LunError::BlockSize(bs));
        }
        let size = backend.size();
        if size == 0 || !size.is_multiple_of(u64::from(bs)) {
            return Err(LunError::Size { size, block: bs });
        }
        let pr = match &cfg.pr_path {
            Some(p) => PrState::load(p).map_err(|source| LunError::PrLoad {
                path: p.clone(),
                source,
            })?,
            None => PrState::default(),
        };
        Ok(LogicalUnit {
            wce: AtomicBool::new(cfg.write_cache),
            swp: AtomicBool::new(false),
            block_size: bs,
            blocks: size / u64::from(bs),
            backend,
            state: Mutex::new(LuState {
                pr,
                ..LuState::default()
            }),
            io_lock: RangeLock::default(),
            zero_copy: ZeroCopy::default(),
            pr_turn: tokio::sync::Mutex::new(()),
            abort_gen: AtomicU64::new(0),
            gate: TaskGate::default(),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LunConfig {
        &self.cfg
    }

    /// Number of logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.blocks
    }

    /// Current WCE (caching mode page).
    pub fn write_cache_enabled(&self) -> bool {
        self.wce.load(Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LuState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check `lba + n <= capacity` (SBC-3 4.5), else LBA OUT OF RANGE.
    pub(crate) fn check_range(&self, lba: u64, n: u64) -> Result<(), Sense> {
        match lba.checked_add(n) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(sense::LBA_OUT_OF_RANGE),
        }
    }

    /// Current SWP (software write protect) of the Control mode page.
    pub fn software_write_protected(&self) -> bool {
        self.swp.load(Ordering::Relaxed)
    }

    /// Writes to the medium are refused: the LU is configured read-only,
    /// or SWP is set.
    pub(crate) fn write_protected(&self) -> bool {
        self.cfg.read_only || self.software_write_protected()
    }

    /// DATA PROTECT / WRITE PROTECTED when [`Self::write_protected`]
    /// (SPC-4 7.5.8: SWP set; SBC-4 4.10).
    pub(crate) fn check_writable(&self) -> Result<(), Sense> {
        if self.write_protected() {
            Err(sense::WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }

    pub(crate) fn byte_offset(&self, lba: u64) -> u64 {
        lba * u64::from(self.block_size)
    }

    /// SAM-5 LOGICAL UNIT RESET: clear RESERVE(6)/(10), UA for other nexuses.
    pub(crate) fn reset(&self, by: Option<u64>, ua: (u8, u8)) {
        let mut st = self.lock();
        st.legacy = None;
        st.ua_others(by, ua);
    }

    /// A new I_T nexus: known from now on, with a POWER ON UA pending.
    pub(crate) fn nexus_created(&self, nexus: &Nexus) {
        let mut st = self.lock();
        st.note_nexus(nexus);
        st.push_ua(nexus.id, sense::UA_POWER_ON_RESET);
    }

    /// The I_T nexus is gone: drop its RESERVE(6)/(10) reservation and UAs.
    pub(crate) fn nexus_lost(&self, nexus: u64) {
        let mut st = self.lock();
        if st.legacy == Some(nexus) {
            st.legacy = None;
        }
        st.known.remove(&nexus);
        st.port_of.remove(&nexus);
        st.copies.retain(|(n, _), _| *n != nexus);
        st.ua.remove(&nexus);
        st.aborted_at.remove(&nexus);
    }

    /// `len` bytes at byte `offset` held exclusively, for a command whose
    /// access must be atomic against every other one on those bytes
    /// (COMPARE AND WRITE, ORWRITE, WRITE ATOMIC); stops zero-copy READ
    /// data first (see [`ZeroCopy`]).
    pub(crate) async fn exclusive_io(&self, offset: u64, len: u64) -> RangeGuard<'_> {
        self.zero_copy.stop().await;
        self.io_lock.lock(ByteRange::new(offset, len)).await
    }

    /// `len` bytes at byte `offset` held shared, for a plain read or write:
    /// it waits only for an exclusive holder of overlapping bytes.
    pub(crate) async fn shared_io(&self, offset: u64, len: u64) -> RangeGuard<'_> {
        self.io_lock.lock_shared(ByteRange::new(offset, len)).await
    }

    /// Makes a persisted PERSISTENT RESERVE OUT visible: the new state, its
    /// unit attentions, and the tasks of the `aborted` ports, which end with
    /// TASK ABORTED (SPC-4 5.13.11.2.4; TAS is set in the Control mode page,
    /// SPC-4 7.5.8, so the initiator is told rather than left waiting).
    pub(crate) fn apply_pr(&self, pr: PrState, uas: super::pr::PortUas, aborted: &[(String, u16)]) {
        let mut st = self.lock();
        st.pr = pr;
        for (ports, ua) in uas {
            super::pr::push_ua_to(&mut st, &ports, ua);
        }
        let victims = super::pr::nexuses_of(&st, aborted);
        if !victims.is_empty() {
            let gen = self.abort_gen.fetch_add(1, Ordering::AcqRel) + 1;
            for id in victims {
                st.aborted_at.insert(id, gen);
            }
        }
    }

    /// Execute an LU-level command: UA, reservation checks, the handler,
    /// then TASK ABORTED if a PREEMPT AND ABORT from another nexus aborted
    /// it while it ran (its I/O may have happened, as SAM-5 5.6 allows).
    pub(crate) async fn execute(&self, ctx: &Ctx<'_>) -> Result<Payload, Fail> {
        let gen = self.abort_gen.load(Ordering::Acquire);
        let result = self.execute_checked(ctx).await;
        if self.abort_gen.load(Ordering::Acquire) != gen
            && self
                .lock()
                .aborted_at
                .get(&ctx.nexus.id)
                .is_some_and(|&at| at > gen)
        {
            return Err(Fail::Aborted);
        }
        result
    }

    async fn execute_checked(&self, ctx: &Ctx<'_>) -> Result<Payload, Fail> {
        let op = ctx.info.opcode;
        {
            let mut st = self.lock();
            st.note_nexus(ctx.nexus);
            if op == REQUEST_SENSE {
                let s = st
                    .pop_ua(ctx.nexus.id)
                    .or(st.sanitize.sense())
                    .unwrap_or(sense::NO_SENSE);
                return Ok(Payload::Mem(request_sense_data(ctx.cdb(), s)));
            }
            if op != INQUIRY && op != REPORT_LUNS {
                if let Some(ua) = st.pop_ua(ctx.nexus.id) {
                    return Err(Fail::Check(ua));
                }
            }
            if let Some(s) = st.sanitize.refuses(op) {
                return Err(Fail::Check(s));
            }
            pr::check_access(&st, ctx.nexus, ctx.info)?;
        }
        let result: CmdResult = match op {
            TEST_UNIT_READY => Ok(Bytes::new()),
            INQUIRY => inquiry::inquiry(self, ctx),
            READ_CAPACITY_10 => inquiry::read_capacity10(self, ctx.cdb()),
            SERVICE_ACTION_IN_16 => match ctx.info.sa {
                Some(SA_READ_CAPACITY_16) => inquiry::read_capacity16(self, ctx.cdb()),
                _ => thin::get_lba_status(self, ctx.cdb()).await,
            },
            MAINTENANCE_IN => match ctx.info.sa {
                Some(SA_REPORT_TARGET_PORT_GROUPS) => inquiry::report_target_port_groups(self, ctx),
                Some(SA_REPORT_SUPPORTED_OPCODES) => {
                    let data = super::opcodes::report_supported_opcodes(ctx.cdb())?;
                    Ok(truncate(data, super::cdb::be32(ctx.cdb(), 6)))
                }
                _ => Ok(truncate(
                    super::opcodes::report_supported_tmf(ctx.cdb()),
                    super::cdb::be32(ctx.cdb(), 6),
                )),
            },
            MODE_SENSE_6 | MODE_SENSE_10 => mode::mode_sense(self, ctx.cdb()),
            MODE_SELECT_6 | MODE_SELECT_10 => {
                let flush = mode::mode_select(self, ctx)?;
                if flush {
                    // Writes acknowledged under WCE=1 become durable now
                    // (SBC-3 4.15); SWP protects the medium once cached
                    // writes are on it (SPC-4 7.5.8).
                    self.backend.flush().await.map_err(write_error)?;
                }
                Ok(Bytes::new())
            }
            RESERVE_6 | RESERVE_10 | RELEASE_6 | RELEASE_10 => pr::legacy(self, ctx),
            PERSISTENT_RESERVE_IN => pr::pr_in(self, ctx),
            PERSISTENT_RESERVE_OUT => pr::pr_out(self, ctx).await,
            START_STOP_UNIT => rw::start_stop(self, ctx).await,
            SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => rw::synchronize_cache(self, ctx).await,
            PRE_FETCH_10 | PRE_FETCH_16 => rw::pre_fetch(self, ctx),
            READ_DEFECT_DATA_10 | READ_DEFECT_DATA_12 => inquiry::read_defect_data(ctx.cdb()),
            WRITE_SAME_10 | WRITE_SAME_16 => thin::write_same(self, ctx).await,
            UNMAP => thin::unmap(self, ctx).await,
            SANITIZE => sanitize::sanitize(self, ctx).await,
            COMPARE_AND_WRITE => rw::compare_and_write(self, ctx).await,
            EXTENDED_COPY => super::xcopy::extended_copy(self, ctx).await,
            RECEIVE_COPY_RESULTS => super::xcopy::receive_copy_results(self, ctx),
            ORWRITE_16 => rw::orwrite(self, ctx).await,
            VERIFY_10 | VERIFY_12 | VERIFY_16 => rw::verify(self, ctx).await,
            _ => return rw::read_write(self, ctx).await,
        };
        result.map(Payload::Mem)
    }
}

/// Truncate parameter data to an ALLOCATION LENGTH.
pub(crate) fn truncate(data: Bytes, alloc: u32) -> Bytes {
    let n = data.len().min(alloc as usize);
    data.slice(..n)
}

/// REQUEST SENSE parameter data (SPC-4 6.39): fixed format, or descriptor
/// format when DESC=1; truncated to the allocation length.
pub(crate) fn request_sense_data(cdb: &[u8], s: Sense) -> Bytes {
    let alloc = u32::from(super::cdb::u8_at(cdb, 4));
    let data = if super::cdb::u8_at(cdb, 1) & 1 != 0 {
        Bytes::copy_from_slice(&[0x72, s.key, s.asc, s.ascq, 0, 0, 0, 0])
    } else {
        s.to_bytes()
    };
    truncate(data, alloc)
}

/// Map a storage failure on a read path to sense (SBC-3 4.18).
pub(crate) fn read_error(e: StorageError) -> Fail {
    tracing::warn!(error = %e, "backend read failed");
    Fail::Check(match e.kind() {
        StorageErrorKind::OutOfRange => sense::LBA_OUT_OF_RANGE,
        StorageErrorKind::EngineGone => sense::INTERNAL_TARGET_FAILURE,
        _ => sense::UNRECOVERED_READ_ERROR,
    })
}

/// Map a storage failure on a write path to sense.
pub(crate) fn write_error(e: StorageError) -> Fail {
    tracing::warn!(error = %e, "backend write failed");
    Fail::Check(match e.kind() {
        StorageErrorKind::NoSpace => sense::SPACE_ALLOC_FAILED,
        StorageErrorKind::OutOfRange => sense::LBA_OUT_OF_RANGE,
        StorageErrorKind::EngineGone => sense::INTERNAL_TARGET_FAILURE,
        _ => sense::WRITE_ERROR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drbd_like_sync::storage::{open_file, zero_copy_available, EngineChoice};
    use futures::FutureExt;

    /// An exclusive writer turns zero-copy off and waits for the ranges
    /// already handed out; after it, reads are copied.
    #[tokio::test]
    async fn stop_waits_for_ranges_in_flight_and_ends_zero_copy() {
        let dir = tempfile::tempdir().unwrap();
        let b = open_file(&dir.path().join("zc.img"), 1 << 20, EngineChoice::Pool).unwrap();
        b.write(0, Bytes::from(vec![7u8; 65536]), false)
            .await
            .unwrap();
        let zc = ZeroCopy::default();
        let Some(range) = zc.range(b.as_ref(), 0, 65536) else {
            assert!(!zero_copy_available(), "a written range is cached");
            return;
        };
        let slice = range.slice(4096, 4096);
        drop(range);
        let mut stop = Box::pin(zc.stop());
        assert!(
            stop.as_mut().now_or_never().is_none(),
            "stop must wait while a slice is still being sent"
        );
        assert!(zc.range(b.as_ref(), 0, 4096).is_none(), "off once stopping");
        drop(slice);
        assert!(
            stop.now_or_never().is_some(),
            "stop ends once the last slice is gone"
        );
        assert!(zc.range(b.as_ref(), 0, 4096).is_none(), "stays off");
    }
}
