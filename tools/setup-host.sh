#!/usr/bin/env bash
# Prepare a Debian 12 / Ubuntu host for nova-amiboot: system packages (from
# bindep.txt), the project's virtualenv (.venv, pinned by
# upper-constraints.txt) and a running libvirtd + virtlogd.
# Idempotent: a second run only checks. Run as root.
# --list-packages: print the system packages it would install, and exit.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
venv=${AMIBOOT_VENV:-$top/.venv}
python=${PYTHON:-python3}

log() { echo "setup-host: $*" >&2; }

# The system packages are listed in bindep.txt (bindep's format). This runs
# before any virtualenv, so without the bindep tool: bindep_packages reads
# the subset of the syntax that the file's head allows, the way bindep
# does. A line applies when no negated selector matches this host or the
# PROFILES, when it names no profile or one of PROFILES, and when it names
# no platform or one of this host's.
bindep_packages() {
    local file=$1 line name sels s neg pos_prof ok_prof pos_plat ok_plat
    shift
    local -A active=()
    for s in "$@"; do
        active[$s]=1
    done
    # bindep's platform names for this host: the packaging system, the
    # distribution, the distribution with its codename and its version.
    if command -v dpkg >/dev/null; then
        active[platform:dpkg]=1
    fi
    for s in $(. /etc/os-release && echo "$ID" "$ID-${VERSION_CODENAME:-}" \
        "$ID-${VERSION_ID:-}"); do
        active[platform:$s]=1
    done
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        read -r name _ <<< "$line" || true
        name=${name%%"["*}
        [ -n "$name" ] || continue
        sels=
        if [[ $line == *"["* ]]; then
            sels=${line#*"["}
            if [[ $sels != *"]"* || $sels == *"("* ]]; then
                log "$file: cannot read: $line"
                exit 1
            fi
            sels=${sels%%]*}
        fi
        pos_prof=0 ok_prof=0 pos_plat=0 ok_plat=0 neg=0
        for s in $sels; do
            if [[ $s == "!"* ]]; then
                [ -z "${active[${s#!}]:-}" ] || neg=1
            elif [[ $s == platform:* ]]; then
                pos_plat=1
                [ -z "${active[$s]:-}" ] || ok_plat=1
            else
                pos_prof=1
                [ -z "${active[$s]:-}" ] || ok_prof=1
            fi
        done
        if [ $neg = 0 ] && [ $pos_prof = $ok_prof ] && \
            [ $pos_plat = $ok_plat ]; then
            echo "$name"
        fi
    done < "$file"
}

# Run time, building .venv and the tests.
listed=$(bindep_packages "$top/bindep.txt" build test)
if [ -z "$listed" ]; then
    log "no packages for this host in bindep.txt"
    exit 1
fi
mapfile -t packages <<< "$listed"
if [ "${1:-}" = --list-packages ]; then
    printf '%s\n' "${packages[@]}"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "run me as root (packages, libvirtd, /dev/kvm)"
    exit 1
fi

install_packages() {
    local missing=() p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
            || missing+=("$p")
    done
    # The test bed downloads the cloud kernel with apt: it needs the lists.
    if [ ${#missing[@]} -gt 0 ] || \
       ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
        log "apt-get update"
        apt-get update -qq
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

make_venv() {
    local stamp want
    stamp=$venv/.amiboot-stamp
    want=$(cat "$top/requirements.txt" "$top/test-requirements.txt" \
        "$top/doc/requirements.txt" "$top/upper-constraints.txt" \
        "$top/setup.cfg" | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    "$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
        || { log "$python is older than 3.11"; exit 1; }
    log "creating $venv (nova and libvirt-python take a minute or two)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # Pinned by upper-constraints.txt, as tox's environments are.
    "$venv/bin/pip" install -q -c "$top/upper-constraints.txt" -e "$top" \
        -r "$top/test-requirements.txt" -r "$top/doc/requirements.txt"
    echo "$want" > "$stamp"
}

libvirt_up() {
    virsh -c qemu:///system version >/dev/null 2>&1
}

start_libvirt() {
    if libvirt_up; then
        log "libvirtd is running; leaving it alone"
        return
    fi
    log "starting virtlogd and libvirtd (no service manager here)"
    mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/qemu \
        /var/cache/libvirt
    if ! getent passwd libvirt-qemu >/dev/null || ! getent group kvm >/dev/null
    then
        # The package normally creates them; without, QEMU runs as root.
        log "no libvirt-qemu user or kvm group: QEMU will run as root"
        sed -i -e 's/^#*user = .*/user = "root"/' \
            -e 's/^#*group = .*/group = "root"/' /etc/libvirt/qemu.conf
    elif [ -c /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
        # udev gives /dev/kvm to group kvm, mode 0660; without udev it stays
        # root-only. libvirt then sees KVM when probing QEMU as root but not
        # as libvirt-qemu, calls its capability cache outdated on every
        # start and re-probes for ~50 s. Do what udev would do.
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
    fi
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
    for _ in $(seq 1 60); do
        libvirt_up && return
        sleep 0.5
    done
    log "libvirtd did not come up; see /var/log/libvirt"
    exit 1
}

# Tools that read untrusted bytes run sandboxed as this user (nova_amiboot.
# sandbox, [amiboot] tool_user): neither root nor the QEMU user.
tool_user() {
    local user=${AMIBOOT_TOOL_USER:-amiboot-tool}
    if ! getent passwd "$user" >/dev/null; then
        log "creating system user $user (sandboxed host tools)"
        useradd --system --user-group --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
    fi
    # qemu-storage-daemon mounts its FUSE export inside the sandbox as that
    # user. fuse3's udev rule makes /dev/fuse 0666; without udev
    # (containers) it can stay root-only: do what udev would do.
    if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
        chmod 0666 /dev/fuse
    fi
}

install_packages
tool_user
# tools/cloud needs the host (packages, libvirtd) but not the test venv.
if [ "${AMIBOOT_SETUP_VENV:-yes}" = yes ]; then
    make_venv
fi
start_libvirt
log "ready"
