//! SANITIZE (SBC-4 4.11, 5.30): OVERWRITE, BLOCK ERASE and EXIT FAILURE
//! MODE, and the sanitize state of a LU.
//!
//! A sanitize operation runs in a task of its own, not in the command's
//! future: it goes on when the command is aborted, after a logical unit or
//! target reset and after the I_T nexus is lost (SBC-4 4.11.3). While it
//! runs, every command but INQUIRY, REPORT LUNS and REQUEST SENSE gets
//! NOT READY, SANITIZE IN PROGRESS. A failed operation leaves the LU in
//! sanitize failure mode until a sanitize succeeds or, when the failed one
//! had AUSE set, EXIT FAILURE MODE is sent (SBC-4 4.11.5).
//!
//! OVERWRITE is paced at [`LunConfig::sanitize_rate`](super::LunConfig)
//! (128 MiB/s by default): a 1 GiB LUN takes 8 s, and the node's disk stays
//! available to its other LUNs. BLOCK ERASE on a thin LUN only deallocates,
//! and is not paced.
//!
//! CRYPTO ERASE is not supported (nothing is stored encrypted): it is not
//! in REPORT SUPPORTED OPERATION CODES, and the SANITIZE command with that
//! service action is refused as INVALID FIELD IN CDB.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::cdb::{be16, u8_at};
use super::lu::{write_error, CmdResult, Ctx, Fail, LogicalUnit};
use super::opcodes::code::*;
use super::sense::{self, Sense};

/// Bytes per write of the OVERWRITE pattern.
const CHUNK: usize = 1 << 20;

/// Sanitize state of a LU (SBC-4 4.11).
///
/// ```text
///            SANITIZE              done
///   Idle ---------------> Running -------> Idle
///    ^                       |
///    |  EXIT FAILURE MODE    | failed
///    |  (AUSE was set),      v
///    +-- or a sanitize ---- Failed { ause }
///        that succeeds
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum SanitizeState {
    /// No sanitize operation, none failed.
    #[default]
    Idle,
    /// An operation runs.
    Running,
    /// The last operation failed; `ause` is its AUSE bit.
    Failed {
        /// EXIT FAILURE MODE is allowed.
        ause: bool,
    },
}

impl SanitizeState {
    /// The sense data a command with opcode `op` is refused with in this
    /// state, if any (SBC-4 4.11.4, 4.11.5). INQUIRY, REPORT LUNS and
    /// REQUEST SENSE always run; in failure mode so do the commands that do
    /// not access the medium, and SANITIZE itself.
    pub(crate) fn refuses(self, op: u8) -> Option<Sense> {
        match self {
            SanitizeState::Idle => None,
            SanitizeState::Running => match op {
                INQUIRY | REPORT_LUNS | REQUEST_SENSE => None,
                _ => Some(sense::SANITIZE_IN_PROGRESS),
            },
            SanitizeState::Failed { .. } => accesses_medium(op).then_some(sense::SANITIZE_FAILED),
        }
    }

    /// What REQUEST SENSE reports when no unit attention is pending.
    pub(crate) fn sense(self) -> Option<Sense> {
        match self {
            SanitizeState::Idle => None,
            SanitizeState::Running => Some(sense::SANITIZE_IN_PROGRESS),
            SanitizeState::Failed { .. } => Some(sense::SANITIZE_FAILED),
        }
    }
}

/// Commands that read or write logical blocks.
fn accesses_medium(op: u8) -> bool {
    matches!(
        op,
        READ_6
            | READ_10
            | READ_12
            | READ_16
            | WRITE_6
            | WRITE_10
            | WRITE_12
            | WRITE_16
            | WRITE_VERIFY_10
            | WRITE_VERIFY_12
            | WRITE_VERIFY_16
            | VERIFY_10
            | VERIFY_12
            | VERIFY_16
            | WRITE_SAME_10
            | WRITE_SAME_16
            | UNMAP
            | COMPARE_AND_WRITE
            | ORWRITE_16
            | WRITE_ATOMIC_16
            | EXTENDED_COPY
            | PRE_FETCH_10
            | PRE_FETCH_16
            | SERVICE_ACTION_IN_16
    )
}

