# lib.sh - shell functions shared by the benchmark scripts (sourced, not run).
# Expects: WORK (a temp dir), RESULTS (a results dir), IQN, and the arrays
# PIDS and CONTROLS, which the caller's cleanup trap kills / removes.

free_port() {  # a TCP port nothing listens on
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

wait_port() {  # wait_port PID PORT: bounded poll until the port accepts
  local pid=$1 port=$2 i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "target (pid $pid) exited before listening on $port" >&2; return 1; }
    sleep 0.1
  done
  echo "target did not listen on $port within 30 s" >&2
  return 1
}

# start_tgtd NAME -> sets STARTED_PID, STARTED_URL
start_tgtd() {
  local name=$1 port c img
  port=$(free_port)
  c=$((1000 + port % 30000))
  while [[ -e /var/run/tgtd/socket.$c ]]; do c=$((1000 + (c - 999) % 30000)); done
  img=$WORK/$name.img
  truncate -s 1G "$img"
  MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 \
    tgtd -f -C "$c" --iscsi "portal=127.0.0.1:$port" >"$RESULTS/$name.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  CONTROLS+=("$c")
  wait_port "$STARTED_PID" "$port"
  tgtadm -C "$c" --lld iscsi --op new --mode target --tid 1 -T "$IQN"
  tgtadm -C "$c" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$img"
  tgtadm -C "$c" --lld iscsi --op bind --mode target --tid 1 -I ALL
  STARTED_URL=iscsi://127.0.0.1:$port/$IQN/1
}

cpu_ticks() {  # utime+stime of PID (all threads), in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

now() { date +%s.%N; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
