//! Uniform PASS/FAIL lines and per-suite summaries.
//!
//! Every suite prints `PASS <suite> <check>` or `FAIL <suite> <check>: why`
//! per check, then one line `<suite>: N passed, N failed, N skipped` that
//! `scripts/test.sh` sums. Owns only that format.
//!
//! On a mirrored target the per-check lines carry the target's tag
//! (`PASS kernel@mirrored3 plain ...`, `FAIL libiscsi@mirrored2 ...`); the
//! summary line keeps the bare suite name, so `scripts/test.sh` counts it,
//! and [`SuiteResult::verdict_line`] before it says which target it was.

use crate::cunit::Summary;
use crate::target::TargetKind;

/// The result of one suite run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteResult {
    /// Suite name: `libiscsi`, `kernel`, `qemu`.
    pub suite: &'static str,
    /// What it ran against ([`TargetKind::describe`]).
    pub target: String,
    /// Counted checks.
    pub summary: Summary,
    /// False when the suite must fail the run (a regression, a failed check,
    /// an incomplete run).
    pub ok: bool,
}

impl SuiteResult {
    /// An empty, failing result of `suite` against `kind`.
    pub fn new(suite: &'static str, kind: &TargetKind) -> Self {
        Self {
            suite,
            target: kind.describe(),
            summary: Summary::default(),
            ok: false,
        }
    }

    /// The summary line `scripts/test.sh` parses.
    pub fn line(&self) -> String {
        format!("{}: {}", self.suite, self.summary)
    }

    /// `<suite> against <target>: PASS|FAIL`, printed before [`Self::line`].
    pub fn verdict_line(&self) -> String {
        format!(
            "{} against {}: {}",
            self.suite,
            self.target,
            if self.ok { "PASS" } else { "FAIL" }
        )
    }
}

/// Counts checks as they pass or fail, printing one line for each.
#[derive(Debug)]
pub struct Checks {
    suite: &'static str,
    /// `suite` and the target's tag, as the per-check lines show it.
    prefix: String,
    target: String,
    summary: Summary,
}

impl Checks {
    /// An empty tally for `suite` run against `kind`.
    pub fn new(suite: &'static str, kind: &TargetKind) -> Self {
        Self {
            suite,
            prefix: format!("{suite}{}", kind.tag()),
            target: kind.describe(),
            summary: Summary::default(),
        }
    }

    /// Records one check: prints `PASS suite name` or `FAIL suite name: why`.
    pub fn record(&mut self, name: &str, result: &anyhow::Result<String>) -> bool {
        match result {
            Ok(note) if note.is_empty() => println!("PASS {} {name}", self.prefix),
            Ok(note) => println!("PASS {} {name} ({note})", self.prefix),
            Err(e) => println!("FAIL {} {name}: {e:#}", self.prefix),
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
            target: self.target,
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
        let mut c = Checks::new("qemu", &TargetKind::Tgtd);
        assert_eq!(c.prefix, "qemu");
        assert!(c.record("a", &Ok(String::new())));
        assert!(!c.record("b", &Err(anyhow::anyhow!("boom"))));
        let r = c.finish();
        assert!(!r.ok);
        assert_eq!(r.line(), "qemu: 1 passed, 1 failed, 0 skipped");
        assert_eq!(r.verdict_line(), "qemu against tgtd (reference): FAIL");
        assert!(
            !Checks::new("x", &TargetKind::Tgtd).finish().ok,
            "a suite with no checks is not ok"
        );
    }

    #[test]
    fn mirrored_lines_are_tagged_but_summaries_are_not() {
        let kind = TargetKind::Mirrored {
            locusd: "locusd".into(),
            copies: 3,
        };
        let mut c = Checks::new("kernel", &kind);
        assert_eq!(c.prefix, "kernel@mirrored3");
        c.record("plain", &Ok(String::new()));
        let r = c.finish();
        assert!(r.ok);
        // The line scripts/test.sh sums.
        assert_eq!(r.line(), "kernel: 1 passed, 0 failed, 0 skipped");
        assert_eq!(
            r.verdict_line(),
            "kernel against locusd (3-way mirrored LUN, 3 nodes + Redis): PASS"
        );
    }
}
