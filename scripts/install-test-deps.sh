#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages the Locus test suite needs, when
# they are missing. Idempotent: a machine that has them all costs one dpkg query.
#
# The one trap: QEMU refuses to load a block module (the libiscsi driver lives
# in qemu-block-extra) from another build, and the machine's qemu-utils may be a
# backport newer than any qemu-block-extra Debian ships. We therefore install
# both at the same version, downgrading qemu-utils when needed.
set -euo pipefail

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for pkg in libiscsi-bin tgt redis-server open-iscsi e2fsprogs iproute2 procps; do
  have "$pkg" || need+=("$pkg")
done

export DEBIAN_FRONTEND=noninteractive
updated=0
apt_update() { [ "$updated" = 1 ] || { apt-get update -qq; updated=1; }; }

if [ "${#need[@]}" -gt 0 ]; then
  apt_update
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# qemu-utils and qemu-block-extra must be the same build.
utils_v=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
extra_v=$(dpkg-query -W -f='${Version}' qemu-block-extra 2>/dev/null || true)
if [ -z "$extra_v" ] || [ "$utils_v" != "$extra_v" ]; then
  apt_update
  # The newest version that Debian ships qemu-block-extra in.
  v=$(apt-cache policy qemu-block-extra | awk '/Candidate:/ {print $2}')
  if [ -z "$v" ] || [ "$v" = "(none)" ]; then
    echo "install-test-deps: no qemu-block-extra package is available" >&2
    exit 1
  fi
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-utils=$v" "qemu-block-extra=$v" >/dev/null
fi
echo "install-test-deps: ok (qemu $(dpkg-query -W -f='${Version}' qemu-utils), libiscsi-bin $(dpkg-query -W -f='${Version}' libiscsi-bin), tgt $(dpkg-query -W -f='${Version}' tgt), redis $(dpkg-query -W -f='${Version}' redis-server))"
