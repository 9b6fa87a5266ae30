#!/usr/bin/env bash
# Run every test of the workspace. This is the README's test command and what CI runs.
# It installs what the tests need on a fresh Debian 12 machine with Rust (nothing beyond the
# toolchain yet: SQLite is bundled, the fake cloud is in memory).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stratus-target}"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --locked --doc
