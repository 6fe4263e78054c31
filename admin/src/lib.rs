//! The `locus` admin CLI: argument parsing ([`Cli`]), dispatch to one module
//! per command group ([`cmd`]), output and exit codes. All logic lives in
//! `blockmap`; this crate only parses, calls and prints.

pub mod cmd;
pub mod exit;
pub mod output;

use clap::{Parser, Subcommand};
use exit::{CliError, CliResult, EXIT_CODES_HELP};
use output::Out;
use std::process::ExitCode;

/// Manage Locus images, placement, nodes and iSCSI targets.
#[derive(Debug, Parser)]
#[command(name = "locus", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Metadata store: redis://[:password@]host:port/db, or a directory for the embedded store.
    #[arg(long, global = true, env = "LOCUS_METADATA", default_value = blockmap::store::DEFAULT_DATA_DIR)]
    pub metadata: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, destroy, list, describe and sync images.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Image(cmd::image::ImageCmd),
    /// Add or remove locations (copies) of an image's blocks.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Location(cmd::location::LocationCmd),
    /// Register, remove and list nodes.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Node(cmd::node::NodeCmd),
    /// Cluster-wide views.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Cluster(cmd::cluster::ClusterCmd),
    /// Nodes and locations in error, with reason and since when.
    #[command(after_help = EXIT_CODES_HELP)]
    Errors,
    /// I/O statistics of an image.
    #[command(after_help = EXIT_CODES_HELP)]
    Stats {
        /// The image.
        image: String,
    },
    /// Define iSCSI targets, their LUNs, ACLs and CHAP.
    ///
    /// A new target has an empty ACL, and an empty ACL lets every initiator
    /// log in; once `locus target acl add` lists an initiator, only the
    /// listed initiators may. CHAP, when set, applies either way.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Target(cmd::target::TargetCmd),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> CliResult {
    let out = Out { json: cli.json };
    let store = blockmap::store::open(&cli.metadata).await?;
    let s = &*store;
    match cli.command {
        Command::Image(c) => cmd::image::run(&store, out, c).await,
        Command::Location(c) => cmd::location::run(s, out, c).await,
        Command::Node(c) => cmd::node::run(s, out, c).await,
        Command::Cluster(c) => cmd::cluster::run(s, out, c).await,
        Command::Errors => cmd::cluster::errors(s, out).await,
        Command::Stats { image } => cmd::cluster::stats(s, out, &image).await,
        Command::Target(c) => cmd::target::run(s, out, c).await,
    }
}

/// Parses `args`, runs, prints errors and returns the exit code.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            report(&e, json);
            ExitCode::from(e.code())
        }
    }
}

fn report(e: &CliError, json: bool) {
    if json {
        let v = serde_json::json!({"error": {"kind": e.kind(), "code": e.code(), "message": e.to_string()}});
        eprintln!("{v}");
    } else {
        eprintln!("error: {e}");
    }
}

/// Parses a name-like argument into a blockmap newtype.
pub(crate) fn parse<T: std::str::FromStr<Err = blockmap::Error>>(s: &str) -> CliResult<T> {
    Ok(s.parse::<T>()?)
}

/// Converts CLI `--start`/`--end` (both inclusive block numbers) to the
/// half-open bounds blockmap takes.
pub(crate) fn bounds(start: Option<u64>, end: Option<u64>) -> (Option<u64>, Option<u64>) {
    (start, end.map(|e| e.saturating_add(1)))
}
