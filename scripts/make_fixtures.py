#!/usr/bin/env python3
"""Regenerate every golden fixture under fixtures/ for the rho test suite.

Usage (from the repository root):

    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors pyarrow
    .venv/bin/python scripts/make_fixtures.py

What it writes (see fixtures/README.md for the formats):

* fixtures/tokenizers/{plain,bos}/tokenizer.json   tiny byte-level BPE tokenizers
* fixtures/data/val.jsonl, fixtures/data/val.parquet   validation documents
* fixtures/<family>/<checkpoint>/                  tiny HF checkpoints (safetensors; the
                                                   `neox-pickle` family: PyTorch pickles)
* fixtures/<family>/golden_tokens.jsonl            token ids + UTF-8 byte offsets per doc
* fixtures/<family>/golden_losses.jsonl            per-token losses per checkpoint
* fixtures/<family>/golden_grads.jsonl             gradients of one window's mean loss (first checkpoint)
* fixtures/configs/*.json                          config-only files for parser tests
* fixtures/manifest.json, fixtures/versions.json

Everything is seeded and single-threaded, so re-running on the same machine with
the same library versions gives byte-identical files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import tokenizers  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Olmo3Config,
    OlmoConfig,
    Qwen2Config,
    Qwen3Config,
    SmolLM3Config,
)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"

CONTEXT = 64  # max_position_embeddings / n_positions of every tiny model
VOCAB_TARGET = 300  # BPE vocab size including <|endoftext|> (the bos variant adds <s>)
EOT = "<|endoftext|>"
BOS = "<s>"

# ---------------------------------------------------------------------------
# Built-in text: tokenizer training corpus (also the tiny models' training data)
# ---------------------------------------------------------------------------
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, "
    "and the fox runs into the forest before the rain begins.",
    "Language models assign a probability to every token in a sequence. The loss of "
    "a token is the negative log probability of that token given all tokens before it. "
    "Some tokens are easy to predict and their loss falls quickly during training; other "
    "tokens stay hard for the whole run, and a few tokens even get harder over time.",
    "Let $f(x) = x^2 + 3x - 4$. Then $f'(x) = 2x + 3$, and the roots satisfy "
    "$x = \\frac{-3 \\pm \\sqrt{9 + 16}}{2}$, so $x = 1$ or $x = -4$.",
    "For every $n \\geq 1$ we have $\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$. "
    "For example, $1 + 2 + 3 + 4 + 5 = 15$ and $1 + 2 + \\dots + 100 = 5050$.",
    "The integral $\\int_0^1 x^2 \\, dx = \\frac{1}{3}$, and "
    "$\\int_0^{\\pi} \\sin(x) \\, dx = 2$. Recall that $e^{i\\pi} + 1 = 0$.",
    "In 2024 the team trained 12 models on 300 billion tokens; the best model reached "
    "a loss of 2.31 after 143000 steps, i.e. 0.72 bits per byte.",
    "Café owners in Zürich serve crème brûlée — and the number π ≈ 3.14159 is printed "
    "on every menu. Naïve readers think π = 22/7, but 22/7 ≈ 3.142857.",
    "Theorem 1. If $a, b > 0$ then $\\frac{a + b}{2} \\geq \\sqrt{ab}$, with equality "
    "if and only if $a = b$. Proof: $(\\sqrt{a} - \\sqrt{b})^2 \\geq 0$.",
    "def loss(logits, target):\n    return -log_softmax(logits)[target]\n\n"
    "for step in range(0, 1000, 100):\n    print(step, loss(model(x), y))",
    "Selective language modeling trains only on the tokens that matter: tokens whose "
    "excess loss over a reference model is high are kept, and the rest are masked out.",
]

# Validation documents (fixtures/data/val.jsonl, in this order).
VAL_DOCS = [
    # 0: short English with a newline and a tab
    "The fox runs.\nThe dog\tsleeps in the sun.",
    # 1: LaTeX-ish math, shorter than the context
    "Let $x = 3$. Then $x^2 + 2x + 1 = 16$ and $\\frac{x}{2} = 1.5$.",
    # 2: long document (> 3 contexts), scored in sliding windows; its last window
    #    is a partial stride for both tokenizers
    "Training dynamics of individual tokens tell a richer story than the average loss. "
    "Tracked across a series of checkpoints, tokens fall into four groups: H→L, L→L, H→H "
    "and L→H. Consider $a_n = 2^n - 1$: $a_1 = 1$, $a_2 = 3$, $a_3 = 7$, and "
    "$a_{n+1} = 2 a_n + 1$. The word after \"the quick brown\" is easy, yet the name of a "
    "café in Zürich is hard — it is rarely seen.",
    # 3: a single token with the plain tokenizer (no losses unless <s> is prepended)
    "The",
    # 4: non-ASCII, including a 4-byte UTF-8 character (U+1D53C)
    "Crème brûlée costs 7 € — π ≈ 3.14 and 𝔼[X] = μ. Ça va? Naïve résumé!",
    # 5: exactly CONTEXT tokens with the plain tokenizer (CONTEXT + 1 with <s>)
    "Every token after the first one is scored with the logits of the previous position "
    "in the model window.",
]


def check_val_docs(plain: Tokenizer, bos: Tokenizer) -> None:
    n = [len(plain.encode(d, add_special_tokens=True).ids) for d in VAL_DOCS]
    nb = [len(bos.encode(d, add_special_tokens=True).ids) for d in VAL_DOCS]
    assert nb == [k + 1 for k in n], (n, nb)
    C, S = CONTEXT, CONTEXT // 2
    assert 1 < n[0] < C and 1 < nb[1] <= C, n
    assert n[2] > 3 * C and (n[2] - C) % S != 0 and (nb[2] - C) % S != 0, n
    assert n[3] == 1, n
    assert n[4] > C, n
    assert n[5] == C, n


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------
def build_tokenizers() -> tuple[Tokenizer, Tokenizer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    # GPT-2 / Pythia style: a ByteLevel post-processor that adds no tokens.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    assert tok.token_to_id(EOT) == 0
    plain = Tokenizer.from_str(tok.to_str())

    bos = Tokenizer.from_str(tok.to_str())
    bos.add_special_tokens([AddedToken(BOS, special=True, normalized=False)])
    bos_id = bos.token_to_id(BOS)
    bos.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    return plain, bos


def byte_offsets(text: str, char_offsets) -> list[list[int]]:
    """HF tokenizers (Python, str input) reports char offsets; convert to UTF-8 bytes."""
    cum = [0]
    for ch in text:
        cum.append(cum[-1] + len(ch.encode("utf-8")))
    return [[cum[s], cum[e]] for (s, e) in char_offsets]


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def make_config(arch: str, vocab: int, bos_id: int | None, **kw):
    common = dict(vocab_size=vocab, eos_token_id=0, pad_token_id=None)
    if arch == "llama":
        return LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, rope_parameters=dict(ROPE),
            tie_word_embeddings=False, bos_token_id=bos_id, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=CONTEXT, layer_norm_eps=1e-5,
            rope_parameters=dict(ROPE, partial_rotary_factor=kw["rotary_pct"]),
            use_parallel_residual=kw["parallel"], tie_word_embeddings=False,
            bos_token_id=0, **common)
    if arch == "gpt2":
        return GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT, n_inner=96,
            bos_token_id=0, **common)
    if arch == "qwen2":
        return Qwen2Config(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
            rms_norm_eps=1e-6, rope_parameters=dict(ROPE), use_sliding_window=False,
            sliding_window=None, max_window_layers=2, tie_word_embeddings=False,
            bos_token_id=bos_id, **common)
    if arch == "mistral":
        return MistralConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, rope_parameters=dict(ROPE),
            sliding_window=None, tie_word_embeddings=False, bos_token_id=bos_id, **common)
    # the families of issue 19; each sets what makes it differ from Llama
    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=CONTEXT, bos_token_id=bos_id, **common)
    if arch == "olmo":
        # LayerNorm without weights, q/k/v/o biases, q/k/v clipped (44% of the first layer's
        # q values of the first checkpoint are beyond 0.9; logits move by up to 4 without it)
        return OlmoConfig(rope_parameters=dict(ROPE), attention_bias=True, clip_qkv=0.9,
                          tie_word_embeddings=False, **small)
    if arch == "olmo2":
        # norms after attention and MLP, RMSNorm of the whole q and k projections
        return Olmo2Config(rope_parameters=dict(ROPE, rope_theta=500000.0), rms_norm_eps=1e-6,
                           tie_word_embeddings=False, **small)
    if arch == "olmo3":
        # a sliding layer (window 8 << context 64) with its own RoPE base, then a full one
        # with YaRN as Olmo-3's long-context checkpoints (factor 4 over an original 16
        # positions: the ramp and the attention factor 1.139 both act)
        return Olmo3Config(
            layer_types=["sliding_attention", "full_attention"], sliding_window=8,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
                             "full_attention": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                "original_max_position_embeddings": 16}},
            rms_norm_eps=1e-6, tie_word_embeddings=False, **small)
    if arch == "smollm3":
        # the second layer without RoPE; tied embeddings (SmolLM3's default)
        return SmolLM3Config(rope_parameters=dict(ROPE), no_rope_layers=[1, 0],
                             use_sliding_window=False, sliding_window=None,
                             tie_word_embeddings=True, rms_norm_eps=1e-6, **small)
    if arch == "qwen3":
        # per-head q/k RMSNorm, head_dim 24 != hidden / heads; the second layer slides (window 8)
        return Qwen3Config(rope_parameters=dict(ROPE), head_dim=24, use_sliding_window=True,
                           sliding_window=8, max_window_layers=1, rms_norm_eps=1e-6,
                           tie_word_embeddings=False, **small)
    raise ValueError(arch)


def reinit_(model, seed: int, std: float = 0.15) -> None:
    """Re-draw every parameter: matrices ~ N(0, std), biases ~ N(0, 0.05),
    1-D weights (norm gains) ~ 1 + N(0, 0.1), so that a loader which forgets
    a bias or a norm gain produces visibly wrong losses."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.dim() >= 2:
                p.copy_(noise * std)
            elif name.endswith("bias"):
                p.copy_(noise * 0.05)
            else:
                p.copy_(1.0 + noise * 0.1)


