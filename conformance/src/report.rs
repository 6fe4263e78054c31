//! Uniform PASS/FAIL lines and per-suite summaries.
//!
//! Every suite prints `PASS <suite> <check>` or `FAIL <suite> <check>: why`
//! per check, then one line `<suite>: N passed, N failed, N skipped` that
//! `scripts/test.sh` sums. Owns only that format.

use crate::cunit::Summary;

/// The result of one suite run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteResult {
    /// Suite name: `libiscsi`, `kernel`, `qemu`.
    pub suite: &'static str,
    /// Counted checks.
    pub summary: Summary,
    /// False when the suite must fail the run (a regression, a failed check,
    /// an incomplete run).
    pub ok: bool,
}

impl SuiteResult {
    /// The summary line `scripts/test.sh` parses.
    pub fn line(&self) -> String {
        format!("{}: {}", self.suite, self.summary)
    }
}

/// Counts checks as they pass or fail, printing one line for each.
#[derive(Debug)]
pub struct Checks {
    suite: &'static str,
    summary: Summary,
}

impl Checks {
    /// An empty tally for `suite`.
    pub fn new(suite: &'static str) -> Self {
        Self {
            suite,
            summary: Summary::default(),
        }
    }

    /// Records one check: prints `PASS suite name` or `FAIL suite name: why`.
    pub fn record(&mut self, name: &str, result: &anyhow::Result<String>) -> bool {
        match result {
            Ok(note) if note.is_empty() => println!("PASS {} {name}", self.suite),
            Ok(note) => println!("PASS {} {name} ({note})", self.suite),
            Err(e) => println!("FAIL {} {name}: {e:#}", self.suite),
        }
        if result.is_ok() {
            self.summary.passed += 1;
        } else {
            self.summary.failed += 1;
        }
        result.is_ok()
    }

    /// The suite result; ok when nothing failed and something ran.
    pub fn finish(self) -> SuiteResult {
        let ok = self.summary.failed == 0 && self.summary.passed > 0;
        SuiteResult {
            suite: self.suite,
            summary: self.summary,
            ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_formats() {
        let mut c = Checks::new("qemu");
        assert!(c.record("a", &Ok(String::new())));
        assert!(!c.record("b", &Err(anyhow::anyhow!("boom"))));
        let r = c.finish();
        assert!(!r.ok);
        assert_eq!(r.line(), "qemu: 1 passed, 1 failed, 0 skipped");
        assert!(
            !Checks::new("x").finish().ok,
            "a suite with no checks is not ok"
        );
    }
}
