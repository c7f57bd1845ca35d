#!/usr/bin/env bash
# The main job: an attested VM launch with the embedded defaults, on one
# machine, from nothing:
#   1. set up (idempotent) and build tellus + tellus-verifier;
#   2. start a software TPM manufactured like a real one (swtpm_setup: EK
#      certificate signed by a local CA) and a local verifier (SQLite, plain
#      HTTP on loopback) that trusts that CA;
#   3. `tellus host init` + `tellus host enroll` (EK certificate chain,
#      credential activation);
#   4. reference values from `tellus measure predict --config vm.toml`
#      loaded with `tellus-verifier refs add`, and a random demo secret
#      uploaded;
#   5. `tellus launch --config vm.toml`: measure into PCR 13, boot the test
#      guest, the guest asks for the secret, the launcher relays the KBS
#      exchange with a TPM quote, the verifier checks quote + log + policy
#      and releases the secret encrypted to the guest's ephemeral key;
#   6. show the secret's hash as printed from inside the guest next to the
#      hash of what was uploaded.
# Everything it starts is stopped and its files are removed at the end
# (set TELLUS_DEMO_KEEP=1 to keep the work directory).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh"
# shellcheck disable=SC1091
source "${TELLUS_CACHE:-$HOME/.cache/tellus}/guest/env"
(cd "$repo" && cargo build --quiet --release --locked -p tellus-launcher -p tellus-verifier)
tellus=$repo/target/release/tellus
verifier=$repo/target/release/tellus-verifier

work=$(mktemp -d -t tellus-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n ${TELLUS_DEMO_KEEP:-} ]]; then
        echo "demo: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
say() { printf '\ndemo: %s\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket
for _ in range(100):
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]
    t=socket.socket()
    try: t.bind(("127.0.0.1",p+1)); print(p); break
    except OSError: pass'
}
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: nothing listens on port $1 ($2 did not start)" >&2
    return 1
}

say "software TPM with an EK certificate from a local CA (swtpm_setup)"
mkdir -p "$work/tpm" "$work/localca" "$work/swtpm-config"
cat >"$work/swtpm-config/swtpm_setup.conf" <<EOF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $work/swtpm-config/swtpm-localca.conf
create_certs_tool_options = $work/swtpm-config/swtpm-localca.options
active_pcr_banks = sha256,sha384
EOF
cat >"$work/swtpm-config/swtpm-localca.conf" <<EOF
statedir = $work/localca
signingkey = $work/localca/signkey.pem
issuercert = $work/localca/issuercert.pem
certserial = $work/localca/certserial
EOF
printf -- '--platform-manufacturer tellus\n--platform-version 2.1\n--platform-model demo\n' \
    >"$work/swtpm-config/swtpm-localca.options"
swtpm_setup --tpm2 --create-ek-cert --create-platform-cert --pcr-banks sha256,sha384 \
    --tpmstate "$work/tpm" --config "$work/swtpm-config/swtpm_setup.conf" >"$work/swtpm_setup.log" 2>&1 \
    || { cat "$work/swtpm_setup.log" >&2; exit 1; }
tpm_port=$(free_port)
swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$work/tpm" \
    --server type=tcp,port="$tpm_port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((tpm_port + 1)),bindaddr=127.0.0.1 &
pids+=($!)
wait_port "$tpm_port" swtpm
export TELLUS_TPM="swtpm:host=127.0.0.1,port=$tpm_port" TELLUS_STATE_DIR="$work/host"

say "local verifier (SQLite in $work/verifier, EK CA = the swtpm local CA)"
mkdir -p "$work/ek-ca"
cp "$work/localca/issuercert.pem" "$work/localca/swtpm-localca-rootca-cert.pem" "$work/ek-ca/"
printf 'ek_ca_dir = "%s"\n' "$work/ek-ca" >"$work/verifier.toml"
v_port=$(free_port)
url="http://127.0.0.1:$v_port"
"$verifier" serve --insecure-http --listen "127.0.0.1:$v_port" \
    --state-dir "$work/verifier" --config "$work/verifier.toml" 2>"$work/verifier.log" &
pids+=($!)
wait_port "$v_port" tellus-verifier

say "host identity and enrollment"
"$tellus" host init
"$tellus" host enroll --verifier "$url"

say "reference values and the demo secret"
cmdline="console=ttyS0 reboot=t panic=-1 tellus.oneshot"
# Under TCG (no hardware KVM) microvm needs an early TSC frequency.
if ! { [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]] && [[ ! -e /sys/module/kvm_pvm ]]; }; then
    cmdline+=" tsc_early_khz=2000000"
fi
cat >"$work/vm.toml" <<EOF
name = "demo"
kernel = "$TELLUS_GUEST_KERNEL"
initrd = "$TELLUS_GUEST_INITRD"
cmdline = "$cmdline"
vcpus = 2
memory = "256M"
console_log = "console.log"
resources = ["default/demo/secret"]
on_attestation_failure = "poweroff"

[verifier]
url = "$url"
EOF
"$tellus" measure predict --config "$work/vm.toml" --output json >"$work/reference-values.json"
"$verifier" refs add "$work/reference-values.json" --state-dir "$work/verifier" \
    --config "$work/verifier.toml" --provenance "scripts/demo.sh: tellus measure predict --config vm.toml"
head -c 32 /dev/urandom >"$work/secret"
curl -fsS -X POST -H "Authorization: Bearer $(cat "$work/verifier/admin-token")" \
    --data-binary @"$work/secret" "$url/kbs/v0/resource/default/demo/secret" >/dev/null
uploaded=$(sha256sum "$work/secret" | cut -d' ' -f1)

say "tellus launch --config vm.toml"
status=0
"$tellus" launch --config "$work/vm.toml" || status=$?
in_guest=$(sed -n 's|.*secret /run/tellus/secrets/default/demo/secret sha256=\([0-9a-f]\{64\}\).*|\1|p' \
    "$work/console.log" | head -n 1)
grep -E 'attest|released|denied' "$work/verifier.log" | tail -n 3 >&2 || true

say "result"
printf '  sha256 of the secret uploaded to the verifier: %s\n' "$uploaded"
printf '  sha256 printed from inside the guest:          %s\n' "${in_guest:-<none>}"
if [[ $status -eq 0 && "$in_guest" == "$uploaded" ]]; then
    echo "demo: MATCH: the attested guest received the secret" >&2
else
    echo "demo: FAILED: launch exit status $status; the guest did not print the uploaded secret's hash" >&2
    exit 1
fi
