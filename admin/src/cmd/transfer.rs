//! `locus image import` and `locus image export`: a file into a new image,
//! and an image into a file, through the image's writer taken by `locus`
//! itself ([`super::lease_here`]), holes kept ([`super::sparse_copy`]).
//!
//! Owns the order of the steps: everything that can be checked (the file's
//! size, the name, the nodes, the lease, an existing output file) is
//! checked before anything changes; then the temporary files, `qemu-img`
//! for qcow2, and what the operator is told when a step fails midway (an
//! imported image stays with what landed; an export leaves no partial
//! file: it is written under a temporary name and renamed when complete).
//!
//! ```text
//! import: size + checks -> [qcow2: qemu-img convert to raw in $TMPDIR]
//!         -> create image -> take lease -> copy file => writer -> close
//! export: checks -> take lease -> copy writer => sparse temp file -> close
//!         -> [qcow2: qemu-img convert] -> rename to FILE
//! ```

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use blockmap::ops;
use blockmap::record::ImageRecord;
use blockmap::store::MetadataStore;
use blockmap::types::{ByteSize, ImageName, NodeId, UnixMillis};
use blockmap::writer::Lease;
use drbd_like_sync::proto::ClusterSecret;
use drbd_like_sync::storage::{BlockBackend, PoolBackend};
use serde::Serialize;

use super::image::NewImage;
use super::lease_here::{live_holder, read_secret, SecretArg, WriterHere};
use super::progress::Progress;
use super::sparse_copy::{copy_sparse, Copied};
use crate::exit::{chain, CliError, CliResult};
use crate::output::{list, Out};
use crate::parse;

/// A file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Raw bytes, possibly sparse.
    Raw,
    /// QEMU's qcow2, converted with `qemu-img`.
    Qcow2,
}

impl Format {
    fn word(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// `locus image import` arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Name of the new image.
    name: String,
    /// The file to import: a regular file, raw or (with --format qcow2) qcow2.
    file: PathBuf,
    /// The file's format.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
    /// Geometry, locations and hypervisors, as for `image create`.
    #[command(flatten)]
    new: NewImage,
    /// To take the new image's lease here.
    #[command(flatten)]
    secret: SecretArg,
}

/// `locus image export` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The image.
    name: String,
    /// The file to write; refused if it exists, unless --force.
    file: PathBuf,
    /// The format to write.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
    /// To take the image's lease here.
    #[command(flatten)]
    secret: SecretArg,
}

/// Which way the data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A file into a new image.
    Import,
    /// An image into a file.
    Export,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::Import => "import",
            Direction::Export => "export",
        }
    }
}

/// What `--json` prints at the end, and the figures of the human summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Import or export.
    pub direction: Direction,
    /// The image.
    pub image: ImageName,
    /// The file, as given.
    pub file: PathBuf,
    /// The file's format.
    pub format: Format,
    /// The image's size in bytes.
    pub size_bytes: u64,
    /// The image's locations (written on import, read from on export).
    pub locations: Vec<NodeId>,
    /// Bytes of data written: into every location (import), or into the
    /// raw file (export; before the conversion, for qcow2).
    pub data_bytes: u64,
    /// Bytes not written: holes, and 64 KiB chunks of zeros.
    pub hole_bytes: u64,
    /// Seconds the whole command took (with qemu-img).
    pub seconds: f64,
    /// Copies that failed meanwhile: each is marked out-of-sync where it
    /// missed writes (or a read failed over from it); the others have
    /// everything.
    pub failed_copies: Vec<FailedCopy>,
}

/// A copy that failed during the transfer.
#[derive(Debug, Clone, Serialize)]
pub struct FailedCopy {
    /// Its location.
    pub node: NodeId,
    /// The latest failure.
    pub reason: String,
}

impl Summary {
    fn of(
        direction: Direction,
        rec: &ImageRecord,
        file: PathBuf,
        format: Format,
        moved: Moved,
        started: Instant,
    ) -> Self {
        Summary {
            direction,
            image: rec.image.name.clone(),
            file,
            format,
            size_bytes: rec.image.size.bytes(),
            locations: rec.location_nodes().into_iter().collect(),
            data_bytes: moved.copied.data_bytes,
            hole_bytes: moved.copied.hole_bytes,
            seconds: started.elapsed().as_secs_f64(),
            failed_copies: moved.failed_copies,
        }
    }

