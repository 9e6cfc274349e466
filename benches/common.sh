# Helpers shared by the benchmark scripts (profile.sh, floor.sh, idle.sh, ab.sh; load/run.sh and
# load/authz.sh use the ports, readiness and issuer helpers): a work directory and the processes
# started in it (stopped, and the directory removed, on exit; kept with KEEP=1), the release build
# with keys and tokens, ports, readiness, the nginx `return 200` upstream and the benchmark
# route's configuration. Sourced, not run: `. benches/common.sh` from the repository root.

bench_workdir() { # NAME: sets W (a new directory) and PIDS (processes to stop on exit)
  W=$(mktemp -d "/tmp/cae-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}

bench_build() { # TOKENS: builds the servers, writes keys and TOKENS rotating tokens to W; sets TOKEN
  cargo build --release --quiet --bin cae-proxy --example benchkit --example bareproxy
  target/release/examples/benchkit gen --dir "$W" --tokens "$1" --revocations 0 >/dev/null
  TOKEN=$(cat "$W/token-rs256.txt")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened"; exit 1
}

wait_ready() { # ADMIN_PORT: cae-proxy loads its keys in the background; its admin says when done
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && break
    sleep 0.1
  done
}

start_upstream() { # PORT WORKER_CONNECTIONS [CPU]: nginx answering `200 ok`, pinned to CPU if given
  cat > "$W/nginx.conf" <<EOF
daemon off;
worker_processes 1;
error_log $W/nginx-error.log error;
pid $W/nginx.pid;
events { worker_connections $2; }
http {
  access_log off;
  server { listen 127.0.0.1:$1; location / { return 200 "ok"; } }
}
EOF
  if [ -n "${3:-}" ]; then
    taskset -c "$3" nginx -c "$W/nginx.conf" -p "$W" &
  else
    nginx -c "$W/nginx.conf" -p "$W" &
  fi
  PIDS+=($!)
  wait_port "$1"
}

bench_config() { # SUT SIG ADM UP: the benchmark's cae-proxy configuration (every CAE check of the
  # route on: revocations, token and signal IP bindings, allow and deny locations), on stdout
  cat <<EOF
[server]
worker_threads = 1
log_level = "warn"
token_cache_size = 256
[[listener]]
name = "public"
address = "127.0.0.1:$1"
[[listener]]
name = "signals"
address = "127.0.0.1:$2"
role = "signals"
[admin]
address = "127.0.0.1:$3"
[store]
backend = "memory"
[upstreams.up]
url = "http://127.0.0.1:$4"
$(bench_issuer)
[[route]]
name = "api"
upstream = "up"
[route.cae]
revocation = true
token_ip = true
signal_ip = true
allow_locations = ["127.0.0.0/8", "10.0.0.0/8"]
deny_locations = ["127.0.0.2/32"]
EOF
}

bench_issuer() { # the benchmark issuer (keys from W/jwks.json), on stdout
  cat <<EOF
[[issuer]]
name = "bench"
issuer = "https://idp.bench.example"
jwks_file = "$W/jwks.json"
audiences = ["api://bench"]
algorithms = ["RS256", "ES256"]
EOF
}
