//! One decoder-only transformer covering the supported families.
//!
//! | family  | norm      | attention projections            | position       | MLP            | residual   |
//! |---------|-----------|----------------------------------|----------------|----------------|------------|
//! | Llama   | RMSNorm   | q/k/v/o, grouped-query, opt. bias | RoPE (full)    | SwiGLU         | sequential |
//! | NeoX    | LayerNorm | fused qkv, interleaved per head   | RoPE (partial) | GELU           | parallel or sequential |
//! | GPT-2   | LayerNorm | fused qkv (Conv1D, [in, out])     | learned        | GELU (tanh)    | sequential |
//!
//! The Llama row covers its relatives, which differ in (config.rs: `NormKind`, `QkNorm`,
//! `post_norm`, `clip_qkv`, `LayerSpec`):
//!
//! | model_type | norm | q/k norm | per layer |
//! |------------|------|----------|-----------|
//! | mistral, qwen2 | RMSNorm before | - | sliding window |
//! | qwen3      | RMSNorm before | RMSNorm per head (head_dim) | sliding window past `max_window_layers` |
//! | smollm3    | RMSNorm before | - | no RoPE in `no_rope_layers`, sliding window |
//! | olmo       | LayerNorm without gain or bias, before; `clip_qkv` | - | - |
//! | olmo2      | RMSNorm AFTER attention and MLP (on their outputs) | RMSNorm of the whole q and k | - |
//! | olmo3      | as olmo2 | as olmo2 | sliding window and RoPE by `layer_types` |
//!
//! `forward` returns logits for EVERY position (candle-transformers' models return
//! only the last one). With `Mode::Train` every op used has a backward pass
//! (candle-nn's fused softmax / rms_norm / layer_norm / rope have none).

use super::config::{Activation, Arch, ModelConfig, NormKind, QkNorm, Rope};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

/// Which implementation of the non-matmul ops to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fused candle-nn kernels (no backward): evaluation.
    Eval,
    /// Differentiable compositions of basic ops: training.
    Train,
}

/// `RHO_RESIDUAL`: evaluation's residual stream for a bf16 / f16 model. Unset or `f32`: in
/// f32 (per-token losses a fifth closer to f32's on average, a third at the worst token;
/// docs/gpu.md, "bf16 against f32"); `model`: in the model's dtype, as transformers computes
/// it (A/B runs). Returns whether f32.
pub fn residual_f32(v: Option<&str>) -> std::result::Result<bool, String> {
    match v.map(str::trim) {
        None | Some("f32") => Ok(true),
        Some("model") => Ok(false),
        Some(other) => Err(format!("`{other}` is not f32 or model")),
    }
}

/// x + d in the residual stream's dtype (x's). Where d (a sublayer's output, the model's
/// dtype) differs, one op adds it into the f32 stream (`cuda::norm::residual_add`; the same
/// numbers as a cast then an add) unless `RHO_FUSED_KERNELS` leaves out `norm`.
fn add_residual(x: &Tensor, d: &Tensor) -> Result<Tensor> {
    if x.dtype() == d.dtype() {
        x + d
    } else if x.dtype() == DType::F32 && crate::cuda::fused_enabled(crate::cuda::Fused::Norm) {
        crate::cuda::norm::residual_add(x, d)
    } else {
        x + d.to_dtype(x.dtype())?
    }
}

#[derive(Debug, Clone)]
enum Norm {
    Rms { w: Tensor, eps: f64 },
    Layer { w: Tensor, b: Tensor, eps: f64 },
    /// A norm whose weights were cast to the residual stream's dtype (f32 in evaluation of a
    /// bf16 / f16 model) at load: normalises in that dtype, its output rounded once to `out`.
    Cast { inner: Box<Norm>, out: DType },
}