    fn print(&self) {
        let (data, holes) = (self.data_bytes, self.hole_bytes);
        let locations = list(&self.locations);
        match self.direction {
            Direction::Import => println!(
                "imported {} ({}, {} bytes) into image {} on {locations} in {:.1}s: {data} bytes \
                 of data written to every location, {holes} bytes of holes skipped",
                self.file.display(),
                self.format.word(),
                self.size_bytes,
                self.image,
                self.seconds
            ),
            Direction::Export => println!(
                "exported image {} ({} bytes, from {locations}) to {} ({}) in {:.1}s: {data} \
                 bytes of data written, {holes} bytes of holes skipped",
                self.image,
                self.size_bytes,
                self.file.display(),
                self.format.word(),
                self.seconds
            ),
        }
        for f in &self.failed_copies {
            eprintln!(
                "warning: the copy on {} failed during the {} ({}); it is marked out-of-sync \
                 where it missed writes, and `locus image sync {}` repairs it",
                f.node,
                self.direction.word(),
                f.reason,
                self.image
            );
        }
    }
}

/// Creates image `NAME` from `FILE` and writes the file's data into every
/// location through a writer taken here.
pub async fn import(store: &Arc<dyn MetadataStore>, out: Out, a: ImportArgs) -> CliResult {
    let s = &**store;
    let started = Instant::now();
    let name: ImageName = parse(&a.name)?;
    let secret = secret(&a.secret, &name, Direction::Import)?;
    let size = source_size(&a.file, a.format).await?;
    let lbs = a.new.logical_block_size()?.bytes();
    if size == 0 {
        return Err(CliError::Invalid(format!(
            "{} is empty: there is nothing to import; nothing was created",
            a.file.display()
        )));
    }
    if !size.is_multiple_of(lbs) {
        let (path, padded) = (a.file.display(), size.div_ceil(lbs) * lbs);
        let pad = match a.format {
            Format::Raw => format!("truncate -s {padded} {path}"),
            Format::Qcow2 => format!("qemu-img resize -f qcow2 {path} {padded}"),
        };
        return Err(CliError::Invalid(format!(
            "{path} is {size} bytes, which is not a multiple of the logical block size {lbs}: \
             an image holds whole logical blocks. Pad it with zeros to {padded} bytes \
             (`{pad}`) and import again; nothing was created"
        )));
    }
    let spec = a.new.spec(name.clone(), ByteSize(size))?;
    ops::check_new_image(s, &spec).await?;
    let scratch;
    let raw = match a.format {
        Format::Raw => a.file.clone(),
        Format::Qcow2 => {
            scratch = scratch_dir()?;
            let raw = scratch.path().join("import.raw");
            if !out.json {
                eprintln!("converting {} to raw with qemu-img", a.file.display());
            }
            qemu_img(&[
                "convert".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-O".as_ref(),
                "raw".as_ref(),
                a.file.as_os_str(),
                raw.as_os_str(),
            ])
            .await?;
            raw
        }
    };
    let src = open_source(&raw, size)?;
    let rec = ops::create_image(s, &spec).await?;
    let here = WriterHere::take(store, &name, secret).await.map_err(|e| {
        CliError::Refused(format!(
            "image '{name}' was created, but nothing was written into it: {e}. \
                 `locus image destroy {name}` removes it"
        ))
    })?;
    let moved = copy_through(here, &src, Direction::Import, out).await;
    let moved = moved.map_err(|stop| {
        let what = format!(
            "image '{name}': the import of {} stopped after {} of {size} bytes",
            a.file.display(),
            stop.at.done
        );
        let left = format!(
            "The image stays, with what landed; `locus image destroy {name}` removes it (then \
             import again)"
        );
        stop.error(what, &left)
    })?;
    let summary = Summary::of(Direction::Import, &rec, a.file, a.format, moved, started);
    out.emit(&summary, || summary.print());
    Ok(())
}

