//! `config.json` as transformers 4.x and 5.x write it, normalised into one struct.
//!
//! 4.x keeps rotary settings at top level (`rope_theta`, `rotary_pct`, `rotary_emb_base`,
//! `rope_scaling`); 5.x nests them in `rope_parameters` (`rope_theta`,
//! `partial_rotary_factor`, `rope_type`, ...). Both are read; where both appear,
//! `rope_parameters` wins.

use crate::error::{Error, Result, WithPath};
use serde_json::Value;
use std::path::Path;

/// The model families we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, TinyLlama, Mistral (no sliding window inside the context), Qwen2.
    Llama,
    /// GPT-NeoX / Pythia.
    GptNeox,
    /// GPT-2.
    Gpt2,
}

/// Activation functions used by the supported families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Exact erf GELU (`gelu`).
    Gelu,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(s: &str, path: &Path) -> Result<Self> {
        Ok(match s {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(Error::file(path, format!("unsupported activation `{other}`"))),
        })
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// `model_type` as written in config.json.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    /// Longest context the model was trained with.
    pub max_position_embeddings: usize,
    /// Mistral-style sliding window; we cap the context at it, which keeps attention exact.
    pub sliding_window: Option<usize>,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Number of dimensions of each head that are rotated (partial rotary in GPT-NeoX).
    pub rotary_dim: usize,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2, GPT-NeoX, GPT-2).
    pub attention_bias: bool,
    /// Bias on the attention output projection.
    pub attention_out_bias: bool,
    pub mlp_bias: bool,
    /// GPT-NeoX parallel residual.
    pub parallel_residual: bool,
    pub activation: Activation,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written, if any.
    pub dtype: Option<String>,
}

/// Largest accepted width, depth, head count, head size or vocabulary: far past any
/// real model (the largest vocabularies are ~2^18), small enough that products of two
/// sizes never overflow and that nothing is allocated from an absurd config.json.
pub const MAX_DIM: usize = 1 << 24;
/// Largest accepted context length (`max_position_embeddings`, `sliding_window`).
pub const MAX_POSITIONS: usize = 1 << 30;

fn get_usize(v: &Value, keys: &[&str]) -> Option<usize> {
    keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_u64()).map(|x| x as usize))
}
fn get_f64(v: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_f64()))
}
fn get_bool(v: &Value, keys: &[&str]) -> Option<bool> {
    keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_bool()))
}
fn get_str<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_str()))
}
/// `eos_token_id` may be an int or a list of ints.
fn get_token_id(v: &Value, key: &str) -> Option<u32> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        Value::Array(a) => a.first().and_then(|x| x.as_u64()).and_then(|x| u32::try_from(x).ok()),
        _ => None,
    }
}