class Trainer:
    """A few deterministic AdamW steps on the built-in corpus so that checkpoints
    of a series have clearly different (and decreasing) losses."""

    def __init__(self, model, data_ids: list[int], seed: int, lr: float = 1e-3):
        self.model = model
        self.data = torch.tensor(data_ids, dtype=torch.long)
        self.g = torch.Generator().manual_seed(seed)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.steps = 0

    def run(self, n_steps: int, batch: int = 8) -> None:
        self.model.eval()  # no dropout: fully deterministic updates
        for _ in range(n_steps):
            starts = torch.randint(0, len(self.data) - CONTEXT, (batch,), generator=self.g)
            x = torch.stack([self.data[s : s + CONTEXT] for s in starts.tolist()])
            loss = self.model(input_ids=x, labels=x).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.steps += 1


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# family name -> arch, tokenizer variant, arch kwargs, checkpoints
# checkpoint = (folder, cumulative training steps, stored dtype, max_shard_size or None)
FAMILIES = [
    dict(name="llama", arch="llama", tok="bos", seed=1, kw={},
         ckpts=[("step-0", 0, "float32", None),
                ("step-100", 10, "bfloat16", None),
                ("step-200", 40, "float32", "150KB")],
         v4_style="step-0"),
    dict(name="neox", arch="gpt_neox", tok="plain", seed=2,
         kw={"rotary_pct": 0.25, "parallel": True},
         ckpts=[("step1000", 0, "float32", None),
                ("step2000", 10, "float16", None),
                ("step3000", 40, "float32", None)],
         v4_style="step1000"),
    dict(name="neox-seq", arch="gpt_neox", tok="plain", seed=3,
         kw={"rotary_pct": 0.5, "parallel": False},
         ckpts=[("step1", 30, "float16", None)]),
    dict(name="gpt2", arch="gpt2", tok="plain", seed=4, kw={},
         ckpts=[("checkpoint-10", 0, "float32", None),
                ("checkpoint-20", 10, "float16", None),
                ("checkpoint-30", 40, "float32", None)]),
    dict(name="qwen2", arch="qwen2", tok="bos", seed=5, kw={},
         ckpts=[("step-1", 30, "bfloat16", None)]),
    dict(name="mistral", arch="mistral", tok="bos", seed=6, kw={},
         ckpts=[("step-1", 30, "bfloat16", None)]),
    # issue 19: OLMo-1/2/3, SmolLM3, Qwen3, named as their public series are
    dict(name="olmo", arch="olmo", tok="plain", seed=7, kw={},
         ckpts=[("step1000-tokens4B", 0, "float32", None),
                ("step2000-tokens8B", 30, "bfloat16", None)]),
    dict(name="olmo2", arch="olmo2", tok="plain", seed=8, kw={},
         ckpts=[("stage1-step150-tokens1B", 0, "float32", None),
                ("stage1-step600-tokens3B", 10, "float32", "100KB"),
                ("stage2-ingredient1-step100-tokens4B", 40, "bfloat16", None)]),
    dict(name="olmo3", arch="olmo3", tok="plain", seed=9, kw={},
         ckpts=[("stage1-step1000", 0, "float32", None),
                ("stage1-step2000", 30, "float32", None)]),
    dict(name="smollm3", arch="smollm3", tok="bos", seed=10, kw={},
         ckpts=[("step-40000", 30, "float32", None)]),
    dict(name="qwen3", arch="qwen3", tok="bos", seed=11, kw={},
         ckpts=[("checkpoint-500", 10, "float32", None),
                ("checkpoint-1000", 40, "bfloat16", None)]),
    # Pythia as published: float16 PyTorch pickles (pytorch_model.bin, one checkpoint
    # sharded with pytorch_model.bin.index.json) with the buffers old GPT-NeoX code saved
    # (attention.bias, attention.masked_bias, rotary_emb.inv_freq), a transformers 4.x
    # config; the last checkpoint holds both model.safetensors and a pytorch_model.bin of
    # other weights (transformers reads the safetensors, and so must rho)
    dict(name="neox-pickle", arch="gpt_neox", tok="plain", seed=12,
         kw={"rotary_pct": 0.25, "parallel": True},
         ckpts=[("step0", 0, "float16", "pickle"),
                ("step512", 10, "float16", "pickle-sharded"),
                ("step1000", 40, "float16", "both")],
         v4_style="all"),
]


