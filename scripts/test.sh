#!/usr/bin/env bash
# The test command of the README and of CI: set-up (idempotent), formatting,
# lints, and every test of the workspace against real QEMU and the real test
# guest. Fails on the first failing step.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# CI disks can be nearly full: the workspace's test build with full debug
# info and incremental state took 9.6 GB, and a linker ran out of room
# (SIGBUS) once. Line tables keep file:line in panics and backtraces.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Tests that cannot run on this machine (hardware KVM, SEV-SNP, fixtures not
# in the collection) call swtpm_tests::skip, which lists them here: libtest
# counts them as passed, this script reports them as skipped (a skipped case
# inside a larger test is subtracted too, so the passed count never includes
# a skip).
skips=$(mktemp -t tellus-skips.XXXXXX)
results=$(mktemp -t tellus-results.XXXXXX)
trap 'rm -f "$skips" "$results"' EXIT
set +e
TELLUS_SKIP_LOG=$skips cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
read -r total failed < <(awk '/^test result:/ {p += $4; f += $6} END {print p + 0, f + 0}' "$results")
skipped=$(sort -u "$skips" | wc -l)
echo
echo "tests: $((total - skipped)) passed, $skipped skipped, $failed failed"
sort -u "$skips"
exit "$status"
