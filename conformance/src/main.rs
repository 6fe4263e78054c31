//! `locus-conformance`: runs the external conformance suites against a fresh
//! target. Thin: parses arguments and calls the library's suites.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use conformance::report::SuiteResult;
use conformance::target::TargetKind;
use conformance::{kernel, libiscsi, qemu, workspace_root};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Runs libiscsi, kernel-initiator and QEMU suites against a fresh iSCSI target")]
struct Cli {
    /// The locusd binary to test [default: target/release/locusd].
    #[arg(long, env = "LOCUSD", global = true)]
    locusd: Option<PathBuf>,
    /// Which target program to test: locusd, or tgtd as a reference.
    #[arg(long, value_enum, default_value_t = Kind::Locusd, global = true)]
    target: Kind,
    /// Where raw outputs and per-test results are kept [default: target/conformance].
    #[arg(long, global = true)]
    log_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Locusd,
    Tgtd,
}

#[derive(clap::Args, Debug, Clone)]
struct LibiscsiArgs {
    /// Expectations file [default: conformance/expectations/libiscsi.toml,
    /// or libiscsi-tgtd.toml with --target tgtd].
    #[arg(long)]
    expectations: Option<PathBuf>,
    /// Write this run's outcomes into the expectations file.
    #[arg(long)]
    bless: bool,
    /// Time limit for iscsi-test-cu, in seconds.
    #[arg(long, default_value_t = 1200)]
    libiscsi_timeout: u64,
}

#[derive(clap::Args, Debug, Clone)]
struct KernelArgs {
    /// kernel-initiator.sh [default: ../shared/e2e/kernel-initiator.sh from the workspace root].
    #[arg(long, env = "KERNEL_INITIATOR")]
    script: Option<PathBuf>,
    /// Modes to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "plain,chap,digest")]
    modes: Vec<ModeArg>,
    /// Guest time limit per mode, in seconds (the script's --timeout).
    #[arg(long, default_value_t = 1200)]
    kernel_timeout: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ModeArg {
    Plain,
    Chap,
    Digest,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// iscsi-test-cu -d -t ALL, compared with the expectations file.
    Libiscsi(LibiscsiArgs),
    /// kernel-initiator.sh: plain, CHAP and digest modes.
    Kernel(KernelArgs),
    /// qemu-img / qemu-io round trips through iscsi:// URLs.
    Qemu,
    /// All three suites.
    All {
        #[command(flatten)]
        libiscsi: LibiscsiArgs,
        #[command(flatten)]
        kernel: KernelArgs,
    },
}

fn libiscsi_opts(cli: &Cli, a: &LibiscsiArgs) -> libiscsi::Options {
    let root = workspace_root();
    let file = match cli.target {
        Kind::Locusd => "libiscsi.toml",
        Kind::Tgtd => "libiscsi-tgtd.toml",
    };
    libiscsi::Options {
        expectations: a
            .expectations
            .clone()
            .unwrap_or_else(|| root.join("conformance/expectations").join(file)),
        bless: a.bless,
        log_dir: cli
            .log_dir
            .clone()
            .unwrap_or_else(|| root.join("target/conformance")),
        timeout: Duration::from_secs(a.libiscsi_timeout),
    }
}

fn kernel_opts(a: &KernelArgs) -> kernel::Options {
    kernel::Options {
        script: a
            .script
            .clone()
            .unwrap_or_else(|| workspace_root().join("../shared/e2e/kernel-initiator.sh")),
        modes: a
            .modes
            .iter()
            .map(|m| match m {
                ModeArg::Plain => kernel::Mode::Plain,
                ModeArg::Chap => kernel::Mode::Chap,
                ModeArg::Digest => kernel::Mode::Digest,
            })
            .collect(),
        timeout: Duration::from_secs(a.kernel_timeout),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("FAIL conformance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let cli = Cli::parse();
    let kind = match cli.target {
        Kind::Tgtd => TargetKind::Tgtd,
        Kind::Locusd => TargetKind::Locusd(
            cli.locusd
                .clone()
                .unwrap_or_else(|| workspace_root().join("target/release/locusd")),
        ),
    };
    let mut results: Vec<SuiteResult> = Vec::new();
    match &cli.command {
        Cmd::Libiscsi(a) => results.push(libiscsi::run(&kind, &libiscsi_opts(&cli, a))?),
        Cmd::Kernel(a) => results.push(kernel::run(&kind, &kernel_opts(a))),
        Cmd::Qemu => results.push(qemu::run(&kind)),
        Cmd::All {
            libiscsi: l,
            kernel: k,
        } => {
            results.push(libiscsi::run(&kind, &libiscsi_opts(&cli, l))?);
            results.push(qemu::run(&kind));
            results.push(kernel::run(&kind, &kernel_opts(k)));
        }
    }
    println!();
    for r in &results {
        println!("{}", r.line());
    }
    let ok = results.iter().all(|r| r.ok);
    println!(
        "conformance ({}): {}",
        kind.name(),
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(ok)
}
