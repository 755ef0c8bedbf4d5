#!/usr/bin/env bash
# Build rho with --features cuda on this machine (no GPU needed) and pack what one device call
# needs into .gpu/ (ignored by git; travels with `carry: [".gpu"]`, 64 MiB at most):
#   .gpu/rho.gz  the stripped, gzipped binary (PTX of rho's kernels embedded; ~25 MB)
#   .gpu/device_eval.sh, .gpu/loss_precision.py, .gpu/cudalibs.sh, .gpu/torch_peer.py,
#   .gpu/torch_train_peer.py
# Usage: bash scripts/gpu/package.sh   (from the project root; ../shared/gpu must exist)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared/gpu}
# build-cuda.sh patches candle through `cargo --config`, which rewrites Cargo.lock: keep ours.
cp Cargo.lock /tmp/rho-Cargo.lock.keep
trap 'cp /tmp/rho-Cargo.lock.keep Cargo.lock' EXIT
"$SHARED/build-cuda.sh" --release --features cuda --bin rho
mkdir -p .gpu
strip -o /tmp/rho-cuda target/cuda/release/rho
gzip -9 -c /tmp/rho-cuda > .gpu/rho.gz
cp "$SHARED/cudalibs.sh" "$SHARED/torch_peer.py" "$SHARED/torch_train_peer.py" scripts/gpu/device_eval.sh scripts/gpu/loss_precision.py .gpu/
# the emulator path of the same binary still passes (no GPU here)
./target/cuda/release/rho bench kernels --device cpu --no-timing | tail -1
du -sh .gpu
