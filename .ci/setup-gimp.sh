#!/usr/bin/env bash
# Build or find a GIMP 3 with Python plug-in support, for the GIMP tests and the batch script.
#
#   bash .ci/setup-gimp.sh            # prints the result as shell assignments on the last lines
#
# - A native gimp-console-3.0 with the GIMP 3 Python bindings: used as is (FFCLIP_GIMP_ROOT=).
# - Debian 13 (trixie) or later, as root: apt-get install gimp xvfb xauth xdotool.
# - Debian 12 (bookworm): a debootstrap trixie chroot at $FFCLIP_GIMP_ROOT (default /opt/gimp3-root).
#   An existing chroot is reused; an interrupted one is completed. Needs root.
# Idempotent; a lock keeps two runs from building the same chroot at once.
set -euo pipefail

ROOT="${FFCLIP_GIMP_ROOT:-/opt/gimp3-root}"
MIRROR="${FFCLIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(gimp xvfb xauth xdotool)

log() { echo "setup-gimp: $*" >&2; }

native_ok() {
    command -v gimp-console-3.0 >/dev/null 2>&1 || return 1
    # GIMP 3's Python support: the typelib the plug-ins import.
    ls /usr/lib/*/girepository-1.0/Gimp-3.0.typelib /usr/lib/girepository-1.0/Gimp-3.0.typelib \
        >/dev/null 2>&1
}

chroot_ok() {
    [ -x "$ROOT/usr/bin/gimp-console-3.0" ] && [ -x "$ROOT/usr/bin/xvfb-run" ] \
        && [ -x "$ROOT/usr/bin/xdotool" ] && [ -x "$ROOT/usr/bin/xauth" ] \
        && ls "$ROOT"/usr/lib/*/girepository-1.0/Gimp-3.0.typelib >/dev/null 2>&1
}

report() {  # machine-readable result
    echo "FFCLIP_GIMP_ROOT=$1"
    echo "FFCLIP_GIMP_CONSOLE=$2"
}

debian_major() {
    local v
    v="$(cut -d. -f1 /etc/debian_version 2>/dev/null || true)"
    case "$v" in ''|*[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}

if [ "${FFCLIP_GIMP_FORCE_CHROOT:-}" != "1" ] && native_ok; then
    log "using the system GIMP: $(command -v gimp-console-3.0)"
    report "" "$(command -v gimp-console-3.0)"
    exit 0
fi

if [ "${FFCLIP_GIMP_FORCE_CHROOT:-}" != "1" ] && [ "$(debian_major)" -ge 13 ]; then
    [ "$(id -u)" = 0 ] || { log "GIMP 3 missing; run as root: apt-get install ${PACKAGES[*]}"; exit 1; }
    log "Debian $(cat /etc/debian_version): installing ${PACKAGES[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2
    native_ok || { log "gimp installed but its Python support (Gimp-3.0.typelib) is missing"; exit 1; }
    report "" "$(command -v gimp-console-3.0)"
    exit 0
fi

if chroot_ok; then
    log "reusing the GIMP 3 chroot at $ROOT"
    report "$ROOT" "/usr/bin/gimp-console-3.0"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "building the trixie chroot at $ROOT needs root"; exit 1; }

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
if ! flock -w 900 9; then log "timed out waiting for another setup-gimp run"; exit 1; fi
if chroot_ok; then   # built by the run we waited for
    report "$ROOT" "/usr/bin/gimp-console-3.0"
    exit 0
fi

MOUNTED=""
cleanup() { if [ -n "$MOUNTED" ]; then umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc" || true; fi; }
trap cleanup EXIT

start=$(date +%s)
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi

if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/etc/debian_version" ] \
        || [ -d "$ROOT/debootstrap" ]; then
    # Absent or an interrupted debootstrap: start over.
    log "debootstrap trixie into $ROOT (a few minutes)"
    if mountpoint -q "$ROOT/proc" 2>/dev/null; then umount "$ROOT/proc" || umount -l "$ROOT/proc"; fi
    rm -rf --one-file-system "$ROOT"
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >&2
fi

cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
if ! mountpoint -q "$ROOT/proc"; then mount -t proc proc "$ROOT/proc"; MOUNTED=1; fi
log "installing ${PACKAGES[*]} in the chroot"
chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    dpkg --configure -a >&2 || true   # an interrupted earlier run
chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get update -qq >&2
chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2
chroot "$ROOT" apt-get clean
mkdir -p "$ROOT/tmp"; chmod 1777 "$ROOT/tmp"
cleanup; MOUNTED=""

chroot_ok || { log "the chroot at $ROOT is incomplete after apt"; exit 1; }
log "GIMP 3 chroot ready at $ROOT in $(( $(date +%s) - start )) s"
report "$ROOT" "/usr/bin/gimp-console-3.0"
