#!/usr/bin/env bash
# compare-tgtd.sh - side-by-side benchmark of locusd (A) against tgtd (B),
# fairly (see benches/README.md):
#   - both targets serve a 1 GiB LUN backed by a file in the same directory,
#     both prefilled with a 1 GiB sequential write;
#   - tgtd gets its best setup (MALLOC_* thresholds, its own -C control port,
#     a portal on a free loopback port);
#   - rounds alternate A B A B ...; medians and the ratio A/B are reported;
#   - the target's CPU time per I/O (utime+stime from /proc/PID/stat) is
#     recorded next to IOPS and MB/s.
# Workloads: qemu-img bench (libiscsi driver) 4 KiB QD32 scattered reads and
# writes (step 4096*prime), 1 MiB QD8 sequential reads and writes; iscsi-perf
# 4 KiB QD32 random reads.
#
# Usage: benches/compare-tgtd.sh [--rounds N] [--aa] [--locusd PATH]
#          [--results DIR] [--scale F] [--perf-secs N] [--workdir DIR]
#   --aa        A is a second tgtd (A/A run: validates the method; ratios
#               should be near 1.0)
#   --scale F   multiply the request counts (e.g. 0.25 for a quick check)
#   --order ab|abba  ab (default): A then B in every round; abba: B goes
#               first in even rounds, which cancels a first-position bias
# Output: a Markdown table on stdout (and in RESULTS/summary.md), raw numbers
# in RESULTS/raw.tsv, the command and the machine load in RESULTS/env.txt.
set -Eeuo pipefail

ROUNDS=3
AA=0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCUSD=${LOCUSD:-$ROOT/target/release/locusd}
RESULTS=""
SCALE=1
PERF_SECS=10
WORKDIR_PARENT=${TMPDIR:-/var/tmp}
IQN=iqn.2026-11.io.locus:default
ORDER=ab
PRIME=7919   # 4 KiB step = 4096 * PRIME: scattered, and coprime with the LUN's 2^18 blocks

usage() { sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --aa) AA=1 ;;
    --order) ORDER=$2; shift ;;
    --locusd) LOCUSD=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --scale) SCALE=$2; shift ;;
    --perf-secs) PERF_SECS=$2; shift ;;
    --workdir) WORKDIR_PARENT=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
[[ $ORDER == ab || $ORDER == abba ]] || { echo "--order is ab or abba" >&2; exit 2; }
[[ $ROUNDS -ge 3 ]] || echo "warning: fewer than 3 rounds: medians are not meaningful (BENCHMARKING.md)" >&2

for tool in tgtd tgtadm qemu-img iscsi-perf awk sort ss; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-test-deps.sh" >&2; exit 1; }
done
if [[ $AA == 0 && ! -x $LOCUSD ]]; then
  echo "locusd not found at $LOCUSD: cargo build --release --bin locusd, or --locusd PATH, or --aa" >&2
  exit 1
fi

if [[ $AA == 1 ]]; then A_NAME=tgtd-A; B_NAME=tgtd-B; else A_NAME=locusd; B_NAME=tgtd; fi
RESULTS=${RESULTS:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)-$([[ $AA == 1 ]] && echo aa || echo locus-tgtd)}
mkdir -p "$RESULTS"
WORK=$(mktemp -d "$WORKDIR_PARENT/locus-bench.XXXXXX")
TICK=$(getconf CLK_TCK)

PIDS=()
CONTROLS=()
cleanup() {
  local pid c
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true   # tgtd ignores SIGTERM
    wait "$pid" 2>/dev/null || true
  done
  for c in "${CONTROLS[@]}"; do rm -f "/var/run/tgtd/socket.$c" "/var/run/tgtd/socket.$c.lock"; done
  rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# free_port, wait_port, start_tgtd, cpu_ticks, now, median
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

start_locusd() {
  local port
  port=$(free_port)
  "$LOCUSD" --listen "127.0.0.1:$port" --data-dir "$WORK" >"$RESULTS/locusd.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  wait_port "$STARTED_PID" "$port"
  STARTED_URL=iscsi://127.0.0.1:$port/$IQN/0
}

# Request counts, scaled; ~5-10 s per run on this class of machine.
scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < 64 ? 64 : v) }'; }
N_R4K=$(scaled 200000)
N_W4K=$(scaled 150000)
N_R1M=$(scaled 8000)
N_W1M=$(scaled 4000)

