#!/usr/bin/env python3
"""Benchmark `rho eval` against transformers (CPU PyTorch), side by side, in one run.

Both systems score the same checkpoints on the same data in float32 with the same rule
(every document on its own; a document longer than the context C in windows of C tokens
with stride C/2; see src/data/windows.rs and scripts/make_fixtures.py) and the same
batching (windows sorted longest first, packed greedily into batches of at most
--batch-tokens padded tokens, padded on the right with id 0, no attention mask: rows are
causal, so right padding changes nothing before it). Each system runs as its own process,
alternately (rho, transformers, rho, transformers, ...), and the script reports

* whole-process wall time (and CPU time) of the subprocess: for rho from exec to exit, for
  transformers including the Python / torch / transformers imports and model loading;
* scoring throughput in tokens/s over the checkpoints: rho's own per-checkpoint
  `tokens/s` lines (stderr), which time load + score + write of each checkpoint; the
  transformers side times exactly the same span (from_pretrained + scoring + np.save).
  The transformers side also reports its forward-only throughput;
* max |diff| between the two systems' per-token losses (and, for the fixtures, between
  the transformers side and the golden numbers in fixtures/llama/golden_losses.jsonl).

Setups:

* `tiny`: fixtures/llama (3 checkpoints, hidden 64, context 64) on fixtures/data/val.jsonl.
* `llama25m`: a Llama of 25.8M parameters (hidden 512, 6 layers, 8 heads / 4 kv heads,
  intermediate 1376, context 512, untied embeddings, vocab 8192), 3 checkpoints with
  random weights (transformers' own init, seeds 1, 2, 3), saved with save_pretrained
  (safetensors, f32) under --workdir. Tokenizer: byte-level BPE, vocab 8192, trained with
  the `tokenizers` library on GSM8K train (question + answer) and the SymPy docs pages
  from /work/shared/data, with `<s>` prepended to each document (Llama-style BOS).
  Data: GSM8K test (question + "\\n" + answer as `text`), the first documents in file
  order up to --tokens scored tokens, written to a temporary jsonl under --workdir.
  Nothing is written into the repository except BENCHMARKS.md.

Usage (from the repository root; needs a release build of rho):

    cargo build --release
    /work/pyvenv/bin/python scripts/bench_eval.py                  # both setups, 2 runs each
    /work/pyvenv/bin/python scripts/bench_eval.py --setups llama25m --tokens 30000 --runs 1
    /work/pyvenv/bin/python scripts/bench_eval.py --batch-tokens 4096,1024 --rho-env RHO_MALLOC_DEFAULTS=1
    /work/pyvenv/bin/python scripts/bench_eval.py --render /tmp/rho-bench/bench_eval_results.json

(scripts/bench_eval.sh builds rho and runs the first of these.) The section
"## rho eval vs transformers (CPU, f32)" of BENCHMARKS.md is replaced unless --no-write;
the raw numbers go to <workdir>/bench_eval_results.json, from which --render rewrites the
section without measuring. The machine should be otherwise idle: before each run the script
waits (--wait-quiet seconds at most) for other processes to use < 0.15 CPUs, and it reports
the CPU time other processes took during each run. --batch-tokens takes several values
(each gets its rows); --rho-env adds a row for rho run with extra environment variables.

The transformers side is this same file run as `bench_eval.py peer ...` in a subprocess.
"""

from __future__ import annotations

import argparse
import gzip
import json
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

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## rho eval vs transformers (CPU, f32)"
SHARED = Path("/work/shared/data")
EOT, BOS = "<|endoftext|>", "<s>"

LLAMA25M = dict(
    vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=0,
)
LLAMA25M_SEEDS = {"step-1000": 1, "step-2000": 2, "step-3000": 3}


# ---------------------------------------------------------------------------
# Scoring plan: the rule of src/data/windows.rs and src/eval/plan.rs
# ---------------------------------------------------------------------------
def windows(n: int, C: int) -> list[tuple[int, int, int]]:
    """(window_start, window_end, first_scored_position); copied from
    scripts/make_fixtures.py (importing it would pin torch to 1 thread)."""
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


