#!/usr/bin/env bash
# resync.sh - resync figures of issue 8, in one run on loopback:
#   - a real redis-server (--appendonly yes --appendfsync always) and three
#     locusd (n1, n2, n3) with separate data dirs; every image is served by
#     n1 (its hypervisor), whose copy is the resync source;
#   - catch-up: images g4k (granularity 4K) and g64k (64K, the default),
#     1 GiB each on n1,n2,n3, prefilled; n3 is killed (kill -9), N scattered
#     4 KiB writes go to each image, n3 comes back and `locus image sync`
#     copies what it missed. Reported: bytes copied / bytes written, and what
#     UKAI (whole 5 MB blocks) and a full rebuild would copy for the same
#     writes;
#   - throughput under load: image fg (2 GiB, n1,n2, prefilled); 4 KiB QD32
#     random writes alone; `location add fg n3` and `image sync fg` into a
#     fresh copy; then twice more after `location remove`/`add` (n3's file
#     is allocated by then, as for a copy that comes back): alone, and
#     while the same writes run. Reported: sync MB/s, and the foreground
#     IOPS kept against 3 copies and against 2;
#   - a fresh location of a 100 GiB image holding 1 GiB of data, against
#     one of a 1 GiB image full of data.
# Usage: benches/resync.sh [--bin DIR] [--results DIR] [--writes N]
#   --bin DIR   where locusd and locus are (default target/release)
#   --writes N  scattered 4 KiB writes while n3 is down (default 20000)
# Output: a Markdown summary on stdout (and in RESULTS/summary.md), the
# command and the machine load in RESULTS/env.txt, node logs in RESULTS.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
RESULTS=""
WRITES=20000
WORKDIR_PARENT=${TMPDIR:-/var/tmp}
IQN=iqn.2026-12.io.locus:resync
PRIME=7919
usage() { sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --bin) BIN=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --writes) WRITES=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for tool in qemu-img iscsi-inq redis-server redis-cli awk; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-test-deps.sh" >&2; exit 1; }
done
for b in locusd locus; do
  [[ -x $BIN/$b ]] || { echo "$BIN/$b not found: cargo build --release --bins, or --bin DIR" >&2; exit 1; }
