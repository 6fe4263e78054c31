//! `locus-conformance`: runs the external conformance suites against a fresh
//! target. Thin: parses arguments and calls the library's suites.
//!
//! `all` with the default `--target locusd` runs, each against its own fresh
//! target: libiscsi, qemu and the kernel modes on locusd's local LUN, then
//! libiscsi on a 2-way mirrored LUN (same expectations file) and the plain
//! kernel mode on a 3-way mirrored LUN (`--no-mirrored` leaves those out).

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use conformance::report::SuiteResult;
use conformance::target::TargetKind;
use conformance::{default_locusd, kernel, libiscsi, qemu, workspace_root};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    about = "Runs libiscsi, kernel-initiator and QEMU suites against a fresh iSCSI target",
    after_help = "Targets (--target):\n  \
        locusd     one locusd, its default target iqn.2026-11.io.locus:default, LUN 0 (local 1 GiB image)\n  \
        tgtd       Debian's tgtd as a reference, LUN 1\n  \
        mirrored2  redis-server + locusd n1, n2; iqn.2026-11.io.locus:mirrored LUN 0 = image lun0\n             \
        on n1,n2, served by n1 (its only hypervisor); after the suite the copies must be in sync\n             \
        and identical. Needs the `locus` binary next to locusd.\n  \
        mirrored3  the same with n1, n2, n3\n\n\
        `all` with --target locusd also runs libiscsi on mirrored2 and the plain kernel mode on\n\
        mirrored3 (unless --no-mirrored)."
)]
struct Cli {
    /// The locusd binary to test [default: locusd next to this program].
    #[arg(long, env = "LOCUSD", global = true)]
    locusd: Option<PathBuf>,
    /// Which target to test: locusd, tgtd (reference), or a mirrored LUN on
    /// 2 or 3 locusd nodes with Redis (mirrored2, mirrored3).
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
    /// One locusd, its local default LUN.
    Locusd,
    /// Debian's tgtd, as a reference.
    Tgtd,
    /// A LUN mirrored on 2 locusd nodes (Redis metadata store).
    Mirrored2,
    /// A LUN mirrored on 3 locusd nodes (Redis metadata store).
    Mirrored3,
}

#[derive(clap::Args, Debug, Clone)]
struct LibiscsiArgs {
    /// Expectations file [default: conformance/expectations/libiscsi.toml
    /// (also for the mirrored targets), or libiscsi-tgtd.toml with --target
    /// tgtd].
    #[arg(long)]
    expectations: Option<PathBuf>,
    /// Write this run's outcomes into the expectations file (refused on a
    /// mirrored target, which must meet the local LUN's file).
    #[arg(long)]
    bless: bool,
    /// Time limit for iscsi-test-cu, in seconds.
    #[arg(long, default_value_t = 1200)]
    libiscsi_timeout: u64,
}

#[derive(clap::Args, Debug, Clone)]
struct KernelArgs {
    /// kernel-initiator.sh [default: conformance/kernel-initiator/kernel-initiator.sh].
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
    /// Mirrored targets of 3+ nodes: the LUN moves to the last node between
    /// the guest's sessions.
    Migrate,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// iscsi-test-cu -d -S -t ALL (two portals), compared with the expectations file.
    Libiscsi(LibiscsiArgs),
    /// kernel-initiator.sh: plain, CHAP and digest modes.
    Kernel(KernelArgs),
    /// qemu-img / qemu-io round trips through iscsi:// URLs.
    Qemu,
    /// All three suites; with --target locusd, also libiscsi on a 2-way and
    /// the plain kernel mode on a 3-way mirrored LUN.
    All {
        #[command(flatten)]
        libiscsi: LibiscsiArgs,
        #[command(flatten)]
        kernel: KernelArgs,
        /// Leave out the mirrored-LUN runs.
        #[arg(long)]
        no_mirrored: bool,
    },
}

fn libiscsi_opts(cli: &Cli, a: &LibiscsiArgs) -> libiscsi::Options {
    let root = workspace_root();
    let file = match cli.target {
        Kind::Tgtd => "libiscsi-tgtd.toml",
        Kind::Locusd | Kind::Mirrored2 | Kind::Mirrored3 => "libiscsi.toml",
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
        script: a.script.clone().unwrap_or_else(|| {
            workspace_root().join("conformance/kernel-initiator/kernel-initiator.sh")
        }),
        modes: a
            .modes
            .iter()
            .map(|m| match m {
                ModeArg::Plain => kernel::Mode::Plain,
                ModeArg::Chap => kernel::Mode::Chap,
                ModeArg::Digest => kernel::Mode::Digest,
                ModeArg::Migrate => kernel::Mode::Migrate,
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
    let locusd = cli.locusd.clone().unwrap_or_else(default_locusd);
    let mirrored = |copies| TargetKind::Mirrored {
        locusd: locusd.clone(),
        copies,
    };
    let kind = match cli.target {
        Kind::Tgtd => TargetKind::Tgtd,
        Kind::Locusd => TargetKind::Locusd(locusd.clone()),
        Kind::Mirrored2 => mirrored(2),
        Kind::Mirrored3 => mirrored(3),
    };
    let mut results: Vec<SuiteResult> = Vec::new();
    let mut targets = vec![kind.name()];
    match &cli.command {
        Cmd::Libiscsi(a) => results.push(libiscsi::run(&kind, &libiscsi_opts(&cli, a))?),
        Cmd::Kernel(a) => results.push(kernel::run(&kind, &kernel_opts(a))),
        Cmd::Qemu => results.push(qemu::run(&kind)),
        Cmd::All {
            libiscsi: l,
            kernel: k,
            no_mirrored,
        } => {
            let lopts = libiscsi_opts(&cli, l);
            results.push(libiscsi::run(&kind, &lopts)?);
            results.push(qemu::run(&kind));
            results.push(kernel::run(&kind, &kernel_opts(k)));
            if cli.target == Kind::Locusd && !no_mirrored {
                // Issue 7: the 2-way mirrored LUN meets the local LUN's
                // expectations; the kernel initiator passes on a 3-way one.
                results.push(libiscsi::run(&mirrored(2), &lopts)?);
                // Issue 8: and a disk moved to another node between the
                // guest's sessions.
                let plain = kernel::Options {
                    modes: vec![kernel::Mode::Plain, kernel::Mode::Migrate],
                    ..kernel_opts(k)
                };
                results.push(kernel::run(&mirrored(3), &plain));
                targets.extend([mirrored(2).name(), mirrored(3).name()]);
            }
        }
    }
    println!();
    for r in &results {
        println!("{}", r.verdict_line());
        println!("{}", r.line());
    }
    let ok = results.iter().all(|r| r.ok);
    println!(
        "conformance ({}): {}",
        targets.join(", "),
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(ok)
}
