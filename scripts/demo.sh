#!/usr/bin/env bash
# The main job, as far as the project has come: set up (idempotent), build
# tellus, start a software TPM (swtpm), and boot the test guest (Debian cloud
# kernel + tellus-agent as /init) with a measured `tellus run`: the launch
# records go into PCR 13 and the host log before any vCPU runs. The agent
# reports Ready over the agent channel and, with tellus.oneshot, powers the VM
# off, and the launcher records the stop and the console digest. The demo ends
# by showing the TPM's PCR 13 next to the replay of the host log.
# Later issues turn this into the full attested launch (attest, release).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh"
# shellcheck disable=SC1091
source "${TELLUS_CACHE:-$HOME/.cache/tellus}/guest/env"
(cd "$repo" && cargo build --quiet --release --locked -p tellus-launcher)
work=$(mktemp -d -t tellus-demo.XXXXXX)
log=$work/console.log
# swtpm on a free port pair (TPM on P, control on P+1, as libtss2's swtpm TCTI expects).
port=$(python3 -c 'import socket
for _ in range(100):
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]
    t=socket.socket()
    try: t.bind(("127.0.0.1",p+1)); print(p); break
    except OSError: pass')
mkdir -p "$work/tpm"
swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$work/tpm" \
    --server type=tcp,port="$port",bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 &
swtpm_pid=$!
trap 'kill $swtpm_pid 2>/dev/null; wait $swtpm_pid 2>/dev/null' EXIT
export TELLUS_TPM="swtpm:host=127.0.0.1,port=$port" TELLUS_STATE_DIR="$work/state"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

cmdline="console=ttyS0 reboot=t panic=-1 tellus.oneshot"
# Under TCG (no hardware KVM) microvm needs an early TSC frequency.
if ! { [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]] && [[ ! -e /sys/module/kvm_pvm ]]; }; then
    cmdline+=" tsc_early_khz=2000000"
fi
"$repo/target/release/tellus" run \
    --kernel "$TELLUS_GUEST_KERNEL" --initrd "$TELLUS_GUEST_INITRD" \
    --cmdline "$cmdline" --vcpus 2 --memory 256M --console-log "$log"
echo "demo: the guest booted, its agent reported Ready and it powered off; console log: $log" >&2
echo "demo: PCR 13 (sha256) in the TPM:" >&2
TPM2TOOLS_TCTI=$TELLUS_TPM tpm2_pcrread sha256:13 >&2
echo "demo: the host log replays to:" >&2
"$repo/target/release/tellus" eventlog show "$TELLUS_STATE_DIR/launch-log.cel" | grep '^PCR 13 sha256' >&2
