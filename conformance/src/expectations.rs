//! The committed expectations for the libiscsi suite, and the comparison of a
//! run against them.
//!
//! Owns the file format (`conformance/expectations/libiscsi.toml`: a
//! `[tests]` table mapping `"Suite.Test"` to `"pass"`, `"skip"` or `"fail"`)
//! and the regression rules. It knows nothing about how the run was made.
//!
//! Outcomes are ranked `fail < skip < pass`. A run is compared test by test:
//!
//! | expected | actual        | verdict                                |
//! |----------|---------------|----------------------------------------|
//! | X        | worse than X  | regression (the run fails)             |
//! | X        | better than X | improvement (reported; `--bless` it)   |
//! | absent   | fail          | regression: an unaccounted failure     |
//! | absent   | pass / skip   | new test (reported; `--bless` it)      |
//! | pass     | absent        | regression: the test no longer runs    |
//! | skip/fail| absent        | missing (reported)                     |

use crate::cunit::{Outcome, RunReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Errors reading or writing an expectations file.
#[derive(Debug, thiserror::Error)]
pub enum ExpectationsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid expectations TOML.
    #[error("{path}: {source}")]
    Syntax {
        /// The file.
        path: String,
        /// The TOML error.
        #[source]
        source: toml::de::Error,
    },
    /// Serialising failed (cannot happen for string keys, kept typed anyway).
    #[error("serialising expectations: {0}")]
    Serialise(#[from] toml::ser::Error),
}

/// Expected outcome per `Suite.Test` id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectations {
    /// `"Suite.Test" = "pass" | "skip" | "fail"`.
    #[serde(default)]
    pub tests: BTreeMap<String, Outcome>,
}

impl Expectations {
    /// Parses expectations TOML.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ExpectationsError> {
        toml::from_str(text).map_err(|source| ExpectationsError::Syntax {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a file; a missing file is an empty set of expectations (every
    /// test is then new, and every failure a regression).
    pub fn load(path: &Path) -> Result<Self, ExpectationsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ExpectationsError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The expectations a run would bless: exactly its outcomes.
    pub fn from_report(report: &RunReport) -> Self {
        Self {
            tests: report.tests.iter().map(|t| (t.id(), t.outcome)).collect(),
        }
    }

    /// Renders the file, with a header saying where it came from.
    pub fn to_toml(&self, origin: &str, regenerate: &str) -> Result<String, ExpectationsError> {
        let count = |o| self.tests.values().filter(|&&v| v == o).count();
        let header = format!(
            "# Expected outcome of each libiscsi iscsi-test-cu test (-d -S -t ALL, two portals; libiscsi::EXTRA_TESTS again alone).\n\
             # Blessed from: {origin}\n\
             # {} pass, {} skip, {} fail. Regenerate with:\n\
             #   {regenerate}\n\
             # A test doing worse than listed here fails the suite.\n\n",
            count(Outcome::Pass),
            count(Outcome::Skip),
            count(Outcome::Fail),
        );
        Ok(header + &toml::to_string(self)?)
    }

    /// Writes the file (see [`Expectations::to_toml`]).
    pub fn save(
        &self,
        path: &Path,
        origin: &str,
        regenerate: &str,
    ) -> Result<(), ExpectationsError> {
        let text = self.to_toml(origin, regenerate)?;
        let io = |source| ExpectationsError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, text).map_err(io)
    }

    /// Compares a run with these expectations (rules in the module doc).
    pub fn compare(&self, report: &RunReport) -> Comparison {
        let mut cmp = Comparison::default();
        let mut actual = BTreeMap::new();
        for t in &report.tests {
            actual.insert(t.id(), t.outcome);
        }
        for (id, &a) in &actual {
            let delta = Delta {
                id: id.clone(),
                expected: self.tests.get(id).copied(),
                actual: Some(a),
            };
            match delta.expected {
                Some(e) if a < e => cmp.regressions.push(delta),
                Some(e) if a > e => cmp.improvements.push(delta),
                Some(_) => {}
                None if a == Outcome::Fail => cmp.regressions.push(delta),
                None => cmp.new_tests.push(delta),
            }
        }
        for (id, &e) in &self.tests {
            if actual.contains_key(id) {
                continue;
            }
            let delta = Delta {
                id: id.clone(),
                expected: Some(e),
                actual: None,
            };
            if e == Outcome::Pass {
                cmp.regressions.push(delta);
            } else {
                cmp.missing.push(delta);
            }
        }
        cmp
    }
}

/// One test whose outcome differs from the expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// `Suite.Test`.
    pub id: String,
    /// What the file says, if it lists the test.
    pub expected: Option<Outcome>,
    /// What the run did, if the test ran.
    pub actual: Option<Outcome>,
}

impl fmt::Display for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |o: Option<Outcome>, none: &'static str| match o {
            Some(o) => o.to_string(),
            None => none.to_owned(),
        };
        write!(
            f,
            "{}: expected {}, got {}",
            self.id,
            show(self.expected, "nothing (not in the file)"),
            show(self.actual, "nothing (did not run)")
        )
    }
}

