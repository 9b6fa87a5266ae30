#!/usr/bin/env bash
# Agent figures on the local cloud (as root): boot to operational for a template with one
# trivial boot script, the agent's idle resident memory inside an instance, the binary size.
#   bash scripts/bench-agent.sh [SERVERS]     (default 5; the release build is made first)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stratus-target}"
n="${1:-5}"
cargo build -q --release -p stratus-cli
bin="$CARGO_TARGET_DIR/release/stratus"
data=$(mktemp -d /var/tmp/stratus-bench-agent-XXXXXX)
log="$data/serve.log"
"$bin" --data-dir "$data" serve --listen 127.0.0.1:0 >"$log" 2>&1 &
serve=$!
cleanup() {
    # Terminate the servers, then delete what was created: deleting the cloud removes its
    # network from the host.
    for i in $(seq "$n"); do s server terminate "bench/s-$i" >/dev/null 2>&1 || true; done
    for i in $(seq "$n"); do
        for _ in $(seq 300); do
            st=$(s --json server show "bench/s-$i" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' || echo gone)
            [ "$st" = terminated ] || [ "$st" = gone ] && break
            sleep 0.1
        done
    done
    for what in "deployment bench" "template t" "image deb" "cloud bench"; do
        set -- $what
        s "$1" delete "$2" >/dev/null 2>&1 || true
    done
    kill "$serve" 2>/dev/null || true
    rm -rf "$data"
}
for _ in $(seq 100); do url=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1 || true); [ -n "$url" ] && break; sleep 0.1; done
trap cleanup EXIT
export STRATUS_URL="$url" STRATUS_TOKEN="$(cat "$data/admin.token")"
s() { "$bin" "$@"; }
cat >"$data/cloud.toml" <<TOML
[[cloud]]
name = "bench"
driver = "local"
regions = [{ name = "here" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]
[cloud.local]
subnet = "10.233.0.0/24"
outbound_nat = false
TOML
s apply -f "$data/cloud.toml" >/dev/null
s image build --cloud bench --name deb --package procps >/dev/null
{
    cat <<'TOML'
[[script]]
name = "trivial"
frequency = "per-instance"
body = "#!/bin/sh\necho booted\n"
[[template]]
name = "t"
image = "deb"
size = "small"
boot_scripts = ["trivial"]
[deployment]
name = "bench"
cloud = "bench"
TOML
    for i in $(seq "$n"); do printf '[[server]]\nname = "s-%s"\ntemplate = "t"\n' "$i"; done
} >"$data/servers.toml"
s apply -f "$data/servers.toml" >/dev/null
for i in $(seq "$n"); do
    for _ in $(seq 600); do
        st=$(s --json server show "bench/s-$i" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
        [ "$st" = operational ] && break
        sleep 0.1
    done
done
s --json server list --deployment bench | python3 -c '
import json, sys, datetime, statistics
def t(s): return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")[:26] + "+00:00")
xs = sorted((t(v["operational_at"]) - t(v["launched_at"])).total_seconds() for v in json.load(sys.stdin) if v.get("operational_at"))
print(f"boot to operational (launch -> operational, one trivial boot script): n={len(xs)} median {statistics.median(xs)*1000:.0f} ms, max {max(xs)*1000:.0f} ms")'
sleep 5
for pid in $(pgrep -f "stratus-agent agent"); do grep VmRSS "/proc/$pid/status"; done | awk '{s+=$2; n++} END {if (n) printf "agent idle RSS: %d agents, mean %.1f MiB\n", n, s/n/1024}'
printf 'binary size: %s MiB (release stratus, which is the agent too)\n' "$(($(stat -c %s "$bin") / 1048576))"