def pythia_buffers(model, sd: dict) -> dict:
    """The state dict as Pythia's pytorch_model.bin files hold it: every parameter plus
    the buffers transformers 4.x's GPT-NeoX registered as persistent (the causal mask
    `attention.bias`, `attention.masked_bias`, RoPE's `rotary_emb.inv_freq`)."""
    cfg = model.config
    head = cfg.hidden_size // cfg.num_attention_heads
    rot = int(head * cfg.rope_parameters.get("partial_rotary_factor", 1.0))
    inv = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, rot, 2).float() / rot))
    out = {}
    for k, v in sd.items():
        # transformers 5 calls GPT-NeoX's output projection `lm_head` in memory; its files,
        # Pythia's among them, call it `embed_out`
        k = "embed_out.weight" if k == "lm_head.weight" else k
        out[k] = v
        if k.endswith("attention.dense.bias"):
            pre = k[: -len("dense.bias")]
            n = cfg.max_position_embeddings
            out[pre + "bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
            out[pre + "masked_bias"] = torch.tensor(-1e9)
            out[pre + "rotary_emb.inv_freq"] = inv.clone()
    return out


def save_pickles(m, path: Path, sharded: bool) -> None:
    """torch.save of the state dict (with Pythia's buffers): one pytorch_model.bin, or two
    shards and pytorch_model.bin.index.json as transformers 4.x wrote them."""
    sd = pythia_buffers(m, {k: v.contiguous() for k, v in m.state_dict().items()})
    if not sharded:
        torch.save(sd, path / "pytorch_model.bin")
        return
    keys = list(sd)
    half = len(keys) // 2
    parts = [keys[:half], keys[half:]]
    weight_map, total = {}, 0
    for i, part in enumerate(parts):
        name = f"pytorch_model-{i + 1:05d}-of-{len(parts):05d}.bin"
        torch.save({k: sd[k] for k in part}, path / name)
        for k in part:
            weight_map[k] = name
            total += sd[k].numel() * sd[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_checkpoint(model, path: Path, dtype: str, shard: str | None, tok_json: str) -> None:
    m = copy.deepcopy(model).to(DTYPES[dtype])
    if shard in ("pickle", "pickle-sharded"):
        path.mkdir(parents=True)
        m.config.dtype = DTYPES[dtype]
        m.config.save_pretrained(path)
        save_pickles(m, path, sharded=shard == "pickle-sharded")
        (path / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        assert not list(path.glob("*.safetensors"))
        for f in path.glob("*.bin"):
            for k, v in torch.load(f, weights_only=True).items():
                assert v.dtype in (DTYPES[dtype], torch.bool, torch.float32), (f, k, v.dtype)
        return
    both = shard == "both"
    if both:
        shard = None
    kwargs = {"max_shard_size": shard} if shard else {}
    kwargs = {"max_shard_size": shard} if shard else {}
    m.save_pretrained(path, safe_serialization=True, **kwargs)
    (path / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    if both:
        # a pytorch_model.bin of other weights beside the safetensors: whoever reads the
        # .bin gets losses far from the goldens
        stale = copy.deepcopy(model)
        reinit_(stale, 999)
        save_pickles(stale.to(DTYPES[dtype]), path, sharded=False)
    files = sorted(path.glob("*.safetensors"))
    if shard:
        assert (path / "model.safetensors.index.json").exists() and len(files) >= 2, files
    else:
        assert [f.name for f in files] == ["model.safetensors"], files
    want = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    for f in files:
        with safe_open(f, "pt") as st:
            for k in st.keys():
                assert st.get_slice(k).get_dtype() == want, (f, k)


def to_v4_style(path: Path, arch: str) -> None:
    """Rewrite a transformers-5 config.json in the transformers-4.x layout
    (top-level rope_theta / rotary_pct / rotary_emb_base, torch_dtype)."""
    before = AutoConfig.from_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    assert rope.get("rope_type", "default") == "default", rope
    if arch == "llama":
        cfg["rope_theta"] = rope["rope_theta"]
        cfg["rope_scaling"] = None
    elif arch == "gpt_neox":
        cfg["rotary_pct"] = rope.get("partial_rotary_factor", 1.0)
        cfg["rotary_emb_base"] = int(rope["rope_theta"])
    else:
        raise ValueError(arch)
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.44.2"
    cfg = dict(sorted(cfg.items()))
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    after = AutoConfig.from_pretrained(path)
    a, b = before.to_dict(), after.to_dict()
    for d in (a, b):
        d.pop("transformers_version", None)
    assert a == b, f"4.x-style config of {path} does not round-trip:\n{a}\n{b}"


# ---------------------------------------------------------------------------
# Scoring (the rule the Rust side implements)
# ---------------------------------------------------------------------------
def windows(n: int, C: int) -> list[tuple[int, int, int]]:
    """(window_start, window_end, first_scored_position) triples; the window
    scores positions [first_scored, window_end)."""
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
def logprobs(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor(ids, dtype=torch.long)[None]
    logits = model(input_ids=x).logits[0].to(torch.float32)
    return torch.log_softmax(logits, dim=-1)


def score_doc(model, ids: list[int], C: int) -> list[tuple[int, float]]:
    out = []
    for s, e, first in windows(len(ids), C):
        lp = logprobs(model, ids[s:e])
        for p in range(first, e):
            out.append((p, float(-lp[p - 1 - s, ids[p]])))
    return out


GRAD_TOKENS = 40  # > the sliding windows of the fixtures (8), < the context (64)


def golden_grads(model, ids: list[int], checkpoint: str) -> list[dict]:
    """d(mean next-token loss over `ids`)/d(parameter) for every parameter, as its L2 norm
    and its first 8 values (flattened, row-major). The training side must reproduce them."""
    model.zero_grad(set_to_none=True)
    x = torch.tensor(ids, dtype=torch.long)[None]
    logits = model(input_ids=x).logits[0].to(torch.float32)
    loss = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:])
    loss.backward()
    rows = []
    for name, p in sorted(model.named_parameters()):
        assert p.grad is not None, name
        g = p.grad.detach().reshape(-1).to(torch.float64)
        rows.append({"checkpoint": checkpoint, "param": name, "norm": float(g.norm()),
                     "head": [float(v) for v in g[:8]], "loss": float(loss)})
    model.zero_grad(set_to_none=True)
    return rows


def load_from_disk(path: Path):
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model


def context_of(path: Path) -> int:
    cfg = json.loads((path / "config.json").read_text())
    return cfg.get("max_position_embeddings", cfg.get("n_positions"))


# ---------------------------------------------------------------------------
# Config-only fixtures for parser tests
# ---------------------------------------------------------------------------
# transformers-4.x layout, modeled on TinyLlama-1.1B's config.json
LLAMA_V4 = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5632,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 22,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.35.0",
    "use_cache": True,
    "vocab_size": 32000,
}
# transformers-4.x layout, modeled on EleutherAI/pythia-70m's config.json
NEOX_V4 = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_size": 512,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 8,
    "num_hidden_layers": 6,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.24.0",
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 50304,
}
# modeled on openai-community/gpt2's config.json
GPT2_REAL = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}