# run_one ROUND WORKLOAD TARGET PID URL: one measurement, appended to raw.tsv
# Columns: round workload target ios seconds iops mbps cpu_us_per_io
run_one() {
  local round=$1 wl=$2 name=$3 pid=$4 url=$5 out c0 c1 t0 t1 secs ios size
  local -a cmd
  case $wl in
    qemu-4k-randread)  size=4096;    ios=$N_R4K; cmd=(qemu-img bench -f raw -c "$ios" -d 32 -s 4096 -S $((4096 * PRIME)) "$url") ;;
    qemu-4k-randwrite) size=4096;    ios=$N_W4K; cmd=(qemu-img bench -f raw -w -c "$ios" -d 32 -s 4096 -S $((4096 * PRIME)) "$url") ;;
    qemu-1m-seqread)   size=1048576; ios=$N_R1M; cmd=(qemu-img bench -f raw -c "$ios" -d 8 -s 1M -S 1M "$url") ;;
    qemu-1m-seqwrite)  size=1048576; ios=$N_W1M; cmd=(qemu-img bench -f raw -w -c "$ios" -d 8 -s 1M -S 1M "$url") ;;
    perf-4k-randread)  size=4096;    ios=0;      cmd=(iscsi-perf -m 32 -b 8 -r -t "$PERF_SECS" "$url") ;;
  esac
  c0=$(cpu_ticks "$pid"); t0=$(now)
  out=$("${cmd[@]}" 2>&1) || { echo "$wl on $name failed: $out" >&2; return 1; }
  t1=$(now); c1=$(cpu_ticks "$pid")
  if [[ $wl == perf-* ]]; then
    # The final line: "iops average N (M MB/s)"; I/Os = average x run time.
    local iops
    iops=$(printf '%s\n' "$out" | tr '\r' '\n' | awk '/^iops average/ { v = $3 } END { print v + 0 }')
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    ios=$(awk -v i="$iops" -v s="$PERF_SECS" 'BEGIN { printf "%d", i * s }')
  else
    secs=$(printf '%s\n' "$out" | awk '/^Run completed in/ { print $4 }')
  fi
  [[ -n $secs && $ios -gt 0 ]] || { echo "$wl on $name: cannot read the result from: $out" >&2; return 1; }
  awk -v r="$round" -v w="$wl" -v n="$name" -v ios="$ios" -v s="$secs" -v sz="$size" \
      -v c="$((c1 - c0))" -v tick="$TICK" -v perf="${wl%%-*}" -v ps="$PERF_SECS" 'BEGIN {
    if (perf == "perf") s = ps   # iscsi-perf reports over its own run time
    iops = ios / s; mbps = ios * sz / s / 1e6
    printf "%s\t%s\t%s\t%d\t%.3f\t%.0f\t%.1f\t%.2f\n", r, w, n, ios, s, iops, mbps, c / tick * 1e6 / ios
  }' | tee -a "$RESULTS/raw.tsv" >&2
}

prefill() {  # 1 GiB sequential write
  qemu-img bench -f raw -w -c 1024 -d 8 -s 1M -S 1M "$1" >/dev/null
}

log "load: $(uptime)"
{
  echo "command: $0 --rounds $ROUNDS --order $ORDER --scale $SCALE --perf-secs $PERF_SECS$([[ $AA == 1 ]] && echo ' --aa')"
  echo "date: $(date -u)"
  echo "uptime: $(uptime)"
  echo "host: $(uname -srm), $(nproc) cpus"
  echo "versions: tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null), qemu-utils $(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null), libiscsi-bin $(dpkg-query -W -f='${Version}' libiscsi-bin 2>/dev/null)"
  echo "A: $A_NAME  B: $B_NAME  work dir: $WORK"
} | tee "$RESULTS/env.txt" >&2

