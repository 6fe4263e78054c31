//! `locus image …`: create, destroy, list, info, move, set; sync and verify
//! (in [`super::sync`]); import and export (in [`super::transfer`]).

use super::lease_here::SecretArg;
use super::sync::{self, JobArgs};
use super::transfer::{self, ExportArgs, ImportArgs};
use crate::exit::{CliError, CliResult};
use crate::output::{list, Out, Table};
use crate::{bounds, parse};
use blockmap::image::{ImageSpec, LogicalBlockSize, DEFAULT_BLOCK_SIZE, DEFAULT_GRANULARITY};
use blockmap::ops;
use blockmap::record::ImageRecord;
use blockmap::store::MetadataStore;
use blockmap::sync::JobKind;
use blockmap::types::{ByteSize, ImageName, NodeId};
use clap::Subcommand;
use serde::Serialize;
use std::sync::Arc;

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Create an image; its initial locations start in sync.
    Create {
        /// Image name.
        name: String,
        /// Size, e.g. 8G, 512M, 4096 (a multiple of the logical block size).
        #[arg(long)]
        size: String,
        /// Geometry, locations and hypervisors.
        #[command(flatten)]
        new: NewImage,
    },
    /// Create an image from a raw or qcow2 file, and write the file into
    /// every location.
    ///
    /// The image gets the file's size (a qcow2 file's virtual size), which
    /// must be a multiple of the logical block size; an existing image name
    /// or a file of another size is refused before anything is created.
    ///
    /// The data goes through the image's writer, as a VM's writes do: locus
    /// takes the image's write lease itself (as node locus-cli, with
    /// --cluster-secret-file), and every location accepts every write before
    /// the next one goes out. A new image has no target, so nobody else
    /// holds its lease.
    ///
    /// Holes stay holes: only the file's data extents are read (SEEK_DATA
    /// and SEEK_HOLE), in pieces of at most 4 MiB, and 64 KiB chunks of
    /// zeros in them are not written. A new image is a hole on every
    /// location, so a sparse file stays sparse on every copy.
    ///
    /// qcow2 (--format qcow2) is first converted with
    /// `qemu-img convert -f qcow2 -O raw` (qemu-utils) into a sparse raw
    /// file in a temporary directory ($TMPDIR), removed afterwards.
    ///
    /// If a write fails midway the import stops and says so; the image
    /// stays, with what landed, and `locus image destroy NAME` removes it.
    #[command(verbatim_doc_comment)]
    Import(ImportArgs),
    /// Write an image out to a raw or qcow2 file.
    ///
    /// locus takes the image's write lease itself (as node locus-cli, with
    /// --cluster-secret-file) for the duration, so that nothing writes the
    /// image while it is read, and reads every block from an in-sync copy.
    /// While a node holds the lease (a target serves the image) the export
    /// is refused: reading a disk that a VM is writing would give a torn
    /// copy. Stop serving it first (`locus target lun remove`).
    ///
    /// Holes stay holes: FILE is created sparse at the image's size, and
    /// 64 KiB chunks of zeros are not written into it. FILE is written
    /// under a temporary name next to it and renamed when complete; an
    /// existing FILE is refused unless --force.
    ///
    /// qcow2 (--format qcow2): the image is exported into a sparse raw file
    /// in a temporary directory ($TMPDIR), then converted with
    /// `qemu-img convert -f raw -O qcow2` (qemu-utils).
    #[command(verbatim_doc_comment)]
    Export(ExportArgs),
    /// Destroy an image (refused while a target serves it, unless --force).
    Destroy {
        /// Image name.
        name: String,
        /// Also remove the image's LUNs from the targets serving it.
        #[arg(long)]
        force: bool,
    },
    /// List images.
    List,
    /// Describe an image, with its placement summarised as block ranges.
    Info {
        /// Image name.
        name: String,
    },
    /// Move the serving target: hand the image's write lease to another node.
    ///
    /// The current holder stops serving the LUN, flushes every copy and
    /// releases the lease; NODE takes it, reconciles the copies and serves.
    /// Initiators then log in again at NODE's portal. Returns once NODE
    /// serves. Without --force a holder that does not answer (stale
    /// heartbeat) is refused; with --force, NODE takes the lease once the
    /// old holder's lease has expired (its TTL, 10 s by default), and the
    /// old holder can no longer acknowledge anything (it is fenced).
    #[command(verbatim_doc_comment)]
    Move {
        /// Image name.
        name: String,
        /// The node that serves the image from now on.
        #[arg(long)]
        to: String,
        /// Take the lease from a holder that does not answer, after its TTL.
        #[arg(long)]
        force: bool,
        /// How long to wait for NODE to serve, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Copy the out-of-sync ranges of an image's copies from an in-sync copy.
    ///
    /// Only the dirty ranges (by the out-of-sync bitmap) are copied; holes on
    /// the source are punched, not written. The image's lease holder does the
    /// copying, ordered against its own writes, while the VM keeps running;
    /// this command asks it and follows the progress until done. When no
    /// node holds the lease, locus takes it for the duration (needs
    /// --cluster-secret-file). Ctrl-C cancels: what landed stays in sync, and
    /// running the command again resumes where it stopped.
    ///
    /// Without --rate, foreground I/O keeps priority only through the
    /// batch size; give --rate to bound the copy.
    #[command(verbatim_doc_comment)]
    Sync {
        /// Which image, blocks and location.
        #[command(flatten)]
        on: JobOn,
        /// Copy at most this many MB (10^6 bytes) per second.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Compare the in-sync copies by checksums; mark the ones that differ.
    ///
    /// Every range is checksummed on every in-sync copy (no data crosses the
    /// network). Where the copies disagree, the majority is kept and the
    /// others are marked out-of-sync for that range, so reads leave them and
    /// `locus image sync` repairs them. Exits 7 when a mismatch was found.
    #[command(verbatim_doc_comment)]
    Verify {
        /// Which image, blocks and location.
        #[command(flatten)]
        on: JobOn,
    },
    /// Change an image's settings.
    Set {
        /// Image name.
        image: String,
        /// Background resync: when a location with out-of-sync copies is up,
        /// its lease holder resyncs it at 64 MiB/s (default on).
        #[arg(long, value_parser = ["on", "off"])]
        auto_sync: Option<String>,
    },
}

/// What a new image is made of besides its name and size (`image create`,
/// `image import`).
#[derive(Debug, clap::Args)]
pub struct NewImage {
    /// Block size, a power of two.
    #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE.to_string())]
    block_size: String,
    /// Logical block size: 512 or 4096.
    #[arg(long, default_value_t = 512)]
    logical_block_size: u32,
    /// Out-of-sync tracking granularity, a power of two from 4K to the block size.
    #[arg(long, default_value_t = DEFAULT_GRANULARITY.to_string())]
    granularity: String,
    /// Nodes holding the image, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    location: Vec<String>,
    /// Nodes allowed to serve the image as target (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    hypervisor: Vec<String>,
}

impl NewImage {
    /// The logical block size asked for.
    pub fn logical_block_size(&self) -> CliResult<LogicalBlockSize> {
        Ok(LogicalBlockSize::try_from(self.logical_block_size)?)
    }

    /// The spec of image `name` of `bytes` bytes, its arguments parsed (not
    /// yet checked against each other: [`ops::create_image`] does).
    pub fn spec(&self, name: ImageName, bytes: ByteSize) -> CliResult<ImageSpec> {
        let nodes = |v: &[String]| {
            v.iter()
                .map(|l| parse::<NodeId>(l))
                .collect::<CliResult<_>>()
        };
        Ok(ImageSpec {
            name,
            size: bytes,
            block_size: size("block size", &self.block_size)?,
            logical_block_size: self.logical_block_size()?,
            granularity: size("granularity", &self.granularity)?,
            locations: nodes(&self.location)?,
            hypervisors: nodes(&self.hypervisor)?,
        })
    }
}

/// What a sync or verify works on.
#[derive(Debug, clap::Args)]
pub struct JobOn {
    /// Image name.
    image: String,
    /// First block (inclusive).
    #[arg(long)]
    start: Option<u64>,
    /// Last block (inclusive).
    #[arg(long)]
    end: Option<u64>,
    /// Only this location (sync: copy into it; verify: compare it with
    /// the others).
    #[arg(long)]
    location: Option<String>,
    /// To take the lease when no node holds it.
    #[command(flatten)]
    secret: SecretArg,
}

fn size(what: &'static str, s: &str) -> CliResult<ByteSize> {
    s.parse::<ByteSize>().map_err(|e| match e {
        blockmap::Error::Invalid { why, .. } => blockmap::Error::Invalid { what, why }.into(),
        other => other.into(),
    })
}

/// The job arguments common to sync and verify, checked against the image.
async fn job_args(s: &dyn MetadataStore, kind: JobKind, on: JobOn) -> CliResult<JobArgs> {
    let name: ImageName = parse(&on.image)?;
    let rec = s.load_image(&name).await?;
    let (st, en) = bounds(on.start, on.end);
    Ok(JobArgs {
        kind,
        image: name,
        blocks: rec.image.block_range(st, en)?,
        location: on.location.map(|l| parse::<NodeId>(&l)).transpose()?,
        rate_mb: None,
        secret_file: on.secret.cluster_secret_file,
    })
}

/// Runs an image command.
pub async fn run(store: &Arc<dyn MetadataStore>, out: Out, cmd: ImageCmd) -> CliResult {
    let s = &**store;
    match cmd {
        ImageCmd::Create {
            name,
            size: sz,
            new,
        } => {
            let spec = new.spec(parse(&name)?, size("size", &sz)?)?;
            let rec = ops::create_image(s, &spec).await?;
            let info = Info::of(&rec);
            out.emit(&info, || {
                println!(
                    "created image {} ({}, {} blocks of {}) on {}",
                    rec.image.name,
                    rec.image.size,
                    rec.image.block_count(),
                    rec.image.block_size,
                    list(&spec.locations)
                )
            });
        }
        ImageCmd::Destroy { name, force } => {
            let name: ImageName = parse(&name)?;
            ops::destroy_image(s, &name, force).await?;
            out.emit(&serde_json::json!({"destroyed": name}), || {
                println!("destroyed image {name}")
            });
        }
        ImageCmd::List => {
            let images = s.list_images().await?;
            out.emit(&images, || {
                let mut t = Table::new(&[
                    "NAME",
                    "SIZE",
                    "BLOCK",
                    "BLOCKS",
                    "LBS",
                    "GEN",
                    "HYPERVISORS",
                ]);
                for i in &images {
                    t.row(vec![
                        i.name.to_string(),
                        i.size.to_string(),
                        i.block_size.to_string(),
                        i.block_count().to_string(),
                        i.logical_block_size.bytes().to_string(),
                        i.generation.to_string(),
                        list(&i.hypervisors),
                    ]);
                }
                t.print("no images");
            });
        }
        ImageCmd::Info { name } => {
            let rec = s.load_image(&parse(&name)?).await?;
            let mut info = Info::of(&rec);
            info.lease = s.get_lease(&rec.image.name).await?;
            out.emit(&info, || info.print());
        }
        ImageCmd::Move {
            name,
            to,
            force,
            timeout,
        } => {
            let name: ImageName = parse(&name)?;
            let to: NodeId = parse(&to)?;
            let moved = move_image(s, &name, &to, force, timeout).await?;
            out.emit(&moved, || {
                let was = moved.previous.as_ref().map_or("free".to_string(), |l| {
                    format!("{} at generation {}", l.holder, l.generation)
                });
                println!(
                    "image {name} is served by {to} at generation {} (the lease was {was}); \
                     initiators log in at {to}'s portal",
                    moved.generation
                )
            });
        }
        ImageCmd::Import(args) => return transfer::import(store, out, args).await,
        ImageCmd::Export(args) => return transfer::export(store, out, args).await,
        ImageCmd::Sync { on, rate } => {
            let args = JobArgs {
                rate_mb: rate,
                ..job_args(s, JobKind::Sync, on).await?
            };
            return sync::run(store, out, args).await;
        }
        ImageCmd::Verify { on } => {
            let args = job_args(s, JobKind::Verify, on).await?;
            return sync::run(store, out, args).await;
        }
        ImageCmd::Set { image, auto_sync } => {
            let name: ImageName = parse(&image)?;
            let Some(a) = auto_sync else {
                return Err(CliError::Invalid(
                    "nothing to set: give --auto-sync on|off".into(),
                ));
            };
            let rec = ops::set_auto_sync(s, &name, a == "on").await?;
            out.emit(
                &serde_json::json!({"image": name, "auto_sync": rec.image.auto_sync}),
                || println!("image {name}: background resync {a}"),
            );
        }
    }
    Ok(())
}

/// What `locus image move` did.
#[derive(Debug, Serialize)]
pub struct Moved {
    /// The image.
    pub image: ImageName,
    /// The new holder.
    pub holder: NodeId,
    /// Its lease generation (the fencing token).
    pub generation: u64,
    /// The lease before the move, if any.
    pub previous: Option<blockmap::writer::Lease>,
    /// How long the handover took, in milliseconds.
    pub waited_ms: u64,
}

/// Records the move and waits until `to` serves at a new generation.
async fn move_image(
    s: &dyn MetadataStore,
    name: &ImageName,
    to: &NodeId,
    force: bool,
    timeout: u64,
) -> CliResult<Moved> {
    let started = std::time::Instant::now();
    s.load_image(name).await?;
    ops::get_node(s, to).await?;
    let previous = s.get_lease(name).await?;
    let now = blockmap::types::UnixMillis::now();
    if let Some(l) = previous
        .as_ref()
        .filter(|l| l.holder != *to && l.expires > now)
    {
        let holder = ops::get_node(s, &l.holder).await;
        let answers = holder.as_ref().is_ok_and(|n| {
            n.live_state(blockmap::types::UnixTime::now()) == blockmap::node::NodeState::Up
        });
        if !answers && !force {
            return Err(CliError::Refused(format!(
                "image '{name}': its lease holder {} does not answer (no recent heartbeat), so it \
                 cannot hand the lease over; `locus image move {name} --to {to} --force` takes the \
                 lease once it expires (in {:.1}s) and fences the old holder",
                l.holder,
                (l.expires.0 - now.0) as f64 / 1000.0
            )));
        }
    }
    let before = s.load_image(name).await?.image.writer;
    ops::set_writer(s, name, Some(to)).await?;
    // Already served by `to` (a repeated move): done once it reports so.
    let floor = match &previous {
        Some(l) if l.holder == *to => l.generation.saturating_sub(1),
        Some(l) => l.generation,
        None => 0,
    };
    let deadline = started + std::time::Duration::from_secs(timeout);
    // Without --force the old holder must let go by itself, within a
    // fraction of its TTL; one that keeps the lease does not answer.
    let handover = started + HANDOVER_WAIT;
    loop {
        let lease = s.get_lease(name).await?;
        if let Some(l) = lease
            .as_ref()
            .filter(|l| l.holder == *to && l.generation > floor)
        {
            let st = ops::image_stats(s, name).await?;
            if st.reported_by.as_ref() == Some(to) && st.generation == Some(l.generation) {
                return Ok(Moved {
                    image: name.clone(),
                    holder: to.clone(),
                    generation: l.generation,
                    previous,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
        let old_holds = |l: &blockmap::writer::Lease| {
            previous.as_ref().is_some_and(|p| {
                p.holder != *to && p.holder == l.holder && p.generation == l.generation
            }) && l.expires > blockmap::types::UnixMillis::now()
        };
        if !force && std::time::Instant::now() >= handover && lease.as_ref().is_some_and(old_holds)
        {
            ops::set_writer(s, name, before.as_ref()).await?;
            let holder = lease.map(|l| l.holder.to_string()).unwrap_or_default();
            return Err(CliError::Refused(format!(
                "image '{name}': its lease holder {holder} did not hand the lease over within \
                 {}s; nothing was moved. If {holder} is stuck or cut off, `locus image move \
                 {name} --to {to} --force` takes the lease once it expires and fences {holder}",
                HANDOVER_WAIT.as_secs()
            )));
        }
        if std::time::Instant::now() >= deadline {
            return Err(CliError::Refused(format!(
                "image '{name}': node {to} does not serve it after {timeout}s (the move stays \
                 recorded: {to} takes over when it can). Is locusd running on {to} with the \
                 cluster secret? See its log and `locus errors`"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How long a holder that answers takes at most to drain, flush and
/// release the lease on a move.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `image info` output.
#[derive(Debug, Serialize)]
pub struct Info {
    /// Header.
    pub image: blockmap::image::Image,
    /// Block count.
    pub blocks: u64,
    /// Store version.
    pub version: u64,
    /// Placement runs.
    pub placement: Vec<blockmap::record::RunSummary>,
    /// The write lease as stored (`holder`, `generation`, `expires` in Unix
    /// milliseconds), possibly expired; `null` when no writer took it yet.
    pub lease: Option<blockmap::writer::Lease>,
}

impl Info {
    fn of(rec: &ImageRecord) -> Self {
        Self {
            image: rec.image.clone(),
            blocks: rec.image.block_count(),
            version: rec.version,
            placement: rec.summary(),
            lease: None,
        }
    }

    fn print(&self) {
        let i = &self.image;
        println!("image        {}", i.name);
        println!(
            "size         {} ({} bytes, {} logical blocks of {})",
            i.size,
            i.size.bytes(),
            i.size.bytes() / i.logical_block_size.bytes(),
            i.logical_block_size.bytes()
        );
        println!("block size   {} ({} blocks)", i.block_size, self.blocks);
        println!("granularity  {}", i.granularity);
        println!("generation   {}", i.generation);
        println!("hypervisors  {}", list(&i.hypervisors));
        println!(
            "auto sync    {}",
            if i.auto_sync {
                "on"
            } else {
                "off (locus image set --auto-sync)"
            }
        );
        if let Some(w) = &i.writer {
            println!("moved to     {w} (only it serves the image)");
        }
        println!("lease        {}", lease_line(self.lease.as_ref()));
        println!("version      {}", self.version);
        println!();
        let mut t = Table::new(&["BLOCKS", "COUNT", "LOCATIONS"]);
        for r in &self.placement {
            let locs = r
                .locations
                .iter()
                .map(|l| {
                    if l.dirty_bits > 0 {
                        format!("{}:{}({} dirty)", l.node, l.state, l.dirty_bits)
                    } else {
                        format!("{}:{}", l.node, l.state)
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            t.row(vec![r.blocks.to_string(), r.blocks.len().to_string(), locs]);
        }
        t.print("no placement");
    }
}

/// "held by N, generation G, expires in 7.2s", "expired ...", or "free".
fn lease_line(lease: Option<&blockmap::writer::Lease>) -> String {
    let Some(l) = lease else {
        return "free (no writer has taken it)".into();
    };
    let now = blockmap::types::UnixMillis::now().0;
    let when = if l.expires.0 > now {
        format!("expires in {:.1}s", (l.expires.0 - now) as f64 / 1000.0)
    } else {
        format!("expired {:.1}s ago", (now - l.expires.0) as f64 / 1000.0)
    };
    format!("held by {}, generation {}, {when}", l.holder, l.generation)
}
