#!/usr/bin/env bash
# Out-of-core categorize at 50M tokens x 16 checkpoints (3.2 GB of f32 losses), in 8
# hive-style parts per checkpoint as `rho eval --shard I/8` writes them: time and peak
# memory of `rho categorize`, of the numpy peer (scripts/peer_categorize.py, the same
# rule), and of `rho report`. The numbers of BENCHMARKS.md, "Out-of-core categorize".
#
#   scripts/bench_out_of_core.sh [STUDY] [TOKENS]    (defaults: /tmp/synth-50m, 50000000)
#
# Needs target/release/rho and target/release/examples/synth_study
# (cargo build --release --bin rho --example synth_study), GNU time, ~4 GB of disk for the
# study (+1.3 GB trajectories), and for the peer a Python with numpy + pyarrow ($PY,
# default /work/pyvenv/bin/python) and ~12 GB of memory.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${1:-/tmp/synth-50m}
TOKENS=${2:-50000000}
PY=${PY:-/work/pyvenv/bin/python}
RHO=${RHO:-target/release/rho}
if [ ! -f "$STUDY/study.json" ]; then
  target/release/examples/synth_study --out "$STUDY" --tokens "$TOKENS" --checkpoints 16 --shards 8 --no-data
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
source scripts/timed.sh
du -sh "$STUDY/losses"
run categorize "$RHO" categorize --study "$STUDY"
grep -E '^(H|L)' "$OUT/stdout" || true
run "peer categorize (numpy)" "$PY" scripts/peer_categorize.py --study "$STUDY"
run report "$RHO" report --study "$STUDY" --out "$OUT/report"
"$PY" scripts/peer_categorize.py --study "$STUDY" --check | grep -E 'differ|identical'
