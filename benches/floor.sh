#!/usr/bin/env bash
# Native CPU per request of cae-proxy against its hyper floor (examples/bareproxy): the two
# per-request numbers of issue 22, measured on the real CPU rather than counted under valgrind.
# Each round starts hyper-bare and cae-proxy in turn, pinned to core 1 (the nginx `return 200`
# upstream and wrk on core 0), and drives each with `wrk -t1 -c4` for SECS after one second of
# warm-up: hyper-bare and cae-proxy with one repeated RS256 token (cache hit, every CAE check of
# the route), then hyper-bare verifying each token's RS256 signature (`bareproxy ... PUB_PEM`: the
# signature and nothing else of the token) and cae-proxy, both with 2,000 RS256 tokens in turn
# (cae-proxy through a 256-entry cache: every request verified). CPU per request is the server's utime and stime over the window divided by
# the requests wrk counted. Rounds alternate the servers so that drift in the machine's speed
# falls on both; the table gives the median of each and of the paired differences.
# Usage: benches/floor.sh [ROUNDS] [SECS]   (defaults 7 and 5; ≈ 3 minutes)
# The rotating target is cae-rotating − hyper-bare-rs256: hyper-bare plus the signature
# verification, measured in place (its cold caches and lower request rate included) rather than
# added from `cargo bench --bench micro -- rs256_verify`, which the table also reports against.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
SECS=${2:-5}
for tool in wrk nginx python3 curl taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx)"; exit 2; }
done
. benches/common.sh
bench_workdir floor
UP=$(free_port); SUT=$(free_port); SIG=$(free_port); ADM=$(free_port)

bench_build 2000

start_upstream "$UP" 1024 0

bench_config "$SUT" "$SIG" "$ADM" "$UP" > "$W/cae.toml"

cpu_ticks() { # utime and stime of a process
  local f
  read -r -a f < <(sed 's/^.*) //' "/proc/$1/stat")
  echo "${f[11]} ${f[12]}"
}

# measure NAME PID [wrk script args...]: one window; appends "name user_ticks sys_ticks requests"
measure() {
  local name=$1 pid=$2; shift 2
  taskset -c 0 wrk -t1 -c4 -d1s -H "authorization: Bearer $TOKEN" "$@" >/dev/null
  read -r u0 s0 < <(cpu_ticks "$pid")
  taskset -c 0 wrk -t1 -c4 -d "${SECS}s" -H "authorization: Bearer $TOKEN" "$@" >"$W/wrk.txt"
  read -r u1 s1 < <(cpu_ticks "$pid")
  if grep -q "Non-2xx" "$W/wrk.txt"; then cat "$W/wrk.txt"; echo "$name: some requests failed"; exit 1; fi
  echo "$name $((u1 - u0)) $((s1 - s0)) $(awk '/requests in/ {print $1; exit}' "$W/wrk.txt")" >>"$W/results"
}

for round in $(seq 1 "$ROUNDS"); do
  taskset -c 1 target/release/examples/bareproxy "127.0.0.1:$SUT" "http://127.0.0.1:$UP/" 2>"$W/bare.log" &
  pid=$!
  wait_port "$SUT"
  measure hyper-bare "$pid" "http://127.0.0.1:$SUT/orders"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  taskset -c 1 target/release/examples/bareproxy "127.0.0.1:$SUT" "http://127.0.0.1:$UP/" "$W/rs256.pub.pem" 2>"$W/bare.log" &
  pid=$!
  wait_port "$SUT"
  measure hyper-bare-rs256 "$pid" -s benches/load/rotate.lua "http://127.0.0.1:$SUT/" -- "$W/tokens-rs256.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  taskset -c 1 target/release/cae-proxy run --config "$W/cae.toml" 2>"$W/cae.log" &
  pid=$!
  wait_port "$SUT"
  wait_ready "$ADM"
  measure cae-repeated "$pid" "http://127.0.0.1:$SUT/orders"
  measure cae-rotating "$pid" -s benches/load/rotate.lua "http://127.0.0.1:$SUT/" -- "$W/tokens-rs256.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "round $round of $ROUNDS done" >&2
done

SECS="$SECS" python3 - "$W/results" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
hz = float(sys.argv[2])
rows = {}
for line in open(sys.argv[1]):
    name, u, s, n = line.split()
    rows.setdefault(name, []).append((int(u) / hz * 1e6 / int(n), int(s) / hz * 1e6 / int(n), int(n)))
def med(xs):
    return statistics.median(xs)
print(f"{'server':<17} {'user µs/req':>12} {'sys µs/req':>11} {'total µs/req':>13} {'req/s':>8}   (medians of {len(rows['hyper-bare'])} rounds)")
for name, r in rows.items():
    print(f"{name:<17} {med([u for u, _, _ in r]):12.2f} {med([s for _, s, _ in r]):11.2f} "
          f"{med([u + s for u, s, _ in r]):13.2f} {med([n for _, _, n in r]) / float(__import__('os').environ.get('SECS', '5')):8.0f}")
for name, base in (("cae-repeated", "hyper-bare"), ("cae-rotating", "hyper-bare"),
                   ("hyper-bare-rs256", "hyper-bare"), ("cae-rotating", "hyper-bare-rs256")):
    du = [c[0] - b[0] for c, b in zip(rows[name], rows[base])]
    dt = [c[0] + c[1] - b[0] - b[1] for c, b in zip(rows[name], rows[base])]
    print(f"{name} - {base}, paired by round: user {med(du):+.2f} µs (min {min(du):+.2f}, max {max(du):+.2f}), "
          f"total {med(dt):+.2f} µs (min {min(dt):+.2f}, max {max(dt):+.2f})")
PY
