#!/usr/bin/env bash
# Export a notebook from a freshly built small study and execute it headless
# (nbclient, python3 kernel); fails if the export fails or any cell errors.
#
#   scripts/check_notebook.sh            # venv in target/nbvenv (created and filled from PyPI if needed)
#   NB_VENV=/tmp/nbvenv scripts/check_notebook.sh
#   RHO=target/release/rho scripts/check_notebook.sh   # use an already built binary
#
# The study: `rho eval` of the fixture Llama series (3 checkpoints: two whole, the
# last in 2 shards) on the fixture validation set, then `rho categorize`; no training runs, so the notebook's
# runs/ cell takes its "no runs" branch. Also checks that the committed
# notebooks-export/*.ipynb are valid nbformat 4.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

VENV=${NB_VENV:-target/nbvenv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 ships venv separately.
        rm -rf "$VENV"
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        "$PY" -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    pandas pyarrow matplotlib numpy nbclient nbformat ipykernel

if [ -z "${RHO:-}" ]; then
    cargo build --locked --quiet --bin rho
    RHO=target/debug/rho
fi

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# Two checkpoints evaluated whole, the third in 2 shards: the notebook reads both layouts.
"$RHO" eval --quiet --checkpoints fixtures/llama/step-0 fixtures/llama/step-100 --data fixtures/data/val.jsonl --study "$T/study"
for i in 0 1; do
    "$RHO" eval --quiet --checkpoints fixtures/llama --data fixtures/data/val.jsonl --study "$T/study" --shard "$i/2"
done
test -f "$T/study/losses/checkpoint=step-200/part-1-of-2.parquet"
"$RHO" categorize --study "$T/study" >/dev/null
"$RHO" export notebook --study "$T/study" --out "$T/check.ipynb"

export MPLCONFIGDIR="$T/mpl" JUPYTER_PATH="$VENV/share/jupyter" PYDEVD_DISABLE_FILE_VALIDATION=1
"$VENV/bin/python" - "$T/check.ipynb" "$T/executed.ipynb" notebooks-export/*.ipynb <<'PY'
import sys, time
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

src, dst, committed = sys.argv[1], sys.argv[2], sys.argv[3:]
for path in committed:
    nbformat.validate(nbformat.read(path, as_version=4))
    print(f"valid nbformat 4: {path}")
nb = nbformat.read(src, as_version=4)
nbformat.validate(nb)
t = time.time()
try:
    NotebookClient(nb, timeout=600, kernel_name="python3").execute()
except CellExecutionError as e:
    nbformat.write(nb, dst)
    print(f"notebook check FAILED: a cell raised\n{e}", file=sys.stderr)
    sys.exit(1)
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
if errors:
    print(f"notebook check FAILED: {len(errors)} error outputs", file=sys.stderr)
    sys.exit(1)
n_code = sum(c.cell_type == "code" for c in nb.cells)
n_img = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
print(f"notebook check: {n_code} code cells executed without error, {n_img} figures, {time.time() - t:.1f} s")
PY
echo "notebook check: done in $(( $(date +%s) - start )) s"
