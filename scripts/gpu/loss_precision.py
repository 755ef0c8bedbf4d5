#!/usr/bin/env python3
"""How close bf16 per-token losses are to f32 ones, rho's and PyTorch's, on the same tokens.

Issue 7's acceptance asks rho's bf16 losses on the GPU to agree with an f32 computation
within relative 1e-2 per token. This script gives that number its context: it loads a
`rho bench eval --dump` file (the weights, already bf16 values, the ids and rho's per-token
losses), runs transformers' LlamaForCausalLM (the shape of ../shared/gpu/torch_peer.py)
once in float32 (TF32 off) as the reference and once in bfloat16, built as from_pretrained
builds it (parameters in bf16, RoPE's inv_freq in f32), and prints for rho's dumped losses
and for transformers' bf16 ones their distance from the f32 reference (max |diff|, mean
|diff|, max |diff| / |ref| and its 99.9th percentile), rho's distance from transformers'
bf16, and transformers' bf16 with inv_freq rounded to bf16 too: what torch_peer.py computes,
whose `model.to(dtype=bf16)` rounds that buffer (so its `--check-against` in bf16 measures
the peer's RoPE error, ~0.85 nats at 1x2048, not rho's).

    python3 scripts/gpu/loss_precision.py /tmp/full.safetensors [--device cuda|cpu]

Lines start with `PRECISION` (one per system and shape). Exit 0 unless the inputs are wrong.
Measured on the CPU (a dump of rho's CPU bf16 path, docs/gpu.md, "bf16 against f32").
"""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", help="a `rho bench eval --dump` file")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    t = load_file(a.dump)
    weights = {k: v for k, v in t.items() if not (k.startswith("ids_") or k.startswith("loss_"))}
    shapes = sorted(k[4:] for k in t if k.startswith("ids_"))
    if not shapes or "model.embed_tokens.weight" not in weights:
        sys.exit(f"{a.dump}: not a `rho bench eval --dump` file (no ids_* or no model.embed_tokens.weight)")
    vocab, hidden = weights["model.embed_tokens.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("model.layers."))
    inter = weights["model.layers.0.mlp.gate_proj.weight"].shape[0]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      max_position_embeddings=max(2048, max(int(s.split("x")[1]) for s in shapes)),
                      rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
                      initializer_range=0.02, use_cache=False)
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):  # transformers 5
        rp.setdefault("rope_type", "default")
        rp["rope_theta"] = 10000.0

    def build(dtype):
        # as from_pretrained(dtype=...) builds it: the parameters in `dtype`, RoPE's inv_freq
        # buffer in float32. (torch_peer.py's `model.to(dtype=bf16)` afterwards also rounds
        # inv_freq to bf16, which moves the rotation of far positions: its own line below.)
        with torch.device(dev):
            try:
                model = LlamaForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
            except TypeError:  # older transformers
                model = LlamaForCausalLM._from_config(cfg, torch_dtype=dtype, attn_implementation="sdpa")
        missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False)
        missing = [k for k in missing if "rotary" not in k]
        if missing or unexpected:
            sys.exit(f"{a.dump}: state dict mismatch missing={missing} unexpected={unexpected}")
        return model.eval()

    def losses(model):
        out = {}
        with torch.inference_mode():
            for s in shapes:
                ids = t["ids_" + s].to(torch.int64).to(dev)
                lg = model(input_ids=ids, use_cache=False).logits[:, :-1, :].float()
                out[s] = F.cross_entropy(lg.reshape(-1, lg.size(-1)), ids[:, 1:].reshape(-1), reduction="none").cpu()
        return out

    m = build(torch.float32)
    ref = losses(m)
    del m
    m = build(torch.bfloat16)
    rope = m.model.rotary_emb
    if rope.inv_freq.dtype != torch.float32:
        sys.exit(f"inv_freq is {rope.inv_freq.dtype} after building in bf16 (float32 expected)")
    torch_bf16 = losses(m)
    rope.inv_freq = rope.inv_freq.to(torch.bfloat16)  # what torch_peer.py's .to(dtype) does
    torch_bf16_peer = losses(m)
    del m
    for s in shapes:
        rho = t["loss_" + s].reshape(-1).double()
        rows = [("rho-bf16", rho, "torch-f32", ref[s]), ("torch-bf16", torch_bf16[s], "torch-f32", ref[s]),
                ("torch-bf16-rope-bf16", torch_bf16_peer[s], "torch-f32", ref[s]),
                ("rho-bf16", rho, "torch-bf16", torch_bf16[s])]
        for name, got, vs, r in rows:
            r = r.double()
            d = (got.double() - r).abs()
            rel = d / r.abs().clamp_min(1e-6)
            print(f"PRECISION system={name} vs={vs} shape={s} tokens={r.numel()} max_abs={d.max():.3e} "
                  f"mean_abs={d.mean():.3e} max_rel={rel.max():.3e} p999_rel={torch.quantile(rel, 0.999):.3e} "
                  f"ref_mean={r.mean():.4f}", flush=True)


if __name__ == "__main__":
    main()
