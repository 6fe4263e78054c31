//! The CUnit parser on real `iscsi-test-cu -d -t ALL` output captured from
//! tgtd 1.0.85 with libiscsi-bin 1.19.0 (fixtures/).

use conformance::cunit::{parse, Outcome, Summary};
use conformance::expectations::Expectations;

const FULL: &str = include_str!("fixtures/tgtd-1.0.85-all.txt");
const TRIMMED: &str = include_str!("fixtures/tgtd-1.0.85-trimmed.txt");

#[test]
fn full_run_counts_match_cunit_and_skips_are_not_passes() {
    let r = parse(FULL).expect("real output parses");
    let totals = r.totals.expect("the run has a Run Summary");
    assert_eq!(totals.ran, 230);
    assert_eq!(totals.failed, 8);
    // CUnit itself counts 222 passed: the 62 skips are among them.
    assert_eq!(
        r.summary(),
        Summary {
            passed: 160,
            failed: 8,
            skipped: 62
        }
    );
    let failed: Vec<String> = r
        .tests
        .iter()
        .filter(|t| t.outcome == Outcome::Fail)
        .map(|t| t.id())
        .collect();
    assert_eq!(
        failed,
        [
            "GetLBAStatus.BeyondEol",
            "PrinServiceactionRange.Range",
            "ProutReserve.OwnershipEA",
            "ProutReserve.OwnershipWE",
            "ProutReserve.OwnershipEARO",
            "ProutReserve.OwnershipWERO",
            "Reserve6.2Initiators",
            "iSCSIdatasn.iSCSIDataSnInvalid",
        ]
    );
}

#[test]
fn trimmed_run_outcomes_and_details() {
    let r = parse(TRIMMED).expect("trimmed output parses");
    assert_eq!(
        r.totals, None,
        "the trimmed sample stops before the Run Summary"
    );
    let outcome = |id: &str| r.get(id).map(|t| t.outcome);
    let detail = |id: &str| r.get(id).map(|t| t.detail.clone()).unwrap_or_default();

    // [SKIPPED] then "passed": a skip.
    assert_eq!(outcome("CompareAndWrite.Simple"), Some(Outcome::Skip));
    assert_eq!(
        detail("CompareAndWrite.Simple"),
        "[SKIPPED] COMPAREANDWRITE is not implemented."
    );
    assert_eq!(
        outcome("MultipathIO.CompareAndWriteAsync"),
        Some(Outcome::Skip)
    );
    // A skip message followed by a blank line before the verdict.
    assert_eq!(outcome("Reserve6.TargetColdReset"), Some(Outcome::Skip));
    // FAILED with its assertion list.
    assert_eq!(outcome("GetLBAStatus.BeyondEol"), Some(Outcome::Fail));
    assert!(detail("GetLBAStatus.BeyondEol")
        .ends_with("1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)"));
    assert_eq!(
        outcome("iSCSIdatasn.iSCSIDataSnInvalid"),
        Some(Outcome::Fail)
    );
    assert_eq!(
        detail("iSCSIdatasn.iSCSIDataSnInvalid")
            .matches("CU_ASSERT_NOT_EQUAL")
            .count(),
        4
    );
    // Multi-line body with a [FAILED] step, verdict FAILED.
    assert_eq!(outcome("Reserve6.2Initiators"), Some(Outcome::Fail));
    // Plain multi-line body, verdict passed.
    assert_eq!(outcome("Reserve6.Logout"), Some(Outcome::Pass));
    // A probe's [FAILED] log line, but CUnit says passed: a pass.
    assert_eq!(outcome("WriteSame10.UnmapVPD"), Some(Outcome::Pass));
    // "passed" then the suite clean-up's [FAILED] on the same line: a pass.
    assert_eq!(outcome("Reserve6.LUNReset"), Some(Outcome::Pass));
    assert_eq!(outcome("WriteSame10.Check"), Some(Outcome::Pass));
    // Tests are kept in output order and none is lost.
    let expected_tests = TRIMMED
        .lines()
        .filter(|l| l.starts_with("  Test: "))
        .count();
    assert_eq!(r.tests.len(), expected_tests);
    assert_eq!(
        r.tests.first().map(|t| t.id()).as_deref(),
        Some("CompareAndWrite.Simple")
    );
}

#[test]
fn truncated_output_fails_the_interrupted_test() {
    // Cut the real output in the middle of a test's body.
    let cut = TRIMMED
        .find("    Try to take out a RESERVE6 from the second initiator")
        .expect("marker");
    let r = parse(&TRIMMED[..cut]).expect("parses");
    let last = r.tests.last().expect("tests");
    assert_eq!(last.id(), "Reserve6.2Initiators");
    assert_eq!(last.outcome, Outcome::Fail);
    assert_eq!(r.totals, None);
}

#[test]
fn blessed_tgtd_expectations_match_the_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/expectations/libiscsi-tgtd.toml"
    );
    let e = Expectations::load(std::path::Path::new(path)).expect("loads");
    let r = parse(FULL).expect("parses");
    let cmp = e.compare(&r);
    assert!(cmp.is_ok(), "{:?}", cmp.regressions);
    assert!(!cmp.file_is_stale());
    assert_eq!(e.tests.len(), 230);
}
