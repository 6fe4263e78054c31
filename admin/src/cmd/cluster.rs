//! `locus cluster status`, `locus errors` and `locus stats`.

use crate::exit::CliResult;
use crate::output::{list, Out, Table};
use crate::parse;
use blockmap::ops;
use blockmap::store::MetadataStore;
use clap::Subcommand;

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every node: state, used and free storage, images it stores and serves.
    ///
    /// STATE comes from liveness: a node is up only while its locusd
    /// refreshes its heartbeat (every 5 s); one silent for more than 15 s,
    /// or that never ran, shows as down. A warning goes to stderr when the
    /// store does not persist every change before it answers (Redis needs
    /// --appendonly yes --appendfsync always).
    Status,
}

/// Runs a cluster command.
pub async fn run(s: &dyn MetadataStore, out: Out, cmd: ClusterCmd) -> CliResult {
    match cmd {
        ClusterCmd::Status => {
            let rows = ops::cluster_status(s).await?;
            let d = s.durability().await?;
            if !d.durable {
                eprintln!(
                    "warning: {} does not persist every change before answering ({}): \
                     out-of-sync marks can be lost in a crash; run redis-server with \
                     --appendonly yes --appendfsync always",
                    s.describe(),
                    d.detail
                );
            }
            out.emit(&rows, || {
                let mut t = Table::new(&[
                    "NODE", "STATE", "SITE", "ADDRESS", "CAPACITY", "USED", "FREE", "STORES",
                    "SERVES",
                ]);
                for r in &rows {
                    t.row(vec![
                        r.node.id.to_string(),
                        r.state.to_string(),
                        r.node.site.clone().unwrap_or_else(|| "-".into()),
                        r.node.address.clone(),
                        r.node.capacity.human(),
                        r.used.human(),
                        r.free.human(),
                        list(&r.stores),
                        list(&r.serves),
                    ]);
                }
                t.print("no nodes");
            });
        }
    }
    Ok(())
}

/// `locus errors`.
pub async fn errors(s: &dyn MetadataStore, out: Out) -> CliResult {
    let rows = ops::errors(s).await?;
    out.emit(&rows, || {
        let mut t = Table::new(&["WHAT", "NODE", "IMAGE", "SINCE", "REASON"]);
        for r in &rows {
            t.row(vec![
                r.what.clone(),
                r.node.to_string(),
                r.image.as_ref().map_or("-".into(), |i| i.to_string()),
                r.since.map_or("-".into(), |t| t.0.to_string()),
                r.reason.clone(),
            ]);
        }
        t.print("no errors");
    });
    Ok(())
}

/// `locus stats IMAGE`.
pub async fn stats(s: &dyn MetadataStore, out: Out, image: &str) -> CliResult {
    let st = ops::image_stats(s, &parse(image)?).await?;
    out.emit(&st, || {
        let avg = |total: u64, n: u64| {
            total
                .checked_div(n)
                .map_or("-".to_string(), |a| format!("{a} us"))
        };
        let mut t = Table::new(&["OP", "COUNT", "BYTES", "AVG LATENCY"]);
        t.row(vec![
            "read".into(),
            st.reads.to_string(),
            st.bytes_read.to_string(),
            avg(st.read_latency_us_total, st.reads),
        ]);
        t.row(vec![
            "write".into(),
            st.writes.to_string(),
            st.bytes_written.to_string(),
            avg(st.write_latency_us_total, st.writes),
        ]);
        t.print("");
        if !st.locations.is_empty() {
            println!();
            let mut t = Table::new(&[
                "LOCATION",
                "READS",
                "READ BYTES",
                "WRITES",
                "WRITE BYTES",
                "FLUSHES",
                "ERRORS",
                "AVG LATENCY",
            ]);
            for (node, l) in &st.locations {
                let ops = l.reads + l.writes + l.flushes + l.errors;
                t.row(vec![
                    node.to_string(),
                    l.reads.to_string(),
                    l.read_bytes.to_string(),
                    l.writes.to_string(),
                    l.write_bytes.to_string(),
                    l.flushes.to_string(),
                    l.errors.to_string(),
                    avg(l.latency_us_sum, ops),
                ]);
            }
            t.print("");
        }
        if let (Some(by), Some(at)) = (&st.reported_by, st.updated) {
            println!(
                "\nreported by {by} at {} (every few seconds while it serves)",
                at.0
            );
        }
    });
    Ok(())
}