impl Norm {
    fn rms(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Norm::Rms { w: vb.get(size, "weight")?, eps })
    }
    fn layer(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Norm::Layer { w: vb.get(size, "weight")?, b: vb.get(size, "bias")?, eps })
    }
    /// LayerNorm without gain or bias (OLMo-1): constant ones and zeros, not parameters.
    fn layer_no_affine(size: usize, eps: f64, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Norm::Layer { w: Tensor::ones(size, dtype, dev)?, b: Tensor::zeros(size, dtype, dev)?, eps })
    }
    /// The norm of `kind` over `size` features, its weights (if any) under `vb`.
    fn of_kind(kind: NormKind, vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        match kind {
            NormKind::Rms => Self::rms(vb, size, eps),
            NormKind::Layer => Self::layer(vb, size, eps),
            NormKind::LayerNoAffine => Self::layer_no_affine(size, eps, vb.dtype(), vb.device()),
        }
    }

    /// The norm taking its input in `dt` and returning the model's dtype (`Cast`), or itself
    /// where its weights are already in `dt`.
    fn with_input_dtype(self, dt: DType) -> Result<Self> {
        let (inner, out) = match self {
            Norm::Rms { w, eps } if w.dtype() != dt => (Norm::Rms { w: w.to_dtype(dt)?, eps }, w.dtype()),
            Norm::Layer { w, b, eps } if w.dtype() != dt => (Norm::Layer { w: w.to_dtype(dt)?, b: b.to_dtype(dt)?, eps }, w.dtype()),
            same => return Ok(same),
        };
        Ok(Norm::Cast { inner: Box::new(inner), out })
    }

    /// x: [..., hidden] -> [..., hidden]
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match (self, mode) {
            (Norm::Cast { inner, out }, _) => match (inner.as_ref(), mode) {
                // the f32 residual stream's RMSNorm, output rounded once: one op (CPU loops or
                // a CUDA kernel) instead of an f32 norm and a cast
                (Norm::Rms { w, eps }, Mode::Eval) if x.dtype() == DType::F32 && crate::cuda::fused_enabled(crate::cuda::Fused::Norm) => {
                    crate::cuda::norm::rms_norm_cast(x, w, *eps as f32, *out)
                }
                _ => inner.forward(x, mode)?.to_dtype(*out),
            },
            // bf16 / f16 on CPU: rho's op, x rs w in f32 with one rounding, as candle's CUDA
            // kernel computes it; candle-nn's CPU loop rounds rs to the dtype first, a
            // per-row scale error (docs/gpu.md, "bf16 against f32").
            (Norm::Rms { w, eps }, Mode::Eval) if x.device().is_cpu() && x.dtype() != DType::F32 => {
                crate::cuda::norm::rms_norm_train(x, w, *eps as f32)
            }
            (Norm::Rms { w, eps }, Mode::Eval) => candle_nn::ops::rms_norm(&x.contiguous()?, w, *eps as f32),
            (Norm::Rms { w, eps }, Mode::Train) => {
                let h = w.dim(0)?;
                if crate::cuda::fused_enabled(crate::cuda::Fused::Norm)
                    && (x.device().is_cpu() || h <= crate::cuda::norm::MAX_HIDDEN_CUDA)
                {
                    return crate::cuda::norm::rms_norm_train(x, w, *eps as f32);
                }
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(ms + *eps)?.sqrt()?)?.broadcast_mul(w)
            }
            (Norm::Layer { w, b, eps }, Mode::Eval) => {
                candle_nn::ops::layer_norm(&x.contiguous()?, w, b, *eps as f32)
            }
            (Norm::Layer { w, b, eps }, Mode::Train) => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                xc.broadcast_div(&(var + *eps)?.sqrt()?)?.broadcast_mul(w)?.broadcast_add(b)
            }
        }
    }
}

fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
    Ok(Linear::new(w, b))
}

/// GPT-2's Conv1D stores the weight as [in, out].
fn conv1d(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    let w = vb.get((in_dim, out_dim), "weight")?.t()?;
    let b = vb.get(out_dim, "bias")?;
    Ok(Linear::new(w, Some(b)))
}

#[derive(Debug, Clone)]
enum Qkv {
    /// Llama: separate projections.
    Separate { q: Linear, k: Linear, v: Linear },
    /// GPT-NeoX: one projection whose output is [heads, 3, head_dim].
    NeoxFused(Linear),
    /// GPT-2: one projection whose output is [3, heads, head_dim].
    Gpt2Fused(Linear),
}

#[derive(Debug, Clone)]
enum Mlp {
    /// down(act(gate(x)) * up(x))
    Gated { gate: Linear, up: Linear, down: Linear },
    /// proj(act(fc(x)))
    Plain { fc: Linear, proj: Linear },
}