def plan_documents(all_ids: list[list[int]], C: int):
    """Rows (seq, pos, token_id) in rho's order and units (tokens, score_from, row_start)."""
    seq, pos, tid, units = [], [], [], []
    for d, ids in enumerate(all_ids):
        for s, e, first in windows(len(ids), C):
            units.append((ids[s:e], first - s, len(seq)))
            for p in range(first, e):
                seq.append(d)
                pos.append(p)
                tid.append(ids[p])
    return seq, pos, tid, units


def plan_batches(units, batch_tokens: int) -> list[list[int]]:
    """src/eval/plan.rs `batches`: longest first (ties by index), greedy, at most
    batch_tokens padded tokens per batch (at least one unit)."""
    order = sorted(range(len(units)), key=lambda i: (-len(units[i][0]), i))
    out, cur, cur_len = [], [], 0
    for i in order:
        n = len(units[i][0])
        if cur and (len(cur) + 1) * max(cur_len, n) > batch_tokens:
            out.append(cur)
            cur = []
        if not cur:
            cur_len = n
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def step_of(name: str) -> int:
    m = re.findall(r"\d+", name)
    return int(m[-1]) if m else 0


def checkpoint_dirs(folder: Path) -> list[Path]:
    """Subfolders holding a checkpoint, ordered like rho (step, then name)."""
    subs = [p for p in folder.iterdir() if p.is_dir() and (
        (p / "config.json").exists() or (p / "model.safetensors").exists()
        or (p / "model.safetensors.index.json").exists())]
    return sorted(subs, key=lambda p: (step_of(p.name), p.name))


def read_texts(path: Path, field: str = "text") -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f if line.strip()]