/// Writes image `NAME` into `FILE`, read through a writer taken here;
/// refused while a node holds the image's lease.
pub async fn export(store: &Arc<dyn MetadataStore>, out: Out, a: ExportArgs) -> CliResult {
    let s = &**store;
    let started = Instant::now();
    let name: ImageName = parse(&a.name)?;
    let rec = s.load_image(&name).await?;
    if !a.force && a.file.symlink_metadata().is_ok() {
        return Err(CliError::Refused(format!(
            "{} exists; pass --force to replace it (it is replaced only once the export is \
             complete)",
            a.file.display()
        )));
    }
    if let Some(lease) = live_holder(s, &name).await? {
        return Err(CliError::Refused(served(s, &name, &lease).await?));
    }
    let secret = secret(&a.secret, &name, Direction::Export)?;
    let size = rec.image.size.bytes();
    let io = |what: &str, e: std::io::Error| CliError::Invalid(format!("{what}: {e}"));
    let parent = match a.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dest = tempfile::Builder::new()
        .prefix(".locus-export-")
        .tempfile_in(parent)
        .map_err(|e| io(&format!("cannot write in {}", parent.display()), e))?;
    let scratch = match a.format {
        Format::Raw => None,
        Format::Qcow2 => Some(scratch_dir()?),
    };
    let raw = match &scratch {
        None => dest.path().to_path_buf(),
        Some(d) => d.path().join("export.raw"),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw)
        .and_then(|f| f.set_len(size).map(|()| f))
        .map_err(|e| io(&format!("cannot create {}", raw.display()), e))?;
    let dst = PoolBackend::new(file, size);
    let here = WriterHere::take(store, &name, secret).await?;
    let moved = copy_through(here, &dst, Direction::Export, out).await;
    let moved = moved.map_err(|stop| {
        let what = format!(
            "image '{name}': the export stopped after {} of {size} bytes",
            stop.at.done
        );
        stop.error(what, &format!("{} was not written", a.file.display()))
    })?;
    drop(dst);
    if a.format == Format::Qcow2 {
        if !out.json {
            eprintln!("converting to qcow2 with qemu-img");
        }
        qemu_img(&[
            "convert".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            raw.as_os_str(),
            dest.path().as_os_str(),
        ])
        .await?;
    }
    let persisted = if a.force {
        dest.persist(&a.file)
    } else {
        dest.persist_noclobber(&a.file)
    };
    persisted.map_err(|e| {
        CliError::Refused(format!(
            "cannot put the export in place as {}: {}",
            a.file.display(),
            e.error
        ))
    })?;
    let summary = Summary::of(Direction::Export, &rec, a.file, a.format, moved, started);
    out.emit(&summary, || summary.print());
    Ok(())
}

/// The cluster secret the transfer needs to take the lease here.
fn secret(arg: &SecretArg, name: &ImageName, d: Direction) -> CliResult<ClusterSecret> {
    let Some(path) = &arg.cluster_secret_file else {
        return Err(CliError::NotAvailable(format!(
            "image '{name}': an {} goes through the image's writer, which locus becomes itself \
             for the duration: pass --cluster-secret-file FILE (or LOCUS_CLUSTER_SECRET_FILE), \
             the secret file the nodes' locusd are given",
            d.word()
        )));
    };
    read_secret(path)
}

/// Why an export is refused while `lease` is live: who serves the image,
/// through which LUNs, and how to stop it.
async fn served(s: &dyn MetadataStore, name: &ImageName, lease: &Lease) -> CliResult<String> {
    let luns: Vec<String> = ops::list_targets(s)
        .await?
        .into_iter()
        .flat_map(|t| {
            t.luns
                .iter()
                .filter(|(_, i)| *i == name)
                .map(|(l, _)| format!("`locus target lun remove {} {l}`", t.iqn))
                .collect::<Vec<_>>()
        })
        .collect();
    let stop = if luns.is_empty() {
        format!("stop locusd on {}", lease.holder)
    } else {
        luns.join(", ")
    };
    let left = lease.expires.0.saturating_sub(UnixMillis::now().0) as f64 / 1000.0;
    Ok(format!(
        "image '{name}' is being served: node {} holds its write lease (generation {}, valid \
         for {left:.1}s more unless renewed), and a VM may be writing it; an export read \
         meanwhile would be torn. Stop serving it first ({stop}; the node then flushes and \
         releases the lease), and export again",
        lease.holder, lease.generation
    ))
}

/// What a copy through the writer did.
struct Moved {
    copied: Copied,
    failed_copies: Vec<FailedCopy>,
}

/// A copy that did not complete, and how far it got.
struct Stop {
    at: Copied,
    cancelled: bool,
    reason: String,
}