/// The result of [`Expectations::compare`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Tests doing worse than expected; any entry fails the run.
    pub regressions: Vec<Delta>,
    /// Tests doing better than expected.
    pub improvements: Vec<Delta>,
    /// Tests not in the file that passed or skipped.
    pub new_tests: Vec<Delta>,
    /// Tests in the file, expected to skip or fail, that did not run.
    pub missing: Vec<Delta>,
}

impl Comparison {
    /// True when there is no regression.
    pub fn is_ok(&self) -> bool {
        self.regressions.is_empty()
    }

    /// True when blessing would change the file.
    pub fn file_is_stale(&self) -> bool {
        !(self.improvements.is_empty() && self.new_tests.is_empty() && self.missing.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cunit::TestResult;

    fn report(items: &[(&str, Outcome)]) -> RunReport {
        RunReport {
            tests: items
                .iter()
                .map(|(id, o)| {
                    let (suite, name) = id.split_once('.').expect("Suite.Test");
                    TestResult {
                        suite: suite.into(),
                        name: name.into(),
                        outcome: *o,
                        detail: String::new(),
                    }
                })
                .collect(),
            totals: None,
        }
    }

    fn expect(items: &[(&str, Outcome)]) -> Expectations {
        Expectations {
            tests: items.iter().map(|(i, o)| (i.to_string(), *o)).collect(),
        }
    }

    fn ids(d: &[Delta]) -> Vec<&str> {
        d.iter().map(|d| d.id.as_str()).collect()
    }

    use Outcome::{Fail, Pass, Skip};

    #[test]
    fn same_outcomes_are_clean() {
        let items = [("A.a", Pass), ("A.b", Skip), ("B.c", Fail)];
        let cmp = expect(&items).compare(&report(&items));
        assert!(cmp.is_ok());
        assert!(!cmp.file_is_stale());
    }

    #[test]
    fn worse_outcomes_are_regressions() {
        let e = expect(&[
            ("A.p2s", Pass),
            ("A.p2f", Pass),
            ("A.s2f", Skip),
            ("A.f", Fail),
        ]);
        let r = report(&[
            ("A.p2s", Skip),
            ("A.p2f", Fail),
            ("A.s2f", Fail),
            ("A.f", Fail),
        ]);
        let cmp = e.compare(&r);
        assert!(!cmp.is_ok());
        assert_eq!(ids(&cmp.regressions), ["A.p2f", "A.p2s", "A.s2f"]);
        assert!(cmp.improvements.is_empty());
    }

    #[test]
    fn better_outcomes_are_improvements() {
        let e = expect(&[("A.f2s", Fail), ("A.f2p", Fail), ("A.s2p", Skip)]);
        let r = report(&[("A.f2s", Skip), ("A.f2p", Pass), ("A.s2p", Pass)]);
        let cmp = e.compare(&r);
        assert!(cmp.is_ok());
        assert!(cmp.file_is_stale());
        assert_eq!(ids(&cmp.improvements), ["A.f2p", "A.f2s", "A.s2p"]);
    }

    #[test]
    fn unknown_and_missing_tests() {
        let e = expect(&[("A.gone_pass", Pass), ("A.gone_skip", Skip)]);
        let r = report(&[("N.pass", Pass), ("N.skip", Skip), ("N.fail", Fail)]);
        let cmp = e.compare(&r);
        assert_eq!(ids(&cmp.regressions), ["N.fail", "A.gone_pass"]);
        assert_eq!(ids(&cmp.new_tests), ["N.pass", "N.skip"]);
        assert_eq!(ids(&cmp.missing), ["A.gone_skip"]);
        assert_eq!(
            cmp.regressions[1].to_string(),
            "A.gone_pass: expected pass, got nothing (did not run)"
        );
    }

    #[test]
    fn empty_file_fails_only_on_failures() {
        let r = report(&[("A.a", Pass), ("A.b", Skip)]);
        assert!(Expectations::default().compare(&r).is_ok());
        let r = report(&[("A.a", Pass), ("A.b", Fail)]);
        assert!(!Expectations::default().compare(&r).is_ok());
    }

    #[test]
    fn bless_round_trips_through_a_file() {
        let r = report(&[
            ("Read10.Simple", Pass),
            ("Unmap.VPD", Skip),
            ("X.Y-z", Fail),
        ]);
        let blessed = Expectations::from_report(&r);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/libiscsi.toml");
        blessed.save(&path, "unit test", "bless me").expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("# 1 pass, 1 skip, 1 fail."), "{text}");
        assert!(text.contains("\"Read10.Simple\" = \"pass\""), "{text}");
        let loaded = Expectations::load(&path).expect("load");
        assert_eq!(loaded, blessed);
        assert!(loaded.compare(&r).is_ok());
        assert!(!loaded.compare(&r).file_is_stale());
    }

    #[test]
    fn load_rejects_bad_outcomes_and_accepts_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.toml");
        assert_eq!(
            Expectations::load(&path).expect("missing ok"),
            Expectations::default()
        );
        std::fs::write(&path, "[tests]\n\"A.b\" = \"passed\"\n").expect("write");
        assert!(matches!(
            Expectations::load(&path),
            Err(ExpectationsError::Syntax { .. })
        ));
    }
}
