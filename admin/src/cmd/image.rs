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
