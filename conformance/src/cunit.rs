//! Parser for the verbose CUnit output of libiscsi's `iscsi-test-cu`.
//!
//! Owns turning the text that `iscsi-test-cu -d -t ALL URL` prints into one
//! [`TestResult`] per test. It knows nothing about processes or targets: it
//! works on a `&str`, so the committed fixtures can test it.
//!
//! What the output looks like (CUnit 2.1 "basic" mode, libiscsi 1.19):
//!
//! ```text
//! Suite: CompareAndWrite
//!   Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
//! passed
//!   Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed ...
//! FAILED
//!     1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
//!   Test: LUNReset ...passed    [FAILED] PRIN command: ...   <- suite clean-up noise
//! Run Summary:    Type  Total    Ran Passed Failed Inactive
//!                tests    230    230    222      8        0
//! ```
//!
//! Rules, learnt from real output:
//! - CUnit prints the verdict `passed` / `FAILED` *without* a newline, so it
//!   either follows the `...` of the `Test:` line directly or starts a line.
//!   Text after the verdict (up to the next `Test:` / `Suite:`) is not the
//!   test's: it is the numbered assertion list for a failure, or output of the
//!   suite's clean-up function.
//! - libiscsi reports a skipped test to CUnit as passed; it prints
//!   `[SKIPPED]` first. Such a test is a [`Outcome::Skip`], never a pass.
//! - A `[FAILED]` line inside a test whose CUnit verdict is `passed` is a
//!   probe's log line (for example WRITE SAME UnmapVPD probing UNMAP support),
//!   not a failure; CUnit's verdict decides.
//! - A test with no verdict (the tool died during it) is a failure.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// The outcome of one libiscsi test, as Locus scores it: skips are counted
/// apart from passes, never as passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// CUnit verdict `FAILED`, or no verdict at all.
    Fail,
    /// CUnit verdict `passed`, but the test printed `[SKIPPED]`.
    Skip,
    /// CUnit verdict `passed` and no `[SKIPPED]`.
    Pass,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Skip => "skip",
            Outcome::Fail => "fail",
        })
    }
}

/// One test's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// CUnit suite name, e.g. `CompareAndWrite`.
    pub suite: String,
    /// Test name within the suite, e.g. `Simple`.
    pub name: String,
    /// Scored outcome.
    pub outcome: Outcome,
    /// Why it skipped or failed: the first `[SKIPPED]` / `[FAILED]` message
    /// and the CUnit assertion lines, joined with ` | `. Empty for a plain pass.
    pub detail: String,
}

impl TestResult {
    /// The test's identifier, `Suite.Test`, as used in the expectations file.
    pub fn id(&self) -> String {
        format!("{}.{}", self.suite, self.name)
    }
}

/// The numbers from CUnit's own `Run Summary` (row `tests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CunitTotals {
    /// Tests that ran.
    pub ran: u32,
    /// Tests CUnit counted as failed.
    pub failed: u32,
}

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed (skips excluded).
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that printed `[SKIPPED]`.
    pub skipped: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// A parsed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Every test, in output order.
    pub tests: Vec<TestResult>,
    /// CUnit's `Run Summary`, if the run got that far. `None` means the
    /// tool stopped early: the caller must treat the run as failed.
    pub totals: Option<CunitTotals>,
}

impl RunReport {
    /// Counts the outcomes.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for t in &self.tests {
            match t.outcome {
                Outcome::Pass => s.passed += 1,
                Outcome::Skip => s.skipped += 1,
                Outcome::Fail => s.failed += 1,
            }
        }
        s
    }

    /// Looks a test up by its `Suite.Test` id.
    pub fn get(&self, id: &str) -> Option<&TestResult> {
        self.tests.iter().find(|t| t.id() == id)
    }
}

/// Why the output could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A `Test:` line came before any `Suite:` line.
    #[error("line {line}: test {name:?} outside any suite")]
    TestOutsideSuite {
        /// 1-based line number.
        line: usize,
        /// The test's name.
        name: String,
    },
    /// The same `Suite.Test` appeared twice.
    #[error("test {0} appears twice")]
    DuplicateTest(String),
    /// The output contains no test at all.
    #[error("no test results found in the output")]
    NoTests,
    /// Our counts disagree with CUnit's own `Run Summary`.
    #[error("parsed {parsed_ran} tests with {parsed_failed} failures, but CUnit reports {cunit_ran} run, {cunit_failed} failed")]
    SummaryMismatch {
        /// Tests we parsed.
        parsed_ran: usize,
        /// CUnit `FAILED` verdicts we parsed.
        parsed_failed: usize,
        /// CUnit's count of tests run.
        cunit_ran: u32,
        /// CUnit's count of failures.
        cunit_failed: u32,
    },
}

