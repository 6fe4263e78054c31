//! Exit codes and the CLI's error type. Exit codes are a stable interface
//! for scripts; they are listed in `locus --help`.

use blockmap::ErrorKind;

/// Success.
pub const OK: u8 = 0;
/// Bad usage or invalid input (sizes, names, ranges).
pub const USAGE: u8 = 1;
/// The image, node or target does not exist.
pub const NOT_FOUND: u8 = 2;
/// Refused or conflicting: already exists, in use, or it would drop the last
/// in-sync copy of a block.
pub const REFUSED: u8 = 3;
/// The metadata store is unreachable, busy or rejected the credentials.
pub const UNAVAILABLE: u8 = 4;
/// The metadata store is corrupt.
pub const CORRUPT: u8 = 5;
/// Nobody can run the job: no node holds the image's lease and no cluster
/// secret was given to take it here.
pub const NOT_AVAILABLE: u8 = 6;
/// The sync or verify job ran and failed, or verify found copies that
/// differ (details in the output), or an import or export failed midway.
pub const FAILED: u8 = 7;
/// Cancelled with Ctrl-C (what landed stays; running again resumes).
pub const CANCELLED: u8 = 130;

/// Text for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  bad usage or invalid input (size, name, range, option)
  2  not found (image, node, target or location)
  3  refused or conflict (already exists, in use, last in-sync copy)
  4  metadata store unavailable (down, busy, wrong password)
  5  metadata store corrupt
  6  not available: no node holds the image's lease to run a sync or verify,
     and no --cluster-secret-file was given to take it here (import and
     export always need it)
  7  the sync or verify job failed, or verify found copies that differ,
     or an import or export failed midway (qemu-img, a write, a read)
130  cancelled with Ctrl-C (a sync: what landed stays in sync, run again to
     resume; an import: the image stays with what landed)

The store is chosen with --metadata URL or LOCUS_METADATA:
  redis://[:password@]host:port/db   a shared Redis server
  DIR or embedded://DIR              the embedded store DIR/metadata.redb (default ./locus-data)";

/// A CLI failure.
#[derive(Debug)]
pub enum CliError {
    /// From the model or the store.
    Store(blockmap::Error),
    /// Nobody can do it now (no lease holder and no cluster secret).
    NotAvailable(String),
    /// A job ran and failed, or verify found differing copies.
    Failed(String),
    /// Cancelled by the operator.
    Cancelled(String),
    /// A node or the store did not answer in time.
    Unavailable(String),
    /// Bad input found by the CLI itself (an unreadable file).
    Invalid(String),
    /// Refused by the CLI itself (for example a move from a holder that
    /// does not answer, without --force).
    Refused(String),
}

impl From<blockmap::Error> for CliError {
    fn from(e: blockmap::Error) -> Self {
        CliError::Store(e)
    }
}

impl CliError {
    /// The exit code for this error.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Store(e) => match e.kind() {
                ErrorKind::Invalid => USAGE,
                ErrorKind::NotFound => NOT_FOUND,
                ErrorKind::Conflict | ErrorKind::Refused => REFUSED,
                ErrorKind::Unavailable => UNAVAILABLE,
                ErrorKind::Corrupt => CORRUPT,
            },
            CliError::NotAvailable(_) => NOT_AVAILABLE,
            CliError::Refused(_) => REFUSED,
            CliError::Failed(_) => FAILED,
            CliError::Cancelled(_) => CANCELLED,
            CliError::Unavailable(_) => UNAVAILABLE,
            CliError::Invalid(_) => USAGE,
        }
    }

    /// Stable kind name for `--json`.
    pub fn kind(&self) -> String {
        match self {
            CliError::Store(e) => serde_json::to_value(e.kind())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            CliError::NotAvailable(_) => "not_available".into(),
            CliError::Refused(_) => "refused".into(),
            CliError::Failed(_) => "failed".into(),
            CliError::Cancelled(_) => "cancelled".into(),
            CliError::Unavailable(_) => "unavailable".into(),
            CliError::Invalid(_) => "invalid".into(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Store(e) => e.fmt(f),
            CliError::NotAvailable(s)
            | CliError::Refused(s)
            | CliError::Failed(s)
            | CliError::Cancelled(s)
            | CliError::Unavailable(s)
            | CliError::Invalid(s) => f.write_str(s),
        }
    }
}

/// Result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// An error and its sources, joined with ": " (for messages that name the
/// root cause, such as "no space left on device").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
