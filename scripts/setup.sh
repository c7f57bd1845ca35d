#!/usr/bin/env bash
# tellus set-up: idempotent; used by both README commands and by .ci/run.
#
#  1. installs the Debian packages tellus needs (only the missing ones);
#  2. builds the test guest into $TELLUS_CACHE (default ~/.cache/tellus):
#       guest/vmlinuz            Debian cloud kernel (apt-get download, dpkg-deb -x)
#       guest/kernel-version     the exact package version it came from
#       guest/initramfs.cpio.gz  cpio newc + gzip: /init = static tellus-agent, /dev/console
#       guest/env                shell-sourceable paths of the above
# A second run only rebuilds the agent if its source changed and re-packs the
# initramfs if the agent binary changed: seconds.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TELLUS_CACHE:-$HOME/.cache/tellus}
guest=$cache/guest
mkdir -p "$guest"
log() { printf 'setup: %s\n' "$*" >&2; }

# ---- 1. Debian packages -------------------------------------------------------
packages=(qemu-system-x86 qemu-utils swtpm swtpm-tools tpm2-tools libtss2-dev libssl-dev pkg-config ovmf cpio curl python3 openssl)
missing=()
for p in "${packages[@]}"; do
    # qemu-utils counts only in the same version as qemu-system-x86: the image's
    # preinstalled qemu-utils backport breaks Debian's qemu-system-common.
    status=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$p" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$p")
done
qsys=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
qutil=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
if [[ -n $qsys && $qsys != "$qutil" ]]; then missing+=(qemu-utils); fi

if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    want=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    args=()
    for p in "${missing[@]}"; do
        if [[ $p == qemu-utils ]]; then args+=("qemu-utils=$want"); else args+=("$p"); fi
    done
    # qemu-utils is pinned to QEMU's version so apt may downgrade the backport.
    [[ " ${missing[*]} " == *" qemu-system-x86 "* && " ${missing[*]} " != *" qemu-utils "* ]] \
        && args+=("qemu-utils=$want")
    apt-get install -y -q --allow-downgrades "${args[@]}" >&2
else
    log "Debian packages present"
fi

# ---- 2a. guest kernel -----------------------------------------------------------
if [[ ! -s $guest/vmlinuz || ! -s $guest/kernel-version ]]; then
    log "downloading the Debian cloud kernel"
    [[ -n $(apt-cache policy linux-image-cloud-amd64 | awk '/Candidate:/{print $2}') ]] || apt-get update -q >&2
    # Resolve the meta package to one concrete image package and record it.
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [[ -n $pkg ]] || { log "cannot resolve linux-image-cloud-amd64 to a kernel package"; exit 1; }
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download "$pkg=$ver" >&2)
    dpkg-deb -x "$work"/*.deb "$work/x"
    vmlinuz=$(ls "$work"/x/boot/vmlinuz-* | head -n1)
    cp "$vmlinuz" "$guest/vmlinuz.tmp" && mv "$guest/vmlinuz.tmp" "$guest/vmlinuz"
    printf '%s %s %s\n' "$pkg" "$ver" "$(sha256sum "$guest/vmlinuz" | cut -d' ' -f1)" >"$guest/kernel-version"
    rm -rf "$work"
    trap - EXIT
fi
log "kernel: $(cat "$guest/kernel-version")"

# ---- 2b. static agent + initramfs -------------------------------------------------
# An explicit --target keeps the crt-static flags away from host builds (and
# their cache) and from build scripts.
log "building the static tellus-agent"
target=x86_64-unknown-linux-gnu
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release --locked --target "$target" -p tellus-agent)
agent=$repo/target/$target/release/tellus-agent
if readelf -d "$agent" | grep -q "(NEEDED)"; then log "tellus-agent links shared libraries; it must be static"; exit 1; fi

agent_sum=$(sha256sum "$agent" | cut -d' ' -f1)
if [[ ! -s $guest/initramfs.cpio.gz || "$(cat "$guest/agent.sha256" 2>/dev/null)" != "$agent_sum" ]]; then
    log "packing the initramfs"
    root=$(mktemp -d)
    mkdir -p "$root"/{dev,proc,sys,run}
    install -m 0755 "$agent" "$root/init"
    mknod -m 0600 "$root/dev/console" c 5 1
    # Reproducible archive: fixed mtimes, sorted names.
    find "$root" -exec touch -h -d @0 {} +
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible -R 0:0) \
        | gzip -9 -n >"$guest/initramfs.cpio.gz.tmp"
    mv "$guest/initramfs.cpio.gz.tmp" "$guest/initramfs.cpio.gz"
    echo "$agent_sum" >"$guest/agent.sha256"
    rm -rf "$root"
fi

cat >"$guest/env" <<ENV
TELLUS_GUEST_KERNEL=$guest/vmlinuz
TELLUS_GUEST_INITRD=$guest/initramfs.cpio.gz
ENV
log "test guest ready: $guest"
