//! `locus location …`: add or remove an image's locations.

use crate::exit::CliResult;
use crate::output::Out;
use crate::{bounds, parse};
use blockmap::ops;
use blockmap::store::MetadataStore;
use blockmap::types::{ImageName, NodeId};
use clap::Subcommand;

/// Location commands. Block numbers are inclusive; both default to the whole image.
#[derive(Debug, Subcommand)]
pub enum LocationCmd {
    /// Add NODE as a location of IMAGE; the new copies start out of sync.
    Add {
        /// Image name.
        image: String,
        /// Node id.
        node: String,
        /// First block (inclusive).
        #[arg(long)]
        start: Option<u64>,
        /// Last block (inclusive).
        #[arg(long)]
        end: Option<u64>,
    },
    /// Remove NODE as a location of IMAGE; refused if a block would lose its last in-sync copy.
    Remove {
        /// Image name.
        image: String,
        /// Node id.
        node: String,
        /// First block (inclusive).
        #[arg(long)]
        start: Option<u64>,
        /// Last block (inclusive).
        #[arg(long)]
        end: Option<u64>,
    },
}

/// Runs a location command.
pub async fn run(s: &dyn MetadataStore, out: Out, cmd: LocationCmd) -> CliResult {
    let (add, image, node, start, end) = match cmd {
        LocationCmd::Add {
            image,
            node,
            start,
            end,
        } => (true, image, node, start, end),
        LocationCmd::Remove {
            image,
            node,
            start,
            end,
        } => (false, image, node, start, end),
    };
    let image: ImageName = parse(&image)?;
    let node: NodeId = parse(&node)?;
    let (st, en) = bounds(start, end);
    let (rec, range) = if add {
        ops::add_location(s, &image, &node, st, en).await?
    } else {
        ops::remove_location(s, &image, &node, st, en).await?
    };
    let verb = if add { "added" } else { "removed" };
    out.emit(
        &serde_json::json!({"image": image, "node": node, "action": verb, "blocks": range, "version": rec.version}),
        || {
            println!("{verb} location {node} of image {image} for blocks {range}");
            if add {
                println!("the new copies are out-of-sync until they are synchronised");
            }
        },
    );
    Ok(())
}