# ---------------------------------------------------------------------------
# The transformers side (run as a subprocess: `bench_eval.py peer ...`)
# ---------------------------------------------------------------------------
def peer_main(argv: list[str]) -> int:
    t_proc = time.perf_counter()
    ap = argparse.ArgumentParser(prog="bench_eval.py peer")
    ap.add_argument("--checkpoints", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    a = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    transformers.logging.disable_progress_bar()
    t_imported = time.perf_counter()

    ckpts = checkpoint_dirs(a.checkpoints)
    tok = Tokenizer.from_file(str(ckpts[0] / "tokenizer.json"))
    docs = read_texts(a.data)
    all_ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=True)]
    C = min(json.loads((c / "config.json").read_text()).get("max_position_embeddings") for c in ckpts)
    seq, pos, tid, units = plan_documents(all_ids, C)
    batches = []
    for b in plan_batches(units, a.batch_tokens):
        L = max(len(units[i][0]) for i in b)
        x = torch.zeros((len(b), L), dtype=torch.long)
        for r, i in enumerate(b):
            x[r, : len(units[i][0])] = torch.tensor(units[i][0])
        # target of position j is token j+1; the last column has none (ignored)
        y = torch.cat([x[:, 1:], torch.zeros((len(b), 1), dtype=torch.long)], dim=1)
        batches.append((b, x, y))
    n_rows = len(seq)
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez(a.out / "rows.npz", seq=np.array(seq, np.uint32), pos=np.array(pos, np.uint32),
             token_id=np.array(tid, np.uint32))
    t_planned = time.perf_counter()

    per = []
    for c in ckpts:
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(c, dtype=torch.float32, attn_implementation=a.attn)
        model.eval()
        t1 = time.perf_counter()
        out = np.full(n_rows, np.nan, dtype=np.float32)
        with torch.inference_mode():
            for b, x, y in batches:
                logits = model(input_ids=x, use_cache=False).logits  # [b, L, V] f32
                V = logits.shape[-1]
                loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="none")
                loss = loss.view(x.shape).numpy()
                for r, i in enumerate(b):
                    toks, sf, row0 = units[i]
                    out[row0: row0 + len(toks) - sf] = loss[r, sf - 1: len(toks) - 1]
        t2 = time.perf_counter()
        assert np.isfinite(out).all(), c
        np.save(a.out / f"{c.name}.npy", out)
        t3 = time.perf_counter()
        per.append({"name": c.name, "tokens": n_rows, "load_s": t1 - t0, "forward_s": t2 - t1,
                    "total_s": t3 - t0, "mean_loss": float(out.astype(np.float64).mean())})
        print(f"  {c.name}: {n_rows} tokens in {t3 - t0:.2f} s ({n_rows / (t3 - t0):.0f} tokens/s; "
              f"forward only {n_rows / (t2 - t1):.0f} tokens/s), mean loss {per[-1]['mean_loss']:.4f}",
              file=sys.stderr)
    summary = {"imports_s": t_imported - t_proc, "plan_s": t_planned - t_imported,
               "checkpoints": per, "n_batches": len(batches), "n_units": len(units),
               "context": C, "threads": torch.get_num_threads(), "attn": a.attn,
               "in_process_s": time.perf_counter() - t_proc}
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------
# Setups
# ---------------------------------------------------------------------------
def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    def corpus():
        with gzip.open(SHARED / "gsm8k_train.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                yield r["question"] + "\n" + r["answer"]
        yield from read_texts(SHARED / "sympy_docs_pages.jsonl.gz")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=LLAMA25M["vocab_size"], min_frequency=2,
                                  special_tokens=[EOT, BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.token_to_id(EOT) == 0 and tok.token_to_id(BOS) == 1
    assert tok.get_vocab_size() == LLAMA25M["vocab_size"], tok.get_vocab_size()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def setup_llama25m(work: Path, tokens: int) -> tuple[Path, Path, str]:
    """Returns (checkpoint folder, data file, description); cached under work/."""
    base = work / "llama25m"
    tok_path = base / "tokenizer.json"
    if not tok_path.exists():
        t = time.time()
        build_tokenizer(tok_path)
        print(f"[setup] trained BPE tokenizer (vocab {LLAMA25M['vocab_size']}) in {time.time() - t:.1f} s")
    ckdir = base / "ckpts"
    stamp = json.dumps({"config": LLAMA25M, "seeds": LLAMA25M_SEEDS}, sort_keys=True)
    if not (ckdir / "stamp.json").exists() or (ckdir / "stamp.json").read_text() != stamp:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        shutil.rmtree(ckdir, ignore_errors=True)
        for name, seed in LLAMA25M_SEEDS.items():
            torch.manual_seed(seed)
            cfg = LlamaConfig(**LLAMA25M)
            model = LlamaForCausalLM(cfg).to(torch.float32)
            model.save_pretrained(ckdir / name, safe_serialization=True)
            shutil.copy(tok_path, ckdir / name / "tokenizer.json")
        n_params = sum(p.numel() for p in model.parameters())
        (ckdir / "stamp.json").write_text(stamp)
        print(f"[setup] wrote 3 random checkpoints of {n_params / 1e6:.1f}M parameters to {ckdir}")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    data = base / f"gsm8k_test_{tokens}.jsonl"
    if not data.exists():
        n, docs = 0, []
        with gzip.open(SHARED / "gsm8k_test.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                text = r["question"] + "\n" + r["answer"]
                docs.append(text)
                n += len(tok.encode(text).ids) - 1
                if n >= tokens:
                    break
        with open(data, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    n_docs = sum(1 for _ in open(data, encoding="utf-8"))
    desc = (f"Llama 25.8M (hidden 512, 6 layers, 8/4 heads, inter 1376, ctx 512, vocab 8192 BPE), "
            f"3 random ckpts; GSM8K test, {n_docs} docs")
    return ckdir, data, desc


# ---------------------------------------------------------------------------
# Running and measuring
# ---------------------------------------------------------------------------
def busy_processes() -> list[str]:
    """Other CPU-heavy processes (compilers, cargo) that would skew the timings."""
    me = os.getpid()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm in ("rustc", "cargo", "cc1", "cc1plus", "ld", "rust-lld", "clippy-driver") or comm.startswith("rustc"):
            found.append(f"{comm}({p.name})")
    return found


def other_load(seconds: float = 3.0) -> float:
    """CPUs' worth of work done by the machine over the next `seconds` (we are idle meanwhile)."""
    b0 = busy_cpu_seconds()
    time.sleep(seconds)
    return (busy_cpu_seconds() - b0) / seconds


def wait_quiet(limit_s: float, max_load: float = 0.15) -> list[str]:
    """Wait up to limit_s seconds until other processes use less than max_load CPUs and no
    compiler runs; returns what was still busy (empty when quiet)."""
    t = time.time()
    while True:
        busy = busy_processes()
        load = other_load()
        if load >= max_load:
            busy.append(f"{load:.2f} CPUs in use")
        if not busy or time.time() - t > limit_s:
            return busy
        time.sleep(5)


def busy_cpu_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat)."""
    f = open("/proc/stat").readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], env=None) -> tuple[float, float, float, str, str, int]:
    """(wall s, child CPU s, CPU s used by OTHER processes meanwhile, stdout, stderr, rc)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0 = busy_cpu_seconds()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    b1 = busy_cpu_seconds()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, max(0.0, (b1 - b0) - cpu), p.stdout, p.stderr, p.returncode


RHO_LINE = re.compile(r"^\s+(\S+): (\d+) tokens in ([0-9.]+) s \(([0-9.]+) tokens/s\)", re.M)


def run_rho(rho: Path, ckdir: Path, data: Path, study: Path, batch_tokens: int, threads: int,
            extra_env: dict | None = None) -> dict:
    cmd = [str(rho), "eval", "--checkpoints", str(ckdir), "--data", str(data), "--study", str(study),
           "--force", "--batch-tokens", str(batch_tokens)]
    env = dict(os.environ)
    if threads != os.cpu_count():  # rho (candle's gemm, rayon) uses every CPU unless told
        env["RAYON_NUM_THREADS"] = str(threads)
    env.update(extra_env or {})
    wall, cpu, other, out, err, rc = timed(cmd, env)
    if rc != 0:
        raise SystemExit(f"rho failed (exit {rc}):\n{err}")
    per = rho_per_from_log(err)
    if not per:
        raise SystemExit(f"no per-checkpoint tokens/s line in rho's stderr:\n{err}")
    return {"wall": wall, "cpu": cpu, "other": other, "per": per, "cmd": cmd, "log": err}


def run_peer(ckdir: Path, data: Path, out: Path, batch_tokens: int, threads: int, attn: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "peer", "--checkpoints", str(ckdir),
           "--data", str(data), "--out", str(out), "--batch-tokens", str(batch_tokens),
           "--threads", str(threads), "--attn", attn]
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, other, so, err, rc = timed(cmd)
    if rc != 0:
        raise SystemExit(f"transformers side failed (exit {rc}):\n{err}")
    s = json.loads(so.strip().splitlines()[-1])
    return {"wall": wall, "cpu": cpu, "other": other, "per": s["checkpoints"], "summary": s, "cmd": cmd, "log": err}


def throughput(per: list[dict], key: str = "total_s") -> float:
    return sum(p["tokens"] for p in per) / sum(p[key] for p in per)


def compare(study: Path, peer_out: Path, names: list[str]) -> dict:
    """max |diff| of rho's and the transformers side's losses, row by row."""
    import numpy as np
    import pyarrow.parquet as pq

    rows = np.load(peer_out / "rows.npz")
    res = {}
    for name in names:
        t = pq.read_table(study / "losses" / f"{name}.parquet").to_pydict()
        for col in ("seq", "pos", "token_id"):
            if not np.array_equal(np.asarray(t[col], np.uint32), rows[col]):
                raise SystemExit(f"{name}: rows differ between rho and transformers in `{col}`")
        a = np.asarray(t["loss"], np.float64)
        b = np.load(peer_out / f"{name}.npy").astype(np.float64)
        d = np.abs(a - b)
        res[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                     "max_rel": float((d / np.maximum(np.abs(b), 1e-6)).max()), "n": int(len(a))}
    return res


def compare_golden(peer_out: Path) -> float:
    """Tiny setup: transformers side vs fixtures/llama/golden_losses.jsonl (eager, 1 thread)."""
    import numpy as np

    rows = np.load(peer_out / "rows.npz")
    gold: dict[str, dict] = {}
    for line in open(ROOT / "fixtures/llama/golden_losses.jsonl", encoding="utf-8"):
        g = json.loads(line)
        gold.setdefault(g["checkpoint"], {})[(g["seq"], g["pos"])] = g["loss"]
    worst = 0.0
    for name, gl in gold.items():
        ours = np.load(peer_out / f"{name}.npy")
        keys = list(zip(rows["seq"].tolist(), rows["pos"].tolist()))
        if set(keys) != set(gl):
            raise SystemExit(f"{name}: the transformers side scores other positions than the goldens")
        worst = max(worst, max(abs(float(ours[i]) - gl[k]) for i, k in enumerate(keys)))
    return worst


def versions(rho: Path) -> dict:
    v = {"python": platform.python_version()}
    out = subprocess.run([sys.executable, "-c",
                          "import torch, transformers, tokenizers, safetensors, numpy;"
                          "print(torch.__version__, transformers.__version__, tokenizers.__version__,"
                          " safetensors.__version__, numpy.__version__)"],
                         capture_output=True, text=True).stdout.split()
    v.update(zip(["torch", "transformers", "tokenizers", "safetensors", "numpy"], out))
    v["rho"] = subprocess.run([str(rho), "--version"], capture_output=True, text=True).stdout.split()[-1]
    v["rustc"] = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.split()[1]
    lock = (ROOT / "Cargo.lock").read_text()
    for crate in ("candle-core", "gemm", "tokenizers", "polars"):
        m = re.search(rf'name = "{crate}"\nversion = "([^"]+)"', lock)
        if m:
            v[f"{crate} (crate)"] = m.group(1)
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
    return f"{os.cpu_count()} CPUs (nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}), " \
           f"{cpu} [{', '.join(simd)}], {int(mem) / 2**20:.0f} GiB RAM, {platform.system()} {platform.release()}"


def fmt_s(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}" + (f" ({', '.join(f'{x:.2f}' for x in xs)})" if len(xs) > 1 else "")


def rho_per_from_log(log: str) -> list[dict]:
    """rho's per-checkpoint lines; the time is recomputed from its tokens/s (printed with more
    digits than its seconds)."""
    return [{"name": m[0], "tokens": int(m[1]), "total_s": int(m[1]) / float(m[3]) if float(m[3]) else float(m[2])}
            for m in RHO_LINE.findall(log)]


def render(raw: dict) -> str:
    """The BENCHMARKS.md section from the raw results of one script run."""
    args, results = raw["args"], raw["results"]
    systems = ["rho", "transformers"] + (["rho+env"] if args["rho_env"] else [])
    for res in results:
        for s in systems:
            for x in res["runs"][s]:
                if s != "transformers" and x.get("log"):
                    x["per"] = rho_per_from_log(x["log"])
    lines = ["| setup | --batch-tokens | system | whole process, s | CPU, s | scoring tokens/s | "
             "forward-only tokens/s | rho / transformers |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for res in results:
        tag = f"{res['setup']} ({res['n_ckpts']} × {res['n_tokens']:,} tokens)"
        med = {}
        for s in systems:
            rr = res["runs"][s]
            med[s] = {"wall": [x["wall"] for x in rr], "cpu": statistics.median(x["cpu"] for x in rr),
                      "tps": statistics.median(throughput(x["per"]) for x in rr)}
        pw, pt = statistics.median(med["transformers"]["wall"]), med["transformers"]["tps"]
        for s in systems:
            label = {"rho": "rho", "transformers": f"transformers ({args['attn']})", "rho+env": "rho + env (see above)"}[s]
            fwd, ratio = "–", ""
            if s == "transformers":
                fwd = f"{statistics.median(throughput(x['per'], 'forward_s') for x in res['runs'][s]):,.0f}"
            else:
                ratio = (f"wall {statistics.median(med[s]['wall']) / pw:.2f}×, "
                         f"throughput {med[s]['tps'] / pt:.2f}×")
            lines.append(f"| {tag} | {res['bt']} | {label} | {fmt_s(med[s]['wall'])} | {med[s]['cpu']:.2f} | "
                         f"{med[s]['tps']:,.0f} | {fwd} | {ratio} |")
    checks = []
    for res in results:
        for s_, dd in res["diff"].items():
            worst = max(d["max_abs"] for d in dd.values())
            mean = max(d["mean_abs"] for d in dd.values())
            line = (f"- {res['setup']}, --batch-tokens {res['bt']}, {s_}: max |loss_rho − loss_transformers| = "
                    f"{worst:.2e} over {res['n_ckpts']} × {res['n_tokens']:,} tokens (mean |diff| ≤ {mean:.1e}); "
                    "rows (seq, pos, token_id) identical")
            if res["gold"] is not None and s_ == "rho":
                line += f"; transformers side vs fixtures' golden losses: max |diff| {res['gold']:.2e}"
            checks.append(line)
    peer0 = results[0]["runs"]["transformers"][-1]["summary"]
    env = ", ".join(f"`{k}={v}`" for k, v in args["rho_env"].items())
    md = [SECTION, "",
          f"Measured {raw['started']} by `scripts/bench_eval.py` (one run of the script; the systems alternate, "
          f"{args['runs']} run(s) each; the median is shown, individual runs in parentheses).", "",
          f"- Machine: {raw['machine']}",
          "- Versions: " + ", ".join(f"{k} {v}" for k, v in raw["versions"].items()),
          f"- Command: `{raw['cmdline']}`",
          "- rho: `rho eval --checkpoints <series> --data <file> --study <tmp> --force --batch-tokens <N>` "
          "(f32, CPU; 4096 is rho's default --batch-tokens). Scoring tokens/s: rho's own per-checkpoint "
          "`tokens/s` lines, which time load + score + write of each checkpoint.",
          f"- transformers: `AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32, "
          f"attn_implementation=\"{args['attn']}\")`, `torch.set_num_threads({peer0['threads']})`, "
          "`torch.inference_mode()`, `model(input_ids=x, use_cache=False)`, per-token "
          "`F.cross_entropy(..., reduction=\"none\")` in f32; the same windows and the same batches (longest first, "
          "≤ --batch-tokens padded tokens, right padding, no mask). Scoring tokens/s times the same span as rho's "
          "(from_pretrained + scoring + np.save, per checkpoint, summed); forward-only leaves out loading and "
          "saving. The whole process includes the Python/torch/transformers imports "
          f"(≈ {peer0['imports_s']:.1f} s) and, in the first from_pretrained, transformers' lazy module imports.",
          "- Whole process: wall clock of the subprocess; CPU: its user + sys time.",
          *([f"- `rho + env`: the same rho binary run with {env}"
             + (" (glibc malloc's defaults instead of rho's setting: no mmap per large block, no trimming)"
                if "RHO_MALLOC_DEFAULTS" in env else "") + "."]
            if env else []),
          "- Ratio column: rho's whole-process time ÷ transformers' (< 1: rho faster); rho's scoring "
          "tokens/s ÷ transformers' (> 1: rho faster).", ""]
    for setup, desc in dict((res["setup"], res["desc"]) for res in results).items():
        md.append(f"- Setup `{setup}`: {desc}.")
    md += ["", "\n".join(lines), "", "Correctness cross-check (same rows, per-token losses):", ""] + checks
    # (CPU times tick at 10 ms: a 0.1 s run can show a few % of noise)
    noisy = [f"{res['setup']} {n[0]} ({100 * n[1]:.0f}%)" for res in results for n in res["notes"]
             if n[1] > 0.05 and float(re.search(r"used ([0-9.]+) CPU-s", n[2]).group(1)) >= 0.5]
    md += ["", "Contention: before each run the script waited for the machine to be idle (other processes "
           f"< 0.15 CPUs, up to {args['wait_quiet']:.0f} s), and measured the CPU time other processes used during the "
           "run, as a share of wall × CPUs: "
           + ("runs above 5%: " + "; ".join(noisy) + "; all other runs ≤ 5% (or < 0.5 CPU-s)." if noisy
              else "every run ≤ 5% (or < 0.5 CPU-s).")]
    return "\n".join(md) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    i = old.find(SECTION)
    if i >= 0:
        j = old.find("\n## ", i + len(SECTION))
        new = old[:i] + text + (old[j + 1:] if j >= 0 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "peer":
        return peer_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setups", default="tiny,llama25m", help="comma-separated: tiny, llama25m")
    ap.add_argument("--tokens", type=int, default=40000,
                    help="llama25m: scored tokens per checkpoint (whole GSM8K test docs, in file order)")
    ap.add_argument("--runs", type=int, default=2, help="runs per system (alternating); the median is reported")
    ap.add_argument("--batch-tokens", default="4096",
                    help="padded tokens per forward pass, both systems; comma-separated values each get their rows")
    ap.add_argument("--rho-env", action="append", default=[], metavar="NAME=VALUE",
                    help="also run rho with this environment variable set (a third system row); repeatable")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads of both: torch.set_num_threads, and RAYON_NUM_THREADS for rho when not nproc")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--rho", type=Path, default=ROOT / "target/release/rho")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rho-bench"))
    ap.add_argument("--wait-quiet", type=float, default=120.0,
                    help="before each run, wait up to this many seconds until other processes use < 0.15 CPUs "
                         "and no compiler (rustc/cargo) runs")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--benchmarks-md", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--render", type=Path, metavar="RESULTS.json",
                    help="measure nothing: render the section from the raw results of an earlier run")
    a = ap.parse_args()

    if a.render:
        raw = json.loads(a.render.read_text())
    else:
        raw = measure(a)
        out = a.workdir / "bench_eval_results.json"
        out.write_text(json.dumps(raw, indent=1, default=str))
        print(f"raw results: {out}")
    text = render(raw)
    print("\n" + text)
    if not a.no_write:
        write_section(a.benchmarks_md, text)
        print(f"updated {a.benchmarks_md}")
    return 0


def measure(a) -> dict:
    a.batch_tokens = [int(x) for x in a.batch_tokens.split(",")]
    if not a.rho.exists():
        raise SystemExit(f"{a.rho} not found: run `cargo build --release` first")
    a.workdir.mkdir(parents=True, exist_ok=True)
    started = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()

    setups = []
    for s in a.setups.split(","):
        if s == "tiny":
            setups.append(("tiny", ROOT / "fixtures/llama", ROOT / "fixtures/data/val.jsonl",
                           "fixtures/llama (3 ckpts: f32 / bf16 / sharded f32; hidden 64, 2 layers, ctx 64, "
                           "vocab 301) on fixtures/data/val.jsonl, 6 docs"))
        elif s == "llama25m":
            ck, data, desc = setup_llama25m(a.workdir, a.tokens)
            setups.append(("llama25m", ck, data, desc))
        else:
            raise SystemExit(f"unknown setup {s}")

    systems = ["rho", "transformers"] + (["rho+env"] if a.rho_env else [])
    rho_env = dict(kv.split("=", 1) for kv in a.rho_env)
    results = []
    for name, ckdir, data, desc in setups:
        for bt in a.batch_tokens:
            key = f"{name}-bt{bt}"
            study = {"rho": a.workdir / f"study-{key}", "rho+env": a.workdir / f"study-{key}-env"}
            peer_out = a.workdir / f"peer-{key}"
            runs: dict[str, list] = {s: [] for s in systems}
            notes = []
            for r in range(a.runs):
                for system in systems:
                    busy = wait_quiet(a.wait_quiet)
                    if system == "transformers":
                        res = run_peer(ckdir, data, peer_out, bt, a.threads, a.attn)
                    else:
                        res = run_rho(a.rho, ckdir, data, study[system], bt, a.threads,
                                      rho_env if system == "rho+env" else None)
                    runs[system].append(res)
                    share = res["other"] / (res["wall"] * (os.cpu_count() or 1))
                    res["other_share"] = share
                    note = f"other processes used {res['other']:.1f} CPU-s = {100 * share:.0f}% of the machine" + (
                        f"; busy: {' '.join(busy[:4])}" if busy else "")
                    notes.append((f"bt {bt} run {r + 1} {system}", share, note))
                    print(f"[{name} bt {bt} run {r + 1}] {system:<12} wall {res['wall']:7.2f} s  cpu {res['cpu']:7.2f} s  "
                          f"{throughput(res['per']):8.0f} tokens/s  ({note})", flush=True)
            names = [p["name"] for p in runs["rho"][-1]["per"]]
            if names != [p["name"] for p in runs["transformers"][-1]["per"]]:
                raise SystemExit(f"checkpoint order differs: {names} vs "
                                 f"{[p['name'] for p in runs['transformers'][-1]['per']]}")
            diff = {s: compare(study[s], peer_out, names) for s in systems if s != "transformers"}
            gold = compare_golden(peer_out) if name == "tiny" else None
            results.append({"setup": name, "bt": bt, "desc": desc, "data": str(data), "ckdir": str(ckdir),
                            "n_tokens": runs["rho"][-1]["per"][0]["tokens"], "n_ckpts": len(names),
                            "runs": runs, "diff": diff, "gold": gold, "notes": notes})
    cmdline = "/work/pyvenv/bin/python scripts/bench_eval.py " + " ".join(
        f"'{x}'" if " " in x else x for x in sys.argv[1:])
    return {"started": started, "machine": machine(), "versions": versions(a.rho), "cmdline": cmdline.strip(),
            "args": {"runs": a.runs, "attn": a.attn, "rho_env": rho_env, "wait_quiet": a.wait_quiet,
                     "batch_tokens": a.batch_tokens, "threads": a.threads, "tokens": a.tokens},
            "results": results}


if __name__ == "__main__":
    sys.exit(main())
