#!/usr/bin/env python3
"""Where a GPU run's time goes, kernel by kernel, from an Nsight Compute CSV.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        rho bench train --device cuda:0 --shapes 4x1024 --iters 1 --warmup 0 > run.csv
    python3 scripts/gpu/kernel_times.py run.csv [--top 30]

Groups launches by kernel name (templates and arguments cut off), sums their durations and
prints one `KTIME` line per group, largest first: launches, total ms, share of the total, mean
us per launch. A last `KTIME total` line gives the launches and ms of all kernels (GPU time
only: the gaps between kernels, host work included, are not in it). Used by
scripts/gpu/device_eval.sh (the profile steps).
"""
import argparse
import csv
import io
import re
import sys
from collections import defaultdict


def short(name):
    """A kernel's name without template arguments or parameter list."""
    name = re.sub(r"\(.*$", "", name.strip())
    depth, out = 0, []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    return name.split()[-1] if name else "?"


def read(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        sys.exit(f"{path}: no ncu CSV header (\"ID\",...) found")
    rows = csv.DictReader(io.StringIO(text[start:]))
    groups = defaultdict(lambda: [0, 0.0])
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        try:
            ns = float(r["Metric Value"].replace(",", ""))
        except (KeyError, ValueError):
            continue
        unit = r.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1.0)
        g = groups[short(r["Kernel Name"])]
        g[0] += 1
        g[1] += ns * scale
    return groups


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    groups = read(a.csv)
    total = sum(g[1] for g in groups.values())
    if total == 0:
        sys.exit(f"{a.csv}: no kernel durations")
    for name, (n, ns) in sorted(groups.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"KTIME kernel={name} launches={n} total_ms={ns / 1e6:.3f} share={ns / total:.3f} mean_us={ns / n / 1e3:.1f}")
    print(f"KTIME total launches={sum(g[0] for g in groups.values())} total_ms={total / 1e6:.3f}")


if __name__ == "__main__":
    main()