/// What one sanitize operation does to every logical block.
#[derive(Debug, Clone)]
enum Operation {
    /// Write `pattern` repeated through each block, `passes` times, inverted
    /// on every other pass when `invert` (SBC-4 5.30.2.2).
    Overwrite {
        pattern: Bytes,
        passes: u8,
        invert: bool,
    },
    /// Deallocate every block on a thin LU (they then read as zeroes,
    /// LBPRZ), or write zeroes to it on a thick one (SBC-4 4.11.3.3).
    BlockErase,
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::Overwrite { .. } => "overwrite",
            Operation::BlockErase => "block erase",
        }
    }
}

/// SANITIZE (SBC-4 5.30). The command is checked (write protection, the
/// parameter list) before the operation starts; with IMMED the command
/// completes then, otherwise when the operation ends.
pub(crate) async fn sanitize(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let immed = u8_at(cdb, 1) & 0x80 != 0;
    let ause = u8_at(cdb, 1) & 0x20 != 0;
    let plen = usize::from(be16(cdb, 7));
    let op = match ctx.info.sa {
        Some(SA_SANITIZE_OVERWRITE) => {
            lu.check_writable()?;
            overwrite_parameters(lu, ctx, plen)?
        }
        Some(SA_SANITIZE_BLOCK_ERASE) => {
            lu.check_writable()?;
            if plen != 0 {
                return Err(Sense::invalid_cdb_field(7, None).into());
            }
            Operation::BlockErase
        }
        _ => return exit_failure_mode(lu, plen),
    };
    let Some(owner) = ctx.target.lun(ctx.req.lun) else {
        return Err(sense::INTERNAL_TARGET_FAILURE.into());
    };
    {
        let mut st = lu.lock();
        if st.sanitize == SanitizeState::Running {
            return Err(sense::SANITIZE_IN_PROGRESS.into());
        }
        st.sanitize = SanitizeState::Running;
    }
    let task = tokio::spawn(run(owner, op, ause));
    if immed {
        return Ok(Bytes::new());
    }
    match task.await {
        Ok(r) => r.map(|()| Bytes::new()),
        Err(_) => Err(sense::SANITIZE_FAILED.into()),
    }
}

/// EXIT FAILURE MODE: leaves sanitize failure mode when the failed
/// operation allowed it (AUSE); outside failure mode there is nothing to do.
fn exit_failure_mode(lu: &LogicalUnit, plen: usize) -> CmdResult {
    if plen != 0 {
        return Err(Sense::invalid_cdb_field(7, None).into());
    }
    let mut st = lu.lock();
    match st.sanitize {
        SanitizeState::Failed { ause: false } => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        SanitizeState::Failed { ause: true } => {
            st.sanitize = SanitizeState::Idle;
            Ok(Bytes::new())
        }
        _ => Ok(Bytes::new()),
    }
}

/// The OVERWRITE parameter list (SBC-4 5.30.2.2): a 4-byte header (INVERT,
/// TEST, OVERWRITE COUNT, INITIALIZATION PATTERN LENGTH) and the pattern,
/// 1 to one logical block long. A PARAMETER LIST LENGTH outside 5 to block
/// size + 4 is INVALID FIELD IN CDB.
fn overwrite_parameters(lu: &LogicalUnit, ctx: &Ctx<'_>, plen: usize) -> Result<Operation, Fail> {
    let bs = lu.block_size as usize;
    if plen < 5 || plen > bs + 4 {
        return Err(Sense::invalid_cdb_field(7, None).into());
    }
    let p = super::rw::data_out(ctx, plen)?;
    let invert = p[0] & 0x80 != 0;
    let test = (p[0] >> 5) & 0x03;
    let passes = p[0] & 0x1f;
    if test != 0 {
        return Err(Sense::invalid_param_field(0, Some(5)).into());
    }
    if passes == 0 {
        return Err(Sense::invalid_param_field(0, Some(4)).into());
    }
    let ipl = usize::from(be16(&p, 2));
    if ipl == 0 || ipl > bs || ipl + 4 != plen {
        return Err(Sense::invalid_param_field(2, None).into());
    }
    Ok(Operation::Overwrite {
        pattern: p.slice(4..),
        passes,
        invert,
    })
}

