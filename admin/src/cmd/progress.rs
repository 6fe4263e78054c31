//! Progress of a long command (`image sync`, `verify`, `import`, `export`):
//! a bar on a terminal, otherwise one plain line every few seconds.
//!
//! Everything goes to stderr, so that `--json` output on stdout stays clean;
//! with `--json` and no terminal nothing is printed. Knows nothing of what
//! is being copied: it is told bytes done of a total.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::output::Out;

/// How often the plain line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// A progress display for one command. Callable through a shared
/// reference (a job's progress callback).
pub struct Progress {
    verb: &'static str,
    bar: Option<indicatif::ProgressBar>,
    last_line: Mutex<Option<Instant>>,
    quiet: bool,
}

impl Progress {
    /// A display whose lines start with `verb` ("sync", "import", ...).
    pub fn new(out: Out, verb: &'static str) -> Self {
        let tty = std::io::stderr().is_terminal() && !out.json;
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{verb} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style.progress_chars("=> "));
            b
        });
        Progress {
            verb,
            bar,
            last_line: Mutex::new(None),
            quiet: out.json,
        }
    }

    /// Shows `done` of `total` bytes, `state` ("running", "queued") and
    /// how long it has run. The plain line is printed at most every few
    /// seconds; the first call prints one.
    pub fn show(&self, done: u64, total: u64, state: &str, elapsed: Duration) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            return;
        }
        if self.quiet {
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < LINE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        eprintln!(
            "{} {state}: {done} of {total} bytes ({pct:.0}%) after {:.1}s",
            self.verb,
            elapsed.as_secs_f64()
        );
    }

    /// Clears the bar (the summary follows).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
