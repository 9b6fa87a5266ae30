#!/bin/sh
# Serve the application (unpacked by the agent in /srv/site/current before this script runs)
# with nginx on $APP_PORT. Server-side includes put this server's name in the page. Every boot:
# nginx is not a service of the instance's init, so each boot starts it. Idempotent.
set -eu
cat > /etc/nginx/sites-enabled/default <<CONF
server {
    listen ${APP_PORT};
    root /srv/site/current;
    ssi on;
    access_log off;
}
CONF
nginx -t -q
if [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    nginx -s reload
else
    nginx
fi
# Operational only once it answers: the load balancer adds it when it is.
for _ in $(seq 1 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:${APP_PORT}/" && exit 0
    sleep 0.1
done
echo "nginx does not answer on port ${APP_PORT}" >&2
exit 1