#[derive(Debug, Clone)]
struct Block {
    /// The norms before attention and before the MLP (None: OLMo-2/3, whose norms are after).
    ln1: Option<Norm>,
    ln2: Option<Norm>,
    /// OLMo-2/3: the norms of the attention's and the MLP's outputs, before the residual add.
    post1: Option<Norm>,
    post2: Option<Norm>,
    /// Qwen3 (per head) and OLMo-2/3 (whole projection): RMSNorm of q and k before RoPE.
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    qkv: Qkv,
    o: Linear,
    mlp: Mlp,
    /// This layer's rotary tables, an index into `Transformer::ropes` (None: no RoPE).
    rope: Option<usize>,
    /// This layer's sliding window (`LayerSpec::window`).
    window: Option<usize>,
}

impl Block {
    /// A pre-norm block without q/k norms; `rope` and `window` are set from the config's
    /// `LayerSpec`s once every block is built.
    fn pre_norm(ln1: Norm, ln2: Norm, qkv: Qkv, o: Linear, mlp: Mlp) -> Self {
        Block { ln1: Some(ln1), ln2: Some(ln2), post1: None, post2: None, q_norm: None, k_norm: None, qkv, o, mlp, rope: None, window: None }
    }
}

/// A causal language model that returns logits at every position.
#[derive(Debug, Clone)]
pub struct Transformer {
    pub cfg: ModelConfig,
    embed: Embedding,
    pos_embed: Option<Embedding>,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Linear,
    /// [max_ctx, rotary_dim / 2] cos and sin tables, one pair per distinct RoPE of the layers
    /// (none for GPT-2; two for OLMo-3 where its sliding layers have their own).
    ropes: Vec<(Tensor, Tensor)>,
    pub mode: Mode,
    /// Attention through `cuda::flash_attention` (no [s, s] scores kept): on by default on
    /// CUDA for bf16/f16 with a head dim the kernel has, in `Mode::Train` only for the
    /// backward kernel's head dims (`FLASH_BWD_HEAD_DIMS`); on CPU always (`cuda::attn_cpu`).
    /// `RHO_FUSED_KERNELS` without `attention` turns it off (candle's composed attention);
    /// `with_flash_attention` sets it (tests).
    flash: bool,
    /// dtype of the residual stream (the embeddings, every residual add, the norms' inputs):
    /// f32 in evaluation when the model runs in bf16 / f16 (unless `RHO_RESIDUAL=model`),
    /// the model's dtype otherwise. The matmuls, attention and MLP stay in the model's dtype.
    residual: DType,
}