/// Where the parser is within the current test.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Inside the test body, before its verdict.
    Body,
    /// After a `passed` verdict: following text is suite noise.
    AfterPass,
    /// After a `FAILED` verdict: following `N. file:line - cond` lines are its.
    AfterFail,
}

struct Current {
    result: TestResult,
    phase: Phase,
    skipped: bool,
    message: Option<String>,
    asserts: Vec<String>,
}

impl Current {
    fn finish(mut self) -> TestResult {
        if self.phase == Phase::Body {
            self.result.outcome = Outcome::Fail;
            self.asserts
                .push("no CUnit verdict: iscsi-test-cu stopped during this test".to_owned());
        } else if self.phase == Phase::AfterPass && self.skipped {
            self.result.outcome = Outcome::Skip;
        }
        let mut parts: Vec<String> = self.message.into_iter().collect();
        if self.result.outcome != Outcome::Pass {
            parts.extend(self.asserts);
        } else {
            parts.clear();
        }
        self.result.detail = parts.join(" | ");
        self.result
    }

    /// Feeds body text (before the verdict).
    fn body(&mut self, text: &str) {
        let marker = if text.contains("[SKIPPED]") {
            self.skipped = true;
            true
        } else {
            text.contains("[FAILED]")
        };
        if marker && self.message.is_none() {
            self.message = Some(text.trim().to_owned());
        }
    }
}

/// Splits `text` into a verdict and the rest, if it starts with one.
fn verdict(text: &str) -> Option<(Outcome, &str)> {
    for (word, outcome) in [("passed", Outcome::Pass), ("FAILED", Outcome::Fail)] {
        if let Some(rest) = text.strip_prefix(word) {
            if !rest.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                return Some((outcome, rest));
            }
        }
    }
    None
}

/// Parses the `tests` row of CUnit's Run Summary: `tests 230 230 222 8 0`.
fn totals_row(line: &str) -> Option<CunitTotals> {
    let mut words = line.split_whitespace();
    if words.next()? != "tests" {
        return None;
    }
    let nums: Vec<u32> = words.map(str::parse).collect::<Result<_, _>>().ok()?;
    match nums.as_slice() {
        [_total, ran, _passed, failed, ..] => Some(CunitTotals {
            ran: *ran,
            failed: *failed,
        }),
        _ => None,
    }
}

/// Parses the complete stdout of `iscsi-test-cu` in verbose mode.
///
/// Returns every test's outcome (see the module doc for the rules), and
/// CUnit's own totals when the output has them; the counts are then
/// cross-checked, so a parser bug cannot silently turn failures into passes.
pub fn parse(output: &str) -> Result<RunReport, ParseError> {
    let mut tests: Vec<TestResult> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut suite: Option<String> = None;
    let mut current: Option<Current> = None;
    let mut totals = None;
    let mut in_summary = false;

    let mut push = |c: Current, tests: &mut Vec<TestResult>| -> Result<(), ParseError> {
        let r = c.finish();
        if !seen.insert(r.id()) {
            return Err(ParseError::DuplicateTest(r.id()));
        }
        tests.push(r);
        Ok(())
    };

    for (idx, raw) in output.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if in_summary {
            if let Some(t) = totals_row(line) {
                totals = Some(t);
            }
            continue;
        }
        if let Some(name) = line.strip_prefix("Suite: ") {
            if let Some(c) = current.take() {
                push(c, &mut tests)?;
            }
            suite = Some(name.trim().to_owned());
            continue;
        }
        if line.starts_with("Run Summary:") {
            if let Some(c) = current.take() {
                push(c, &mut tests)?;
            }
            in_summary = true;
            continue;
        }
        if let Some(after) = line.strip_prefix("  Test: ") {
            if let Some(c) = current.take() {
                push(c, &mut tests)?;
            }
            let (name, rest) = after.split_once(" ...").unwrap_or((after, ""));
            let Some(suite) = suite.clone() else {
                return Err(ParseError::TestOutsideSuite {
                    line: idx + 1,
                    name: name.to_owned(),
                });
            };
            let mut c = Current {
                result: TestResult {
                    suite,
                    name: name.trim().to_owned(),
                    outcome: Outcome::Pass,
                    detail: String::new(),
                },
                phase: Phase::Body,
                skipped: false,
                message: None,
                asserts: Vec::new(),
            };
            feed(&mut c, rest);
            current = Some(c);
            continue;
        }
        if let Some(c) = current.as_mut() {
            feed(c, line);
        }
    }
    if let Some(c) = current.take() {
        push(c, &mut tests)?;
    }
    if tests.is_empty() {
        return Err(ParseError::NoTests);
    }
    if let Some(t) = totals {
        let parsed_failed = tests.iter().filter(|r| r.outcome == Outcome::Fail).count();
        if tests.len() != t.ran as usize || parsed_failed != t.failed as usize {
            return Err(ParseError::SummaryMismatch {
                parsed_ran: tests.len(),
                parsed_failed,
                cunit_ran: t.ran,
                cunit_failed: t.failed,
            });
        }
    }
    Ok(RunReport { tests, totals })
}

