#!/bin/sh
# Install HAProxy with a stats page. The backend pool is rendered centrally by the control
# plane from the operational servers tagged lb:pool=www and pushed through the agent; until the
# first push the backend is empty and HAProxy answers 503.
set -eu
if ! command -v haproxy >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
fi
cat > /etc/haproxy/haproxy.cfg <<CONF
global
    daemon
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend www
    bind *:${LB_PORT}
    default_backend www
backend www
    balance roundrobin
listen stats
    bind *:8404
    stats enable
    stats uri /
    stats auth admin:${STATS_PASSWORD}
CONF
haproxy -c -f /etc/haproxy/haproxy.cfg
if pidof haproxy >/dev/null 2>&1; then kill -USR2 "$(pidof haproxy | cut -d' ' -f1)"; else haproxy -f /etc/haproxy/haproxy.cfg; fi