fn act(x: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::Silu => x.silu(),
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

impl Transformer {
    /// Build the model from a VarBuilder rooted at the checkpoint's top level
    /// (tensor names exactly as transformers saves them).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder, mode: Mode) -> Result<Self> {
        let (h, v, inter) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let half = matches!(vb.dtype(), DType::BF16 | DType::F16);
        let residual = if half && mode == Mode::Eval && residual_f32(std::env::var("RHO_RESIDUAL").ok().as_deref()).map_err(candle_core::Error::Msg)? {
            DType::F32
        } else {
            vb.dtype()
        };
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let dev = vb.device().clone();
        let t = match cfg.arch {
            Arch::Llama => {
                let m = vb.pp("model");
                let embed_w = m.get((v, h), "embed_tokens.weight")?;
                let eps = cfg.norm_eps;
                let norm = |vb: VarBuilder| Norm::of_kind(cfg.norm, vb, h, eps);
                let mut blocks = Vec::with_capacity(cfg.num_layers);
                for i in 0..cfg.num_layers {
                    let l = m.pp(format!("layers.{i}"));
                    let a = l.pp("self_attn");
                    let mlp = l.pp("mlp");
                    // OLMo-2/3 name their two norms by what they follow: the attention's output
                    // (`post_attention_layernorm`) and the MLP's (`post_feedforward_layernorm`)
                    let (ln1, ln2, post1, post2) = if cfg.post_norm {
                        (None, None, Some(norm(l.pp("post_attention_layernorm"))?), Some(norm(l.pp("post_feedforward_layernorm"))?))
                    } else {
                        (Some(norm(l.pp("input_layernorm"))?), Some(norm(l.pp("post_attention_layernorm"))?), None, None)
                    };
                    let (qn, kn) = match cfg.qk_norm {
                        QkNorm::None => (0, 0),
                        QkNorm::PerHead => (hd, hd),
                        QkNorm::Whole => (nh * hd, nkv * hd),
                    };
                    let (q_norm, k_norm) = if qn > 0 {
                        (Some(Norm::rms(a.pp("q_norm"), qn, eps)?), Some(Norm::rms(a.pp("k_norm"), kn, eps)?))
                    } else {
                        (None, None)
                    };
                    blocks.push(Block {
                        ln1,
                        ln2,
                        post1,
                        post2,
                        q_norm,
                        k_norm,
                        qkv: Qkv::Separate {
                            q: linear(a.pp("q_proj"), h, nh * hd, cfg.attention_bias)?,
                            k: linear(a.pp("k_proj"), h, nkv * hd, cfg.attention_bias)?,
                            v: linear(a.pp("v_proj"), h, nkv * hd, cfg.attention_bias)?,
                        },
                        o: linear(a.pp("o_proj"), nh * hd, h, cfg.attention_out_bias)?,
                        mlp: Mlp::Gated {
                            gate: linear(mlp.pp("gate_proj"), h, inter, cfg.mlp_bias)?,
                            up: linear(mlp.pp("up_proj"), h, inter, cfg.mlp_bias)?,
                            down: linear(mlp.pp("down_proj"), inter, h, cfg.mlp_bias)?,
                        },
                        rope: None,
                        window: None,
                    });
                }
                let lm_head = if cfg.tie_word_embeddings && !vb.contains_tensor("lm_head.weight") {
                    Linear::new(embed_w.clone(), None)
                } else {
                    linear(vb.pp("lm_head"), h, v, false)?
                };
                Transformer {
                    embed: Embedding::new(embed_w, h),
                    pos_embed: None,
                    blocks,
                    norm: norm(m.pp("norm"))?,
                    lm_head,
                    ropes: Vec::new(),
                    cfg: cfg.clone(),
                    mode,
                    flash: false,
                    residual,
                }
            }
            Arch::GptNeox => {
                let m = vb.pp("gpt_neox");
                let embed_w = m.get((v, h), "embed_in.weight")?;
                let mut blocks = Vec::with_capacity(cfg.num_layers);
                for i in 0..cfg.num_layers {
                    let l = m.pp(format!("layers.{i}"));
                    let a = l.pp("attention");
                    let mlp = l.pp("mlp");
                    blocks.push(Block::pre_norm(
                        Norm::layer(l.pp("input_layernorm"), h, cfg.norm_eps)?,
                        Norm::layer(l.pp("post_attention_layernorm"), h, cfg.norm_eps)?,
                        Qkv::NeoxFused(linear(a.pp("query_key_value"), h, 3 * h, cfg.attention_bias)?),
                        linear(a.pp("dense"), h, h, cfg.attention_out_bias)?,
                        Mlp::Plain {
                            fc: linear(mlp.pp("dense_h_to_4h"), h, inter, cfg.mlp_bias)?,
                            proj: linear(mlp.pp("dense_4h_to_h"), inter, h, cfg.mlp_bias)?,
                        },
                    ));
                }
                let lm_head = if cfg.tie_word_embeddings && !vb.contains_tensor("embed_out.weight") {
                    Linear::new(embed_w.clone(), None)
                } else {
                    linear(vb.pp("embed_out"), h, v, false)?
                };
                Transformer {
                    embed: Embedding::new(embed_w, h),
                    pos_embed: None,
                    blocks,
                    norm: Norm::layer(m.pp("final_layer_norm"), h, cfg.norm_eps)?,
                    lm_head,
                    ropes: Vec::new(),
                    cfg: cfg.clone(),
                    mode,
                    flash: false,
                    residual,
                }
            }
            Arch::Gpt2 => {
                // Saved GPT2LMHeadModel uses `transformer.`; a bare GPT2Model has no prefix.
                let m = if vb.contains_tensor("wte.weight") { vb.clone() } else { vb.pp("transformer") };
                let embed_w = m.get((v, h), "wte.weight")?;
                let pos_w = m.get((cfg.max_position_embeddings, h), "wpe.weight")?;
                let mut blocks = Vec::with_capacity(cfg.num_layers);
                for i in 0..cfg.num_layers {
                    let l = m.pp(format!("h.{i}"));
                    blocks.push(Block::pre_norm(
                        Norm::layer(l.pp("ln_1"), h, cfg.norm_eps)?,
                        Norm::layer(l.pp("ln_2"), h, cfg.norm_eps)?,
                        Qkv::Gpt2Fused(conv1d(l.pp("attn.c_attn"), h, 3 * h)?),
                        conv1d(l.pp("attn.c_proj"), h, h)?,
                        Mlp::Plain {
                            fc: conv1d(l.pp("mlp.c_fc"), h, inter)?,
                            proj: conv1d(l.pp("mlp.c_proj"), inter, h)?,
                        },
                    ));
                }
                let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
                    Linear::new(embed_w.clone(), None)
                } else {
                    linear(vb.pp("lm_head"), h, v, false)?
                };
                Transformer {
                    embed: Embedding::new(embed_w, h),
                    pos_embed: Some(Embedding::new(pos_w, h)),
                    blocks,
                    norm: Norm::layer(m.pp("ln_f"), h, cfg.norm_eps)?,
                    lm_head,
                    ropes: Vec::new(),
                    cfg: cfg.clone(),
                    mode,
                    flash: false,
                    residual,
                }
            }
        };
        // each layer's window and RoPE; one pair of tables per distinct RoPE
        let mut t = t;
        let mut ropes: Vec<(&Rope, (Tensor, Tensor))> = Vec::new();
        for (blk, spec) in t.blocks.iter_mut().zip(&cfg.layers) {
            blk.window = spec.window;
            blk.rope = match &spec.rope {
                Some(r) if cfg.rotary_dim > 0 => Some(match ropes.iter().position(|(x, _)| *x == r) {
                    Some(i) => i,
                    None => {
                        let inv = r.inv_freq(cfg.rotary_dim);
                        ropes.push((r, rope_tables(&inv, r.attention_scaling(), cfg.context_len(), vb.dtype(), &dev)?));
                        ropes.len() - 1
                    }
                }),
                _ => None,
            };
        }
        let ropes: Vec<(Tensor, Tensor)> = ropes.into_iter().map(|(_, t)| t).collect();
        // CUDA: the flash kernels (bf16 / f16, their head dims); CPU: rho's attention op
        // (`cuda::attn_cpu`, any dtype and head dim), which keeps no [b, h, s, s] tensors
        let flash = crate::cuda::fused_enabled(crate::cuda::Fused::Attention)
            && ((dev.is_cuda() && matches!(vb.dtype(), DType::BF16 | DType::F16) && crate::cuda::FLASH_HEAD_DIMS.contains(&hd))
                || dev.is_cpu());
        let t = if residual == t.dtype() {
            t
        } else {
            let blocks = t
                .blocks
                .into_iter()
                .map(|blk| {
                    let cast = |n: Option<Norm>| n.map(|n| n.with_input_dtype(residual)).transpose();
                    Ok(Block { ln1: cast(blk.ln1)?, ln2: cast(blk.ln2)?, ..blk })
                })
                .collect::<Result<Vec<_>>>()?;
            Transformer { blocks, norm: t.norm.with_input_dtype(residual)?, ..t }
        };
        Ok(Transformer { ropes, flash, ..t })
    }

    /// Use (or not) the flash attention op, whatever the device: tests run the whole model
    /// through the op's CPU implementation and through candle's composed attention, to check
    /// the wiring (layouts, RoPE, fused projections) that the CUDA kernel gets.
    pub fn with_flash_attention(mut self, on: bool) -> Self {
        self.flash = on;
        self
    }

    /// Whether the forward goes through the flash attention op.
    pub fn uses_flash_attention(&self) -> bool {
        self.flash
            && (self.mode == Mode::Eval || self.device().is_cpu() || crate::cuda::FLASH_BWD_HEAD_DIMS.contains(&self.cfg.head_dim))
    }

    pub fn device(&self) -> &Device {
        self.embed.embeddings().device()
    }

    /// The residual stream's dtype (f32 in evaluation of a bf16 / f16 model unless
    /// `RHO_RESIDUAL=model`; the model's dtype otherwise).
    pub fn residual_dtype(&self) -> DType {
        self.residual
    }

    pub fn dtype(&self) -> DType {
        self.embed.embeddings().dtype()
    }

    /// input_ids: [batch, seq] (u32), positions 0..seq. Returns logits [batch, seq, vocab]
    /// in the model's dtype. Rows are causal: padding appended on the right of a row
    /// does not change the logits of the positions before it.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        if s > self.cfg.context_len() {
            candle_core::bail!(
                "sequence of {s} tokens is longer than the model's context of {}",
                self.cfg.context_len()
            );
        }
        let mut x = self.embed.forward(input_ids)?.to_dtype(self.residual)?;
        if let Some(pe) = &self.pos_embed {
            let pos = Tensor::arange(0u32, s as u32, x.device())?;
            x = x.broadcast_add(&pe.forward(&pos)?.to_dtype(self.residual)?)?;
        }
        // the flash path masks inside its kernel (each layer's window too): no [s, s] mask built
        // on the host and uploaded; the composed path builds one mask per distinct window
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for blk in &self.blocks {
            let mask = if self.uses_flash_attention() {
                None
            } else {
                let i = match masks.iter().position(|(w, _)| *w == blk.window) {
                    Some(i) => i,
                    None => {
                        masks.push((blk.window, crate::cuda::mask::causal_mask(s, blk.window, self.dtype(), x.device())?));
                        masks.len() - 1
                    }
                };
                Some(&masks[i].1)
            };
            x = self.block(blk, &x, mask, b, s)?;
        }
        let x = self.norm.forward(&x, self.mode)?;
        self.lm_head.forward(&x)
    }

    fn block(&self, blk: &Block, x: &Tensor, mask: Option<&Tensor>, b: usize, s: usize) -> Result<Tensor> {
        // x in the residual dtype; the norms take it and return the model's dtype, the
        // sublayers' outputs are added in the residual dtype
        let h1 = self.sublayer_input(blk.ln1.as_ref(), x)?;
        let attn = self.post(blk.post1.as_ref(), self.attention(blk, &h1, mask, b, s)?)?;
        if self.cfg.parallel_residual {
            let h2 = self.sublayer_input(blk.ln2.as_ref(), x)?;
            let m = self.mlp(&blk.mlp, &h2)?;
            add_residual(&add_residual(x, &attn)?, &m)
        } else {
            let x = add_residual(x, &attn)?;
            let h2 = self.sublayer_input(blk.ln2.as_ref(), &x)?;
            let m = self.post(blk.post2.as_ref(), self.mlp(&blk.mlp, &h2)?)?;
            add_residual(&x, &m)
        }
    }

    /// A sublayer's input: the residual stream through its norm, or (OLMo-2/3, no norm
    /// before) the stream itself in the model's dtype.
    fn sublayer_input(&self, norm: Option<&Norm>, x: &Tensor) -> Result<Tensor> {
        match norm {
            Some(n) => n.forward(x, self.mode),
            None => x.to_dtype(self.dtype()),
        }
    }

    /// A sublayer's output through its post-norm (OLMo-2/3), or as it is.
    fn post(&self, norm: Option<&Norm>, y: Tensor) -> Result<Tensor> {
        match norm {
            Some(n) => n.forward(&y, self.mode),
            None => Ok(y),
        }
    }



    fn mlp(&self, mlp: &Mlp, x: &Tensor) -> Result<Tensor> {
        match mlp {
            Mlp::Gated { gate, up, down } => {
                if self.cfg.activation == Activation::Silu && crate::cuda::fused_enabled(crate::cuda::Fused::Swiglu) {
                    // one pass forward and one backward instead of silu, mul and their gradients
                    return down.forward(&crate::cuda::swiglu::swiglu(&gate.forward(x)?, &up.forward(x)?)?);
                }
                let g = act(&gate.forward(x)?, self.cfg.activation)?;
                down.forward(&(g * up.forward(x)?)?)
            }
            Mlp::Plain { fc, proj } => proj.forward(&act(&fc.forward(x)?, self.cfg.activation)?),
        }
    }

    /// x: [b, s, hidden] -> [b, s, hidden]
    fn attention(&self, blk: &Block, x: &Tensor, mask: Option<&Tensor>, b: usize, s: usize) -> Result<Tensor> {
        let Some(mask) = mask else {
            return self.attention_flash(blk, x, b, s);
        };
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        // q: [b, nh, s, hd], k/v: [b, nkv, s, hd]
        let (q, k, v) = self.qkv_rope(blk, x, b, s)?;
        let (q, k, v) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?);
        let k = repeat_kv(k.contiguous()?, nh / nkv)?;
        let v = repeat_kv(v.contiguous()?, nh / nkv)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.contiguous()?.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs = match self.mode {
            Mode::Eval => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Train => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let out = probs.matmul(&v)?; // [b, nh, s, hd]
        let out = out.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        blk.o.forward(&out)
    }
}

