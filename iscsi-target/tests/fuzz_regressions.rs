//! Replays every committed fuzz input through its target's oracle, so a
//! fixed crash stays fixed without cargo-fuzz or a nightly toolchain: the
//! reproducers in `fuzz/regressions/<target>/` and the committed seeds in
//! `fuzz/seeds/<target>/`. The oracles are the fuzz targets' own code
//! (`fuzz/oracles/*.rs`), compiled here as modules; an oracle panics when
//! one of its checks fails, and the panic names the input file.

#[allow(dead_code, missing_docs)]
#[path = "../../fuzz/oracles/cdb_parse.rs"]
mod cdb_parse;
#[allow(dead_code, missing_docs)]
#[path = "../../fuzz/oracles/pdu_decode.rs"]
mod pdu_decode;
#[allow(dead_code, missing_docs)]
#[path = "../../fuzz/oracles/repl_frame.rs"]
mod repl_frame;
#[allow(dead_code, missing_docs)]
#[path = "../../fuzz/oracles/text_keys.rs"]
mod text_keys;

use std::path::{Path, PathBuf};

/// The committed inputs of one fuzz target, sorted by name (the shared
/// `cdb_parse` world carries state from one input to the next).
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("readable fuzz input directory").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `check` on every committed input of `target`; returns how many ran.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = inputs(target);
    for f in &files {
        let data = std::fs::read(f).expect("readable fuzz input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: the oracle failed on {}",
            f.display()
        );
    }
    files.len()
}

#[test]
fn text_keys_regressions_pass_the_oracle() {
    // The two reproducers of the duplicate-key finding must exist: an empty
    // directory would make this test pass vacuously.
    assert!(replay("text_keys", text_keys::check) >= 2);
}

#[test]
fn repl_frame_seeds_pass_the_oracle() {
    assert!(replay("repl_frame", repl_frame::check) >= 40);
}

#[test]
fn cdb_parse_regressions_pass_the_oracle() {
    // No reproducer committed yet; the replay runs whatever lands there.
    replay("cdb_parse", cdb_parse::check);
}

/// The captured PDUs of `tests/fixtures/*.hex` (one hex PDU per line), as
/// `pdu_decode` inputs: each PDU whole and cut in two, with the header
/// digest selected for the `hdigest` capture, as `fuzz/README.md` seeds it.
#[test]
fn pdu_decode_regressions_and_golden_pdus_pass_the_oracle() {
    replay("pdu_decode", pdu_decode::check);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut runs = 0;
    for e in std::fs::read_dir(&dir).expect("fixtures directory") {
        let path = e.expect("fixture entry").path();
        if path.extension().is_none_or(|x| x != "hex") {
            continue;
        }
        let digest = path.to_string_lossy().contains("hdigest");
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        for line in text.split_whitespace() {
            let pdu = hex::decode(line).expect("fixture lines are hex");
            // Logins (0x03, 0x23) are exchanged before digests start.
            let sel = u8::from(digest && !matches!(pdu[0] & 0x3f, 0x03 | 0x23));
            for s in [sel, sel | 0x08] {
                let mut input = vec![s];
                input.extend_from_slice(&pdu);
                pdu_decode::check(&input);
                runs += 1;
            }
        }
    }
    assert!(runs > 50, "only {runs} golden PDUs replayed");
}
