#!/bin/sh
# Install nginx and serve a page that names this server. Idempotent: safe to re-run (for
# example on a rebundled image, where nginx is already installed).
set -eu
if ! command -v nginx >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
fi
mkdir -p /var/www/app
printf '%s: %s\n' "$APP_GREETING" "$(hostname)" > /var/www/app/index.html
cat > /etc/nginx/sites-enabled/default <<CONF
server {
    listen ${APP_PORT};
    root /var/www/app;
}
CONF
nginx -t
if pidof nginx >/dev/null 2>&1; then nginx -s reload; else nginx; fi
