#!/usr/bin/env bash
# A private EC2-compatible endpoint for the EC2 driver's tests: moto's server (PyPI
# `moto[server]`, in the tests' virtualenv under /var/tmp), on 127.0.0.1 only. Started if it is
# not running, reused if it is (tests use names and tags of their own, and never reset it).
# Prints the endpoint URL. Needs python3-venv (scripts/test.sh installs it) and PyPI.
set -euo pipefail
venv=/var/tmp/stratus-test-venv
port="${STRATUS_TEST_EC2_PORT:-55055}"
dir="/var/tmp/stratus-test-ec2/$port"
if [ ! -x "$venv/bin/pip" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
if [ ! -x "$venv/bin/moto_server" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' >&2
fi
up() { curl -s -o /dev/null "http://127.0.0.1:$port/moto-api/" ; }
if ! up; then
    mkdir -p "$dir"
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    for _ in $(seq 1 120); do
        up && break
        sleep 0.5
    done
    up || { echo "moto did not start; see $dir/moto.log" >&2; exit 1; }
fi
echo "http://127.0.0.1:$port"
