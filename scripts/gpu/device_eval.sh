#!/usr/bin/env bash
# One device call for issue 7: rho's kernels, then rho's eval and training paths against the
# PyTorch peers on the H200, side by side. Prepared on a machine without a GPU:
#
#   bash scripts/gpu/package.sh        # cuda build (../shared/gpu/build-cuda.sh), strip, gzip,
#                                      # copy this script and the peers into .gpu/ (ignored by git)
#   # then, with the device tool:
#   run(command="bash .gpu/device_eval.sh", carry=[".gpu"], timeout_s=590)
#
# Order = priority (a later step may not get its time): kernel checks and kernel timings,
# per-token loss equivalence with transformers, eval throughput (acceptance: >= 1.0x torch
# eager at 8x2048 and 4x1024, peak memory not above torch's), training steps, the optimizer,
# then one eval batch and one training step under ncu (GPU time per kernel, KTIME lines).
# All of it took 273 s on the H200 on 2026-11-30 (without the ncu steps; those took ~60 s).
# Every step has its own timeout. The device tool returns at most 8 files from $OUT, so each
# step's log goes to /tmp/rho-logs and is appended to $OUT/steps.log; $OUT/summary.txt and
# stdout get the RESULT / CHECK / PRECISION lines.
# RHO_STEPS (an extended regex, default: every step) picks steps by name, for a second call
# that runs what the first did not reach, e.g. RHO_STEPS='train|optim'.
set -u
OUT=${OUT:-/tmp/rho-gpu-out}
LOGS=/tmp/rho-logs
mkdir -p "$OUT" "$LOGS"
source .gpu/cudalibs.sh >/dev/null 2>&1 || source ../shared/gpu/cudalibs.sh
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
gunzip -c .gpu/rho.gz > /tmp/rho && chmod +x /tmp/rho
RHO=/tmp/rho
PEER=".gpu/torch_peer.py"
TPEER=".gpu/torch_train_peer.py"
export RUST_BACKTRACE=0
wanted() { [[ $1 =~ ${RHO_STEPS:-.} ]]; }
step() { # name, timeout, command...
    local name=$1 t=$2; shift 2
    wanted "$name" || return 0
    echo "== $name" | tee -a "$OUT/summary.txt"
    local t0=$(date +%s)
    timeout "$t" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    grep -E "^(RESULT|CHECK|PRECISION|KTIME|check |all )" "$LOGS/$name.log" | tee -a "$OUT/summary.txt"
    echo "   ($name: rc=$rc, $(( $(date +%s) - t0 )) s)" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || { tail -5 "$LOGS/$name.log" | tee -a "$OUT/summary.txt"; }
    { echo "=== $name rc=$rc"; cat "$LOGS/$name.log"; } >>"$OUT/steps.log"
}
# Peak device memory of a process, sampled the same way for rho and torch (nvidia-smi every
# 50 ms; candle has no allocator statistics): the max of memory.used while it ran.
peak() { # name, timeout, command...
    local name=$1; shift
    wanted "$name" || return 0
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$LOGS/$name.mem" &
    local smi=$!
    step "$name" "$@"
    kill $smi 2>/dev/null
    echo "   $name: peak memory.used $(sort -n "$LOGS/$name.mem" | tail -1) MiB (whole GPU)" | tee -a "$OUT/summary.txt"
}