def v5_config_json(cls, v4: dict) -> str:
    """What the installed transformers writes (Config.save_pretrained) for a 4.x config."""
    cfg = cls.from_dict(dict(v4))
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        return (Path(d) / "config.json").read_text()


def write_configs() -> None:
    out = FIX / "configs"
    out.mkdir(parents=True)
    dump = lambda obj: json.dumps(obj, indent=2) + "\n"  # noqa: E731
    (out / "llama_v4.json").write_text(dump(LLAMA_V4))
    (out / "neox_v4.json").write_text(dump(NEOX_V4))
    (out / "gpt2.json").write_text(dump(GPT2_REAL))
    (out / "llama_v5.json").write_text(v5_config_json(LlamaConfig, LLAMA_V4))
    (out / "neox_v5.json").write_text(v5_config_json(GPTNeoXConfig, NEOX_V4))


# ---------------------------------------------------------------------------
def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> int:
    t0 = time.time()
    for sub in ["tokenizers", "data", "configs", "manifest.json", "versions.json"] + [
        f["name"] for f in FAMILIES
    ]:
        p = FIX / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    FIX.mkdir(exist_ok=True)

    # -- tokenizers -------------------------------------------------------
    plain, bos = build_tokenizers()
    toks = {"plain": plain, "bos": bos}
    tok_json = {}
    for name, t in toks.items():
        d = FIX / "tokenizers" / name
        d.mkdir(parents=True)
        t.save(str(d / "tokenizer.json"), pretty=True)
        tok_json[name] = (d / "tokenizer.json").read_text(encoding="utf-8")
        # reload from disk: everything downstream uses the file, never the object
        toks[name] = Tokenizer.from_file(str(d / "tokenizer.json"))
    plain, bos = toks["plain"], toks["bos"]
    assert plain.get_vocab_size() == VOCAB_TARGET, plain.get_vocab_size()
    assert bos.get_vocab_size() == VOCAB_TARGET + 1

    # -- data -------------------------------------------------------------
    check_val_docs(plain, bos)
    docs = VAL_DOCS
    (FIX / "data").mkdir()
    write_jsonl(FIX / "data" / "val.jsonl", [{"text": d} for d in docs])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}),
                   FIX / "data" / "val.parquet", compression="none")

    # -- config-only fixtures ---------------------------------------------
    write_configs()

    # -- checkpoints + goldens --------------------------------------------
    manifest = {"context": CONTEXT, "stride": CONTEXT // 2, "families": {}}
    summary = []
    for fam in FAMILIES:
        fdir = FIX / fam["name"]
        fdir.mkdir()
        tpath = FIX / "tokenizers" / fam["tok"] / "tokenizer.json"
        tok = Tokenizer.from_file(str(tpath))
        vocab = tok.get_vocab_size()
        bos_id = tok.token_to_id(BOS)

        # training data: the corpus, documents separated by <|endoftext|>
        data = []
        for text in CORPUS:
            data += tok.encode(text, add_special_tokens=True).ids + [0]

        torch.manual_seed(fam["seed"])
        cfg = make_config(fam["arch"], vocab, bos_id, **fam["kw"])
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        reinit_(model, fam["seed"])
        trainer = Trainer(model, data, seed=100 + fam["seed"])

        for folder, steps, dtype, shard in fam["ckpts"]:
            trainer.run(steps - trainer.steps)
            save_checkpoint(model, fdir / folder, dtype, shard, tok_json[fam["tok"]])
            if fam.get("v4_style") in (folder, "all"):
                to_v4_style(fdir / folder, fam["arch"])

        # golden tokens (the tokenizer.json copied into each checkpoint is identical)
        enc = [tok.encode(d, add_special_tokens=True) for d in docs]
        write_jsonl(fdir / "golden_tokens.jsonl", [
            {"seq": i, "ids": e.ids, "offsets": byte_offsets(docs[i], e.offsets)}
            for i, e in enumerate(enc)])

        # golden losses: fresh from-disk load of each checkpoint, float32, eager
        rows = []
        fam_manifest = {"arch": fam["arch"], "tokenizer": fam["tok"], "checkpoints": []}
        for folder, steps, dtype, shard in fam["ckpts"]:
            cdir = fdir / folder
            ctok = Tokenizer.from_file(str(cdir / "tokenizer.json"))
            model_d = load_from_disk(cdir)
            C = context_of(cdir)
            assert C == CONTEXT
            losses = []
            for i, d in enumerate(docs):
                ids = ctok.encode(d, add_special_tokens=True).ids
                assert ids == enc[i].ids
                for p, loss in score_doc(model_d, ids, C):
                    rows.append({"checkpoint": folder, "seq": i, "pos": p,
                                 "token_id": ids[p], "loss": loss})
                    losses.append(loss)
            self_check(model_d, docs, ctok, C, fam["name"], folder)
            mean = sum(losses) / len(losses)
            summary.append((fam["name"], folder, dtype, len(losses), mean))
            fam_manifest["checkpoints"].append(
                {"name": folder, "dtype": dtype, "sharded": bool(shard),
                 "config_style": "transformers-4" if fam.get("v4_style") in (folder, "all")
                 else "transformers-5",
                 "format": "pickle" if shard and shard.startswith("pickle")
                 else "safetensors+pickle" if shard == "both" else "safetensors",
                 "n_scored": len(losses), "mean_loss": mean})
        write_jsonl(fdir / "golden_losses.jsonl", rows)
        # golden gradients: the first checkpoint, one window of the long document
        first = fdir / fam["ckpts"][0][0]
        write_jsonl(fdir / "golden_grads.jsonl",
                    golden_grads(load_from_disk(first), enc[2].ids[:GRAD_TOKENS], fam["ckpts"][0][0]))
        manifest["families"][fam["name"]] = fam_manifest

    (FIX / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }
    try:
        import pyarrow
        versions["pyarrow"] = pyarrow.__version__
    except ImportError:
        pass
    (FIX / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")

    # -- summary + series checks ------------------------------------------
    ln_v = math.log(VOCAB_TARGET)
    print(f"{'family':<10} {'checkpoint':<14} {'dtype':<9} {'scored':>6} {'mean loss':>10}"
          f"   (ln V = {ln_v:.3f})")
    for fam_name, folder, dtype, n, mean in summary:
        print(f"{fam_name:<10} {folder:<14} {dtype:<9} {n:>6} {mean:>10.4f}")
    for fam in FAMILIES:
        means = [m for f, _, _, _, m in summary if f == fam["name"]]
        for a, b in zip(means, means[1:]):
            assert abs(a - b) > 0.05, (fam["name"], means)
    assert not all(abs(m - ln_v) < 0.1 for *_, m in summary)
    total = sum(f.stat().st_size for f in FIX.rglob("*") if f.is_file())
    print(f"fixtures/: {total / 1e6:.2f} MB, {time.time() - t0:.1f} s")
    return 0


def self_check(model, docs, tok, C, fam, folder) -> None:
    """Sanity: windowed scoring of a short doc == HF's own shifted-label loss over a
    full forward; the long doc really is windowed; the first window of the long doc
    equals a full forward over its first C tokens."""
    ids = tok.encode(docs[1], add_special_tokens=True).ids
    assert 1 < len(ids) <= C
    ours = score_doc(model, ids, C)
    assert [p for p, _ in ours] == list(range(1, len(ids)))
    with torch.no_grad():
        x = torch.tensor(ids)[None]
        hf = model(input_ids=x, labels=x).loss.item()
        lp = logprobs(model, ids)
    direct = [float(-lp[p - 1, ids[p]]) for p in range(1, len(ids))]
    assert [l for _, l in ours] == direct
    mean = sum(direct) / len(direct)
    assert abs(mean - hf) < 1e-4 * max(1.0, abs(hf)), (fam, folder, mean, hf)

    long_ids = tok.encode(docs[2], add_special_tokens=True).ids
    assert len(long_ids) > 3 * C and (len(long_ids) - C) % (C // 2) != 0
    w = windows(len(long_ids), C)
    assert len(w) > 2 and w[-1][1] == len(long_ids)
    scored = [p for s, e, f in w for p in range(f, e)]
    assert scored == list(range(1, len(long_ids)))
    first = score_doc(model, long_ids[:C], C)
    assert first == score_doc(model, long_ids, C)[: C - 1]


if __name__ == "__main__":
    sys.exit(main())
