#!/usr/bin/env python3
"""Summarise results.jsonl of benches/load/run.sh: one table per case, medians with min–max over the
repetitions, and each peer's ratio to cae-proxy paired by repetition (every ratio: > 1 = cae-proxy
better)."""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

ABOUT = {
    "repeated-rs256": "HTTP/1.1, wrk -c64; one RS256 token repeated (cae-proxy: cache hit, every CAE check); nginx and hyper-bare without authentication",
    "fixed-rate": "the repeated RS256 token at a fixed offered rate (oha, open loop, latency corrected)",
    "rotating-rs256": "2,000 RS256 tokens in turn (cae-proxy: 256-entry cache, every request verified)",
    "rotating-es256": "2,000 ES256 tokens in turn (cae-proxy: 256-entry cache, every request verified)",
    "revocations-1m": "cae-proxy with 1,000,000 revocations against the same with an empty table",
    "sighup-every-second": "cae-proxy reloaded every second against the same without reloads",
    "tls-keepalive": "TLS 1.3, kept-alive HTTP/1.1 connections (wrk over https, -c64); cached RS256 token, nginx without authentication",
    "tls-handshake-full": "one new TLS 1.3 connection per request, full handshake (benchkit handshakes, 64 clients, Connection: close): requests/s = handshakes/s, CPU per handshake and its request; cached RS256 token, nginx without authentication",
    "tls-handshake-resumed": "as tls-handshake-full, each client resuming with its last session ticket (PSK with X25519); 'resumed' = share of handshakes the server resumed",
    "h2-tls": "HTTP/2 over TLS 1.3 (ALPN h2), h2load -c16 -m32 (512 streams in flight); cached RS256 token, nginx without authentication",
    "upload-64k": "POST of 64 KiB to a sink that reads every byte (wrk -c16); cached RS256 token, nginx without authentication; MB/s of request bodies, peak RSS = VmHWM",
    "upload-4m": "POST of 4 MiB to a sink that reads every byte (wrk -c16); cached RS256 token, nginx without authentication; MB/s of request bodies, peak RSS = VmHWM",
    "download-64k": "GET of a 64 KiB static file (upstream nginx, wrk -c16); cached RS256 token, nginx without authentication; MB/s of response bodies, peak RSS = VmHWM",
    "download-4m": "GET of a 4 MiB static file (upstream nginx, wrk -c16); cached RS256 token, nginx without authentication; MB/s of response bodies, peak RSS = VmHWM",
    "idle-conns": "RSS of the ready server before any request, then with N idle kept-alive HTTP/1.1 connections that each served one request (cached RS256 token); per connection = RSS growth / connections the server still held (held: established on its port when measured)",
    "idle-conns-tls": "as idle-conns over TLS 1.3",
    "workers-1": "as repeated-rs256, one worker pinned to core 1 (HAProxy nbthread 1, Envoy --concurrency 1)",
    "workers-2": "as repeated-rs256 with two workers, unpinned: they share core 0 with wrk and the upstream",
}


def about(case):
    return ABOUT.get(case) or next((v for k, v in ABOUT.items() if case.startswith(k)), "")


def fmt(vals, f="{:.0f}"):
    if not vals:
        return "-"
    med = f.format(statistics.median(vals))
    if len(vals) == 1:
        return med
    return f"{med} ({f.format(min(vals))}–{f.format(max(vals))})"


def ratios(case_rows, peer, key, cae_over_peer):
    """Ratio of cae-proxy to `peer` on `key` in each repetition where both ran."""
    by_rep = defaultdict(dict)
    for r in case_rows:
        by_rep[r["rep"]][r["server"]] = r
    out = []
    for d in by_rep.values():
        if peer in d and "cae-proxy" in d and key in d[peer] and key in d["cae-proxy"]:
            a, b = d["cae-proxy"][key], d[peer][key]
            num, den = (a, b) if cae_over_peer else (b, a)
            if den > 0:
                out.append(num / den)
    return out


def table(header, lines):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for l in lines:
        print("| " + " | ".join(l) + " |")
    print()


by_case = defaultdict(list)
for r in rows:
    by_case[r["case"]].append(r)

