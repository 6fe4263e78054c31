#!/usr/bin/env bash
# mirror-initiator.sh - mirrored LUNs through a real initiator, side by side
# in one run: one copy, 2-way and 3-way mirrors served by locusd, and tgtd
# (the peer userspace target) as the reference.
#   - a real redis-server with --appendonly yes --appendfsync always, three
#     locusd processes (n1, n2, n3) on loopback with separate data dirs;
#   - images "one" (on n1), "two" (n1,n2), "three" (n1,n2,n3), 1 GiB each,
#     all served by n1 (their hypervisor), LUNs 0, 1, 2 of one target: the
#     local copy is on n1, the others over the replication protocol;
#   - every LUN (and tgtd's) prefilled with a 1 GiB sequential write;
#   - rounds alternate the four targets; medians are reported, with the
#     ratio to the single copy and to tgtd;
#   - CPU per I/O of each locusd (utime+stime from /proc/PID/stat), and the
#     metadata store's commands per I/O (redis INFO total_commands_processed;
#     this includes the background lease renewals and the statistics that
#     the writer publishes every 2 s, so it is an upper bound).
# Workloads: qemu-img bench (libiscsi driver) 4 KiB QD32 scattered writes and
# reads, 1 MiB QD8 sequential writes, 4 KiB QD1 writes (mean latency).
#
# Usage: benches/mirror-initiator.sh [--rounds N] [--scale F] [--bin DIR]
#          [--results DIR] [--workdir DIR] [--workloads LIST] [--targets LIST]
#   --bin DIR   where locusd and locus are (default target/release)
#   --scale F   multiply the request counts (e.g. 0.25 for a quick check)
#   --workloads comma-separated subset of the workloads above (default all)
#   --targets   comma-separated subset of one,two,three,tgtd (default all)
# Output: a Markdown table on stdout (and in RESULTS/summary.md), raw numbers
# in RESULTS/raw.tsv, the command and the machine load in RESULTS/env.txt.
set -Eeuo pipefail

ROUNDS=3
SCALE=1
WORKLOADS=()
TARGETS=()
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
RESULTS=""
WORKDIR_PARENT=${TMPDIR:-/var/tmp}
IQN=iqn.2026-11.io.locus:bench
PRIME=7919

usage() { sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --scale) SCALE=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --workdir) WORKDIR_PARENT=$2; shift ;;
    --workloads) IFS=, read -r -a WORKLOADS <<<"$2"; shift ;;
    --targets) IFS=, read -r -a TARGETS <<<"$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for tool in tgtd tgtadm qemu-img iscsi-inq redis-server redis-cli awk sort ss; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-test-deps.sh" >&2; exit 1; }
done
for b in locusd locus; do
  [[ -x $BIN/$b ]] || { echo "$BIN/$b not found: cargo build --release --workspace --bins, or --bin DIR" >&2; exit 1; }
done

RESULTS=${RESULTS:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)-mirror}
mkdir -p "$RESULTS"
WORK=$(mktemp -d "$WORKDIR_PARENT/locus-mirror-bench.XXXXXX")
TICK=$(getconf CLK_TCK)
PIDS=()
CONTROLS=()
cleanup() {
  local pid c
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
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

# The cluster: redis, three nodes, three images, one target.
RPORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$WORK/redis" --appendonly yes \
  --appendfsync always --save "" >"$RESULTS/redis.log" 2>&1 &
PIDS+=("$!")
wait_port "$!" "$RPORT"
M=redis://127.0.0.1:$RPORT/0
locus() { "$BIN/locus" --metadata "$M" "$@" >/dev/null; }
head -c 32 /dev/urandom | base64 >"$WORK/secret"
chmod 600 "$WORK/secret"
declare -A NODE_PID
PORTAL=""
for n in n1 n2 n3; do
  rp=$(free_port)
  locus node add "$n" --address "127.0.0.1:$rp" --site s1
done
locus image create one --size 1G --location n1 --hypervisor n1
locus image create two --size 1G --location n1,n2 --hypervisor n1
locus image create three --size 1G --location n1,n2,n3 --hypervisor n1
locus target create "$IQN"
locus target lun add "$IQN" one --lun 0
locus target lun add "$IQN" two --lun 1
locus target lun add "$IQN" three --lun 2
for n in n1 n2 n3; do
  ip=$(free_port)
  mkdir -p "$WORK/$n"
  "$BIN/locusd" --node "$n" --metadata "$M" --data-dir "$WORK/$n" \
    --cluster-secret-file "$WORK/secret" --listen "127.0.0.1:$ip" >"$RESULTS/$n.log" 2>&1 &
  NODE_PID[$n]=$!
  PIDS+=("$!")
  wait_port "$!" "$ip"
  [[ $n == n1 ]] && PORTAL=127.0.0.1:$ip
done
declare -A URL=([one]=iscsi://$PORTAL/$IQN/0 [two]=iscsi://$PORTAL/$IQN/1 [three]=iscsi://$PORTAL/$IQN/2)
for img in one two three; do  # bounded poll: n1 serves once it holds the lease
  for i in $(seq 1 300); do iscsi-inq "${URL[$img]}" >/dev/null 2>&1 && break; sleep 0.1; done
  iscsi-inq "${URL[$img]}" >/dev/null || { echo "n1 does not serve $img; see $RESULTS/n1.log" >&2; exit 1; }
done
start_tgtd tgtd
TGT_PID=$STARTED_PID TGT_URL=$STARTED_URL

scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < 64 ? 64 : v) }'; }
N_W4K=$(scaled 100000)
N_R4K=$(scaled 200000)
N_W1M=$(scaled 3000)
N_QD1=$(scaled 20000)
redis_cmds() { redis-cli -p "$RPORT" info stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }'; }

