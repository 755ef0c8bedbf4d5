#!/usr/bin/env python3
"""Checkpoint load time, rho against PyTorch: one Pythia-160M-shaped checkpoint (gpt_neox,
hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 50304, rotary_pct 0.25; random
weights) in float16, as pytorch_model.bin (torch.save of its state dict, as transformers
4.x saved Pythia) and as model.safetensors, loaded side by side:

* rho: `rho bench load` (what `rho eval` does per checkpoint: config, weight files indexed,
  every tensor converted to f32 on the CPU, model built), .bin and safetensors;
* torch.load(pytorch_model.bin) (f16 tensors, weights_only=True), and the same with every
  tensor converted to f32 as rho ends up with;
* safetensors.torch.load_file(model.safetensors), and converted to f32;
* AutoModelForCausalLM.from_pretrained(dir, dtype=float32), .bin and safetensors.

Every measurement: one untimed load, then --repeat timed loads; median and min seconds.
The files are written once under --dir (not in the repository) and are in the page cache
for every timed load (warm reads).

    .venv/bin/python scripts/bench_load.py --rho target/release/rho [--dir /tmp/rho-bench-load] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402


def make(root: Path) -> tuple[Path, Path, int]:
    bin_dir, st_dir = root / "bin", root / "safetensors"
    if (bin_dir / "pytorch_model.bin").exists() and (st_dir / "model.safetensors").exists():
        n = json.loads((root / "params.json").read_text())["params"]
        return bin_dir, st_dir, n
    cfg = GPTNeoXConfig(
        vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, rotary_pct=0.25, max_position_embeddings=2048,
        tie_word_embeddings=False, use_parallel_residual=True,
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg).half().eval()
    n = sum(p.numel() for p in model.parameters())
    bin_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(bin_dir)
    # transformers 5 names the output layer `lm_head` in the module and `embed_out` in
    # the files it saves; Pythia's .bin files (transformers 4.x) say `embed_out`.
    sd = model.state_dict()
    sd["embed_out.weight"] = sd.pop("lm_head.weight")
    torch.save(sd, bin_dir / "pytorch_model.bin")
    model.save_pretrained(st_dir)
    (root / "params.json").write_text(json.dumps({"params": n}))
    return bin_dir, st_dir, n


def timed(fn, repeat: int) -> list[float]:
    fn()
    gc.collect()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t)
        del out
        gc.collect()
    return runs


def rho_runs(rho: str, dirs: list[Path], repeat: int) -> dict[str, list[float]]:
    cmd = [rho, "bench", "load", "--checkpoints", *map(str, dirs), "--repeat", str(repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        if line.startswith("RESULT system=rho-load"):
            kv = dict(x.split("=", 1) for x in line.split()[1:])
            res[kv["format"]] = [float(x) for x in kv["runs"].split(",")]
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rho", default="target/release/rho")
    ap.add_argument("--dir", default="/tmp/rho-bench-load")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    bin_dir, st_dir, n = make(Path(a.dir))
    bin_f, st_f = bin_dir / "pytorch_model.bin", st_dir / "model.safetensors"
    print(f"checkpoint: {n / 1e6:.1f}M parameters, float16; pytorch_model.bin {bin_f.stat().st_size / 1e6:.1f} MB, "
          f"model.safetensors {st_f.stat().st_size / 1e6:.1f} MB; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, torch threads {torch.get_num_threads()}, repeat {a.repeat}", flush=True)

    rows = []
    rr = rho_runs(a.rho, [bin_dir, st_dir], a.repeat)
    rows.append(("rho bench load (f32 model)", ".bin", rr["pickle"]))
    rows.append(("rho bench load (f32 model)", "safetensors", rr["safetensors"]))
    rows.append(("torch.load (f16 tensors)", ".bin", timed(lambda: torch.load(bin_f, weights_only=True), a.repeat)))
    rows.append(("torch.load, then .float()", ".bin",
                 timed(lambda: {k: v.float() for k, v in torch.load(bin_f, weights_only=True).items()}, a.repeat)))
    rows.append(("safetensors load_file (f16)", "safetensors", timed(lambda: load_file(st_f), a.repeat)))
    rows.append(("load_file, then .float()", "safetensors",
                 timed(lambda: {k: v.float() for k, v in load_file(st_f).items()}, a.repeat)))
    for d, fmt in [(bin_dir, ".bin"), (st_dir, "safetensors")]:
        rows.append(("from_pretrained(dtype=float32)", fmt,
                     timed(lambda d=d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), a.repeat)))

    ref = statistics.median(rows[0][2])
    print("\n| loader | file | median s | min s | median / rho .bin |")
    print("|---|---|---:|---:|---:|")
    for name, fmt, runs in rows:
        med = statistics.median(runs)
        print(f"| {name} | {fmt} | {med:.3f} | {min(runs):.3f} | {med / ref:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
