//! `locus image …`: create, destroy, list, info, sync.

use crate::exit::{CliError, CliResult};
use crate::output::{list, Out, Table};
use crate::{bounds, parse};
use blockmap::image::{ImageSpec, LogicalBlockSize, DEFAULT_BLOCK_SIZE, DEFAULT_GRANULARITY};
use blockmap::ops;
use blockmap::record::ImageRecord;
use blockmap::store::MetadataStore;
use blockmap::types::{ByteSize, ImageName, NodeId};
use clap::Subcommand;
use serde::Serialize;

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
    },
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
    /// Resynchronise out-of-sync locations (not available yet).
    Sync {
        /// Image name.
        image: String,
        /// First block (inclusive).
        #[arg(long)]
        start: Option<u64>,
        /// Last block (inclusive).
        #[arg(long)]
        end: Option<u64>,
    },
}

fn size(what: &'static str, s: &str) -> CliResult<ByteSize> {
    s.parse::<ByteSize>().map_err(|e| match e {
        blockmap::Error::Invalid { why, .. } => blockmap::Error::Invalid { what, why }.into(),
        other => other.into(),
    })
}

/// Runs an image command.
pub async fn run(s: &dyn MetadataStore, out: Out, cmd: ImageCmd) -> CliResult {
    match cmd {
        ImageCmd::Create {
            name,
            size: sz,
            block_size,
            logical_block_size,
            granularity,
            location,
            hypervisor,
        } => {
            let spec = ImageSpec {
                name: parse(&name)?,
                size: size("size", &sz)?,
                block_size: size("block size", &block_size)?,
                logical_block_size: LogicalBlockSize::try_from(logical_block_size)?,
                granularity: size("granularity", &granularity)?,
                locations: location
                    .iter()
                    .map(|l| parse::<NodeId>(l))
                    .collect::<CliResult<_>>()?,
                hypervisors: hypervisor
                    .iter()
                    .map(|l| parse::<NodeId>(l))
                    .collect::<CliResult<_>>()?,
            };
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
        ImageCmd::Sync { image, start, end } => {
            let rec = s.load_image(&parse(&image)?).await?;
            let (st, en) = bounds(start, end);
            let range = rec.image.block_range(st, en)?;
            return Err(CliError::NotAvailable(format!(
                "image sync is not available yet: the resync engine has not landed. \
                 Nothing was changed for blocks {range} of '{}'. Out-of-sync locations \
                 stay out of sync; see `locus image info {}`",
                rec.image.name, rec.image.name
            )));
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
