#!/usr/bin/env python3
"""Benchmark `rho train` against a PyTorch training loop of the same model (CPU, f32),
side by side, in one run.

Both systems train the same Llama from a random init, with the same config, the same
packed windows of the same data, the same batch and the same optimizer:

* model: LlamaForCausalLM, hidden 512, 6 layers, 8 heads / 4 kv heads (head_dim 64),
  intermediate 1376, vocab 8192, untied embeddings, RoPE theta 10000, RMSNorm eps 1e-5:
  25.8M parameters (override with --hidden/--layers/--inter/--vocab);
* tokenizer: byte-level BPE (vocab --vocab, `<|endoftext|>` = 0, no post-processor),
  trained with the `tokenizers` library on GSM8K train (question + "\\n" + answer);
* data: the first --docs documents of /work/shared/data/gsm8k_train.jsonl.gz as `text`
  (question + "\\n" + answer), written to a temporary jsonl under --workdir; packed as
  rho packs them (documents joined with EOS, cut into windows of --seq-len tokens;
  each window trains on its seq-len - 1 next-token targets);
* batch: --batch-tokens / --seq-len windows (default 8 x 256); f32;
* AdamW lr 3e-4 (cosine to lr/10 over --steps, no warm-up), betas 0.9/0.95, eps 1e-8,
  weight decay 0.1 on matrices only (rank >= 2), global grad-norm clipping at 1.0;
* threads: 2 (torch.set_num_threads(2); rho uses all cores of this 2-core machine).

Runs (each its own process, in the order rho CLM, peer CLM, rho SLM, peer SLM, repeated
--rounds times):

* rho CLM:  `rho train --model-config ... --tokenizer ...` (tokens/s from metrics.jsonl);
* rho SLM:  `rho score` once with a reference model (a random-init Llama of the same
  config saved by transformers, seed 1), then
  `rho train --mode slm --ratio 0.6 --ref-scores <parquet>`;
* peer CLM: HF LlamaForCausalLM (attn_implementation="sdpa") forward, per-token f32
  cross-entropy (reduction="none"), mean, backward, clip_grad_norm_, torch.optim.AdamW;
* peer SLM: same, with the loss averaged over the top 60% of the batch's tokens by
  excess loss (loss - reference loss; reference losses read from the same `rho score`
  Parquet, checked token by token against the peer's windows), torch.topk on the
  flattened batch.

Steady state: the first --skip steps of each run are dropped; tokens/s of a run is
(targets of the measured steps) / (sum of their step times). A step is timed from
building the batch to the end of the optimizer update, on both sides.

Usage (from the repository root; needs a release build of rho):

    cargo build --release
    /work/pyvenv/bin/python scripts/bench_train.py                 # writes BENCHMARKS.md section
    /work/pyvenv/bin/python scripts/bench_train.py --steps 6 --rounds 1 --no-write

The PyTorch side is this same file run as `bench_train.py peer ...` in a subprocess.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/data")
SECTION = "## rho train vs PyTorch (CPU)"
# A hand-written profile subsection that may follow the generated part; kept on re-runs.
KEEP = "### rho train: where the step time goes"
EOT = "<|endoftext|>"
LR, BETAS, EPS, WD, CLIP, RATIO = 3e-4, (0.9, 0.95), 1e-8, 0.1, 1.0, 0.6


def llama_config(a) -> dict:
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama",
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        head_dim=a.hidden // a.heads, max_position_embeddings=max(512, a.seq_len),
        rms_norm_eps=1e-5, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=0, eos_token_id=0, pad_token_id=None, initializer_range=0.02,
        attention_dropout=0.0, use_cache=False, dtype="float32",
    )


def lr_at(step: int, total: int, lr: float = LR, min_lr: float = LR / 10) -> float:
    """rho's schedule (src/train/optim.rs) with no warm-up: cosine from lr to min_lr."""
    progress = min(max((step - 0) / total, 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------
# The PyTorch peer (run as a subprocess: `bench_train.py peer ...`)
# ---------------------------------------------------------------------------
def pack(tok_path: Path, data: Path, seq_len: int) -> list[list[int]]:
    """rho's packing (src/eval/plan.rs plan_packed): docs joined with EOS, cut into
    windows of seq_len tokens. Only full windows are returned."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    eos = tok.token_to_id(EOT)
    texts = [json.loads(l)["text"] for l in data.read_text(encoding="utf-8").splitlines() if l.strip()]
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=True):
        ids.extend(enc.ids)
        if not enc.ids or enc.ids[-1] != eos:
            ids.append(eos)
    return [ids[s:s + seq_len] for s in range(0, len(ids) - seq_len + 1, seq_len)]


def peer_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_train.py peer")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--batch-tokens", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--mode", choices=["clm", "slm"], required=True)
    ap.add_argument("--ref-scores", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    windows = pack(a.tokenizer, a.data, a.seq_len)
    W = torch.tensor(windows, dtype=torch.long)  # [n_windows, seq_len]
    ref = None
    if a.mode == "slm":
        import pyarrow.parquet as pq

        t = pq.read_table(a.ref_scores, columns=["seq", "pos", "token_id", "loss"]).to_pydict()
        n = len(windows)
        ref = torch.zeros(n, a.seq_len - 1, dtype=torch.float32)
        tid = torch.full((n, a.seq_len - 1), -1, dtype=torch.long)
        seq, pos = np.asarray(t["seq"]), np.asarray(t["pos"])
        keep = seq < n
        seq, pos = torch.from_numpy(seq[keep].astype(np.int64)), torch.from_numpy(pos[keep].astype(np.int64))
        ref[seq, pos - 1] = torch.from_numpy(np.asarray(t["loss"], dtype=np.float32)[keep])
        tid[seq, pos - 1] = torch.from_numpy(np.asarray(t["token_id"], dtype=np.int64)[keep])
        if not torch.equal(tid, W[:, 1:]):
            raise SystemExit("peer: reference scores are not aligned with the packed windows")

    cfg_json = json.loads(a.config.read_text())
    cfg = LlamaConfig(**{k: v for k, v in cfg_json.items() if k not in ("architectures", "model_type", "dtype")})
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WD},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    b = max(1, a.batch_tokens // a.seq_len)
    g = torch.Generator().manual_seed(a.seed)
    order = torch.randperm(len(windows), generator=g)
    n_params = sum(p.numel() for p in params)
    out = open(a.out, "w")
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        idx = order[((step - 1) * b + torch.arange(b)) % len(windows)]
        x = W[idx]
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, a.steps)
        logits = model(input_ids=x).logits  # [b, s, V]
        V = logits.shape[-1]
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), x[:, 1:].reshape(-1), reduction="none")
        if a.mode == "clm":
            loss = losses.mean()
            kept = losses.numel()
        else:
            excess = losses.detach() - ref[idx].reshape(-1)
            kept = math.ceil(RATIO * losses.numel() - 1e-9)
            top = torch.topk(excess, kept, sorted=False).indices
            loss = losses[top].sum() / kept
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        gn = torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        n_tok = losses.numel()
        rec = {"step": step, "secs": t3 - t0, "fwd_s": t1 - t0, "bwd_s": t2 - t1, "opt_s": t3 - t2,
               "tokens": n_tok, "tokens_per_s": n_tok / (t3 - t0), "loss_all": float(losses.detach().mean()),
               "loss_kept": float(loss.detach()), "kept": kept, "grad_norm": float(gn), "n_params": n_params}
        out.write(json.dumps(rec) + "\n")
        out.flush()
        print(f"peer {a.mode} step {step}/{a.steps} loss {rec['loss_all']:.4f} {rec['tokens_per_s']:.0f} tok/s "
              f"(fwd {rec['fwd_s']:.2f} s, bwd {rec['bwd_s']:.2f} s, opt {rec['opt_s']:.2f} s)", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------
def gsm8k_texts():
    with gzip.open(SHARED / "gsm8k_train.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield r["question"] + "\n" + r["answer"]


def setup(a) -> dict:
    """Tokenizer, config, data and reference checkpoint under the workdir (cached)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    base = a.workdir
    base.mkdir(parents=True, exist_ok=True)
    tok_path = base / f"tokenizer-{a.vocab}.json"
    if not tok_path.exists():
        t = time.time()
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=a.vocab, min_frequency=2, special_tokens=[EOT],
                                      show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(gsm8k_texts(), trainer=trainer)
        assert tok.token_to_id(EOT) == 0 and tok.get_vocab_size() == a.vocab, tok.get_vocab_size()
        tok.save(str(tok_path))
        print(f"[setup] trained BPE tokenizer (vocab {a.vocab}) in {time.time() - t:.1f} s", flush=True)
    cfg = llama_config(a)
    tag = f"h{a.hidden}-l{a.layers}-i{a.inter}-v{a.vocab}"
    cfg_dir = base / f"config-{tag}"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(tok_path, cfg_dir / "tokenizer.json")
    data = base / f"gsm8k_train_{a.docs}.jsonl"
    if not data.exists():
        with open(data, "w", encoding="utf-8") as f:
            for i, text in enumerate(gsm8k_texts()):
                if i >= a.docs:
                    break
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    ref_dir = base / f"ref-{tag}"
    if not (ref_dir / "model.safetensors").exists():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(1)
        c = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "dtype")})
        LlamaForCausalLM(c).to(torch.float32).save_pretrained(ref_dir, safe_serialization=True)
        shutil.copy(tok_path, ref_dir / "tokenizer.json")
    n_params = (2 * a.vocab * a.hidden + a.hidden
                + a.layers * (2 * a.hidden * a.hidden + 2 * a.hidden * (a.hidden // a.heads) * a.kv_heads
                              + 3 * a.hidden * a.inter + 2 * a.hidden))
    return {"config": cfg_dir / "config.json", "tokenizer": tok_path, "data": data, "ref": ref_dir,
            "n_params": n_params, "tag": tag}


# ---------------------------------------------------------------------------
# Running and measuring
# ---------------------------------------------------------------------------
def busy_processes() -> list[str]:
    """Other CPU-heavy processes (compilers, cargo, other trainings) that would skew timings."""
    me = os.getpid()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm in ("rustc", "cargo", "cc1", "cc1plus", "ld", "rust-lld", "clippy-driver", "rho") or comm.startswith("rustc"):
            found.append(f"{comm}({p.name})")
    return found


def cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, from /proc/stat)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit_s: float) -> list[str]:
    """Wait (up to limit_s) until no compiler / rho process runs and the machine is idle
    (< 0.2 cores busy over 3 s). Returns what was still busy."""
    t = time.time()
    while True:
        busy = busy_processes()
        c0 = cpu_busy_s()
        time.sleep(3)
        cores = (cpu_busy_s() - c0) / 3
        if cores >= 0.2:
            busy.append(f"{cores:.1f} cores busy")
        if not busy or time.time() - t > limit_s:
            return busy
        time.sleep(7)


