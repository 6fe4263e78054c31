#!/usr/bin/env bash
# The Locus test command: everything CI runs (.ci/run execs this).
#
#   1. scripts/install-test-deps.sh  (apt-get only for what is missing)
#   2. cargo build --workspace --release --bins; then the README's first
#      command (cargo run --release --bin locusd -- --help) must not
#      recompile; cargo fmt --check and clippy -D warnings must be clean
#   3. cargo test --workspace --release   (unit + integration; same profile)
#   4. target/release/locus-conformance all   (= cargo run --release -p
#      conformance -- all, without cargo re-resolving features for one
#      package, which would rebuild half the dependency tree)
#        libiscsi iscsi-test-cu, qemu-img/qemu-io, kernel initiator (plain,
#        CHAP, digests), each against a fresh locusd
#
# Ends with one line "N passed, N failed, N skipped" summed over all steps
# and exits nonzero if any step failed. Logs: target/test-logs/.
# Extra arguments go to the conformance binary's `all` subcommand (for
# example --modes plain to run only the plain kernel-initiator mode).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
LOGS=target/test-logs
mkdir -p "$LOGS"
PASSED=0 FAILED=0 SKIPPED=0
FAILED_STEPS=()
START=$SECONDS

say() { printf '\n==> [%4ds] %s\n' $((SECONDS - START)) "$*"; }
step_failed() { FAILED_STEPS+=("$1"); }

# A step whose exit status is bad but whose output counted no failure still
# counts as one failure, so the final line never hides it.
count_step_failure() {  # count_step_failure NAME RC FAILED_BEFORE
  if [[ $2 != 0 ]]; then
    step_failed "$1"
    [[ $FAILED -gt $3 ]] || FAILED=$((FAILED + 1))
  fi
}

say "installing test dependencies (scripts/install-test-deps.sh)"
if [[ $(id -u) == 0 ]]; then
  bash scripts/install-test-deps.sh
elif command -v sudo >/dev/null; then
  sudo -n bash scripts/install-test-deps.sh
else
  echo "not root and no sudo: cannot install test dependencies" >&2
  false
fi
rc=$?
count_step_failure install-test-deps "$rc" "$FAILED"

say "cargo build --workspace --release --bins"
cargo build --workspace --release --bins 2>&1 | tee "$LOGS/build.log"
rc=${PIPESTATUS[0]}
count_step_failure build "$rc" "$FAILED"

# The README's first command must start locusd without compiling anything
# after the build above: `cargo run --bin locusd` selects the whole
# workspace, so its features unify as they did there (with `-p iscsi-target`
# they would not, and dependencies would be rebuilt first). One passed or
# failed check.
say "the README's first command starts without recompiling (cargo run --release --bin locusd -- --help)"
cargo run --release --bin locusd -- --help >"$LOGS/first-command.log" 2>&1
rc=$?
if [[ $rc == 0 ]] && ! grep -q '^ *Compiling ' "$LOGS/first-command.log"; then
  PASSED=$((PASSED + 1))
  echo "first command: ready without recompiling"
else
  grep '^ *Compiling ' "$LOGS/first-command.log" | head -5
  echo "first command: exit $rc, or it recompiled (see $LOGS/first-command.log)"
  step_failed first-command
  FAILED=$((FAILED + 1))
fi

# What the habits ask of every commit: formatted, and clippy clean with
# warnings as errors. One passed or failed check each.
for lint in "cargo fmt --all --check" "cargo clippy --workspace --all-targets --release -- -D warnings"; do
  say "$lint"
  name=${lint#cargo }
  name=${name%% *}
  $lint >"$LOGS/$name.log" 2>&1
  rc=$?
  if [[ $rc == 0 ]]; then
    PASSED=$((PASSED + 1))
    echo "$name: clean"
  else
    tail -n 30 "$LOGS/$name.log"
    echo "$name: NOT clean (exit $rc; $LOGS/$name.log)"
    step_failed "$name"
    FAILED=$((FAILED + 1))
  fi
done

say "cargo test --workspace --release"
before=$FAILED
cargo test --workspace --release 2>&1 | tee "$LOGS/cargo-test.log"
rc=${PIPESTATUS[0]}
# "test result: ok. 17 passed; 0 failed; 1 ignored; ..."
read -r p f i < <(awk '/^test result:/ {
    for (k = 1; k <= NF; k++) {
      if ($(k + 1) ~ /^passed;?$/) p += $k
      if ($(k + 1) ~ /^failed;?$/) f += $k
      if ($(k + 1) ~ /^ignored;?$/) i += $k
    }
  } END { print p + 0, f + 0, i + 0 }' "$LOGS/cargo-test.log")
PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) SKIPPED=$((SKIPPED + i))
echo "cargo test: $p passed, $f failed, $i skipped (ignored)"
count_step_failure cargo-test "$rc" "$before"

CONFORMANCE=${CARGO_TARGET_DIR:-target}/release/locus-conformance
say "$CONFORMANCE all $*"
before=$FAILED
"$CONFORMANCE" all "$@" 2>&1 | tee "$LOGS/conformance.log"
rc=${PIPESTATUS[0]}
# Suite lines: "libiscsi: 190 passed, 0 failed, 40 skipped"
read -r p f s < <(awk '/^(libiscsi|qemu|kernel): [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$/ {
    p += $2; f += $4; s += $6 } END { print p + 0, f + 0, s + 0 }' "$LOGS/conformance.log")
PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) SKIPPED=$((SKIPPED + s))
count_step_failure conformance "$rc" "$before"

say "summary ($((SECONDS - START)) s; logs in $LOGS/)"
if [[ ${#FAILED_STEPS[@]} -gt 0 ]]; then
  echo "failed steps: ${FAILED_STEPS[*]}"
  if grep -qE 'the locusd binary is not at|locusd exited .* before accepting connections' "$LOGS/conformance.log" 2>/dev/null; then
    echo "note: the conformance suites could not start locusd (see the FAIL lines above)"
  fi
fi
if [[ ${#FAILED_STEPS[@]} -eq 0 && $FAILED -gt 0 ]]; then
  echo "note: every step passed its own check (failures listed as expected, e.g. KNOWN-FAIL), but the test command requires 0 failed"
fi
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[[ ${#FAILED_STEPS[@]} -eq 0 && $FAILED -eq 0 ]]