# run_one ROUND WORKLOAD NAME URL -> raw.tsv
# Columns: round workload target ios seconds iops mbps lat_us cpu_n1 cpu_n2 cpu_n3 cpu_tgtd store_per_io
run_one() {
  local round=$1 wl=$2 name=$3 url=$4 out secs size ios r0 r1 n
  local -a cmd c0 c1
  case $wl in
    4k-randwrite-qd32) size=4096; ios=$N_W4K; cmd=(qemu-img bench -f raw -w -c "$ios" -d 32 -s 4096 -S $((4096 * PRIME)) "$url") ;;
    4k-randread-qd32)  size=4096; ios=$N_R4K; cmd=(qemu-img bench -f raw -c "$ios" -d 32 -s 4096 -S $((4096 * PRIME)) "$url") ;;
    1m-seqwrite-qd8)   size=1048576; ios=$N_W1M; cmd=(qemu-img bench -f raw -w -c "$ios" -d 8 -s 1M -S 1M "$url") ;;
    4k-write-qd1)      size=4096; ios=$N_QD1; cmd=(qemu-img bench -f raw -w -c "$ios" -d 1 -s 4096 -S $((4096 * PRIME)) "$url") ;;
  esac
  c0=(); for n in n1 n2 n3; do c0+=("$(cpu_ticks "${NODE_PID[$n]}")"); done; c0+=("$(cpu_ticks "$TGT_PID")")
  r0=$(redis_cmds)
  out=$("${cmd[@]}" 2>&1) || { echo "$wl on $name failed: $out" >&2; return 1; }
  r1=$(redis_cmds)
  c1=(); for n in n1 n2 n3; do c1+=("$(cpu_ticks "${NODE_PID[$n]}")"); done; c1+=("$(cpu_ticks "$TGT_PID")")
  secs=$(printf '%s\n' "$out" | awk '/^Run completed in/ { print $4 }')
  [[ -n $secs ]] || { echo "$wl on $name: no result in: $out" >&2; return 1; }
  awk -v r="$round" -v w="$wl" -v n="$name" -v ios="$ios" -v s="$secs" -v sz="$size" -v tick="$TICK" \
      -v a0="${c0[0]}" -v a1="${c1[0]}" -v b0="${c0[1]}" -v b1="${c1[1]}" -v d0="${c0[2]}" -v d1="${c1[2]}" \
      -v t0="${c0[3]}" -v t1="${c1[3]}" -v st="$((r1 - r0))" 'BEGIN {
    u = 1e6 / tick / ios
    printf "%s\t%s\t%s\t%d\t%.3f\t%.0f\t%.1f\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%.3f\n", r, w, n, ios, s, ios / s, ios * sz / s / 1e6, s / ios * 1e6, (a1 - a0) * u, (b1 - b0) * u, (d1 - d0) * u, (t1 - t0) * u, st / ios
  }' | tee -a "$RESULTS/raw.tsv" >&2
}

{
  echo "command: $0 --rounds $ROUNDS --scale $SCALE"
  echo "date: $(date -u)"
  echo "uptime: $(uptime)"
  echo "host: $(uname -srm), $(nproc) cpus"
  echo "versions: tgt $(dpkg-query -W -f='${Version}' tgt 2>/dev/null), qemu-utils $(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null), redis $(redis-server --version | awk '{ print $3 }')"
} | tee "$RESULTS/env.txt" >&2
log "prefilling every LUN (1 GiB sequential write each)"
for t in one two three; do qemu-img bench -f raw -w -c 1024 -d 8 -s 1M -S 1M "${URL[$t]}" >/dev/null; done
qemu-img bench -f raw -w -c 1024 -d 8 -s 1M -S 1M "$TGT_URL" >/dev/null

