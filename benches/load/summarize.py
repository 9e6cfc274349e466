#!/usr/bin/env python3
"""Summarise results.jsonl of benches/load/run.sh: medians, min-max and paired ratios per repetition."""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
for r in rows:
    by[(r["case"], r["server"])].append(r)

def fmt(vals, f="{:.0f}"):
    if not vals:
        return "-"
    return f"{f.format(statistics.median(vals))} ({f.format(min(vals))}–{f.format(max(vals))})"

print("| case | server | requests/s | p50 ms | p99 ms | non-2xx | CPU µs/req |")
print("|---|---|---|---|---|---|---|")
for (case, server), rs in sorted(by.items()):
    print(f"| {case} | {server} | {fmt([r['rps'] for r in rs])} | {fmt([r['p50_ms'] for r in rs], '{:.2f}')} | "
          f"{fmt([r['p99_ms'] for r in rs], '{:.2f}')} | {sum(r['non2xx'] for r in rs)} | {fmt([r['cpu_us'] for r in rs], '{:.1f}')} |")

print()
print("Paired ratios (same repetition), median (min–max): throughput cae-proxy/peer, CPU per request peer/cae-proxy")
print()
print("| case | peer | rps cae/peer | CPU/req peer/cae |")
print("|---|---|---|---|")
reps = defaultdict(dict)
for r in rows:
    reps[(r["case"], r["rep"])][r["server"]] = r
cases = sorted({c for c, _ in reps})
for case in cases:
    peers = sorted({s for (c, _), d in reps.items() if c == case for s in d if s != "cae-proxy"})
    for peer in peers:
        tr, cr = [], []
        for (c, rep), d in reps.items():
            if c == case and peer in d and "cae-proxy" in d and d[peer]["rps"] > 0 and d["cae-proxy"]["cpu_us"] > 0:
                tr.append(d["cae-proxy"]["rps"] / d[peer]["rps"])
                cr.append(d[peer]["cpu_us"] / d["cae-proxy"]["cpu_us"])
        if tr:
            print(f"| {case} | {peer} | {fmt(tr, '{:.2f}')} | {fmt(cr, '{:.2f}')} |")
