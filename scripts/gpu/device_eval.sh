#!/usr/bin/env bash
# One device call for issue 7: rho's eval path against the PyTorch peer on the H200,
# side by side, with equivalence checks first. Prepared on a machine without a GPU:
#
#   ../shared/gpu/build-cuda.sh --release --features cuda --bin rho
#   mkdir -p .gpu && strip -o /tmp/rho-cuda target/cuda/release/rho && gzip -9 -c /tmp/rho-cuda > .gpu/rho.gz
#   # (stripped: 80 MB, over the 64 MiB carry; gzipped: 23 MB. Measured 2026-11-29: the cuda build
#   #  takes 21 min from scratch on 2 cores.)
#   cp ../shared/gpu/cudalibs.sh ../shared/gpu/torch_peer.py scripts/gpu/device_eval.sh .gpu/
#   # .gpu/ is ignored by git (.gitignore); then, with the device tool:
#   run(command="bash .gpu/device_eval.sh", carry=[".gpu"], timeout_s=540)
#
# Writes logs under $OUT and prints a short table last. Every step has its own
# timeout so that one hang does not eat the session's device time.
set -u
OUT=${OUT:-/tmp/rho-gpu-out}
mkdir -p "$OUT"
source .gpu/cudalibs.sh >/dev/null 2>&1 || source ../shared/gpu/cudalibs.sh
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/gpu.txt"
gunzip -c .gpu/rho.gz > /tmp/rho && chmod +x /tmp/rho
RHO=/tmp/rho
PEER=".gpu/torch_peer.py"
step() { # name, timeout, command...
    local name=$1 t=$2; shift 2
    echo "== $name" | tee -a "$OUT/summary.txt"
    timeout "$t" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -E "^(RESULT|CHECK|check )" "$OUT/$name.log" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || { echo "   $name: rc=$rc (tail of the log:)" | tee -a "$OUT/summary.txt"; tail -5 "$OUT/$name.log" | tee -a "$OUT/summary.txt"; }
}
# 1. Equivalence: tiny f32 (tolerance 2e-3), then the real shape in bf16 (the peer's tolerance 0.15).
step tiny-dump 60 $RHO bench eval --device cuda:0 --tiny --dtype f32 --iters 5 --warmup 1 --dump /tmp/tiny.safetensors
step tiny-check 120 python3 $PEER --tiny --dtype f32 --check-against /tmp/tiny.safetensors
step full-dump 180 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 1x2048 --iters 5 --warmup 1 --dump /tmp/full.safetensors
step full-check 180 python3 $PEER --dtype bf16 --shapes 1x2048 --check-against /tmp/full.safetensors
rm -f /tmp/full.safetensors
# 2. Throughput, same shapes, one after the other on the same GPU. Peak device memory
#    of each process is sampled the same way for both (nvidia-smi every 50 ms; candle
#    has no allocator statistics): the max of memory.used while it ran.
peak() { # name, command...
    local name=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$OUT/$name.mem" &
    local smi=$!
    step "$name" 240 "$@"
    kill $smi 2>/dev/null
    echo "   $name: peak memory.used $(sort -n "$OUT/$name.mem" | tail -1) MiB (whole GPU)" | tee -a "$OUT/summary.txt"
}
peak rho-bf16 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 8x2048,4x1024
peak torch-eager python3 $PEER --shapes 8x2048,4x1024 --matmul-n 0
echo "== done" | tee -a "$OUT/summary.txt"