/// The operation's task: it holds every block of the LU exclusively (the
/// commands already running finish first), then records the outcome in
/// the LU's sanitize state.
async fn run(lu: Arc<LogicalUnit>, op: Operation, ause: bool) -> Result<(), Fail> {
    let size = lu.blocks * u64::from(lu.block_size);
    let started = std::time::Instant::now();
    tracing::info!(serial = %lu.cfg.serial, operation = op.name(), "sanitize started");
    let result = {
        let _all = lu.exclusive_io(0, size).await;
        match &op {
            Operation::Overwrite {
                pattern,
                passes,
                invert,
            } => overwrite(&lu, size, pattern, *passes, *invert).await,
            Operation::BlockErase if lu.cfg.thin => {
                lu.backend.discard(0, size).await.map_err(write_error)
            }
            Operation::BlockErase => lu
                .backend
                .write_zeroes(0, size, false)
                .await
                .map_err(write_error),
        }
    };
    let result = match result {
        Ok(()) => lu.backend.flush().await.map_err(write_error),
        Err(e) => Err(e),
    };
    lu.lock().sanitize = match result {
        Ok(()) => SanitizeState::Idle,
        Err(_) => SanitizeState::Failed { ause },
    };
    match &result {
        Ok(()) => tracing::info!(
            serial = %lu.cfg.serial,
            operation = op.name(),
            secs = started.elapsed().as_secs_f64(),
            "sanitize done"
        ),
        Err(e) => tracing::warn!(serial = %lu.cfg.serial, error = ?e, "sanitize failed"),
    }
    result
}

/// Keeps an operation at or below `rate` bytes per second on average.
struct Pace {
    rate: u64,
    start: tokio::time::Instant,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Pace {
            rate,
            start: tokio::time::Instant::now(),
        }
    }

    /// Waits until `done` bytes are due at the configured rate.
    async fn wait(&self, done: u64) {
        if self.rate == 0 {
            return;
        }
        let due = std::time::Duration::from_secs_f64(done as f64 / self.rate as f64);
        tokio::time::sleep_until(self.start + due).await;
    }
}

/// Writes `pattern`, repeated through each logical block, over the whole LU
/// `passes` times (on a thin LU every block ends up mapped).
async fn overwrite(
    lu: &LogicalUnit,
    size: u64,
    pattern: &[u8],
    passes: u8,
    invert: bool,
) -> Result<(), Fail> {
    let bs = lu.block_size as usize;
    let mut block = vec![0u8; bs];
    for (b, p) in block.iter_mut().zip(pattern.iter().cycle()) {
        *b = *p;
    }
    let pace = Pace::new(lu.cfg.sanitize_rate);
    let mut written = 0u64;
    for pass in 0..passes {
        let flip = if invert && pass % 2 == 1 { 0xff } else { 0 };
        let mut chunk = BytesMut::with_capacity(CHUNK);
        while chunk.len() + bs <= CHUNK {
            chunk.extend(block.iter().map(|b| b ^ flip));
        }
        let chunk = chunk.freeze();
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(CHUNK as u64) as usize;
            lu.backend
                .write(off, chunk.slice(..n), false)
                .await
                .map_err(write_error)?;
            off += n as u64;
            written += n as u64;
            pace.wait(written).await;
        }
    }
    Ok(())
}
