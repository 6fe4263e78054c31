#!/usr/bin/env bash
# The Linux kernel iSCSI initiator (open-iscsi + iscsi_tcp) against a target on
# the host's 127.0.0.1, from a small qemu guest. See README.md in this folder.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: kernel-initiator.sh --portal 127.0.0.1:PORT --target IQN [options]

Boots a qemu guest (Debian kernel, busybox, open-iscsi, e2fsprogs) that reaches
the host's 127.0.0.1 as 10.0.2.2 and contacts no other address. It discovers
the target with SendTargets, logs in, makes an ext4 filesystem on the LUN,
writes and verifies files, logs out, logs in again, runs e2fsck and verifies
the files read-only. THE LUN'S CONTENTS ARE DESTROYED.

  --portal 127.0.0.1:PORT  the target's portal on the host loopback (required)
  --target IQN             the target name (required; discovery must list it)
  --lun N                  the LUN to use (default 0)
  --chap USER:SECRET       log in with one-way CHAP
  --digest                 require CRC32C header and data digests
  --timeout SECS           hard limit for the guest run (default 600)
  --data-mib N             about how much file data to write (default 32)
  --work DIR               cache and run directories (default
                           /var/tmp/locus-kernel-initiator)
  --keep                   keep the run directory (console log) on PASS too
  --portal2 127.0.0.1:PORT migration: session 2 logs in at this portal; between
                           the sessions the guest waits while the host runs
  --pause-cmd CMD          (bash -c CMD), which moves the LUN there
  --help                   this text

Prints progress lines, then one verdict line:
  kernel-initiator: PASS             (exit 0)
  kernel-initiator: FAIL <reason>    (exit 1)
Needs root (it installs missing Debian packages with apt-get).
EOF
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORTAL='' IQN='' LUN=0 CHAP='' DIGEST=0 TIMEOUT=600 DATA_MIB=32 KEEP=0 PORTAL2='' PAUSE_CMD=''
WORK=/var/tmp/locus-kernel-initiator
T0=$SECONDS
QEMU_PID='' RUN='' VERDICT_DONE=0

log() { echo "[ki +$((SECONDS - T0))s] $*"; }
pass() {
    VERDICT_DONE=1
    echo "kernel-initiator: PASS"
    exit 0
}
fail() {
    VERDICT_DONE=1
    if [[ -n $RUN && -f $RUN/console.log ]]; then
        echo "---- last 40 console lines ($RUN/console.log) ----"
        tr -d '\r' <"$RUN/console.log" | tail -n 40
        echo "----"
    fi
    echo "kernel-initiator: FAIL $*"
    exit 1
}
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$?
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if ((VERDICT_DONE == 0)); then
        echo "kernel-initiator: FAIL the script stopped early (exit $rc)"
        rc=1
    fi
    [[ -n $RUN ]] && rm -f "$RUN/initrd"
    if ((rc == 0 && KEEP == 0)) && [[ -n $RUN ]]; then
        rm -rf "$RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM HUP

while (($#)); do
    case $1 in
    --portal) PORTAL=${2:?}; shift ;;
    --target) IQN=${2:?}; shift ;;
    --lun) LUN=${2:?}; shift ;;
    --chap) CHAP=${2:?}; shift ;;
    --digest) DIGEST=1 ;;
    --timeout) TIMEOUT=${2:?}; shift ;;
    --data-mib) DATA_MIB=${2:?}; shift ;;
    --work) WORK=${2:?}; shift ;;
    --keep) KEEP=1 ;;
    --portal2) PORTAL2=${2:?}; shift ;;
    --pause-cmd) PAUSE_CMD=${2:?}; shift ;;
    -h | --help) usage; VERDICT_DONE=1; exit 0 ;;
    *) fail "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

[[ -n $PORTAL && -n $IQN ]] || fail "--portal and --target are required (see --help)"
[[ $PORTAL =~ ^(127\.0\.0\.1|localhost):([0-9]+)$ ]] ||
    fail "--portal must be 127.0.0.1:PORT (the guest reaches only the host loopback)"
PORT=${BASH_REMATCH[2]}
PORT2=''
if [[ -n $PORTAL2 ]]; then
    [[ $PORTAL2 =~ ^(127\.0\.0\.1|localhost):([0-9]+)$ ]] ||
        fail "--portal2 must be 127.0.0.1:PORT (the guest reaches only the host loopback)"
    PORT2=${BASH_REMATCH[2]}
    [[ -n $PAUSE_CMD ]] || fail "--portal2 needs --pause-cmd (what moves the LUN there)"
fi
[[ $LUN =~ ^[0-9]+$ && $TIMEOUT =~ ^[0-9]+$ && $DATA_MIB =~ ^[0-9]+$ ]] ||
    fail "--lun, --timeout and --data-mib take numbers"