def run_logged(cmd: list[str], log: Path) -> dict:
    """Run a command; wall time, its CPU time, and the CPU time other processes used meanwhile."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0 = cpu_busy_s()
    t0 = time.perf_counter()
    seen: set[str] = set()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        while True:
            # wait4: this child's own resource usage (its peak RSS), not all children's
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            seen.update(x.split("(")[0] for x in busy_processes())
            time.sleep(1)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    foreign = max(0.0, cpu_busy_s() - c0 - cpu)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "foreign_cpu_s": foreign, "foreign_procs": sorted(seen),
            "peak_rss_gb": ru.ru_maxrss / 1e6}


def steady(recs: list[dict], skip: int, secs_key: str) -> dict:
    m = recs[skip:]
    if not m:
        raise SystemExit(f"no steady-state steps: {len(recs)} steps, --skip {skip}")
    tok = sum(r["tokens"] for r in m)
    secs = sum(r[secs_key] for r in m)
    return {"tok_s": tok / secs, "step_s": secs / len(m), "step_s_med": statistics.median(r[secs_key] for r in m),
            "n": len(m), "tokens_per_step": tok / len(m), "all_tok_s": [round(r["tokens"] / r[secs_key], 1) for r in recs]}


def run_rho(a, s: dict, mode: str, out: Path, ref: Path | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(a.rho), "train", "--model-config", str(s["config"]), "--tokenizer", str(s["tokenizer"]),
           "--data", str(s["data"]), "--out", str(out), "--steps", str(a.steps), "--seq-len", str(a.seq_len),
           "--batch-tokens", str(a.batch_tokens), "--lr", str(LR), "--weight-decay", str(WD),
           "--grad-clip", str(CLIP), "--seed", "0", "--mask-every", "0"]
    if mode == "slm":
        cmd += ["--mode", "slm", "--ratio", str(RATIO), "--ref-scores", str(ref)]
    info = run_logged(cmd, out.with_suffix(".log"))
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    prev = 0
    for r in recs:  # metrics.jsonl has tokens/s; step time = tokens / (tokens/s)
        r["tokens"], prev = r["tokens_seen"] - prev, r["tokens_seen"]
        r["secs"] = r["tokens"] / r["tokens_per_s"]
    res = steady(recs, a.skip, "secs")
    res.update(info, kept_frac=statistics.mean(r["kept_frac"] for r in recs),
               loss_first=recs[0]["loss_all"], loss_last=recs[-1]["loss_all"], cmd=cmd)
    shutil.rmtree(out, ignore_errors=True)  # the checkpoint (~300 MB with optimizer state)
    return res


def run_peer(a, s: dict, mode: str, out: Path, ref: Path | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "peer", "--config", str(s["config"]),
           "--tokenizer", str(s["tokenizer"]), "--data", str(s["data"]), "--seq-len", str(a.seq_len),
           "--batch-tokens", str(a.batch_tokens), "--steps", str(a.steps), "--mode", mode,
           "--threads", str(a.threads), "--out", str(out)]
    if mode == "slm":
        cmd += ["--ref-scores", str(ref)]
    info = run_logged(cmd, out.with_suffix(".log"))
    recs = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
    res = steady(recs, a.skip, "secs")
    m = recs[a.skip:]
    res.update(info, kept_frac=statistics.mean(r["kept"] / r["tokens"] for r in recs),
               loss_first=recs[0]["loss_all"], loss_last=recs[-1]["loss_all"], cmd=cmd,
               fwd_s=statistics.mean(r["fwd_s"] for r in m), bwd_s=statistics.mean(r["bwd_s"] for r in m),
               opt_s=statistics.mean(r["opt_s"] for r in m), n_params=recs[0]["n_params"])
    return res


def versions(rho: Path) -> dict:
    v = {"python": platform.python_version()}
    out = subprocess.run([sys.executable, "-c",
                          "import torch, transformers, tokenizers, numpy;"
                          "print(torch.__version__, transformers.__version__, tokenizers.__version__, numpy.__version__)"],
                         capture_output=True, text=True).stdout.split()
    v.update(zip(["torch", "transformers", "tokenizers", "numpy"], out))
    v["rho"] = subprocess.run([str(rho), "--version"], capture_output=True, text=True).stdout.strip().removeprefix("rho ")
    v["rustc"] = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip().removeprefix("rustc ")
    lock = (ROOT / "Cargo.lock").read_text()
    for crate in ("candle-core", "candle-nn", "gemm"):
        m = re.search(rf'name = "{crate}"\nversion = "([^"]+)"', lock)
        if m:
            v[f"{crate} (crate)"] = m.group(1)
    try:
        v["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
        if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True,
                          text=True).stdout.strip():
            v["git"] += " (src/ modified)"
    except OSError:
        pass
    return v


def machine() -> str:
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    mem = next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"nproc {nproc}, {cpu} [{', '.join(simd)}], {int(mem) / 2**20:.0f} GiB RAM, {platform.system()} {platform.release()}"


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def fmt_runs(xs: list[float], f: str = "{:.0f}") -> str:
    return f.format(statistics.median(xs)) + (" (" + ", ".join(f.format(x) for x in xs) + ")" if len(xs) > 1 else "")


def report(a, s: dict, res: dict[str, list[dict]], v: dict, score_s: float, date: str, busy_notes: list[str]) -> str:
    med = {k: statistics.median(r["tok_s"] for r in rs) for k, rs in res.items()}
    step = {k: statistics.median(r["step_s"] for r in rs) for k, rs in res.items()}
    b = a.batch_tokens // a.seq_len
    rel = " ".join(["/work/pyvenv/bin/python scripts/bench_train.py"] + a.argv)
    lines = [SECTION, "",
             f"Measured {date} by `{rel}` (scripts/bench_train.py).", "",
             f"- Machine: {machine()}.",
             f"- rho: release build `target/release/rho` of {s['rho_mtime']} (`cargo build --release`; runs on all cores).",
             "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
             f"- Model: Llama, {s['n_params'] / 1e6:.1f}M parameters (hidden {a.hidden}, {a.layers} layers, "
             f"{a.heads} heads / {a.kv_heads} kv heads, intermediate {a.inter}, vocab {a.vocab} byte-level BPE trained "
             f"on GSM8K train, untied embeddings), random init, f32.",
             f"- Data: the first {a.docs} GSM8K train documents (question + answer), packed with EOS into windows of "
             f"{a.seq_len} tokens; batch {b} x {a.seq_len} = {a.batch_tokens} tokens "
             f"({b * (a.seq_len - 1)} next-token targets per step).",
             f"- Optimizer: AdamW lr {LR:g} (cosine to lr/10 over {a.steps} steps), betas 0.9/0.95, eps 1e-8, weight "
             f"decay {WD} on matrices, grad-norm clip {CLIP}. PyTorch: torch.set_num_threads({a.threads}), "
             "LlamaForCausalLM(attn_implementation=\"sdpa\"), F.cross_entropy(reduction=\"none\") in f32, "
             "torch.optim.AdamW (default implementation), clip_grad_norm_.",
             f"- SLM: ratio {RATIO}, top-k of the batch by excess loss; reference losses precomputed once by "
             f"`rho score` ({score_s:.1f} s wall, not counted) with a random-init reference Llama of the same config; "
             "the PyTorch side reads the same Parquet and selects with torch.topk on the flattened batch.",
             f"- Each run: {a.steps} steps, the first {a.skip} dropped; tokens/s = targets / summed step time of the "
             f"remaining {a.steps - a.skip}; {a.rounds} round(s) in the order rho CLM, PyTorch CLM, rho SLM, PyTorch SLM "
             "(each its own process). Median over rounds, single rounds in parentheses.",
             "- Peak RSS: the process's maximum resident memory (`wait4`'s ru_maxrss), whole process: for PyTorch "
             "it includes the Python, torch and transformers libraries.",
             ]
    if busy_notes:
        lines.append("- Note: other CPU-heavy processes were running during: " + "; ".join(busy_notes) + ".")
    lines += ["", "Commands (paths under the work folder):", "", "```sh",
              " ".join(res["rho_clm"][0]["cmd"]).replace(str(a.rho), "rho").replace(str(a.workdir), "$W"),
              " ".join([str(a.rho), "score", "--model", str(s["ref"]), "--data", str(s["data"]), "--tokenizer",
                        str(s["tokenizer"]), "--seq-len", str(a.seq_len), "--out", str(s["ref_scores"])]
                       ).replace(str(a.rho), "rho").replace(str(a.workdir), "$W"),
              " ".join(res["rho_slm"][0]["cmd"]).replace(str(a.rho), "rho").replace(str(a.workdir), "$W"),
              "python scripts/bench_train.py peer --mode clm|slm ...  # the PyTorch loop",
              "```", "", f"`$W` is the work folder ({a.workdir}); the model's config.json is written by the script "
              "(LlamaConfig fields as transformers 5 saves them).", "",
              "| run | tokens/s (steady) | s / step | CPU cores used | peak RSS, GB | kept | loss step 1 -> last | rho / PyTorch |",
              "|---|---|---|---|---|---|---|---|"]
    names = {"rho_clm": "rho CLM", "peer_clm": "PyTorch CLM", "rho_slm": "rho SLM (ratio 0.6)",
             "peer_slm": "PyTorch SLM (ratio 0.6)"}
    for k in ("rho_clm", "peer_clm", "rho_slm", "peer_slm"):
        rs = res[k]
        ratio = ""
        if k.startswith("rho"):
            ratio = f"{med[k] / med['peer_' + k[4:]]:.2f}x"
        lines.append(f"| {names[k]} | {fmt_runs([r['tok_s'] for r in rs])} | {fmt_runs([r['step_s'] for r in rs], '{:.2f}')} | "
                     f"{statistics.median(r['cpu_s'] / r['wall_s'] for r in rs):.2f} | {fmt_runs([r['peak_rss_gb'] for r in rs], '{:.2f}')} | "
                     f"{100 * rs[0]['kept_frac']:.0f}% | {rs[0]['loss_first']:.3f} -> {rs[0]['loss_last']:.3f} | {ratio} |")
    slm_rho = 100 * (step["rho_slm"] / step["rho_clm"] - 1)
    slm_peer = 100 * (step["peer_slm"] / step["peer_clm"] - 1)
    p = res["peer_clm"]
    lines += ["",
              f"- rho / PyTorch, tokens/s: CLM **{med['rho_clm'] / med['peer_clm']:.2f}x**, "
              f"SLM **{med['rho_slm'] / med['peer_slm']:.2f}x**.",
              f"- SLM overhead over CLM (step time, precomputed reference losses): rho **{slm_rho:+.1f}%**, "
              f"PyTorch {slm_peer:+.1f}% (goal for rho: under 5%).",
              f"- PyTorch CLM step split: forward + loss {statistics.median(r['fwd_s'] for r in p):.2f} s, backward "
              f"{statistics.median(r['bwd_s'] for r in p):.2f} s, clip + AdamW {statistics.median(r['opt_s'] for r in p):.2f} s.",
              ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Add or replace our section of BENCHMARKS.md, leaving other sections alone."""
    path = ROOT / "BENCHMARKS.md"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = old.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ") or lines[i].strip() == KEEP), len(lines))
        new = "\n".join(lines[:start] + text.rstrip("\n").splitlines() + ([""] + lines[end:] if end < len(lines) else [])) + "\n"
    path.write_text(new, encoding="utf-8")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "peer":
        return peer_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rho", type=Path, default=ROOT / "target" / "release" / "rho")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rho-bench-train"))
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--inter", type=int, default=1376)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--docs", type=int, default=400, help="GSM8K train documents to use")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default="rho_clm,peer_clm,rho_slm,peer_slm")
    ap.add_argument("--wait-quiet", type=float, default=600, help="wait up to this many s for an idle machine")
    ap.add_argument("--retries", type=int, default=2, help="re-run a run that other processes disturbed")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--report-from", type=Path, help="only render (and write) the report of a saved results JSON")
    a = ap.parse_args()
    a.argv = sys.argv[1:]
    if a.report_from:
        saved = json.loads(a.report_from.read_text())
        b = ap.parse_args(saved["argv"])
        b.argv, b.rho = saved["argv"], Path(saved["setup"]["ref_scores"]).parent / "rho-snapshot"
        s = saved["setup"]
        text = report(b, s, saved["results"], saved["versions"], saved["score_s"], saved["date"], saved["busy_notes"])
        print(text)
        if not a.no_write:
            write_section(text)
            print(f"wrote section '{SECTION}' of {ROOT / 'BENCHMARKS.md'}")
        return 0
    if not a.rho.exists():
        print(f"error: {a.rho} not found: run `cargo build --release` first", file=sys.stderr)
        return 2
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    s = setup(a)
    # Snapshot the binary (a concurrent `cargo build` would replace it mid-benchmark).
    snap = a.workdir / "rho-snapshot"
    snap.unlink(missing_ok=True)
    try:
        os.link(a.rho, snap)
    except OSError:
        shutil.copy2(a.rho, snap)
    s["rho_mtime"] = datetime.datetime.fromtimestamp(a.rho.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    a.rho = snap
    print(f"[setup] {s['tag']}: {s['n_params'] / 1e6:.1f}M parameters; data {s['data']}", flush=True)

    ref_scores = a.workdir / f"ref_scores-{s['tag']}-{a.docs}-{a.seq_len}.parquet"
    s["ref_scores"] = ref_scores
    score_s = 0.0
    runs = a.runs.split(",")
    if any(r.endswith("slm") for r in runs):
        stamp = ref_scores.with_suffix(".json")
        if ref_scores.exists() and stamp.exists():
            score_s = json.loads(stamp.read_text())["wall_s"]
            print(f"[score] reusing {ref_scores} (rho score took {score_s:.1f} s)", flush=True)
        else:
            score_s = run_logged([str(a.rho), "score", "--model", str(s["ref"]), "--data", str(s["data"]),
                                  "--tokenizer", str(s["tokenizer"]), "--seq-len", str(a.seq_len),
                                  "--out", str(ref_scores)], a.workdir / "score.log")["wall_s"]
            stamp.write_text(json.dumps({"wall_s": score_s}))
            print(f"[score] rho score: {score_s:.1f} s", flush=True)

    res: dict[str, list[dict]] = {k: [] for k in runs}
    busy_notes = []
    for rnd in range(a.rounds):
        for k in runs:
            sysname, mode = k.split("_")
            fn = run_rho if sysname == "rho" else run_peer
            tries = []
            for attempt in range(1 + a.retries):
                still = wait_quiet(a.wait_quiet)
                out = a.workdir / f"{k}-r{rnd}"
                r = fn(a, s, mode, out if sysname == "rho" else out.with_suffix(".jsonl"), ref_scores)
                r["busy_before"] = still
                # contended: other processes used more than 10% of one core on average meanwhile
                r["contended"] = r["foreign_cpu_s"] > 0.1 * r["wall_s"]
                tries.append(r)
                extra = f", fwd {r['fwd_s']:.2f} s bwd {r['bwd_s']:.2f} s opt {r['opt_s']:.2f} s" if "fwd_s" in r else ""
                print(f"[{k} round {rnd + 1}{f' retry {attempt}' if attempt else ''}] {r['tok_s']:.0f} tok/s, "
                      f"{r['step_s']:.2f} s/step (per step: {r['all_tok_s']}), wall {r['wall_s']:.1f} s, "
                      f"cpu {r['cpu_s']:.1f} s, others {r['foreign_cpu_s']:.1f} cpu-s {r['foreign_procs']}{extra}",
                      flush=True)
                if not r["contended"]:
                    break
            best = min(tries, key=lambda r: r["foreign_cpu_s"])
            if best["contended"]:
                busy_notes.append(f"{k} round {rnd + 1} (others used {best['foreign_cpu_s']:.0f} cpu-s in "
                                  f"{best['wall_s']:.0f} s: {', '.join(best['foreign_procs']) or 'unnamed'})")
            res[k].append(best)

    raw = a.workdir / "bench_train_results.json"
    v = versions(a.rho)
    raw.write_text(json.dumps({"argv": a.argv, "date": date, "score_s": score_s, "busy_notes": busy_notes,
                               "versions": v, "setup": s, "results": res}, indent=1, default=str))
    print(f"raw results in {raw}")
    if set(runs) != {"rho_clm", "peer_clm", "rho_slm", "peer_slm"}:
        print("(partial set of runs: no report)")
        return 0
    text = report(a, s, res, v, score_s, date, busy_notes)
    print()
    print(text)
    if not a.no_write:
        write_section(text)
        print(f"wrote section '{SECTION}' of {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
