#!/usr/bin/env bash
# CPU instructions per request (valgrind callgrind, deterministic: no timing noise) of cae-proxy
# on its hot path (a repeated RS256 token, every CAE check of the benchmark route) and of the hyper
# floor (examples/bareproxy), behind the same nginx `return 200` upstream. Each server runs twice
# under callgrind, with BASE and BASE+N requests (h2load, HTTP/1.1, 4 keep-alive connections); the
# difference of the two totals divided by N is the cost of one request without start-up costs.
# Usage: benches/profile.sh [N] [BASE]   (defaults 10000 and 2000; ≈ 2 min)
# MODE=rotate: every request a new RS256 token (2,000 tokens through a 256-entry cache, driven by
# wrk with benches/load/rotate.lua for SECONDS and 5×SECONDS, default 4; requests counted by wrk).
# SERVERS="cae-proxy": profile only these (default: hyper-bare and cae-proxy in repeat mode;
# hyper-bare-rs256, the floor verifying each token's RS256 signature and nothing else, and cae-proxy
# in rotate mode).
# Per-function profile: callgrind_annotate "$W/<server>-<n>.out" (the directory is printed; kept
# when KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
BASE=${2:-2000}
MODE=${MODE:-repeat}
SECONDS_BASE=${SECONDS_BASE:-4}
for tool in valgrind h2load nginx python3 wrk curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind nghttp2-client nginx)"; exit 2; }
done
. benches/common.sh
bench_workdir profile
UP=$(free_port); SUT=$(free_port); SIG=$(free_port); ADM=$(free_port)

bench_build 2000

start_upstream "$UP" 1024

{
  bench_config "$SUT" "$SIG" "$ADM" "$UP"
  cat <<EOF
[[transmitter]]
name = "bench-tx"
issuer = "https://tx.bench.example"
jwks_file = "$W/tx-jwks.json"
audiences = ["cae-proxy"]
[transmitter.push]
path = "/ssf/bench"
authorization = "Bearer bench-push"
EOF
} > "$W/cae.toml"

# total_ir SERVER AMOUNT: runs SERVER under callgrind, sends AMOUNT requests (MODE=repeat) or
# drives it for AMOUNT seconds (MODE=rotate), stops it; prints "Ir requests".
total_ir() {
  local out="$W/$1-$2.out"
  case $1 in
    cae-proxy) valgrind --tool=callgrind --callgrind-out-file="$out" \
                 target/release/cae-proxy run --config "$W/cae.toml" 2>"$W/$1-$2.log" & ;;
    hyper-bare) valgrind --tool=callgrind --callgrind-out-file="$out" \
                 target/release/examples/bareproxy "127.0.0.1:$SUT" "http://127.0.0.1:$UP/" 2>"$W/$1-$2.log" & ;;
    hyper-bare-rs256) valgrind --tool=callgrind --callgrind-out-file="$out" \
                 target/release/examples/bareproxy "127.0.0.1:$SUT" "http://127.0.0.1:$UP/" "$W/rs256.pub.pem" 2>"$W/$1-$2.log" & ;;
  esac
  local pid=$!
  wait_port "$SUT"
  if [ "$1" = cae-proxy ]; then # keys load in the background: wait for readiness
    wait_ready "$ADM"
  fi
  local n
  if [ "$MODE" = rotate ]; then
    wrk -t1 -c4 -d "$2s" -s benches/load/rotate.lua "http://127.0.0.1:$SUT/" -- "$W/tokens-rs256.txt" >"$W/wrk-$1-$2.txt"
    grep -q "Non-2xx" "$W/wrk-$1-$2.txt" && { cat "$W/wrk-$1-$2.txt"; echo "some requests failed"; exit 1; }
    n=$(awk '/requests in/ {print $1; exit}' "$W/wrk-$1-$2.txt")
  else
    h2load --h1 -n "$2" -c 4 -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$SUT/orders" >"$W/h2load-$1-$2.txt"
    grep -q "$2 succeeded" "$W/h2load-$1-$2.txt" || { cat "$W/h2load-$1-$2.txt"; echo "not every request succeeded"; exit 1; }
    n=$2
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$out") $n"
}

if [ "$MODE" = rotate ]; then
  servers=${SERVERS:-hyper-bare-rs256 cae-proxy}; small=$SECONDS_BASE; large=$((5 * SECONDS_BASE))
else
  servers=${SERVERS:-hyper-bare cae-proxy}; small=$BASE; large=$((BASE + N))
fi
echo "server           instructions/request   (MODE=$MODE; files in $W)"
for server in $servers; do
  read -r ia na < <(total_ir "$server" "$small")
  read -r ib nb < <(total_ir "$server" "$large")
  printf "%-16s %12.0f   (%d and %d requests)\n" "$server" "$(python3 -c "print(($ib - $ia) / ($nb - $na))")" "$na" "$nb"
done