# 1. Kernels against their CPU references on the GPU (attention forward in 3 variants and
#    backward, CE, AdamW, RMSNorm, SwiGLU and RoPE forward and backward: 49 checks), then
#    kernel timings (flash variants w4 / w4m4 / w8 vs plain attention; attention
#    forward+backward flash vs plain; SwiGLU and RoPE fused vs candle; fused vs plain CE).
step kernels 120 $RHO bench kernels --device cuda:0
# 2. Per-token losses: tiny f32 against transformers (peer tolerance 2e-3); then the real
#    shape in bf16 against transformers in f32 and in bf16 on the same tokens (PRECISION
#    lines: max / p99.9 relative error, rho's and PyTorch's), and against rho's own f32 path
#    on the CPU (relative 1e-2). Not torch_peer.py --check-against in bf16: its
#    model.to(dtype=bf16) rounds RoPE's inv_freq to bf16 (max |diff| 0.85 at 1x2048 on the
#    CPU, against its tolerance of 0.15; docs/gpu.md, "bf16 against f32").
step tiny-dump 60 $RHO bench eval --device cuda:0 --tiny --dtype f32 --iters 3 --warmup 1 --dump /tmp/tiny.safetensors
step tiny-check 120 python3 $PEER --tiny --dtype f32 --check-against /tmp/tiny.safetensors
step full-dump 120 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 1x2048 --iters 3 --warmup 1 --dump /tmp/full.safetensors
step full-precision 150 python3 .gpu/loss_precision.py /tmp/full.safetensors --device cuda
#    The acceptance's other half: the same weights and ids through rho's CPU f32 path, every
#    token's loss within 1e-2 relative of the GPU's bf16 one.
step full-cpu-f32 150 $RHO bench eval --device cpu --dtype f32 --check-against /tmp/full.safetensors
rm -f /tmp/full.safetensors
# 3. Eval throughput and memory, one after the other on the same GPU.
#    rho twice (before and after torch): the spread between the two is the noise.
peak rho-bf16 150 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 8x2048,4x1024
peak torch-eager 200 python3 $PEER --shapes 8x2048,4x1024 --matmul-n 0
step rho-bf16-again 120 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 8x2048,4x1024
#    rho with the residual stream in bf16 (transformers' numerics) instead of f32 (rho's
#    default in bf16 evaluation, composed of candle ops: predicted ~10% at 8x2048).
RHO_RESIDUAL=model step rho-bf16-residual-model 120 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 8x2048,4x1024
RHO_FLASH_VARIANT=w8 step rho-bf16-w8 120 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 8x2048 --iters 5
#    rho with the CUDA memory pool's default (freed memory unmapped at every synchronisation,
#    i.e. after every batch) instead of rho's setting (kept): what the setting is worth.
RHO_CUDA_POOL=release step rho-bf16-pool-release 120 $RHO bench eval --device cuda:0 --dtype bf16 --shapes 8x2048,4x1024
# 4. Training steps (CLM, SLM 60%), bf16 weights like the peer: rho (flash attention
#    forward + backward, fused CE, RMSNorm, SwiGLU and RoPE with their backward, fused AdamW) against the torch training peer
#    (fused AdamW too); and rho with its kernels off for 4x1024.
peak rho-train 200 $RHO bench train --device cuda:0 --shapes 4x1024,4x2048 --iters 5
peak torch-train 200 python3 $TPEER --shapes 4x1024,4x2048 --iters 5
step rho-train-slm 120 $RHO bench train --device cuda:0 --shapes 4x2048 --select 0.6 --iters 5
#    The same binary built without the candle backward patch (package.sh; present when
#    .gpu/rho-stock.gz travelled): a first gradient added to zeros, as candle 0.11 does.
if [ -f .gpu/rho-stock.gz ] && wanted rho-train-stock; then
    gunzip -c .gpu/rho-stock.gz > /tmp/rho-stock && chmod +x /tmp/rho-stock
    step rho-train-stock 200 /tmp/rho-stock bench train --device cuda:0 --shapes 4x1024,4x2048 --iters 5
fi
RHO_FUSED_KERNELS=0 step rho-train-plain 150 $RHO bench train --device cuda:0 --shapes 4x1024 --iters 3
RHO_CUDA_POOL=release step rho-train-pool-release 120 $RHO bench train --device cuda:0 --shapes 4x2048 --iters 5
# 5. The optimizer alone: one AdamW step and gradient norm over TinyLlama's 1.1B bf16
#    parameters, rho's fused in-place kernels against the same update composed of candle ops.
step optim 90 $RHO bench optim --device cuda:0 --params 1100
# 6. Where the GPU time goes, kernel by kernel (Nsight Compute, one metric, clocks left alone):
#    one evaluation batch at 8x2048 and one training step at 4x1024, grouped by kernel name.
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
profile() { # name, timeout, rho arguments...
    local name=$1 t=$2; shift 2
    wanted "$name" || return 0
    [ -n "$NCU" ] || { echo "== $name: no ncu" | tee -a "$OUT/summary.txt"; return 0; }
    timeout "$t" "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base $RHO "$@" >"$LOGS/$name.csv" 2>"$LOGS/$name.err"
    echo "   ($name: ncu rc=$?)" >>"$LOGS/$name.err"
    step "$name" 30 bash -c "cat $LOGS/$name.err; python3 .gpu/kernel_times.py $LOGS/$name.csv --top 25"
}
profile profile-eval 90 bench eval --device cuda:0 --dtype bf16 --shapes 8x2048 --iters 1 --warmup 0
profile profile-train 150 bench train --device cuda:0 --shapes 4x1024 --iters 1 --warmup 0
echo "== done" | tee -a "$OUT/summary.txt"
