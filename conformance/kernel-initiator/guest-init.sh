#!/bin/busybox sh
# shellcheck disable=SC3028 # busybox ash has RANDOM
# PID 1 of the kernel-initiator guest (see README.md). The host appends
# /ki.conf (PORT, IQN, LUN, TOKEN, CHAP_USER, CHAP_SECRET, DIGEST, DATA_MIB,
# and PORT2 for a migration: session 2 then logs in at that portal, after
# the host moved the LUN there while the guest waited between sessions)
# as a second cpio archive. Every line meant for the host starts with "KI";
# the result line carries this run's TOKEN.
#
# Debian's static busybox runs its own applets before PATH, so the real
# open-iscsi and e2fsprogs tools are always called by absolute path.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mkdir -p /run/lock /mnt /tmp
. /ki.conf

ISCSIADM=/usr/sbin/iscsiadm
PORTAL=10.0.2.2:$PORT
T0=$(cut -d. -f1 /proc/uptime)

step() { echo "KI: [$(($(cut -d. -f1 /proc/uptime) - T0))s] $*"; }
finish() {
    sync
    echo "KI-RESULT $TOKEN $*"
    poweroff -f
}
fail() {
    echo "---- iscsid log ----"
    tail -n 30 /run/iscsid.log 2>/dev/null
    echo "---- dmesg (last 30) ----"
    dmesg | tail -n 30
    finish "FAIL $*"
}
run() {
    "$@" >/run/cmd.log 2>&1 && return
    cat /run/cmd.log
    # stdout is flushed after stderr: the first line naming an error is the best reason.
    why=$(grep -iE 'error|fail' /run/cmd.log | head -n 1)
    fail "${1##*/} failed: ${why:-$(grep . /run/cmd.log | tail -n 1)}"
}

step "loading modules"
while read -r m; do
    insmod "/lib/modules/$m" || fail "insmod $m"
done </modules.load

step "network: 10.0.2.15/24 on eth0, no default route"
ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add 10.0.2.15/24 dev eth0

step "starting iscsid"
/usr/sbin/iscsid -f >/run/iscsid.log 2>&1 &
i=0
until grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix; do
    i=$((i + 1)); [ $i -gt 50 ] && fail "iscsid did not start"
    sleep 0.2
done

step "SendTargets discovery on $PORTAL"
$ISCSIADM -m discovery -t sendtargets -p "$PORTAL" -o nonpersistent >/run/disc.log 2>&1 ||
    echo "KI: iscsiadm discovery exited with status $?"
sed 's/^/KI:   /' /run/disc.log
TPGT=$(awk -v iqn="$IQN" '$2 == iqn { sub(/.*,/, "", $1); print $1; exit }' /run/disc.log)
[ -n "$TPGT" ] || fail "discovery did not list $IQN"

set_node() { run $ISCSIADM -m node -T "$IQN" -p "$PORTAL" -o update -n "$1" -v "$2"; }
# Creates the node record of $PORTAL,$1 with the run's CHAP and digests.
node_record() {
    step "node record $PORTAL,$1 $IQN"
    run $ISCSIADM -m node -o new -T "$IQN" -p "$PORTAL,$1"
    if [ -n "$CHAP_USER" ]; then
        set_node node.session.auth.authmethod CHAP
        set_node node.session.auth.username "$CHAP_USER"
        set_node node.session.auth.password "$CHAP_SECRET"
    fi
    if [ "$DIGEST" = 1 ]; then
        set_node 'node.conn[0].iscsi.HeaderDigest' CRC32C
        set_node 'node.conn[0].iscsi.DataDigest' CRC32C
    fi
}
node_record "$TPGT"