if [[ $AA == 1 ]]; then start_tgtd "$A_NAME"; else start_locusd; fi
A_PID=$STARTED_PID A_URL=$STARTED_URL
start_tgtd "$B_NAME"
B_PID=$STARTED_PID B_URL=$STARTED_URL
log "A=$A_NAME pid $A_PID $A_URL"
log "B=$B_NAME pid $B_PID $B_URL"
log "prefilling both LUNs (1 GiB sequential write each)"
prefill "$A_URL"
prefill "$B_URL"

printf 'round\tworkload\ttarget\tios\tseconds\tiops\tmbps\tcpu_us_per_io\n' >"$RESULTS/raw.tsv"
WORKLOADS=(qemu-4k-randread qemu-4k-randwrite qemu-1m-seqread qemu-1m-seqwrite perf-4k-randread)
for round in $(seq 1 "$ROUNDS"); do
  for wl in "${WORKLOADS[@]}"; do
    log "round $round/$ROUNDS $wl"
    if [[ $ORDER == abba && $((round % 2)) == 0 ]]; then
      run_one "$round" "$wl" "$B_NAME" "$B_PID" "$B_URL"
      run_one "$round" "$wl" "$A_NAME" "$A_PID" "$A_URL"
    else
      run_one "$round" "$wl" "$A_NAME" "$A_PID" "$A_URL"
      run_one "$round" "$wl" "$B_NAME" "$B_PID" "$B_URL"
    fi
  done
done
log "load after: $(uptime)"
echo "uptime after: $(uptime)" >>"$RESULTS/env.txt"

# Medians per workload and target, then the table.
col() {  # col WORKLOAD TARGET FIELD -> median of that column
  awk -F'\t' -v w="$1" -v n="$2" -v f="$3" 'NR > 1 && $2 == w && $3 == n { print $f }' "$RESULTS/raw.tsv" | median
}
{
  echo "A = $A_NAME, B = $B_NAME; $ROUNDS rounds alternating A and B (order $ORDER); medians. Load before: $(sed -n 's/^uptime: //p' "$RESULTS/env.txt" | sed 's/.*load average/load average/')"
  echo
  echo "| Workload | A ($A_NAME) | B ($B_NAME) | A/B | A/B per round (min-max) | A CPU µs/IO | B CPU µs/IO | A/B CPU |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for wl in "${WORKLOADS[@]}"; do
    case $wl in
      *-1m-*) field=7; unit="MB/s" ;;
      *) field=6; unit="IOPS" ;;
    esac
    a=$(col "$wl" "$A_NAME" "$field"); b=$(col "$wl" "$B_NAME" "$field")
    ac=$(col "$wl" "$A_NAME" 8); bc=$(col "$wl" "$B_NAME" 8)
    range=$(awk -F'\t' -v w="$wl" -v an="$A_NAME" -v bn="$B_NAME" -v f="$field" '
      NR > 1 && $2 == w && $3 == an { a[$1] = $f }
      NR > 1 && $2 == w && $3 == bn { b[$1] = $f }
      END {
        for (r in a) if (b[r] > 0) { x = a[r] / b[r]; if (lo == "" || x < lo) lo = x; if (hi == "" || x > hi) hi = x }
        printf "%.2f-%.2f", lo, hi
      }' "$RESULTS/raw.tsv")
    awk -v w="$wl" -v u="$unit" -v a="$a" -v b="$b" -v ac="$ac" -v bc="$bc" -v rg="$range" 'BEGIN {
      printf "| %s | %.0f %s | %.0f %s | %.2f | %s | %.1f | %.1f | %.2f |\n", w, a, u, b, u, (b > 0 ? a / b : 0), rg, ac, bc, (bc > 0 ? ac / bc : 0)
    }'
  done
  echo
  echo "Command: \`benches/compare-tgtd.sh --rounds $ROUNDS$([[ $AA == 1 ]] && echo ' --aa')$([[ $ORDER != ab ]] && echo " --order $ORDER")$([[ $SCALE != 1 ]] && echo " --scale $SCALE")$([[ $PERF_SECS != 10 ]] && echo " --perf-secs $PERF_SECS")\`; raw numbers: $RESULTS/raw.tsv"
} | tee "$RESULTS/summary.md"
