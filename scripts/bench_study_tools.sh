#!/usr/bin/env bash
# Time and peak memory of `rho categorize`, `rho report` and `rho audit` (and the
# numpy peer of categorize) on a synthetic study; the numbers of BENCHMARKS.md,
# section "Report, audit and categorize at 1M tokens x 16 checkpoints".
#
#   scripts/bench_study_tools.sh [STUDY] [ROUNDS]     (defaults: /tmp/synth-1m16, 3)
#
# Needs target/release/rho (cargo build --release; or $RHO), GNU time (/usr/bin/time) and, for
# the peer, a Python with numpy and pyarrow ($PY, default /work/pyvenv/bin/python).
# The study is generated first when missing:
#   cargo run --release --example synth_study -- --out STUDY --tokens 1000000 --checkpoints 16
# Prints one line per run: command, wall seconds, max RSS (MiB), load average before.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${1:-/tmp/synth-1m16}
ROUNDS=${2:-3}
PY=${PY:-/work/pyvenv/bin/python}
RHO=${RHO:-target/release/rho}
if [ ! -f "$STUDY/study.json" ]; then
  cargo run --release --example synth_study -- --out "$STUDY" --tokens 1000000 --checkpoints 16
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

source scripts/timed.sh

for r in $(seq "$ROUNDS"); do
  echo "--- round $r"
  run categorize "$RHO" categorize --study "$STUDY"
  run "peer categorize (numpy)" "$PY" scripts/peer_categorize.py --study "$STUDY"
  run report "$RHO" report --study "$STUDY" --out "$OUT/report"
  run "audit (table, top 20)" "$RHO" audit --study "$STUDY"
  run "audit json top 1000" "$RHO" audit --study "$STUDY" --format json --top 1000
  run "audit contains+category" "$RHO" audit --study "$STUDY" --contains " sum" --category 'L->L' --sort delta
  run "audit fail-if (exit 3)" "$RHO" audit --study "$STUDY" --fail-if 'H->H>0.15' --fail-if 'L->L<50%' --top 0
done