/// Feeds one line (or the tail of a `Test:` line) to the current test.
fn feed(c: &mut Current, text: &str) {
    match c.phase {
        Phase::Body => match verdict(text) {
            Some((outcome, _noise)) => {
                c.result.outcome = outcome;
                c.phase = if outcome == Outcome::Fail {
                    Phase::AfterFail
                } else {
                    Phase::AfterPass
                };
            }
            None => c.body(text),
        },
        Phase::AfterFail => {
            let t = text.trim_start();
            let numbered = t
                .split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if numbered {
                c.asserts.push(t.to_owned());
            }
        }
        Phase::AfterPass => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_a_word_boundary() {
        assert_eq!(verdict("passed"), Some((Outcome::Pass, "")));
        assert_eq!(verdict("FAILED  x"), Some((Outcome::Fail, "  x")));
        assert_eq!(verdict("passedX"), None);
        assert_eq!(verdict("    [FAILED] x"), None);
    }

    #[test]
    fn totals_row_reads_ran_and_failed() {
        assert_eq!(
            totals_row("               tests    230    230    222      8        0"),
            Some(CunitTotals {
                ran: 230,
                failed: 8
            })
        );
        assert_eq!(
            totals_row("              suites     51     51    n/a      0"),
            None
        );
    }

    #[test]
    fn test_without_verdict_fails() {
        let out = "Suite: S\n  Test: A ...passed\n  Test: B ...    doing things\n";
        let r = parse(out).expect("parses");
        assert_eq!(r.tests[0].outcome, Outcome::Pass);
        assert_eq!(r.tests[1].outcome, Outcome::Fail);
        assert!(r.tests[1].detail.contains("no CUnit verdict"));
        assert_eq!(r.totals, None);
    }

    #[test]
    fn skipped_then_failed_is_a_failure() {
        let out = "Suite: S\n  Test: A ...    [SKIPPED] meh\nFAILED\n    1. f.c:1  - x\n";
        let r = parse(out).expect("parses");
        assert_eq!(r.tests[0].outcome, Outcome::Fail);
        assert_eq!(r.tests[0].detail, "[SKIPPED] meh | 1. f.c:1  - x");
    }

    #[test]
    fn errors() {
        assert_eq!(parse("nothing here\n"), Err(ParseError::NoTests));
        assert!(matches!(
            parse("  Test: A ...passed\n"),
            Err(ParseError::TestOutsideSuite { line: 1, .. })
        ));
        assert_eq!(
            parse("Suite: S\n  Test: A ...passed\n  Test: A ...passed\n"),
            Err(ParseError::DuplicateTest("S.A".into()))
        );
        let mismatch = "Suite: S\n  Test: A ...passed\nRun Summary:    Type  Total    Ran Passed Failed Inactive\n               tests      2      2      2      0        0\n";
        assert!(matches!(
            parse(mismatch),
            Err(ParseError::SummaryMismatch { parsed_ran: 1, .. })
        ));
    }
}