impl Transformer {
    /// The flash path: q, k, v stay [b, s, heads, hd] as the projections produce them
    /// (strided views of a fused projection are passed as they are), RoPE in that layout,
    /// one kernel for scores, softmax and values. x: [b, s, hidden] -> [b, s, hidden].
    fn attention_flash(&self, blk: &Block, x: &Tensor, b: usize, s: usize) -> Result<Tensor> {
        let (nh, hd) = (self.cfg.num_heads, self.cfg.head_dim);
        let (q, k, v) = self.qkv_rope(blk, x, b, s)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let out = match self.mode {
            Mode::Eval => crate::cuda::flash_attention(&q, &k, &v, scale, blk.window)?, // [b, s, nh, hd]
            Mode::Train => crate::cuda::flash_attention_train(&q, &k, &v, scale, blk.window)?,
        };
        blk.o.forward(&out.reshape((b, s, nh * hd))?)
    }
}

impl Transformer {
    /// q [b, s, nh, hd], k and v [b, s, nkv, hd] as the projections produce them (strided
    /// views of a fused projection, no copies), RoPE applied to q and k.
    fn qkv_rope(&self, blk: &Block, x: &Tensor, b: usize, s: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let (q, k, v) = match &blk.qkv {
            Qkv::Separate { q, k, v } => {
                let (mut q, mut k, mut v) = (q.forward(x)?, k.forward(x)?, v.forward(x)?);
                if let Some(c) = self.cfg.clip_qkv {
                    (q, k, v) = (q.clamp(-c, c)?, k.clamp(-c, c)?, v.clamp(-c, c)?);
                }
                // the q/k norms over the whole projection (OLMo-2/3) or each head (Qwen3)
                let whole = self.cfg.qk_norm == QkNorm::Whole;
                let qk_norm = |n: &Option<Norm>, t: Tensor| -> Result<Tensor> {
                    match n {
                        Some(n) => n.forward(&t, self.mode),
                        None => Ok(t),
                    }
                };
                if whole {
                    (q, k) = (qk_norm(&blk.q_norm, q)?, qk_norm(&blk.k_norm, k)?);
                }
                let (q, k, v) = (q.reshape((b, s, nh, hd))?, k.reshape((b, s, nkv, hd))?, v.reshape((b, s, nkv, hd))?);
                if whole {
                    (q, k, v)
                } else {
                    (qk_norm(&blk.q_norm, q)?, qk_norm(&blk.k_norm, k)?, v)
                }
            }
            Qkv::NeoxFused(lin) => {
                let qkv = lin.forward(x)?.reshape((b, s, nh, 3 * hd))?;
                (qkv.narrow(3, 0, hd)?, qkv.narrow(3, hd, hd)?, qkv.narrow(3, 2 * hd, hd)?)
            }
            Qkv::Gpt2Fused(lin) => {
                let qkv = lin.forward(x)?.reshape((b, s, 3, nh, hd))?;
                let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2);
                (part(0)?, part(1)?, part(2)?)
            }
        };
        match blk.rope.map(|i| &self.ropes[i]) {
            Some((cos, sin)) => {
                let cos = cos.narrow(0, 0, s)?;
                let sin = sin.narrow(0, 0, s)?;
                let rd = self.cfg.rotary_dim;
                Ok((rope_bshd(&q, &cos, &sin, rd, self.mode)?, rope_bshd(&k, &cos, &sin, rd, self.mode)?, v))
            }
            None => Ok((q, k, v)),
        }
    }
}