CHAP_USER='' CHAP_SECRET=''
if [[ -n $CHAP ]]; then
    [[ $CHAP == *:* ]] || fail "--chap takes USER:SECRET"
    CHAP_USER=${CHAP%%:*} CHAP_SECRET=${CHAP#*:}
fi
((EUID == 0)) || fail "must run as root"

# ---- host packages -------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /usr/sbin/iscsid && -x /usr/sbin/iscsiadm ]] || need+=(open-iscsi)
[[ -x /usr/sbin/mke2fs && -x /usr/sbin/e2fsck ]] || need+=(e2fsprogs)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1; }
    mkdir -p "$WORK"
    apt_install || { apt-get update >>"$WORK/apt.log" 2>&1 && apt_install; } ||
        fail "apt-get install ${need[*]} failed (see $WORK/apt.log)"
fi
if command -v ss >/dev/null &&
    ! ss -Hltn "sport = :$PORT" | awk '$4 ~ /^(127\.0\.0\.1|\*|0\.0\.0\.0|\[::\]|\[::ffff:127\.0\.0\.1\]):/ { ok = 1 } END { exit !ok }'; then
    fail "nothing listens on 127.0.0.1:$PORT"
fi

# ---- cached kernel + base initramfs ---------------------------------------
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
[[ -n $KPKG ]] || { apt-get update >/dev/null 2>&1 || true
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }'); }
[[ -n $KPKG ]] || fail "apt-cache knows no linux-image-amd64 (Debian apt sources needed)"
KEY=$({
    cat "${BASH_SOURCE[0]}" "$HERE/guest-init.sh"
    apt-cache show --no-all-versions "$KPKG" busybox-static | grep -E '^(Package|Version):'
    dpkg-query -W open-iscsi e2fsprogs libc6
} | sha256sum | cut -c1-16)
CACHE=$WORK/cache/$KEY

build_cache() {
    local b=$WORK/cache/build.$$ root kver
    rm -rf "$b" && mkdir -p "$b/deb" && chmod 777 "$b/deb"
    log "building the guest image in $CACHE (kernel $KPKG)"
    (cd "$b/deb" && apt-get download "$KPKG" busybox-static) >"$b/apt.log" 2>&1 ||
        { apt-get update >>"$b/apt.log" 2>&1 && (cd "$b/deb" && apt-get download "$KPKG" busybox-static) >>"$b/apt.log" 2>&1; } ||
        fail "apt-get download $KPKG busybox-static failed (see $b/apt.log)"
    dpkg -x "$b"/deb/linux-image-*.deb "$b/k"
    dpkg -x "$b"/deb/busybox-static_*.deb "$b/bb"
    local bb=$b/bb/bin/busybox
    kver=$(ls "$b/k/lib/modules")
    "$bb" depmod -b "$b/k" "$kver"

    root=$b/root
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/iscsi,lib/modules,proc,sys,dev,run,mnt,tmp,var}
    ln -s /run/lock "$root/var/lock"
    cp "$bb" "$root/bin/busybox"
    cp "$HERE/guest-init.sh" "$root/init" && chmod 755 "$root/init"

    # Modules, dependencies first (modules.dep lists each module's full closure).
    local mdir=$b/k/lib/modules/$kver
    awk -v want="virtio_pci virtio_net sd_mod iscsi_tcp crc32c_generic ext4" '
        { sub(/:$/, "", $1); name = $1; sub(/.*\//, "", name); sub(/\.ko$/, "", name)
          path[name] = $1; deps[$1] = ""; for (i = 2; i <= NF; i++) deps[$1] = deps[$1] " " $i }
        function emit(p,   n, d, i) { if (p in done) return; done[p] = 1
          n = split(deps[p], d, " "); for (i = n; i >= 1; i--) emit(d[i]); print p }
        END { n = split(want, w, " "); for (i = 1; i <= n; i++) {
              if (!(w[i] in path)) { print "missing module " w[i] > "/dev/stderr"; exit 1 }
              emit(path[w[i]]) } }' "$mdir/modules.dep" >"$root/modules.load" ||
        fail "resolving kernel modules failed"
    while read -r m; do
        mkdir -p "$root/lib/modules/$(dirname "$m")"
        cp "$mdir/$m" "$root/lib/modules/$m"
    done <"$root/modules.load"

    # open-iscsi and e2fsprogs from the host, with their shared libraries.
    local bin lib
    for bin in /usr/sbin/iscsid /usr/sbin/iscsiadm /usr/sbin/mke2fs /usr/sbin/e2fsck; do
        cp "$bin" "$root$bin"
        for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
            [[ -e $root$lib ]] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
        done
    done
    cp /etc/mke2fs.conf "$root/etc/"
    echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd" # iscsid checks that iscsiadm runs as root
    echo "root:x:0:" >"$root/etc/group"
    printf 'node.startup = manual\nnode.conn[0].timeo.login_timeout = 15\nnode.session.initial_login_retry_max = 2\nnode.session.timeo.replacement_timeout = 20\n' \
        >"$root/etc/iscsi/iscsid.conf"
    echo "InitiatorName=iqn.2026-11.io.locus:kernel-initiator" >"$root/etc/iscsi/initiatorname.iscsi"

    (cd "$root" && find . | "$bb" cpio -o -H newc 2>/dev/null | gzip -1) >"$b/base.cpio.gz"
    cp "$b/k/boot/vmlinuz-$kver" "$b/vmlinuz"
    rm -rf "${CACHE:?}" && mkdir -p "$CACHE"
    mv "$b/vmlinuz" "$b/base.cpio.gz" "$CACHE/"
    cp "$bb" "$CACHE/busybox"
    rm -rf "$b"
    log "guest image: $(du -sh "$CACHE/base.cpio.gz" | cut -f1) initramfs, kernel $kver"
}

