#!/usr/bin/env bash
# Build rho (release) and run the rho-vs-transformers eval benchmark; extra arguments go to
# scripts/bench_eval.py (e.g. --tokens 20000 --runs 1 --no-write). PYTHON overrides the
# interpreter (it needs torch, transformers, tokenizers, safetensors, numpy, pyarrow).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/work/pyvenv/bin/python}
cargo build --release
exec "$PYTHON" scripts/bench_eval.py "$@"
