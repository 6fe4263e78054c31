//! `locusd`, the Locus target daemon. Parses arguments, sets up logging and
//! signals, and calls [`iscsi_target::daemon::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use iscsi_target::daemon::config::{Config, Role};
use tokio::net::TcpListener;

/// Locus iSCSI target daemon.
///
/// With no arguments it serves the target iqn.2026-11.io.locus:default, whose
/// LUN 0 is a 1 GiB thin image in ./locus-data, on 127.0.0.1:3260. A TOML file
/// (--config) declares more targets, LUNs, ACLs and CHAP; see the README.
/// Stop it with SIGTERM or Ctrl-C: initiators are asked to log out, running
/// commands finish, and every LUN is flushed.
///
/// In a cluster (--metadata redis://... --node ID), it also serves this
/// node's copies of images to peers on its replication address when given
/// --cluster-secret-file; --role storage runs that alone.
#[derive(Parser, Debug)]
#[command(name = "locusd", version)]
struct Args {
    /// Address to listen on (repeat for more portals). Overrides the config.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Directory for images and state. Overrides the config.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Storage engine: auto (io_uring when the kernel allows it), uring or pool.
    #[arg(long, value_name = "ENGINE")]
    engine: Option<String>,
    /// Also serve the targets of this metadata store: redis://[:password@]host:port/db,
    /// or a directory for the embedded store. Default: config targets only.
    #[arg(long, value_name = "URL", env = "LOCUS_METADATA")]
    metadata: Option<String>,
    /// This node's id in the node registry (default: the host name).
    #[arg(long, value_name = "ID")]
    node: Option<String>,
    /// Roles to run: `both` (the iSCSI portal, and the storage role when a
    /// store and a cluster secret are given) or `storage` (serve copies to
    /// peers only, no portal).
    #[arg(long, value_name = "ROLE")]
    role: Option<iscsi_target::daemon::config::Role>,
    /// Where the storage role listens for peers (default: the --address
    /// this node was registered with, `locus node add ID --address ...`).
    #[arg(long, value_name = "ADDR")]
    replication_listen: Option<SocketAddr>,
    /// File with the cluster secret that replication peers must prove
    /// (HMAC-SHA-256, both ways); at least 16 bytes.
    #[arg(long, value_name = "FILE", env = "LOCUS_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(e) = args.engine {
        cfg.engine = e;
    }
    if args.metadata.is_some() {
        cfg.metadata = args.metadata;
    }
    if args.node.is_some() {
        cfg.node = args.node;
    }
    if let Some(r) = args.role {
        cfg.role = r;
    }
    if args.replication_listen.is_some() {
        cfg.replication_listen = args.replication_listen;
    }
    if args.cluster_secret_file.is_some() {
        cfg.cluster_secret_file = args.cluster_secret_file;
    }
    cfg.apply_env(|k| std::env::var(k).ok());
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(cfg))
}

/// Keeps large I/O buffers (up to 64 MiB) on the heap instead of a fresh
/// mmap each time: glibc's default threshold (128 KiB) would map and unmap
/// every 1 MiB read buffer, paying page faults and zeroing per command. The
/// benchmark gives tgtd the same setting (BENCHMARKING.md).
fn tune_malloc() {
    // SAFETY: mallopt only adjusts allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

async fn serve(cfg: Config) -> Result<()> {
    let mut listeners = Vec::new();
    let portals = match cfg.role {
        Role::Both => cfg.listen.clone(),
        Role::Storage => Vec::new(),
    };
    for addr in &portals {
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is another target running there?)")
        })?;
        listeners.push(l);
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        let _ = tx.send(true);
    });
    iscsi_target::daemon::run(cfg, listeners, rx).await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