impl Stop {
    /// The error to report: `what` happened, why, and `left` (what stays).
    fn error(self, what: String, left: &str) -> CliError {
        if self.cancelled {
            CliError::Cancelled(format!("{what}: cancelled. {left}"))
        } else {
            CliError::Failed(format!("{what}: {}. {left}", self.reason))
        }
    }
}

/// Copies between the writer and `file` (into the writer on import, out of
/// it on export) with progress and Ctrl-C, then closes the writer (flush,
/// release the lease).
async fn copy_through(
    here: WriterHere,
    file: &PoolBackend,
    d: Direction,
    out: Out,
) -> Result<Moved, Stop> {
    let bar = Progress::new(out, d.word());
    let started = Instant::now();
    let total = file.size();
    let last = Cell::new(Copied::default());
    let mut show = |c: &Copied| {
        last.set(*c);
        bar.show(c.done, total, "running", started.elapsed());
    };
    let w: &dyn BlockBackend = here.writer();
    let (src, dst) = match d {
        Direction::Import => (file as &dyn BlockBackend, w),
        Direction::Export => (w, file as &dyn BlockBackend),
    };
    // Err(None): cancelled with Ctrl-C.
    let copied = tokio::select! {
        r = copy_sparse(src, dst, &mut show) => r.map_err(|e| Some(chain(&e))),
        _ = tokio::signal::ctrl_c() => Err(None),
    };
    let failed_copies = here
        .writer()
        .problems()
        .into_iter()
        .map(|p| FailedCopy {
            node: p.node,
            reason: p.reason,
        })
        .collect();
    let closed = here.close().await.map_err(|e| chain(&e));
    bar.finish();
    match (copied, closed) {
        (Ok(copied), Ok(())) => Ok(Moved {
            copied,
            failed_copies,
        }),
        (Err(reason), _) => Err(Stop {
            at: last.get(),
            cancelled: reason.is_none(),
            reason: reason.unwrap_or_default(),
        }),
        (Ok(c), Err(reason)) => Err(Stop {
            at: c,
            cancelled: false,
            reason: format!("closing the writer failed: {reason}"),
        }),
    }
}

/// The size of the image `file` makes: a raw file's length, a qcow2 file's
/// virtual size. Reads no data.
async fn source_size(file: &Path, format: Format) -> CliResult<u64> {
    let meta = std::fs::metadata(file)
        .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    if !meta.is_file() {
        return Err(CliError::Invalid(format!(
            "{} is not a regular file (import reads regular files)",
            file.display()
        )));
    }
    if format == Format::Raw {
        return Ok(meta.len());
    }
    let info = qemu_img(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        file.as_os_str(),
    ])
    .await
    .map_err(|e| {
        CliError::Invalid(format!(
            "{} is not a qcow2 image qemu-img can read: {e}",
            file.display()
        ))
    })?;
    serde_json::from_str::<serde_json::Value>(&info)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .ok_or_else(|| {
            CliError::Failed(format!(
                "qemu-img info gave no virtual size for {}: {info}",
                file.display()
            ))
        })
}

/// `path` (raw, `size` bytes) as a read-only file backend: its holes are
/// found with SEEK_DATA/SEEK_HOLE.
fn open_source(path: &Path, size: u64) -> CliResult<PoolBackend> {
    let f = File::open(path)
        .map_err(|e| CliError::Invalid(format!("cannot open {}: {e}", path.display())))?;
    let len = f
        .metadata()
        .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", path.display())))?
        .len();
    if len != size {
        return Err(CliError::Failed(format!(
            "{} is {len} bytes, not the {size} bytes expected (did it change meanwhile?); \
             nothing was created",
            path.display()
        )));
    }
    Ok(PoolBackend::new(f, size))
}

/// A temporary directory for a raw intermediate file ($TMPDIR).
fn scratch_dir() -> CliResult<tempfile::TempDir> {
    tempfile::tempdir()
        .map_err(|e| CliError::Invalid(format!("cannot make a temporary directory: {e}")))
}

/// Runs `qemu-img ARGS`; its stdout, or its stderr as the error.
async fn qemu_img(args: &[&OsStr]) -> CliResult<String> {
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot run qemu-img (it comes with qemu-utils): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(CliError::Failed(format!(
            "`qemu-img {shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