print("Ratios are paired by repetition, peer against cae-proxy, each > 1 when cae-proxy does better:")
print("requests/s and MB/s cae-proxy/peer; CPU per request, peak RSS and memory peer/cae-proxy.")
print()
def order(case):
    return (next((i for i, k in enumerate(ABOUT) if case.startswith(k)), len(ABOUT)), case)


for case in sorted(by_case, key=order):
    cr = by_case[case]
    servers = sorted({r["server"] for r in cr}, key=lambda s: (s == "cae-proxy", s))
    col = lambda s, k: [r[k] for r in cr if r["server"] == s and k in r]
    print(f"### {case}")
    if about(case):
        print()
        print(about(case))
    print()
    has_cae = any(r["server"] == "cae-proxy" for r in cr)
    if all(r.get("kind") == "memory" for r in cr):
        n = max(r["open"] for r in cr)
        header = ["server", "idle RSS MiB", "idle PSS MiB", f"RSS with {n} conns MiB", "KiB per connection",
                  "opened / failed / held", "per-connection peer/cae", "idle RSS peer/cae"]
        lines = []
        for s in servers:
            line = [s, fmt([v / 1024 for v in col(s, "idle_kib")], "{:.1f}"),
                    fmt([v / 1024 for v in col(s, "idle_pss_kib")], "{:.1f}"),
                    fmt([v / 1024 for v in col(s, "loaded_kib")], "{:.1f}"),
                    fmt(col(s, "per_conn_kib"), "{:.2f}"),
                    f"{min(col(s, 'open'))} / {sum(col(s, 'failed'))} / {min(col(s, 'established'))}"]
            if s == "cae-proxy" or not has_cae:
                line += ["—", "—"]
            else:
                line += [fmt(ratios(cr, s, "per_conn_kib", False), "{:.2f}"),
                         fmt(ratios(cr, s, "idle_kib", False), "{:.2f}")]
            lines.append(line)
        table(header, lines)
        continue
    mb = any("mb_s" in r for r in cr)
    resumed = any("resumed_pct" in r for r in cr)
    header = ["server", "requests/s", "p50 ms", "p99 ms", "non-2xx", "CPU µs/req"]
    if mb:
        header += ["MB/s", "peak RSS MiB"]
    if resumed:
        header += ["resumed %"]
    header += ["requests/s cae/peer", "CPU/req peer/cae"]
    if mb:
        header += ["MB/s cae/peer", "peak RSS peer/cae"]
    lines = []
    for s in servers:
        line = [s, fmt(col(s, "rps")), fmt(col(s, "p50_ms"), "{:.2f}"), fmt(col(s, "p99_ms"), "{:.2f}"),
                str(sum(col(s, "non2xx"))), fmt(col(s, "cpu_us"), "{:.1f}")]
        if mb:
            line += [fmt(col(s, "mb_s")), fmt([v / 1024 for v in col(s, "hwm_kib")], "{:.1f}")]
        if resumed:
            line += [fmt(col(s, "resumed_pct"), "{:.1f}")]
        if s == "cae-proxy" or not has_cae:
            line += ["—"] * (4 if mb else 2)
        else:
            line += [fmt(ratios(cr, s, "rps", True), "{:.2f}"), fmt(ratios(cr, s, "cpu_us", False), "{:.2f}")]
            if mb:
                line += [fmt(ratios(cr, s, "mb_s", True), "{:.2f}"), fmt(ratios(cr, s, "hwm_kib", False), "{:.2f}")]
        lines.append(line)
    table(header, lines)

# A second worker against one, per server, paired by repetition.
w1, w2 = by_case.get("workers-1", []), by_case.get("workers-2", [])
if w1 and w2:
    print("### workers-2 against workers-1 (same server, same repetition)")
    print()
    lines = []
    for s in sorted({r["server"] for r in w2}):
        tr, cr = [], []
        for a in w2:
            b = next((b for b in w1 if b["server"] == s and b["rep"] == a["rep"]), None)
            if a["server"] == s and b and b["rps"] > 0 and b["cpu_us"] > 0:
                tr.append(a["rps"] / b["rps"])
                cr.append(a["cpu_us"] / b["cpu_us"])
        if tr:
            lines.append([s, fmt(tr, "{:.2f}"), fmt(cr, "{:.2f}")])
    table(["server", "requests/s two/one", "CPU per request two/one"], lines)