/// RoPE (rotate-half) on the first `rotary_dim` dims of x: [b, s, h, hd]; cos, sin [s, rotary_dim / 2].
/// rho's op (`cuda::rope`: one pass each way, strided input read in place, any device) unless
/// `RHO_FUSED_KERNELS` leaves it out; then Eval: candle-nn's fused kernel, Train: basic ops
/// (they have a backward).
fn rope_bshd(x: &Tensor, cos: &Tensor, sin: &Tensor, rotary_dim: usize, mode: Mode) -> Result<Tensor> {
    if crate::cuda::fused_enabled(crate::cuda::Fused::Rope) {
        return crate::cuda::rope::rope(x, cos, sin);
    }
    let rope = |t: &Tensor| -> Result<Tensor> {
        match mode {
            Mode::Eval => candle_nn::rotary_emb::rope_thd(&t.contiguous()?, cos, sin),
            Mode::Train => {
                let (s, half) = cos.dims2()?;
                let cos = Tensor::cat(&[cos, cos], 1)?.reshape((s, 1, 2 * half))?;
                let sin = Tensor::cat(&[sin, sin], 1)?.reshape((s, 1, 2 * half))?;
                let rotated = Tensor::cat(&[&t.narrow(3, half, half)?.neg()?, &t.narrow(3, 0, half)?], 3)?;
                t.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
            }
        }
    };
    let hd = x.dim(3)?;
    if rotary_dim == hd {
        rope(x)
    } else {
        let rot = rope(&x.narrow(3, 0, rotary_dim)?)?;
        Tensor::cat(&[&rot, &x.narrow(3, rotary_dim, hd - rotary_dim)?], 3)
    }
}

