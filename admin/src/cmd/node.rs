//! `locus node …`: the node registry.

use crate::exit::CliResult;
use crate::output::{Out, Table};
use crate::parse;
use blockmap::node::Node;
use blockmap::ops;
use blockmap::store::MetadataStore;
use blockmap::types::{ByteSize, NodeId};
use clap::Subcommand;

/// Node commands.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Register a node.
    Add {
        /// Node id.
        id: String,
        /// Replication address, HOST:PORT.
        #[arg(long)]
        address: String,
        /// Site or zone label.
        #[arg(long)]
        site: Option<String>,
        /// Storage capacity, e.g. 4T.
        #[arg(long)]
        capacity: Option<String>,
    },
    /// Unregister a node (refused while it holds or serves images).
    Remove {
        /// Node id.
        id: String,
    },
    /// List nodes.
    List,
}

/// Runs a node command.
pub async fn run(s: &dyn MetadataStore, out: Out, cmd: NodeCmd) -> CliResult {
    match cmd {
        NodeCmd::Add {
            id,
            address,
            site,
            capacity,
        } => {
            let capacity = match capacity {
                Some(c) => c.parse::<ByteSize>()?,
                None => ByteSize(0),
            };
            let node = Node::new(parse(&id)?, &address, site, capacity)?;
            ops::add_node(s, node.clone()).await?;
            out.emit(&node, || {
                println!("added node {} at {}", node.id, node.address)
            });
        }
        NodeCmd::Remove { id } => {
            let id: NodeId = parse(&id)?;
            ops::remove_node(s, &id).await?;
            out.emit(&serde_json::json!({"removed": id}), || {
                println!("removed node {id}")
            });
        }
        NodeCmd::List => {
            let nodes = ops::list_nodes(s).await?;
            out.emit(&nodes, || {
                let mut t = Table::new(&[
                    "ID",
                    "ADDRESS",
                    "SITE",
                    "CAPACITY",
                    "STATE",
                    "LAST HEARTBEAT",
                ]);
                for n in &nodes {
                    t.row(vec![
                        n.id.to_string(),
                        n.address.clone(),
                        n.site.clone().unwrap_or_else(|| "-".into()),
                        n.capacity.to_string(),
                        n.state.to_string(),
                        n.last_heartbeat.map_or("never".into(), |t| t.0.to_string()),
                    ]);
                }
                t.print("no nodes");
            });
        }
    }
    Ok(())
}
