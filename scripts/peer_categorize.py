#!/usr/bin/env python3
"""Peer of `rho categorize`: the same rule (src/dynamics/trajectory.rs, Rho-1 App. B.1)
in plain numpy + pyarrow, for the side-by-side benchmark in BENCHMARKS.md.

    python scripts/peer_categorize.py --study DIR [--threshold 0.2] [--out FILE.parquet]
    python scripts/peer_categorize.py --study DIR --check     # compare with DIR/trajectories.parquet

It reads study.json and the `loss` column of every losses file (in manifest order),
stacks them into a [checkpoints x tokens] float32 matrix, fits a least-squares line
per token against the checkpoint index (in float64), and categorizes:
delta = slope * (K - 1); delta < -t: H->L; delta > t: L->H; else L->L when the last
loss <= L_mean (mean last-checkpoint loss), else H->H. It writes the same columns as
`rho categorize` (seq, pos, token_id, category, delta, slope, first_loss, last_loss,
mean_loss, std_loss, residual_std; zstd Parquet) to --out (default: a temporary file,
removed) so both sides do the same work.

--check: also reads DIR/trajectories.parquet (written by `rho categorize`) and reports
how many categories differ and the largest differences of the float columns.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CATS = np.array(["H->H", "L->H", "H->L", "L->L"])


def checkpoints(study):
    """Checkpoint names in step order: study.json's, plus the sharded ones
    (losses/checkpoint=<name>/part-*.json records, as `rho eval --shard` writes them)."""
    m = json.load(open(os.path.join(study, "study.json")))
    found = {c["name"]: c["step"] for c in m["checkpoints"]}
    ldir = os.path.join(study, "losses")
    for d in sorted(os.listdir(ldir)):
        if d.startswith("checkpoint=") and d[len("checkpoint="):] not in found:
            recs = [f for f in os.listdir(os.path.join(ldir, d)) if f.endswith(".json")]
            if recs:
                found[d[len("checkpoint="):]] = json.load(open(os.path.join(ldir, d, recs[0])))["step"]
    names = sorted(found, key=lambda n: (found[n], n))
    return names, [found[n] for n in names]


def read_losses(study, name, columns):
    """One checkpoint's losses: the whole file, or its parts in order."""
    whole = os.path.join(study, "losses", name + ".parquet")
    if os.path.exists(whole):
        return pq.read_table(whole, columns=columns)
    d = os.path.join(study, "losses", "checkpoint=" + name)
    parts = sorted(f for f in os.listdir(d) if f.endswith(".parquet"))
    return pa.concat_tables([pq.read_table(os.path.join(d, f), columns=columns) for f in parts])


def categorize(study, threshold):
    names, steps = checkpoints(study)
    k = len(names)
    if k < 2:
        sys.exit("needs at least 2 checkpoints")
    first = read_losses(study, names[0], ["seq", "pos", "token_id", "loss"])
    n = first.num_rows
    seq, pos = first["seq"].to_numpy(), first["pos"].to_numpy()
    L = np.empty((k, n), dtype=np.float32)
    L[0] = first["loss"].to_numpy()
    token_id = first["token_id"].to_numpy()
    del first
    for i, name in enumerate(names[1:], 1):
        t = read_losses(study, name, ["seq", "pos", "loss"])
        if not (np.array_equal(t["seq"].to_numpy(), seq) and np.array_equal(t["pos"].to_numpy(), pos)):
            sys.exit(f"{name}: rows do not line up")
        L[i] = t["loss"].to_numpy()
    if not np.isfinite(L).all():
        sys.exit("non-finite loss")

    x = np.arange(k, dtype=np.float64) - (k - 1) / 2.0
    sxx = float((x * x).sum())
    y_mean = np.zeros(n)
    for i in range(k):
        y_mean += L[i]
    y_mean /= k
    sxy = np.zeros(n)
    syy = np.zeros(n)
    for i in range(k):
        dy = L[i] - y_mean
        sxy += x[i] * dy
        syy += dy * dy
    slope = sxy / sxx
    intercept = y_mean - slope * ((k - 1) / 2.0)
    ss_res = np.zeros(n)
    for i in range(k):
        r = L[i] - (intercept + slope * i)
        ss_res += r * r
    delta = slope * (k - 1)
    last = L[k - 1].astype(np.float64)
    l_mean = last.sum() / n
    cat = np.where(delta < -threshold, 2, np.where(delta > threshold, 1, np.where(last <= l_mean, 3, 0))).astype(np.int8)
    cols = {
        "seq": seq, "pos": pos, "token_id": token_id, "category": CATS[cat],
        "delta": delta.astype(np.float32), "slope": slope.astype(np.float32),
        "first_loss": L[0].copy(), "last_loss": L[k - 1].copy(), "mean_loss": y_mean.astype(np.float32),
        "std_loss": np.sqrt(syy / k).astype(np.float32), "residual_std": np.sqrt(ss_res / k).astype(np.float32),
    }
    return cols, cat, l_mean, names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True)
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--out")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    cols, cat, l_mean, names = categorize(a.study, a.threshold)
    t1 = time.time()
    out = a.out or tempfile.mktemp(suffix=".parquet")
    pq.write_table(pa.table(cols), out, compression="zstd")
    if not a.out:
        os.remove(out)
    t2 = time.time()
    counts = np.bincount(cat, minlength=4)
    n = len(cat)
    print(f"peer: {n} tokens x {len(names)} checkpoints, L_mean {l_mean:.4f}; read+categorize {t1 - t0:.2f} s, write {t2 - t1:.2f} s")
    for c, k in zip(CATS, counts):
        print(f"  {c}  {k:9d}  {100 * k / n:5.1f}%")
    if a.check:
        ours = pq.read_table(os.path.join(a.study, "trajectories.parquet"))
        summ = json.load(open(os.path.join(a.study, "categories.json")))
        oc = ours["category"].to_numpy(zero_copy_only=False)
        diff = int((oc != cols["category"]).sum())
        print(f"check: categories differ on {diff} of {n} tokens; L_mean rho {summ['l_mean']!r} vs peer {l_mean!r}")
        same_keys = all(np.array_equal(ours[c].to_numpy(), cols[c]) for c in ("seq", "pos", "token_id"))
        print(f"check: seq/pos/token_id identical: {same_keys}")
        for c in ("delta", "slope", "first_loss", "last_loss", "mean_loss", "std_loss", "residual_std"):
            d = np.abs(ours[c].to_numpy().astype(np.float64) - cols[c].astype(np.float64)).max()
            print(f"check: max |{c} rho - peer| = {d:.3g}")
        if diff:
            sys.exit(1)


if __name__ == "__main__":
    main()
