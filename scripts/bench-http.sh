#!/usr/bin/env bash
# Compares HTTP boot file throughput with nginx (sendfile on) on loopback: one 64 MiB file,
# downloaded RUNS times from each with curl (alternating), median of speed_download reported.
# Usage: scripts/bench-http.sh [RUNS]   (needs nginx and curl; builds the example in release)
set -euo pipefail
runs=${1:-5}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/root" "$work/nginx"
chmod 755 "$work" "$work/root"   # nginx's workers run unprivileged
head -c $((64 << 20)) /dev/urandom >"$work/root/initrd.img"
chmod 644 "$work/root/initrd.img"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path $work/nginx;
    proxy_temp_path $work/nginx;
    fastcgi_temp_path $work/nginx;
    uwsgi_temp_path $work/nginx;
    scgi_temp_path $work/nginx;
    server {
        listen 127.0.0.1:18080;
        location /boot/ { alias $work/root/; }
    }
}
CONF

cargo build --release -q -p oasis-pxe --example http_serve
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
target/release/examples/http_serve "$work/root" 127.0.0.1:18081 &
pids+=($!)
for port in 18080 18081; do
    ok=
    for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/boot/initrd.img" && ok=1 && break; sleep 0.1; done
    [ -n "$ok" ] || { echo "nothing serves the file on port $port" >&2; exit 1; }
done

# Alternate the two servers run by run, so that drift in the machine's load hits both alike.
speed() { curl -sf -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$1/boot/initrd.img"; }
for _ in $(seq "$runs"); do
    speed 18080 >>"$work/nginx.txt"
    speed 18081 >>"$work/oasis.txt"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
awk -v n="$(median "$work/nginx.txt")" -v o="$(median "$work/oasis.txt")" 'BEGIN {
    printf "nginx: %.0f MiB/s\noasis: %.0f MiB/s\nratio: %.2f\n", n / 1048576, o / 1048576, o / n }'
