#!/usr/bin/env bash
# Build rho with --features cuda on this machine (no GPU needed) and pack what one device call
# needs into .gpu/ (ignored by git; travels with `carry: [".gpu"]`, 64 MiB at most):
#   .gpu/rho.gz  the stripped, gzipped binary (PTX of rho's kernels embedded; ~25 MB)
#   .gpu/device_eval.sh, .gpu/loss_precision.py, .gpu/kernel_times.py, .gpu/cudalibs.sh, .gpu/torch_peer.py,
#   .gpu/torch_train_peer.py
# Usage: bash scripts/gpu/package.sh   (from the project root; ../shared/gpu must exist)
#        RHO_STOCK=1 bash scripts/gpu/package.sh   also .gpu/rho-stock.gz: candle's backward
#        unpatched (the training A/B of device_eval.sh; ~24 MB more)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared/gpu}
# build-cuda.sh patches candle through `cargo --config`, which rewrites Cargo.lock: keep ours.
cp Cargo.lock /tmp/rho-Cargo.lock.keep
trap 'cp /tmp/rho-Cargo.lock.keep Cargo.lock' EXIT
# build-cuda.sh builds against its own copy of candle-core (from crates.io, patched for
# dynamic loading; `--help`: the copy made, nothing built), which takes precedence over
# Cargo.toml's [patch] of third_party/candle-core: give it that crate's backward too
# (first gradient contributions stored as they are, scripts/patch_candle_backprop.py).
export VENDOR_ROOT=${VENDOR_ROOT:-/tmp/candle-cuda-vendor}
ver=$(awk '/^name = "candle-core"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
[ -f "$VENDOR_ROOT/$ver/.patched" ] || "$SHARED/build-cuda.sh" --help >/dev/null
if [ "${RHO_STOCK:-0}" = 1 ]; then
    # also the binary with candle's backward as released (.gpu/rho-stock.gz), for the device
    # script's training A/B
    regs="${CARGO_HOME:-$HOME/.cargo}/registry/src"
    cp "$(ls -d "$regs"/*/candle-core-"$ver" | head -1)/src/backprop.rs" "$VENDOR_ROOT/$ver/candle-core/src/backprop.rs"
    "$SHARED/build-cuda.sh" --release --features cuda --bin rho
    strip -o /tmp/rho-cuda target/cuda/release/rho
    gzip -9 -c /tmp/rho-cuda > .gpu/rho-stock.gz
fi
cp third_party/candle-core/src/backprop.rs "$VENDOR_ROOT/$ver/candle-core/src/backprop.rs"
"$SHARED/build-cuda.sh" --release --features cuda --bin rho
mkdir -p .gpu
strip -o /tmp/rho-cuda target/cuda/release/rho
gzip -9 -c /tmp/rho-cuda > .gpu/rho.gz
cp "$SHARED/cudalibs.sh" "$SHARED/torch_peer.py" "$SHARED/torch_train_peer.py" scripts/gpu/device_eval.sh scripts/gpu/loss_precision.py scripts/gpu/kernel_times.py .gpu/
# the emulator path of the same binary still passes (no GPU here)
./target/cuda/release/rho bench kernels --device cpu --no-timing | tail -1
du -sh .gpu
