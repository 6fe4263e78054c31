#!/usr/bin/env bash
# Runs the "Operating Locus" walkthrough and prints each command with its real
# output and exit code. Uses LOCUS_METADATA when set (e.g. redis://127.0.0.1:6379/0,
# a scratch database), else a fresh embedded store in a temp dir.
# Usage: admin/operating-locus.sh [path/to/locus]
set -u
L=${1:-target/debug/locus}
L=$(realpath "$L")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
run() {
  echo "\$ locus $*"
  "$L" "$@" 2>&1
  rc=$?
  [ $rc -ne 0 ] && echo "(exit $rc)"
  echo
}
run node add node-a --address 10.0.0.1:7900 --site rack1 --capacity 4T
run node add node-b --address 10.0.0.2:7900 --site rack2 --capacity 4T
run image create vm1 --size 8G --block-size 4M --location node-a --hypervisor node-a,node-b
run location add vm1 node-b
run image info vm1
run location remove vm1 node-a
run location remove vm1 node-b --start 1000 --end 2047
run image info vm1
run image sync vm1
run image list
run cluster status
run errors
run stats vm1
run target create iqn.2026-01.org.locus:vm1
run target lun add iqn.2026-01.org.locus:vm1 vm1
run target acl add iqn.2026-01.org.locus:vm1 iqn.1994-05.com.redhat:client1
LOCUS_CHAP_SECRET=a-long-secret run target chap set iqn.2026-01.org.locus:vm1 --user client1
run target list
run image destroy vm1
run --json image info vm1
run image destroy vm1 --force
run image create bad --size 1001 --location node-a
run image create bad --size 1G --block-size 3M --location node-a
run image create bad --size 1G --location node-z
run --metadata redis://127.0.0.1:1/0 image list