printf 'round\tworkload\ttarget\tios\tseconds\tiops\tmbps\tlat_us\tcpu_n1\tcpu_n2\tcpu_n3\tcpu_tgtd\tstore_per_io\n' >"$RESULTS/raw.tsv"
ALL_SET=1
[[ ${#WORKLOADS[@]} -eq 0 && ${#TARGETS[@]} -eq 0 ]] || ALL_SET=0
[[ ${#WORKLOADS[@]} -gt 0 ]] || WORKLOADS=(4k-randwrite-qd32 4k-randread-qd32 1m-seqwrite-qd8 4k-write-qd1)
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(one two three tgtd)
for round in $(seq 1 "$ROUNDS"); do
  for wl in "${WORKLOADS[@]}"; do
    log "round $round/$ROUNDS $wl"
    for t in "${TARGETS[@]}"; do
      if [[ $t == tgtd ]]; then run_one "$round" "$wl" tgtd "$TGT_URL"; else run_one "$round" "$wl" "$t" "${URL[$t]}"; fi
    done
  done
done
echo "uptime after: $(uptime)" >>"$RESULTS/env.txt"

# Memory: what serving a 1 TiB image with 3 clean locations adds to the
# serving node's RSS (after 2000 scattered 4 KiB writes and reads across it).
rss_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# VmRSS counts the page cache that zero-copy READ data maps (RssFile);
# RssAnon is the memory locusd itself allocates.
RSS0=$(rss_kib "${NODE_PID[n1]}" VmRSS) ANON0=$(rss_kib "${NODE_PID[n1]}" RssAnon)
locus image create huge --size 1T --location n1,n2,n3 --hypervisor n1
locus target lun add "$IQN" huge --lun 3
HUGE=iscsi://$PORTAL/$IQN/3
for i in $(seq 1 300); do iscsi-inq "$HUGE" >/dev/null 2>&1 && break; sleep 0.1; done
HSTEP=$(( (1 << 40) / 2000 / 4096 * 4096 ))
qemu-img bench -f raw -w -c 2000 -d 32 -s 4096 -S "$HSTEP" "$HUGE" >/dev/null
qemu-img bench -f raw -c 2000 -d 32 -s 4096 -S "$HSTEP" "$HUGE" >/dev/null
RSS1=$(rss_kib "${NODE_PID[n1]}" VmRSS) ANON1=$(rss_kib "${NODE_PID[n1]}" RssAnon)

col() { awk -F'\t' -v w="$1" -v n="$2" -v f="$3" 'NR > 1 && $2 == w && $3 == n { print $f }' "$RESULTS/raw.tsv" | median; }
{
  echo "One cluster: redis (AOF, fsync always) + 3 locusd on loopback; n1 serves every LUN. $ROUNDS rounds; medians."
  echo "one = 1 copy (n1), two = 2-way (n1 + n2), three = 3-way (n1 + n2 + n3). CPU in µs per I/O."
  echo
  echo "| Workload | target | result | vs one copy | vs tgtd | mean latency µs | CPU n1 | CPU n2 | CPU n3 | CPU tgtd | store cmds/IO |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for wl in "${WORKLOADS[@]}"; do
    case $wl in 1m-*) field=7; unit="MB/s" ;; *) field=6; unit="IOPS" ;; esac
    base=$(col "$wl" one "$field"); tg=$(col "$wl" tgtd "$field")
    for t in "${TARGETS[@]}"; do
      v=$(col "$wl" "$t" "$field"); lat=$(col "$wl" "$t" 8)
      c1=$(col "$wl" "$t" 9); c2=$(col "$wl" "$t" 10); c3=$(col "$wl" "$t" 11); ct=$(col "$wl" "$t" 12); sp=$(col "$wl" "$t" 13)
      awk -v w="$wl" -v t="$t" -v v="$v" -v u="$unit" -v b="$base" -v g="$tg" -v l="$lat" \
          -v c1="$c1" -v c2="$c2" -v c3="$c3" -v ct="$ct" -v sp="$sp" 'BEGIN {
        printf "| %s | %s | %.0f %s | %.2f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %s |\n", w, t, v, u, (b > 0 ? v / b : 0), (g > 0 ? v / g : 0), l, c1, c2, c3, ct, (t == "tgtd" ? "-" : sprintf("%.3f", sp))
      }'
    done
  done
  echo
  awk -v a="$RSS0" -v b="$RSS1" -v c="$ANON0" -v d="$ANON1" 'BEGIN { printf "Serving a 1 TiB image with 3 clean locations (2000 scattered 4 KiB writes and reads): n1 anonymous RSS (RssAnon) %.1f MiB -> %.1f MiB, +%.1f MiB; VmRSS (with the page cache that zero-copy reads map) %.1f -> %.1f MiB, +%.1f MiB.\n", c / 1024, d / 1024, (d - c) / 1024, a / 1024, b / 1024, (b - a) / 1024 }'
  echo
  echo "Command: \`benches/mirror-initiator.sh --rounds $ROUNDS$([[ $SCALE != 1 ]] && echo " --scale $SCALE")$([[ $ALL_SET == 0 ]] && echo " --workloads $(IFS=,; echo "${WORKLOADS[*]}") --targets $(IFS=,; echo "${TARGETS[*]}")")\`; raw numbers: $RESULTS/raw.tsv"
} | tee "$RESULTS/summary.md"
