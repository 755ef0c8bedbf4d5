#!/usr/bin/env python3
"""Check by hand that checkpoints written by `rho train` load in transformers and
give the same per-token losses as `rho eval` (not part of the test suite).

For each case below the script

1. trains a few steps with rho (`rho train ... --steps 3`), from the fixture
   checkpoint `fixtures/llama/step-200` (continual pretraining) or from a random init
   of a fixture `config.json` (`--model-config` + `--tokenizer` of the same folder);
2. loads the written `<out>/step-3` with
   `AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32, output_loading_info=True)`
   and requires no missing / unexpected / mismatched keys, no error messages and no
   warnings from transformers' logger, every parameter in float32, and (for --init)
   weights that differ from the initial checkpoint (training did something);
3. scores fixtures/data/val.jsonl with transformers using the rule of
   scripts/make_fixtures.py (each doc on its own; a doc longer than the context C in
   windows of C tokens with stride C/2, each window scoring only new positions; eager
   attention, float32, CPU);
4. runs `rho eval --checkpoints <out>/step-3 --data fixtures/data/val.jsonl --study <tmp>`
   and compares the losses row by row on (seq, pos, token_id).

It prints a PASS/FAIL table (max |diff| per case, tolerance 1e-4) and exits 1 on any FAIL.

Usage, from the repository root (needs a release build: `cargo build --release`):

    /work/pyvenv/bin/python scripts/check_hf_roundtrip.py [--rho target/release/rho] [--keep DIR]

Everything is written under a temporary folder (removed at the end unless --keep).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
DATA = FIX / "data" / "val.jsonl"
TOL = 1e-4
STEPS = 3

# name -> (rho train source flags, description)
CASES: list[tuple[str, list[str], str]] = [
    ("llama --init", ["--init", str(FIX / "llama/step-200")], "LlamaForCausalLM from fixtures/llama/step-200 (sharded)"),
    ("llama random", ["--model-config", str(FIX / "llama/step-0/config.json"),
                      "--tokenizer", str(FIX / "llama/step-0/tokenizer.json")], "4.x-style config, GQA 4/2"),
    ("gpt2 random", ["--model-config", str(FIX / "gpt2/checkpoint-10/config.json"),
                     "--tokenizer", str(FIX / "gpt2/checkpoint-10/tokenizer.json")], "tied embeddings, Conv1D"),
    ("neox random", ["--model-config", str(FIX / "neox/step1000/config.json"),
                     "--tokenizer", str(FIX / "neox/step1000/tokenizer.json")], "4.x-style config, parallel residual, rotary 0.25"),
    ("neox-seq random", ["--model-config", str(FIX / "neox-seq/step1/config.json"),
                         "--tokenizer", str(FIX / "neox-seq/step1/tokenizer.json")], "sequential residual, rotary 0.5"),
    ("qwen2 random", ["--model-config", str(FIX / "qwen2/step-1/config.json"),
                      "--tokenizer", str(FIX / "qwen2/step-1/tokenizer.json")], "q/k/v biases"),
    ("mistral random", ["--model-config", str(FIX / "mistral/step-1/config.json"),
                        "--tokenizer", str(FIX / "mistral/step-1/tokenizer.json")], "mistral model_type"),
    # issue 19's families, continued from their fixture checkpoints (`rho train --init`)
    ("olmo --init", ["--init", str(FIX / "olmo/step1000-tokens4B")], "OLMo-1: LayerNorm without weights, clip_qkv, biases"),
    ("olmo2 --init", ["--init", str(FIX / "olmo2/stage1-step600-tokens3B")], "OLMo-2: post-norms, q/k norm (sharded)"),
    ("olmo3 --init", ["--init", str(FIX / "olmo3/stage1-step2000")], "OLMo-3: sliding layer (window 8), YaRN on the full one"),
    ("smollm3 --init", ["--init", str(FIX / "smollm3/step-40000")], "SmolLM3: a layer without RoPE, tied embeddings"),
    ("qwen3 --init", ["--init", str(FIX / "qwen3/checkpoint-1000")], "Qwen3: per-head q/k norm, sliding layer (bf16)"),
    ("qwen3 random", ["--model-config", str(FIX / "qwen3/checkpoint-500/config.json"),
                      "--tokenizer", str(FIX / "qwen3/checkpoint-500/tokenizer.json")], "Qwen3 from a random init"),
    ("pythia pickle --init", ["--init", str(FIX / "neox-pickle/step512")], "float16 sharded pytorch_model.bin, 4.x config"),
]


# ---------------------------------------------------------------------------
# transformers side: the scoring rule of scripts/make_fixtures.py
# ---------------------------------------------------------------------------
def windows(n: int, C: int) -> list[tuple[int, int, int]]:
    """(window_start, window_end, first_scored_position) triples."""
    if n <= 1:
        return []
    if n <= C:
        return [(0, n, 1)]
    S = C // 2
    out = [(0, C, 1)]
    e_prev = C
    while e_prev < n:
        e = min(e_prev + S, n)
        out.append((e - C, e, e_prev))
        e_prev = e
    return out


@torch.no_grad()
def hf_losses(model, tok: Tokenizer, docs: list[str], C: int) -> dict[tuple[int, int], tuple[int, float]]:
    out = {}
    for seq, text in enumerate(docs):
        ids = tok.encode(text, add_special_tokens=True).ids
        for s, e, first in windows(len(ids), C):
            x = torch.tensor(ids[s:e], dtype=torch.long)[None]
            lp = torch.log_softmax(model(input_ids=x).logits[0].to(torch.float32), dim=-1)
            for p in range(first, e):
                out[(seq, p)] = (ids[p], float(-lp[p - 1 - s, ids[p]]))
    return out


class Capture(logging.Handler):
    """Collects WARNING+ records of transformers' logger."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def load_hf(ckpt: Path):
    cap = Capture()
    logger = logging.getLogger("transformers")
    logger.addHandler(cap)
    transformers.logging.set_verbosity_warning()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            ckpt, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    finally:
        logger.removeHandler(cap)
        transformers.logging.set_verbosity_error()
    model.eval()
    problems = []
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        v = info.get(k)
        if v:
            problems.append(f"{k}: {sorted(map(str, v))[:6]}")
    bad_dtype = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if bad_dtype:
        problems.append(f"non-f32 params: {bad_dtype[:4]}")
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    problems += ["warning: " + ansi.sub("", w).splitlines()[0][:160] for w in cap.records]
    return model, problems


