#!/usr/bin/env bash
# The test command of the README and of CI: set-up (idempotent), formatting,
# lints, and every test of the workspace against real QEMU and the real test
# guest. Fails on the first failing step.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