impl ModelConfig {
    /// Read and parse `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_path(path)?;
        let v: Value = serde_json::from_slice(&bytes).with_path(path)?;
        Self::from_value(&v, path)
    }

    /// Parse a config already read as JSON; `path` is only used in error messages.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::file(path, "config.json is not a JSON object"));
        }
        let model_type = get_str(v, &["model_type"])
            .ok_or_else(|| Error::file(path, "no `model_type` in config.json"))?
            .to_string();
        let arch = match model_type.as_str() {
            "llama" | "mistral" | "qwen2" => Arch::Llama,
            "gpt_neox" => Arch::GptNeox,
            "gpt2" => Arch::Gpt2,
            other => {
                return Err(Error::file(
                    path,
                    format!(
                        "unknown model_type `{other}`: supported are llama, mistral, qwen2, gpt_neox, gpt2"
                    ),
                ))
            }
        };
        let need = |keys: &[&str]| -> Result<usize> {
            match get_usize(v, keys) {
                Some(0) => Err(Error::file(path, format!("`{}` must be positive", keys[0]))),
                Some(x) if x > MAX_POSITIONS => {
                    Err(Error::file(path, format!("`{}` = {x} is implausibly large", keys[0])))
                }
                Some(x) => Ok(x),
                None => Err(Error::file(path, format!("missing `{}` in config.json", keys[0]))),
            }
        };
        let rp = v.get("rope_parameters").filter(|x| x.is_object());
        let rs = v.get("rope_scaling").filter(|x| x.is_object());
        let rope_src = |keys: &[&str]| -> Option<f64> {
            rp.and_then(|r| get_f64(r, keys)).or_else(|| get_f64(v, keys))
        };
        let dtype = get_str(v, &["dtype", "torch_dtype"]).map(|s| s.to_string());
        let bos_token_id = get_token_id(v, "bos_token_id");
        let eos_token_id = get_token_id(v, "eos_token_id");
        let vocab_size = need(&["vocab_size"])?;

        let cfg = match arch {
            Arch::Llama => {
                let hidden_size = need(&["hidden_size"])?;
                let num_heads = need(&["num_attention_heads"])?;
                let num_kv_heads = get_usize(v, &["num_key_value_heads"]).unwrap_or(num_heads);
                let head_dim = match get_usize(v, &["head_dim"]) {
                    Some(h) if h > 0 => h,
                    _ => hidden_size / num_heads,
                };
                let is_qwen = model_type == "qwen2";
                let attention_bias = get_bool(v, &["attention_bias"]).unwrap_or(is_qwen);
                let sliding_window = if model_type == "mistral"
                    || (is_qwen && get_bool(v, &["use_sliding_window"]).unwrap_or(false))
                {
                    get_usize(v, &["sliding_window"])
                } else {
                    None
                };
                ModelConfig {
                    arch,
                    vocab_size,
                    hidden_size,
                    num_layers: need(&["num_hidden_layers"])?,
                    num_heads,
                    num_kv_heads,
                    head_dim,
                    intermediate_size: need(&["intermediate_size"])?,
                    max_position_embeddings: get_usize(v, &["max_position_embeddings"]).unwrap_or(2048),
                    sliding_window,
                    norm_eps: get_f64(v, &["rms_norm_eps"]).unwrap_or(1e-6),
                    rope_theta: rope_src(&["rope_theta"]).unwrap_or(10000.0),
                    rotary_dim: head_dim,
                    rope_scaling: Self::rope_scaling(rp.or(rs), path)?,
                    tie_word_embeddings: get_bool(v, &["tie_word_embeddings"]).unwrap_or(false),
                    attention_bias,
                    // Qwen2 has bias on q/k/v only; Llama's `attention_bias` covers o_proj too.
                    attention_out_bias: attention_bias && !is_qwen,
                    mlp_bias: get_bool(v, &["mlp_bias"]).unwrap_or(false),
                    parallel_residual: false,
                    activation: Activation::parse(get_str(v, &["hidden_act"]).unwrap_or("silu"), path)?,
                    bos_token_id,
                    eos_token_id,
                    dtype,
                    model_type,
                }
            }
            Arch::GptNeox => {
                let hidden_size = need(&["hidden_size"])?;
                let num_heads = need(&["num_attention_heads"])?;
                let head_dim = hidden_size / num_heads;
                let pct = rope_src(&["partial_rotary_factor", "rotary_pct"]).unwrap_or(1.0);
                if !(0.0..=1.0).contains(&pct) {
                    return Err(Error::file(path, format!("rotary_pct {pct} is not in [0, 1]")));
                }
                let rotary_dim = (head_dim as f64 * pct) as usize;
                let bias = get_bool(v, &["attention_bias"]).unwrap_or(true);
                ModelConfig {
                    arch,
                    vocab_size,
                    hidden_size,
                    num_layers: need(&["num_hidden_layers"])?,
                    num_heads,
                    num_kv_heads: num_heads,
                    head_dim,
                    intermediate_size: need(&["intermediate_size"])?,
                    max_position_embeddings: get_usize(v, &["max_position_embeddings"]).unwrap_or(2048),
                    sliding_window: None,
                    norm_eps: get_f64(v, &["layer_norm_eps"]).unwrap_or(1e-5),
                    rope_theta: rope_src(&["rope_theta", "rotary_emb_base"]).unwrap_or(10000.0),
                    rotary_dim,
                    rope_scaling: Self::rope_scaling(rp.or(rs), path)?,
                    tie_word_embeddings: get_bool(v, &["tie_word_embeddings"]).unwrap_or(false),
                    attention_bias: bias,
                    attention_out_bias: bias,
                    mlp_bias: true,
                    parallel_residual: get_bool(v, &["use_parallel_residual"]).unwrap_or(true),
                    activation: Activation::parse(get_str(v, &["hidden_act"]).unwrap_or("gelu"), path)?,
                    bos_token_id,
                    eos_token_id,
                    dtype,
                    model_type,
                }
            }
            Arch::Gpt2 => {
                let hidden_size = need(&["n_embd", "hidden_size"])?;
                let num_heads = need(&["n_head", "num_attention_heads"])?;
                if get_bool(v, &["scale_attn_by_inverse_layer_idx"]).unwrap_or(false)
                    || get_bool(v, &["reorder_and_upcast_attn"]).unwrap_or(false)
                {
                    return Err(Error::file(
                        path,
                        "GPT-2 options scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported",
                    ));
                }
                ModelConfig {
                    arch,
                    vocab_size,
                    hidden_size,
                    num_layers: need(&["n_layer", "num_hidden_layers"])?,
                    num_heads,
                    num_kv_heads: num_heads,
                    head_dim: hidden_size / num_heads,
                    intermediate_size: get_usize(v, &["n_inner"]).unwrap_or(4 * hidden_size),
                    max_position_embeddings: need(&["n_positions", "max_position_embeddings"])?,
                    sliding_window: None,
                    norm_eps: get_f64(v, &["layer_norm_epsilon"]).unwrap_or(1e-5),
                    rope_theta: 0.0,
                    rotary_dim: 0,
                    rope_scaling: RopeScaling::None,
                    tie_word_embeddings: get_bool(v, &["tie_word_embeddings"]).unwrap_or(true),
                    attention_bias: true,
                    attention_out_bias: true,
                    mlp_bias: true,
                    parallel_residual: false,
                    activation: Activation::parse(
                        get_str(v, &["activation_function"]).unwrap_or("gelu_new"),
                        path,
                    )?,
                    bos_token_id,
                    eos_token_id,
                    dtype,
                    model_type,
                }
            }
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn rope_scaling(r: Option<&Value>, path: &Path) -> Result<RopeScaling> {
        let Some(r) = r else { return Ok(RopeScaling::None) };
        let ty = get_str(r, &["rope_type", "type"]).unwrap_or("default");
        let factor = get_f64(r, &["factor"]);
        Ok(match ty {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: factor.ok_or_else(|| Error::file(path, "linear rope scaling without `factor`"))?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor.ok_or_else(|| Error::file(path, "llama3 rope scaling without `factor`"))?,
                low_freq_factor: get_f64(r, &["low_freq_factor"]).unwrap_or(1.0),
                high_freq_factor: get_f64(r, &["high_freq_factor"]).unwrap_or(4.0),
                original_max_position_embeddings: get_f64(r, &["original_max_position_embeddings"])
                    .unwrap_or(8192.0),
            },
            other => {
                return Err(Error::file(
                    path,
                    format!("unsupported rope type `{other}` (supported: default, linear, llama3)"),
                ))
            }
        })
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::file(path, m));
        for (name, x, max) in [
            ("vocab_size", self.vocab_size, MAX_DIM),
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("num_hidden_layers", self.num_layers, MAX_DIM),
            ("num_attention_heads", self.num_heads, MAX_DIM),
            ("num_key_value_heads", self.num_kv_heads, MAX_DIM),
            ("head_dim", self.head_dim, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
            ("sliding_window", self.sliding_window.unwrap_or(0), MAX_POSITIONS),
        ] {
            if x > max {
                return bad(format!("`{name}` = {x} is implausibly large (at most {max} is accepted)"));
            }
        }
        if self.num_heads == 0 || self.head_dim == 0 {
            return bad("attention heads and head_dim must be positive".into());
        }
        if self.arch != Arch::Llama && self.hidden_size % self.num_heads != 0 {
            return bad(format!(
                "hidden size {} is not divisible by {} heads",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.rotary_dim % 2 != 0 {
            return bad(format!("rotary dimension {} is odd", self.rotary_dim));
        }
        Ok(())
    }

    /// The longest window we score in one forward pass: the model's context,
    /// capped at a sliding window when there is one (keeping attention exact).
    pub fn context_len(&self) -> usize {
        match self.sliding_window {
            Some(w) if w > 0 && w < self.max_position_embeddings => w,
            _ => self.max_position_embeddings,
        }
    }

    /// Inverse RoPE frequencies, one per rotated pair, with scaling applied (as transformers).
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.rotary_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| {
                // transformers computes this in float32.
                let e = (2 * i) as f32 / d as f32;
                1.0 / (self.rope_theta as f32).powf(e) as f64
            })
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base.iter().map(|&x| x as f32).collect(),
            RopeScaling::Linear { factor } => base.iter().map(|&x| (x / factor) as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let low_wl = original_max_position_embeddings / low_freq_factor;
                let high_wl = original_max_position_embeddings / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wl = 2.0 * std::f64::consts::PI / f;
                        let v = if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let smooth = (original_max_position_embeddings / wl - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        v as f32
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> ModelConfig {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/configs").join(name);
        ModelConfig::from_file(&p).unwrap()
    }

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_value(&serde_json::from_str(json).unwrap(), Path::new("x/config.json"))
    }

    #[test]
    fn llama_v4_and_v5_agree() {
        let (a, b) = (fixture("llama_v4.json"), fixture("llama_v5.json"));
        assert_eq!(a.arch, Arch::Llama);
        assert_eq!((a.num_heads, a.num_kv_heads, a.head_dim), (32, 4, 64));
        assert_eq!(a.rope_theta, 10000.0);
        assert_eq!(a.rotary_dim, 64);
        assert_eq!(a.eos_token_id, Some(2));
        assert_eq!(
            (a.vocab_size, a.hidden_size, a.num_layers, a.num_kv_heads, a.rope_theta, a.rotary_dim),
            (b.vocab_size, b.hidden_size, b.num_layers, b.num_kv_heads, b.rope_theta, b.rotary_dim)
        );
    }

    #[test]
    fn neox_v4_and_v5_agree() {
        let (a, b) = (fixture("neox_v4.json"), fixture("neox_v5.json"));
        assert_eq!(a.arch, Arch::GptNeox);
        assert_eq!(a.head_dim, 64);
        assert_eq!(a.rotary_dim, 16, "rotary_pct 0.25 of 64");
        assert!(a.parallel_residual);
        assert_eq!((b.rotary_dim, b.rope_theta, b.parallel_residual), (a.rotary_dim, a.rope_theta, true));
    }

    #[test]
    fn gpt2_defaults() {
        let c = fixture("gpt2.json");
        assert_eq!(c.arch, Arch::Gpt2);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.intermediate_size, 4 * c.hidden_size);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.rotary_dim, 0);
    }

    #[test]
    fn rope_parameters_win_over_top_level() {
        let c = parse(r#"{"model_type":"gpt_neox","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_hidden_layers":1,"intermediate_size":8,"rotary_pct":1.0,"rotary_emb_base":5,
            "rope_parameters":{"rope_theta":500000,"partial_rotary_factor":0.5,"rope_type":"default"}}"#)
        .unwrap();
        assert_eq!((c.rope_theta, c.rotary_dim), (500000.0, 8));
    }

    #[test]
    fn llama3_scaling_and_mistral_window() {
        let c = parse(r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_hidden_layers":1,"intermediate_size":8,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192}}"#)
        .unwrap();
        let inv = c.inv_freq();
        assert_eq!(inv.len(), 8);
        // The highest frequency is untouched, the lowest divided by the factor.
        let plain: Vec<f32> = (0..8).map(|i| 1.0 / 500000f32.powf(2.0 * i as f32 / 16.0)).collect();
        assert_eq!(inv[0], plain[0]);
        assert!((inv[7] - plain[7] / 32.0).abs() < 1e-12);
        let m = parse(r#"{"model_type":"mistral","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_key_value_heads":2,"num_hidden_layers":1,"intermediate_size":8,"max_position_embeddings":32768,
            "sliding_window":4096}"#)
        .unwrap();
        assert_eq!(m.context_len(), 4096);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = parse(r#"{"model_type":"rwkv","vocab_size":10}"#).unwrap_err().to_string();
        assert!(e.contains("x/config.json") && e.contains("unknown model_type `rwkv`"), "{e}");
        let e = parse(r#"{"model_type":"llama","vocab_size":10}"#).unwrap_err().to_string();
        assert!(e.contains("missing `hidden_size`"), "{e}");
        let e = parse(r#"{"vocab_size":10}"#).unwrap_err().to_string();
        assert!(e.contains("no `model_type`"), "{e}");
        let e = parse(r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_key_value_heads":3,"num_hidden_layers":1,"intermediate_size":8}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("key/value heads"), "{e}");
        let e = parse(r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_hidden_layers":1,"intermediate_size":8,"rope_scaling":{"rope_type":"yarn","factor":4}}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported rope type `yarn`"), "{e}");
    }

    #[test]
    fn absurd_sizes_are_refused_not_overflowed() {
        // 4 * n_embd would overflow; a huge head_dim would size the RoPE table.
        let e = parse(r#"{"model_type":"gpt2","vocab_size":5,"n_embd":4611686018427387904,"n_head":1,
            "n_layer":1,"n_positions":4}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("`n_embd`") && e.contains("implausibly large"), "{e}");
        let e = parse(r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_hidden_layers":1,"intermediate_size":8,"head_dim":1073741824}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("`head_dim`") && e.contains("implausibly large"), "{e}");
        // Token ids past u32 are dropped, not truncated.
        let c = parse(r#"{"model_type":"gpt2","vocab_size":5,"n_embd":8,"n_head":2,"n_layer":1,"n_positions":4,
            "eos_token_id":4294967298}"#)
        .unwrap();
        assert_eq!(c.eos_token_id, None);
    }
}