def context_of(ckpt: Path) -> int:
    cfg = json.loads((ckpt / "config.json").read_text())
    return cfg.get("max_position_embeddings", cfg.get("n_positions"))


# buffers old GPT-NeoX checkpoints carry that the model computes (rho does not save them)
BUFFERS = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    files = [path / "model.safetensors"] if (path / "model.safetensors").exists() else sorted(path.glob("model-*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                out[k] = sf.get_tensor(k).to(torch.float32)
    if not files:  # PyTorch pickles (read with weights_only: nothing in them is run)
        for f in sorted(path.glob("pytorch_model*.bin")):
            for k, v in torch.load(f, weights_only=True).items():
                if not k.endswith(BUFFERS):
                    out[k] = v.to(torch.float32)
    return out


# ---------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------
def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stderr[-2000:]}")


def check_case(rho: Path, work: Path, name: str, src: list[str], docs: list[str]) -> dict:
    slug = name.replace(" ", "_").replace("-", "")
    out = work / f"train_{slug}"
    res = {"case": name, "max_diff": float("nan"), "n": 0, "problems": []}
    run([str(rho), "train", *src, "--data", str(DATA), "--out", str(out), "--steps", str(STEPS),
         "--seq-len", "32", "--batch-tokens", "128", "--lr", "1e-3", "--quiet"])
    ckpt = out / f"step-{STEPS}"
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (ckpt / f).exists():
            res["problems"].append(f"{ckpt.name}/{f} missing")
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    res["train_loss"] = (metrics[0]["loss_all"], metrics[-1]["loss_all"]) if metrics else None

    if "--init" in src:
        before = read_tensors(Path(src[src.index("--init") + 1]))
        after = read_tensors(ckpt)
        if set(before) != set(after):
            res["problems"].append(f"tensor names differ from the init: {sorted(set(before) ^ set(after))[:6]}")
        else:
            changed = max(float((before[k] - after[k]).abs().max()) for k in before)
            res["weight_change"] = changed
            if not changed > 0:
                res["problems"].append("weights identical to the init after training")

    model, problems = load_hf(ckpt)
    res["problems"] += problems
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    hf = hf_losses(model, tok, docs, context_of(ckpt))

    study = work / f"study_{slug}"
    run([str(rho), "eval", "--checkpoints", str(ckpt), "--data", str(DATA), "--study", str(study), "--quiet"])
    t = pq.read_table(study / "losses" / f"{ckpt.name}.parquet").to_pydict()
    rho_rows = {(s, p): (i, l) for s, p, i, l in zip(t["seq"], t["pos"], t["token_id"], t["loss"])}
    if set(rho_rows) != set(hf):
        res["problems"].append(f"scored positions differ: rho {len(rho_rows)}, transformers {len(hf)}, "
                               f"e.g. {sorted(set(rho_rows) ^ set(hf))[:4]}")
    common = sorted(set(rho_rows) & set(hf))
    bad_ids = [k for k in common if rho_rows[k][0] != hf[k][0]]
    if bad_ids:
        res["problems"].append(f"token ids differ at {bad_ids[:4]}")
    if common:
        res["max_diff"] = max(abs(rho_rows[k][1] - hf[k][1]) for k in common)
        res["n"] = len(common)
        res["mean_loss"] = sum(hf[k][1] for k in common) / len(common)
    if not res["max_diff"] <= TOL:
        res["problems"].append(f"max |diff| {res['max_diff']:.3g} > {TOL:g}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rho", type=Path, default=ROOT / "target" / "release" / "rho")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    a = ap.parse_args()
    if not a.rho.exists():
        print(f"error: {a.rho} not found: run `cargo build --release` first", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    docs = [json.loads(l)["text"] for l in DATA.read_text(encoding="utf-8").splitlines() if l.strip()]

    work = a.keep if a.keep else Path(tempfile.mkdtemp(prefix="rho-roundtrip-"))
    if a.keep:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    results = []
    try:
        for name, src, _desc in CASES:
            try:
                r = check_case(a.rho, work, name, src, docs)
            except Exception as e:  # report and go on with the other cases
                r = {"case": name, "max_diff": float("nan"), "n": 0, "problems": [f"{type(e).__name__}: {e}"]}
            results.append(r)
            print(f"[{name}] done: max |diff| {r['max_diff']:.3g} over {r['n']} tokens"
                  + (f"; {len(r['problems'])} problem(s)" if r["problems"] else ""), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"rho train ({STEPS} steps, seq-len 32, batch-tokens 128, lr 1e-3) -> transformers "
          f"{transformers.__version__} from_pretrained -> losses on fixtures/data/val.jsonl vs rho eval")
    print()
    print(f"| {'case':<20} | {'source':<58} | {'tokens':>6} | {'train loss 1->3':>15} | {'max |diff|':>10} | result |")
    print(f"|{'-' * 22}|{'-' * 60}|{'-' * 8}|{'-' * 17}|{'-' * 12}|--------|")
    desc = {n: d for n, _, d in CASES}
    ok_all = True
    for r in results:
        ok = not r["problems"]
        ok_all &= ok
        tl = r.get("train_loss")
        tl = f"{tl[0]:.3f}->{tl[1]:.3f}" if tl else "-"
        print(f"| {r['case']:<20} | {desc[r['case']]:<58} | {r['n']:>6} | {tl:>15} | {r['max_diff']:>10.2e} | "
              f"{'PASS' if ok else 'FAIL':<6} |")
    for r in results:
        for p in r["problems"]:
            print(f"  {r['case']}: {p}")
    print()
    print("PASS" if ok_all else "FAIL", f"(tolerance {TOL:g})")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
