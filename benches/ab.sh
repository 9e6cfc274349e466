#!/usr/bin/env bash
# Two builds of cae-proxy side by side: the same configuration (benches/common.sh's benchmark
# route, one repeated RS256 token), interleaved rounds, paired ratios. For a change whose effect
# the peers' run cannot isolate (the host drifts between runs; one run interleaves both builds).
# Usage: [WORKERS=2] benches/ab.sh OLD_BIN NEW_BIN [ROUNDS] [SECS]   (defaults 5 rounds of 5 s)
# WORKERS=1 (default): the proxy pinned to core 1, wrk and the upstream on core 0. WORKERS=2:
# `worker_threads = 2`, unpinned (both cores, shared with wrk and the upstream). wrk: 64
# connections. Prints, per round and build, requests/s and CPU µs per request (user + system of
# the proxy process over the measured window), then the medians of new/old.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
OLD=${1:?usage: benches/ab.sh OLD_BIN NEW_BIN [ROUNDS] [SECS]}
NEW=${2:?usage: benches/ab.sh OLD_BIN NEW_BIN [ROUNDS] [SECS]}
ROUNDS=${3:-5}
SECS=${4:-5}
WORKERS=${WORKERS:-1}
for tool in wrk nginx python3 curl taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx)"; exit 2; }
done
bench_workdir ab
bench_build 1
UP=$(free_port)
start_upstream "$UP" 4096 0
TICK=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# one BIN: starts it, warms up for a second, measures SECS; appends "rps cpu_us" to W/<label>
one() {
  local label=$1 bin=$2 sut sig adm pid pin=(taskset -c 1)
  sut=$(free_port); sig=$(free_port); adm=$(free_port)
  bench_config "$sut" "$sig" "$adm" "$UP" | sed "s/^worker_threads = 1$/worker_threads = $WORKERS/" >"$W/cae.toml"
  [ "$WORKERS" = 1 ] || pin=()
  "${pin[@]}" "$bin" run --config "$W/cae.toml" 2>"$W/$label.log" &
  pid=$!
  wait_port "$sut"
  wait_ready "$adm"
  taskset -c 0 wrk -t1 -c64 -d1s -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$sut/" >/dev/null
  local t0; t0=$(cpu_ticks "$pid")
  taskset -c 0 wrk -t1 -c64 -d"${SECS}s" -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$sut/" >"$W/wrk.txt"
  local t1; t1=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$W/wrk.txt" "$t0" "$t1" "$TICK" "$label" >>"$W/$label" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
n = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if bad:
    sys.exit(f"{sys.argv[5]}: {bad.group(1)} non-2xx answers")
secs = float(re.search(r"requests in ([\d.]+)s", text).group(1))
cpu_us = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4]) * 1e6 / n
print(f"{n / secs:.0f} {cpu_us:.2f}")
PY
}

echo "round old_rps old_cpu_us new_rps new_cpu_us (workers: $WORKERS)"
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which build goes first, so that drift within a round does not favour one.
  if [ $((r % 2)) = 1 ]; then one old "$OLD"; one new "$NEW"; else one new "$NEW"; one old "$OLD"; fi
  echo "$r $(tail -n1 "$W/old") $(tail -n1 "$W/new")"
done
python3 - "$W/old" "$W/new" <<'PY'
import statistics, sys
old = [list(map(float, l.split())) for l in open(sys.argv[1])]
new = [list(map(float, l.split())) for l in open(sys.argv[2])]
rps = [n[0] / o[0] for o, n in zip(old, new)]
cpu = [n[1] / o[1] for o, n in zip(old, new)]
print(f"new/old requests/s: median {statistics.median(rps):.3f} (range {min(rps):.3f}-{max(rps):.3f})")
print(f"new/old CPU per request: median {statistics.median(cpu):.3f} (range {min(cpu):.3f}-{max(cpu):.3f})")
PY