done
RESULTS=${RESULTS:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)-resync}
mkdir -p "$RESULTS"
WORK=$(mktemp -d "$WORKDIR_PARENT/locus-resync-bench.XXXXXX")
declare -A NODE_PID NODE_PORT
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}" "${NODE_PID[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}" "${NODE_PID[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '[resync %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
# free_port, wait_port, now
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

RPORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$WORK/redis" --appendonly yes \
  --appendfsync always --save "" >"$RESULTS/redis.log" 2>&1 &
PIDS+=("$!")
wait_port "$!" "$RPORT"
M=redis://127.0.0.1:$RPORT/0
locus() { "$BIN/locus" --metadata "$M" "$@"; }
head -c 32 /dev/urandom | base64 >"$WORK/secret"
for n in n1 n2 n3; do
  locus node add "$n" --address "127.0.0.1:$(free_port)" --site s1 >/dev/null
  NODE_PORT[$n]=$(free_port)
  mkdir -p "$WORK/$n"
done
start_node() {
  "$BIN/locusd" --node "$1" --metadata "$M" --data-dir "$WORK/$1" \
    --cluster-secret-file "$WORK/secret" --listen "127.0.0.1:${NODE_PORT[$1]}" >>"$RESULTS/$1.log" 2>&1 &
  NODE_PID[$1]=$!
  wait_port "$!" "${NODE_PORT[$1]}"
}
for n in n1 n2 n3; do start_node "$n"; done
URL=iscsi://127.0.0.1:${NODE_PORT[n1]}/$IQN
locus target create "$IQN" >/dev/null
LUN=0
declare -A LUN_OF
add_image() {  # add_image NAME SIZE GRANULARITY LOCATIONS
  locus image create "$1" --size "$2" --granularity "$3" --location "$4" --hypervisor n1 >/dev/null
  locus image set "$1" --auto-sync off >/dev/null
  locus target lun add "$IQN" "$1" --lun "$LUN" >/dev/null
  LUN_OF[$1]=$LUN
  for _ in $(seq 1 300); do iscsi-inq "$URL/$LUN" >/dev/null 2>&1 && break; sleep 0.1; done
  iscsi-inq "$URL/$LUN" >/dev/null || { echo "n1 does not serve $1; see $RESULTS/n1.log" >&2; exit 1; }
  LUN=$((LUN + 1))
}
fill() { qemu-img bench -f raw -w -c "$2" -d 8 -s 1M -S 1M "$URL/${LUN_OF[$1]}" >/dev/null; }
sync_json() { locus --json image sync "$@"; }
jget() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
{
  echo "command: $0 --writes $WRITES"
  echo "date: $(date -u)"
  echo "uptime: $(uptime)"
  echo "host: $(uname -srm), $(nproc) cpus"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
} | tee "$RESULTS/env.txt" >&2

# ---- catch-up: bytes copied / bytes written ------------------------------
add_image g4k 1G 4K n1,n2,n3
add_image g64k 1G 64K n1,n2,n3
log "prefilling g4k and g64k"
fill g4k 1024; fill g64k 1024
log "kill -9 n3; $WRITES scattered 4 KiB writes to each image"
kill -KILL "${NODE_PID[n3]}"; wait "${NODE_PID[n3]}" 2>/dev/null || true
for img in g4k g64k; do
  qemu-img bench -f raw -w -c "$WRITES" -d 32 -s 4096 -S $((4096 * PRIME)) "$URL/${LUN_OF[$img]}" >/dev/null
done
start_node n3
# What the writes touched (qemu-img bench: offset += step, wrapping at the
# image size), counted by unit: 4K, 64K, UKAI's 5 MB blocks.
touched() {
  awk -v n="$WRITES" -v step=$((4096 * PRIME)) -v size=$((1 << 30)) -v unit="$1" 'BEGIN {
    off = 0
    for (i = 0; i < n; i++) { u[int(off / unit)] = 1; off += step; while (off >= size) off -= size }
    c = 0; for (k in u) c++; print c * unit }'
}
declare -A COPIED SECS
for img in g4k g64k; do
  out=$(sync_json "$img")
  COPIED[$img]=$(jget 'd["copied_bytes"]["n3"]' <<<"$out")
  SECS[$img]=$(jget 'd["seconds"]' <<<"$out")
done
WRITTEN=$((WRITES * 4096))
UKAI=$(touched 5000000)

# ---- throughput alone and under foreground writes ------------------------
add_image fg 2G 64K n1,n2
log "prefilling fg (2 GiB)"
fill fg 2048
# The foreground writes measured during the sync must end before it does:
# 10000 writes take about a second, the 2 GiB sync 3 to 8 s.
FG_N=10000
FG=(qemu-img bench -f raw -w -c "$FG_N" -d 32 -s 4096 -S $((4096 * PRIME)) "$URL/${LUN_OF[fg]}")
iops() { awk -v n="$FG_N" '/^Run completed in/ { print n / $4 }' <<<"$1"; }
log "foreground alone (2 copies)"
IOPS_ALONE=$(iops "$("${FG[@]}" 2>&1)")
mbps() { jget '(d["copied_bytes"]["n3"] + d["hole_bytes"]["n3"]) / d["seconds"] / 1e6' <<<"$1"; }
locus location add fg n3 >/dev/null
log "sync into a fresh copy"
FRESH_MB=$(mbps "$(sync_json fg)")
log "foreground alone (3 copies)"
IOPS_ALONE3=$(iops "$("${FG[@]}" 2>&1)")
# From here on n3's file is allocated, as it is for a copy that comes back:
# the syncs below overwrite it, alone and under load.
locus location remove fg n3 >/dev/null
locus location add fg n3 >/dev/null
log "sync alone"
ALONE_MB=$(mbps "$(sync_json fg)")
locus location remove fg n3 >/dev/null
locus location add fg n3 >/dev/null
log "sync under foreground writes"
sync_json fg >"$WORK/sync-under-load.json" &
SYNC_PID=$!
# The sync has started once n3's blocks are syncing.
for _ in $(seq 1 100); do locus image info fg | grep -q 'n3:syncing' && break; sleep 0.05; done
fgout=$("${FG[@]}" 2>&1)
OVERLAP=yes
kill -0 "$SYNC_PID" 2>/dev/null || OVERLAP="no: the sync ended first"
IOPS_LOADED=$(iops "$fgout")
wait "$SYNC_PID"
out=$(cat "$WORK/sync-under-load.json")
LOADED_MB=$(mbps "$out")
LOADED_S=$(jget 'd["seconds"]' <<<"$out")

# ---- a fresh location: 100 GiB holding 1 GiB, against 1 GiB of data -------
add_image huge 100G 64K n1,n2
add_image gig 1G 64K n1,n2
log "writing 1 GiB into huge (256 x 4 MiB, 400 MiB apart) and gig (all of it)"
qemu-img bench -f raw -w -c 256 -d 8 -s 4M -S 400M "$URL/${LUN_OF[huge]}" >/dev/null
fill gig 1024
locus location add huge n3 >/dev/null
locus location add gig n3 >/dev/null
out=$(sync_json huge); HUGE_S=$(jget 'd["seconds"]' <<<"$out"); HUGE_C=$(jget 'd["copied_bytes"]["n3"]' <<<"$out")
out=$(sync_json gig); GIG_S=$(jget 'd["seconds"]' <<<"$out")
echo "uptime after: $(uptime)" >>"$RESULTS/env.txt"

{
  echo "| figure | measured |"
  echo "|---|---|"
  awk -v c="${COPIED[g4k]}" -v w="$WRITTEN" -v s="${SECS[g4k]}" 'BEGIN { printf "| catch-up, granularity 4K: copied / written | %d / %d bytes = %.3fx (%.2f s) |\n", c, w, c / w, s }'
  awk -v c="${COPIED[g64k]}" -v w="$WRITTEN" -v s="${SECS[g64k]}" 'BEGIN { printf "| catch-up, granularity 64K (default): copied / written | %d / %d bytes = %.2fx (%.2f s) |\n", c, w, c / w, s }'
  awk -v u="$UKAI" -v w="$WRITTEN" 'BEGIN { printf "| the same writes, UKAI (whole 5 MB blocks) | %d bytes = %.1fx |\n", u, u / w }'
  awk -v w="$WRITTEN" 'BEGIN { printf "| the same writes, full rebuild (Longhorn) | %d bytes = %.1fx |\n", 2^30, 2^30 / w }'
  awk -v m="$FRESH_MB" 'BEGIN { printf "| resync of 2 GiB into a fresh (sparse) copy | %.0f MB/s |\n", m }'
  awk -v m="$ALONE_MB" 'BEGIN { printf "| resync of 2 GiB alone (copy file allocated) | %.0f MB/s |\n", m }'
  awk -v m="$LOADED_MB" -v s="$LOADED_S" 'BEGIN { printf "| resync of 2 GiB under 4K QD32 writes | %.0f MB/s (%.1f s) |\n", m, s }'
  awk -v a="$IOPS_ALONE" -v c="$IOPS_ALONE3" -v b="$IOPS_LOADED" -v o="$OVERLAP" 'BEGIN { printf "| 4K QD32 writes during the resync / without one, 3 copies / 2 copies | %.0f / %.0f / %.0f IOPS = %.2fx / %.2fx kept (writes within the sync: %s) |\n", b, c, a, b / c, b / a, o }'
  awk -v h="$HUGE_S" -v g="$GIG_S" -v c="$HUGE_C" 'BEGIN { printf "| fresh location: 100 GiB holding 1 GiB / 1 GiB of data | %.2f s (%d bytes copied) / %.2f s = %.2fx |\n", h, c, g, h / g }'
} | tee "$RESULTS/summary.md"