mkdir -p "$WORK/cache" "$WORK/runs"
exec 9>"$WORK/cache/lock"
flock 9
if [[ ! -f $CACHE/base.cpio.gz ]]; then
    find "$WORK/cache" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
    build_cache
else
    log "guest image cached ($CACHE)"
fi
flock -u 9

# ---- this run --------------------------------------------------------------
# Keep the 10 newest run directories (failed runs, or --keep).
find "$WORK/runs" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +10 |
    cut -d' ' -f2- | xargs -r rm -rf
RUN=$(mktemp -d "$WORK/runs/$(date +%Y%m%d-%H%M%S)-XXXX")
TOKEN=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
q() { printf '%q' "$1"; }
{
    echo "PORT=$PORT PORT2=$PORT2 IQN=$(q "$IQN") LUN=$LUN TOKEN=$TOKEN DIGEST=$DIGEST DATA_MIB=$DATA_MIB"
    echo "CHAP_USER=$(q "$CHAP_USER") CHAP_SECRET=$(q "$CHAP_SECRET")"
} >"$RUN/ki.conf"
# A compressed second archive: the kernel needs no alignment between them.
(cd "$RUN" && echo ki.conf | "$CACHE/busybox" cpio -o -H newc 2>/dev/null | gzip) >"$RUN/conf.cpio"
cat "$CACHE/base.cpio.gz" "$RUN/conf.cpio" >"$RUN/initrd"
rm "$RUN/ki.conf" "$RUN/conf.cpio"

log "booting the guest (TCG), portal 10.0.2.2:$PORT, $IQN LUN $LUN${CHAP:+, CHAP}$( ((DIGEST)) && echo ', CRC32C digests')"
: >"$RUN/console.log"
# timeout bounds qemu even if this script is SIGKILLed.
timeout -k 5 "$((TIMEOUT + 5))" qemu-system-x86_64 \
    -nodefaults -no-user-config -accel tcg -smp 1 -m 512 -display none -no-reboot \
    -kernel "$CACHE/vmlinuz" -initrd "$RUN/initrd" \
    -append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init" \
    -serial "file:$RUN/console.log" -monitor none \
    -netdev user,id=n -device virtio-net-pci,netdev=n \
    >"$RUN/qemu.log" 2>&1 &
QEMU_PID=$!

shown=0 result=
deadline=$((SECONDS + TIMEOUT))
while :; do
    mapfile -t lines < <(tr -d '\r' <"$RUN/console.log" | grep -a '^KI')
    for ((; shown < ${#lines[@]}; shown++)); do
        case ${lines[shown]} in
        "KI: "*) log "guest: ${lines[shown]#KI: }" ;;
        "KI-RESULT $TOKEN "*) result=${lines[shown]#KI-RESULT $TOKEN } ;;
        "KI-PAUSE $TOKEN")
            log "host: the guest waits between sessions; running the pause command"
            if ! bash -c "$PAUSE_CMD" >"$RUN/pause.log" 2>&1; then
                sed 's/^/    /' "$RUN/pause.log" >&2
                fail "the pause command failed: $(tail -n 1 "$RUN/pause.log")"
            fi
            sed 's/^/    /' "$RUN/pause.log"
            log "host: pause command done"
            ;;
        esac
    done
    [[ -n $result ]] && break
    if ! kill -0 "$QEMU_PID" 2>/dev/null; then
        wait "$QEMU_PID" && rc=0 || rc=$?
        fail "qemu exited (status $rc) without a result: $(tail -n 3 "$RUN/qemu.log" | tr '\n' ' ')"
    fi
    ((SECONDS < deadline)) || fail "no result within ${TIMEOUT}s"
    sleep 0.5
done
# The guest powers off right after the result; give it a moment, then stop it.
for _ in 1 2 3 4 5 6; do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.5; done

case $result in
PASS) log "guest run took $((SECONDS - T0))s"; pass ;;
FAIL*) fail "${result#FAIL }" ;;
*) fail "unexpected result: $result" ;;
esac
