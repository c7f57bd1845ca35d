#!/usr/bin/env bash
# The main job, as far as the project has come: set up (idempotent), build
# tellus, and boot the test guest (Debian cloud kernel + tellus-agent as /init)
# with `tellus run`. The agent reports Ready over the agent channel and, with
# tellus.oneshot, powers the VM off; the console log is kept for inspection.
# Later issues turn this into the full attested launch (measure, attest, release).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh"
# shellcheck disable=SC1091
source "${TELLUS_CACHE:-$HOME/.cache/tellus}/guest/env"
(cd "$repo" && cargo build --quiet --release --locked -p tellus-launcher)
log=$(mktemp -t tellus-console.XXXXXX.log)

cmdline="console=ttyS0 reboot=t panic=-1 tellus.oneshot"
# Under TCG (no hardware KVM) microvm needs an early TSC frequency.
if ! { [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]] && [[ ! -e /sys/module/kvm_pvm ]]; }; then
    cmdline+=" tsc_early_khz=2000000"
fi
"$repo/target/release/tellus" run \
    --kernel "$TELLUS_GUEST_KERNEL" --initrd "$TELLUS_GUEST_INITRD" \
    --cmdline "$cmdline" --vcpus 2 --memory 256M --console-log "$log"
echo "demo: the guest booted, its agent reported Ready and it powered off; console log: $log" >&2