/// cos and sin tables [ctx, rotary_dim / 2] for positions 0..ctx, from the inverse frequencies,
/// each value times `scale` (YaRN's attention factor; 1 otherwise).
fn rope_tables(inv: &[f32], scale: f32, ctx: usize, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let half = inv.len();
    let mut cos = Vec::with_capacity(ctx * half);
    let mut sin = Vec::with_capacity(ctx * half);
    for p in 0..ctx {
        for &f in inv {
            // transformers multiplies in float32, then takes cos/sin in float32 (and scales them).
            let a = p as f32 * f;
            cos.push(a.cos() * scale);
            sin.push(a.sin() * scale);
        }
    }
    let cos = Tensor::from_vec(cos, (ctx, half), dev)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (ctx, half), dev)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// [b, nkv, s, hd] -> [b, nkv * n_rep, s, hd], each kv head repeated n_rep times in place.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, nkv, s, hd) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, nkv, n_rep, s, hd))?.reshape((b, nkv * n_rep, s, hd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Evaluation's RMSNorm in bf16 / f16 on the CPU rounds once, x rs w computed in f32 (as
    /// candle's CUDA kernel does), not rs first to the dtype as candle-nn's CPU loop does.
    #[test]
    fn eval_rms_norm_in_half_precision_on_cpu_rounds_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (rows, h) = (16, 96);
        let xs = crate::cuda::check::normal(&mut rng, rows * h, 3.0);
        let ws: Vec<f32> = crate::cuda::check::normal(&mut rng, h, 0.5).iter().map(|v| 1.0 + v).collect();
        for dt in [DType::BF16, DType::F16] {
            let x = Tensor::from_vec(xs.clone(), (rows, h), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let w = Tensor::from_vec(ws.clone(), h, &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let eps = 1e-5;
            let got = Norm::Rms { w: w.clone(), eps }.forward(&x, Mode::Eval).unwrap();
            let (xf, wf) = (x.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(), w.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap());
            let want: Vec<Vec<f32>> = xf
                .iter()
                .map(|r| {
                    let rs = 1.0 / (r.iter().map(|v| v * v).sum::<f32>() / h as f32 + eps as f32).sqrt();
                    r.iter().zip(&wf).map(|(v, w)| v * rs * w).collect()
                })
                .collect();
            let want = Tensor::new(want, &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let eq = got.eq(&want).unwrap().to_dtype(DType::F32).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(eq, 1.0, "{dt:?}: every element x rs w rounded once");
        }
    }

    /// Evaluation's f32 residual stream: the cast norm computes x rs w in f32 and rounds once
    /// to the model's dtype (the same numbers as the f32 norm then a cast), and the add of a
    /// sublayer's output is the cast then the f32 add, bit for bit.
    #[test]
    fn f32_residual_stream_norm_and_add_are_the_composed_ops_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (rows, h) = (12, 104);
        let x = Tensor::from_vec(crate::cuda::check::normal(&mut rng, rows * h, 5.0), (rows, h), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(crate::cuda::check::normal(&mut rng, h, 1.0), h, &Device::Cpu).unwrap();
        let d = Tensor::from_vec(crate::cuda::check::normal(&mut rng, rows * h, 2.0), (rows, h), &Device::Cpu).unwrap();
        let same = |a: &Tensor, b: &Tensor| a.eq(b).unwrap().to_dtype(DType::F32).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        for dt in [DType::BF16, DType::F16] {
            let wd = w.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
            let norm = Norm::Rms { w: w.to_dtype(dt).unwrap(), eps: 1e-5 }.with_input_dtype(DType::F32).unwrap();
            let got = norm.forward(&x, Mode::Eval).unwrap();
            assert_eq!(got.dtype(), dt);
            let want = crate::cuda::norm::rms_norm_train(&x, &wd, 1e-5).unwrap().to_dtype(dt).unwrap();
            assert_eq!(same(&got, &want), 1.0, "{dt:?}: norm");
            let dd = d.to_dtype(dt).unwrap();
            let got = add_residual(&x, &dd).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(same(&got, &(&x + dd.to_dtype(DType::F32).unwrap()).unwrap()), 1.0, "{dt:?}: add");
        }
    }
}