# Logs in and sets DEV to the block device of LUN $LUN.
login() {
    step "login ($1)"
    run $ISCSIADM -m node -T "$IQN" -p "$PORTAL" --login
    echo "KI:   negotiated: $($ISCSIADM -m session -P 2 |
        awk -F': ' '/Digest|MaxRecvDataSegment|MaxBurst|FirstBurst|ImmediateData|InitialR2T/ { gsub(/[ \t]/, "", $1); printf "%s=%s ", $1, $2 }')"
    if [ "$DIGEST" = 1 ]; then
        [ "$($ISCSIADM -m session -P 2 | grep -c 'Digest: CRC32C')" = 2 ] ||
            fail "CRC32C digests were not negotiated"
    fi
    DEV=
    i=0
    while [ -z "$DEV" ]; do
        for b in /sys/class/iscsi_session/session*/device/target*/*:*:*:"$LUN"/block/*; do
            [ -e "$b" ] && [ -b "/dev/${b##*/}" ] && DEV=/dev/${b##*/}
        done
        i=$((i + 1)); [ $i -gt 100 ] && fail "no block device for LUN $LUN"
        [ -n "$DEV" ] || sleep 0.2
    done
    step "LUN $LUN is $DEV, $(($(cat "/sys/block/${DEV#/dev/}/size") / 2048)) MiB"
}
logout() {
    step "logout"
    run $ISCSIADM -m node -T "$IQN" -p "$PORTAL" --logout
    $ISCSIADM -m session >/dev/null 2>&1 && fail "a session is still there after logout"
    [ -b "$DEV" ] && fail "$DEV is still there after logout"
    true
}
verify() {
    if ! (cd /mnt && sha256sum -c SHA256SUMS) >/run/sum.log 2>&1; then
        grep -v ': OK$' /run/sum.log | head -n 10
        fail "checksums differ ($1)"
    fi
    step "checksums verified ($1)"
}

# Session 1: make a filesystem, write, verify after a remount.
login "session 1"
step "mkfs.ext4 $DEV"
run /usr/sbin/mke2fs -t ext4 -q -F -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 "$DEV"
run mount -t ext4 -o noinit_itable "$DEV" /mnt
step "writing ${DATA_MIB} MiB of pseudo-random files"
mkdir -p /mnt/d/e
n=0
while [ $n -lt $((DATA_MIB / 4)) ]; do
    head -c 3145728 /dev/urandom >/mnt/big$n                      # 3 MiB
    head -c $((RANDOM * 31 + n)) /dev/urandom >/mnt/d/odd$n       # < 1 MiB, odd sizes
    head -c $((RANDOM % 4096 + 1)) /dev/urandom >/mnt/d/e/small$n
    n=$((n + 1))
done
(cd /mnt && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum >SHA256SUMS)
step "$(wc -l </mnt/SHA256SUMS) files, $(du -sk /mnt | cut -f1) KiB"
sync
run umount /mnt
echo 3 >/proc/sys/vm/drop_caches
run mount -t ext4 "$DEV" /mnt
verify "after remount"
run umount /mnt
logout

# Migration: the host moves the LUN to the node at PORT2 (location add,
# image sync, image move, location remove) while the guest waits here; the
# guest then logs in there, retrying until that node serves the LUN.
if [ -n "$PORT2" ]; then
    echo "KI-PAUSE $TOKEN"
    step "waiting for the LUN at 10.0.2.2:$PORT2"
    PORTAL=10.0.2.2:$PORT2
    i=0
    until $ISCSIADM -m discovery -t sendtargets -p "$PORTAL" -o nonpersistent >/run/disc.log 2>&1 &&
        TPGT=$(awk -v iqn="$IQN" '$2 == iqn { sub(/.*,/, "", $1); print $1; exit }' /run/disc.log) &&
        [ -n "$TPGT" ]; do
        i=$((i + 1)); [ $i -gt 120 ] && fail "discovery at $PORTAL never listed $IQN"
        sleep 1
    done
    node_record "$TPGT"
    i=0
    while :; do
        if $ISCSIADM -m node -T "$IQN" -p "$PORTAL" --login >/run/cmd.log 2>&1; then
            j=0 DEV=
            while [ -z "$DEV" ] && [ $j -lt 25 ]; do
                for b in /sys/class/iscsi_session/session*/device/target*/*:*:*:"$LUN"/block/*; do
                    [ -e "$b" ] && [ -b "/dev/${b##*/}" ] && DEV=/dev/${b##*/}
                done
                j=$((j + 1)); [ -n "$DEV" ] || sleep 0.2
            done
            [ -n "$DEV" ] && break
            $ISCSIADM -m node -T "$IQN" -p "$PORTAL" --logout >/dev/null 2>&1
        fi
        i=$((i + 1)); [ $i -gt 60 ] && fail "no LUN $LUN at $PORTAL after the move"
        sleep 2
    done
    step "session 2 at the new portal: LUN $LUN is $DEV"
else
    # Session 2: a fresh login, so nothing comes from the first session.
    login "session 2"
fi
step "e2fsck -fn $DEV"
run /usr/sbin/e2fsck -fn "$DEV"
run mount -t ext4 -o ro "$DEV" /mnt
verify "session 2, read-only"
run umount /mnt
logout

step "done"
finish PASS
