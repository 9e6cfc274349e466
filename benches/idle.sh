#!/usr/bin/env bash
# Memory per idle keep-alive connection of cae-proxy (plain HTTP/1.1, or TLS 1.3 with TLS=1):
# VmRSS of the ready server, then `benchkit idle` opens CONNS connections, sends one request with
# the repeated RS256 token on each and holds them open, idle; VmRSS again, divided by CONNS.
# Usage: benches/idle.sh [CONNS]   (default 2000; needs nginx, python3, openssl with TLS=1)
# SERVER=hyper-bare: the same against examples/bareproxy (plain HTTP only), the floor of the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-2000}
for tool in nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 2; }
done
. benches/common.sh
bench_workdir idle
UP=$(free_port); SUT=$(free_port); ADM=$(free_port)
SERVER=${SERVER:-cae-proxy}
bench_build 1
start_upstream "$UP" "$((CONNS + 256))"
SCHEME=http
TLS_TOML=""
CA_ARGS=()
if [ "${TLS:-0}" = 1 ]; then
  SCHEME=https
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
    -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$W/server.key" -out "$W/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' > "$W/ext.cnf"
  openssl x509 -req -in "$W/server.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial \
    -days 1 -extfile "$W/ext.cnf" -out "$W/server.pem" 2>/dev/null
  TLS_TOML="[listener.tls]
cert = \"$W/server.pem\"
key = \"$W/server.key\""
  CA_ARGS=(--ca "$W/ca.pem")
fi
cat > "$W/cae.toml" <<EOF
[server]
worker_threads = 1
log_level = "warn"
max_connections = $((CONNS + 100))
idle_timeout = "60s"
[[listener]]
name = "public"
address = "127.0.0.1:$SUT"
$TLS_TOML
[admin]
address = "127.0.0.1:$ADM"
[store]
backend = "memory"
[upstreams.up]
url = "http://127.0.0.1:$UP"
$(bench_issuer)
[[route]]
name = "api"
upstream = "up"
EOF
if [ "$SERVER" = hyper-bare ]; then
  target/release/examples/bareproxy "127.0.0.1:$SUT" "http://127.0.0.1:$UP/" 2>"$W/bare.log" &
  CAE=$!
  PIDS+=($CAE)
  wait_port "$SUT"
else
  target/release/cae-proxy run --config "$W/cae.toml" 2>"$W/cae.log" &
  CAE=$!
  PIDS+=($CAE)
  wait_port "$SUT"
  wait_ready "$ADM"
fi
rss() { awk '/^VmRSS/ {print $2}' "/proc/$CAE/status"; }
# One request first, so that the per-process start-up of the request path (the upstream pool,
# lazily built tables) is in the baseline, not in the per-connection figure.
curl -sf -o /dev/null -H "authorization: Bearer $TOKEN" ${CA_ARGS:+--cacert "$W/ca.pem"} "$SCHEME://127.0.0.1:$SUT/"
R0=$(rss)
target/release/examples/benchkit idle --url "$SCHEME://127.0.0.1:$SUT/" "${CA_ARGS[@]}" \
  --token "$TOKEN" --conns "$CONNS" --ready "$W/ready.json" &
PIDS+=($!)
for _ in $(seq 1 1200); do [ -s "$W/ready.json" ] && break; sleep 0.1; done
sleep 1
R1=$(rss)
python3 - "$R0" "$R1" "$W/ready.json" "$SERVER" <<'EOF'
import json, sys
r0, r1, d = int(sys.argv[1]), int(sys.argv[2]), json.load(open(sys.argv[3]))
n = d["open"]
print(f"{sys.argv[4]}: open {n} failed {d['failed']}  VmRSS {r0} -> {r1} KiB  per connection {(r1 - r0) / max(n, 1):.2f} KiB")
EOF
