#!/bin/sh
# The load balancer's configuration is not written here: the control plane renders it from the
# operational servers tagged lb:pool=www and the agent installs it (checked with `haproxy -c`,
# reloaded seamlessly) before this script runs. This only waits until HAProxy listens.
set -eu
for _ in $(seq 1 50); do
    nc -z 127.0.0.1 "${LB_PORT}" && exit 0
    sleep 0.1
done
echo "HAProxy does not listen on port ${LB_PORT}; /etc/haproxy/haproxy.cfg:" >&2
cat /etc/haproxy/haproxy.cfg >&2 || true
exit 1
