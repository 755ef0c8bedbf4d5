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
    /// Separate q/k/v/o projections, gated MLP, RoPE: Llama 1/2/3, TinyLlama, Mistral, Qwen2,
    /// Qwen3, SmolLM3, OLMo-1, OLMo-2, OLMo-3 (their differences are [`NormKind`], [`QkNorm`],
    /// `post_norm`, `clip_qkv` and the per-layer [`LayerSpec`]s).
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
    /// YaRN (OLMo-3's long-context layers): frequencies blended between interpolation and
    /// extrapolation by a ramp over the rotated dims, cos and sin scaled by `attention_factor`.
    Yarn { factor: f64, attention_factor: f64, beta_fast: f64, beta_slow: f64, original_max_position_embeddings: f64, truncate: bool },
}

/// One rotary embedding: base and frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// The norms of the Llama-style families and of the LayerNorm families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm with a gain (Llama, Mistral, Qwen2/3, SmolLM3, OLMo-2/3).
    Rms,
    /// LayerNorm with neither gain nor bias, eps 1e-5 (OLMo-1's `OlmoLayerNorm`).
    LayerNoAffine,
    /// LayerNorm with gain and bias (GPT-NeoX, GPT-2).
    Layer,
}

/// RMSNorm of the queries and keys before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Each head's q and k over head_dim, one gain of head_dim shared by the heads (Qwen3).
    PerHead,
    /// The whole q and k projections (gains of n_heads * head_dim and n_kv_heads * head_dim) (OLMo-2/3).
    Whole,
}

/// What differs from layer to layer: its attention window and its rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Sliding window: query i attends the keys j with i - window < j <= i (transformers'
    /// `sliding_window`); None: every key up to i.
    pub window: Option<usize>,
    /// None: no rotary embedding in this layer (SmolLM3's `no_rope_layers`, GPT-2).
    pub rope: Option<Rope>,
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
    pub norm_eps: f64,
    pub norm: NormKind,
    /// OLMo-2/3: the norms sit after the attention and the MLP (on their outputs, before the
    /// residual add) instead of before them; no input norm.
    pub post_norm: bool,
    pub qk_norm: QkNorm,
    /// OLMo-1's `clip_qkv`: q, k and v clamped to [-c, c] after their projections.
    pub clip_qkv: Option<f64>,
    /// The rotary embedding of the model (of its full-attention layers where layers differ).
    pub rope: Rope,
    /// Number of dimensions of each head that are rotated (partial rotary in GPT-NeoX).
    pub rotary_dim: usize,
    /// One entry per layer: its window and its RoPE (`layer_types`, `no_rope_layers`, ...).
    pub layers: Vec<LayerSpec>,
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
/// Largest accepted depth: the largest real models have a few hundred layers; one
/// [`LayerSpec`] is kept per layer.
pub const MAX_LAYERS: usize = 1 << 16;

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
        let bytes = crate::limits::read_bounded(path, crate::limits::MAX_JSON_BYTES, "a config.json")?;
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
            "llama" | "mistral" | "qwen2" | "qwen3" | "smollm3" | "olmo" | "olmo2" | "olmo3" => Arch::Llama,
            "gpt_neox" => Arch::GptNeox,
            "gpt2" => Arch::Gpt2,
            other => {
                return Err(Error::file(
                    path,
                    format!(
                        "unknown model_type `{other}`: supported are llama, mistral, qwen2, qwen3, smollm3, olmo, olmo2, olmo3, gpt_neox, gpt2"
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
            Arch::Llama => Self::llama_family(v, path, model_type, vocab_size)?,
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
                let num_layers = need(&["num_hidden_layers"])?;
                let max_pos = get_usize(v, &["max_position_embeddings"]).unwrap_or(2048);
                let rope = Rope {
                    theta: rope_src(&["rope_theta", "rotary_emb_base"]).unwrap_or(10000.0),
                    scaling: Self::rope_scaling(rp.or(rs), max_pos, path)?,
                };
                ModelConfig {
                    arch,
                    vocab_size,
                    hidden_size,
                    num_layers,
                    num_heads,
                    num_kv_heads: num_heads,
                    head_dim,
                    intermediate_size: need(&["intermediate_size"])?,
                    max_position_embeddings: max_pos,
                    norm_eps: get_f64(v, &["layer_norm_eps"]).unwrap_or(1e-5),
                    norm: NormKind::Layer,
                    post_norm: false,
                    qk_norm: QkNorm::None,
                    clip_qkv: None,
                    layers: Self::uniform_layers(num_layers, Some(&rope), path)?,
                    rope,
                    rotary_dim,
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
                let num_layers = need(&["n_layer", "num_hidden_layers"])?;
                ModelConfig {
                    arch,
                    vocab_size,
                    hidden_size,
                    num_layers,
                    num_heads,
                    num_kv_heads: num_heads,
                    head_dim: hidden_size / num_heads,
                    intermediate_size: get_usize(v, &["n_inner"]).unwrap_or(4 * hidden_size),
                    max_position_embeddings: need(&["n_positions", "max_position_embeddings"])?,
                    norm_eps: get_f64(v, &["layer_norm_epsilon"]).unwrap_or(1e-5),
                    norm: NormKind::Layer,
                    post_norm: false,
                    qk_norm: QkNorm::None,
                    clip_qkv: None,
                    rope: Rope { theta: 0.0, scaling: RopeScaling::None },
                    rotary_dim: 0,
                    layers: Self::uniform_layers(num_layers, None, path)?,
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

    /// `num_layers` identical layers (checked against [`MAX_LAYERS`] before allocating).
    fn uniform_layers(num_layers: usize, rope: Option<&Rope>, path: &Path) -> Result<Vec<LayerSpec>> {
        Self::check_layers(num_layers, path)?;
        Ok(vec![LayerSpec { window: None, rope: rope.cloned() }; num_layers])
    }

    fn check_layers(num_layers: usize, path: &Path) -> Result<()> {
        if num_layers > MAX_LAYERS {
            return Err(Error::file(
                path,
                format!("`num_hidden_layers` = {num_layers} is implausibly large (at most {MAX_LAYERS} is accepted)"),
            ));
        }
        Ok(())
    }

    /// The Llama-style families: Llama, Mistral, Qwen2, Qwen3, SmolLM3, OLMo-1, OLMo-2, OLMo-3.
    /// Defaults for keys a config.json leaves out are those of the family's transformers
    /// config class; keys a family's transformers code ignores are ignored here too.
    fn llama_family(v: &Value, path: &Path, model_type: String, vocab_size: usize) -> Result<Self> {
        let need = |key: &str| -> Result<usize> {
            match get_usize(v, &[key]) {
                Some(0) => Err(Error::file(path, format!("`{key}` must be positive"))),
                Some(x) if x > MAX_POSITIONS => Err(Error::file(path, format!("`{key}` = {x} is implausibly large"))),
                Some(x) => Ok(x),
                None => Err(Error::file(path, format!("missing `{key}` in config.json"))),
            }
        };
        let mt = model_type.as_str();
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let num_layers = need("num_hidden_layers")?;
        Self::check_layers(num_layers, path)?;
        // transformers' class defaults where config.json has no value (Qwen3Config: 32 kv
        // heads and head_dim 128; SmolLM3Config: 4 kv heads)
        let num_kv_heads = get_usize(v, &["num_key_value_heads"]).unwrap_or(match mt {
            "qwen3" => 32,
            "smollm3" => 4,
            _ => num_heads,
        });
        let head_dim = match get_usize(v, &["head_dim"]) {
            Some(h) if h > 0 => h,
            _ if mt == "qwen3" && v.get("head_dim").is_none() => 128,
            _ => hidden_size / num_heads,
        };
        // q/k/v biases: Qwen2's are always there (its code ignores `attention_bias`), and its
        // o_proj has none; Mistral has none; the others follow `attention_bias` for all four.
        let (attention_bias, attention_out_bias) = match mt {
            "qwen2" => (true, false),
            "mistral" => (false, false),
            _ => {
                let b = get_bool(v, &["attention_bias"]).unwrap_or(false);
                (b, b)
            }
        };
        // only Llama's and SmolLM3's MLPs read `mlp_bias`
        let mlp_bias = matches!(mt, "llama" | "smollm3") && get_bool(v, &["mlp_bias"]).unwrap_or(false);
        let (norm, post_norm, qk_norm) = match mt {
            "olmo" => (NormKind::LayerNoAffine, false, QkNorm::None),
            "olmo2" | "olmo3" => (NormKind::Rms, true, QkNorm::Whole),
            "qwen3" => (NormKind::Rms, false, QkNorm::PerHead),
            _ => (NormKind::Rms, false, QkNorm::None),
        };
        let norm_eps = match norm {
            NormKind::LayerNoAffine => 1e-5, // fixed in OlmoLayerNorm
            _ => get_f64(v, &["rms_norm_eps"]).unwrap_or(if matches!(mt, "olmo2" | "olmo3") { 1e-5 } else { 1e-6 }),
        };
        let clip_qkv = match (mt, v.get("clip_qkv")) {
            ("olmo", Some(Value::Number(n))) => match n.as_f64() {
                Some(c) if c > 0.0 && c.is_finite() => Some(c),
                _ => return Err(Error::file(path, format!("`clip_qkv` = {n} must be a positive number (or null)"))),
            },
            ("olmo", Some(x)) if !x.is_null() => {
                return Err(Error::file(path, format!("`clip_qkv` = {x} must be a positive number (or null)")))
            }
            _ => None,
        };
        let default_theta = match mt {
            "olmo3" => 500000.0,
            "smollm3" => 2000000.0,
            _ => 10000.0,
        };
        let max_pos = get_usize(v, &["max_position_embeddings"]).unwrap_or(if matches!(mt, "qwen3" | "smollm3") { 32768 } else { 2048 });
        let (rope, sliding_rope) = Self::family_ropes(v, path, mt, default_theta, max_pos)?;
        let layers = Self::family_layers(v, path, mt, num_layers, &rope, &sliding_rope)?;
        Ok(ModelConfig {
            arch: Arch::Llama,
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: need("intermediate_size")?,
            max_position_embeddings: max_pos,
            norm_eps,
            norm,
            post_norm,
            qk_norm,
            clip_qkv,
            rope,
            rotary_dim: head_dim,
            layers,
            tie_word_embeddings: get_bool(v, &["tie_word_embeddings"]).unwrap_or(mt == "smollm3"),
            attention_bias,
            attention_out_bias,
            mlp_bias,
            parallel_residual: false,
            activation: Activation::parse(get_str(v, &["hidden_act"]).unwrap_or("silu"), path)?,
            bos_token_id: get_token_id(v, "bos_token_id"),
            eos_token_id: get_token_id(v, "eos_token_id"),
            dtype: get_str(v, &["dtype", "torch_dtype"]).map(|s| s.to_string()),
            model_type,
        })
    }

    /// The family's RoPE, and OLMo-3's RoPE of its sliding-window layers. transformers 5.x
    /// nests it in `rope_parameters` (OLMo-3: one object per layer type), 4.x keeps
    /// `rope_theta` and `rope_scaling` at top level (OLMo-3: `rope_scaling` for the
    /// full-attention layers only).
    fn family_ropes(v: &Value, path: &Path, mt: &str, default_theta: f64, max_pos: usize) -> Result<(Rope, Rope)> {
        let rp = v.get("rope_parameters").filter(|x| x.is_object());
        let rs = v.get("rope_scaling").filter(|x| x.is_object());
        let top_theta = get_f64(v, &["rope_theta"]);
        let nested = |t: &str| rp.and_then(|r| r.get(t)).filter(|x| x.is_object());
        if mt == "olmo3" && (nested("full_attention").is_some() || nested("sliding_attention").is_some()) {
            let of = |t: &str, scaling_4x: Option<&Value>| -> Result<Rope> {
                let r = nested(t);
                Ok(Rope {
                    theta: r.and_then(|r| get_f64(r, &["rope_theta"])).or(top_theta).unwrap_or(default_theta),
                    scaling: Self::rope_scaling(r.or(scaling_4x), max_pos, path)?,
                })
            };
            return Ok((of("full_attention", rs)?, of("sliding_attention", None)?));
        }
        let theta = rp.and_then(|r| get_f64(r, &["rope_theta"])).or(top_theta).unwrap_or(default_theta);
        let full = Rope { theta, scaling: Self::rope_scaling(rp.or(rs), max_pos, path)? };
        let sliding = if mt == "olmo3" { Rope { theta, scaling: Self::rope_scaling(rp, max_pos, path)? } } else { full.clone() };
        Ok((full, sliding))
    }

    /// Each layer's window and RoPE, as the family's transformers code decides them.
    fn family_layers(v: &Value, path: &Path, mt: &str, n: usize, rope: &Rope, sliding_rope: &Rope) -> Result<Vec<LayerSpec>> {
        // `sliding_window`: a positive integer or null; the class default where absent
        let window = match v.get("sliding_window") {
            None => match mt {
                "mistral" | "qwen2" | "qwen3" | "olmo3" => Some(4096),
                _ => None,
            },
            Some(Value::Null) => None,
            Some(x) => match x.as_u64() {
                Some(w) if w >= 1 && w as usize <= MAX_POSITIONS => Some(w as usize),
                _ => return Err(Error::file(path, format!("`sliding_window` = {x} is not a positive integer"))),
            },
        };
        let use_sw = get_bool(v, &["use_sliding_window"]).unwrap_or(false);
        // `layer_types` as written: each layer "full_attention" or "sliding_attention"
        let layer_types: Option<Vec<bool>> = match v.get("layer_types") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.len() == n => Some(
                a.iter()
                    .enumerate()
                    .map(|(i, t)| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(Error::file(
                            path,
                            format!("`layer_types`[{i}] = {t}: supported are \"full_attention\" and \"sliding_attention\""),
                        )),
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(Value::Array(a)) => {
                return Err(Error::file(path, format!("`layer_types` has {} entries for {n} layers", a.len())))
            }
            Some(x) => return Err(Error::file(path, format!("`layer_types` = {x} is not a list"))),
        };
        // SmolLM3's `no_rope_layers`: 1 = RoPE, 0 = none; default: none every `no_rope_layer_interval`-th layer
        let has_rope: Vec<bool> = match (mt, v.get("no_rope_layers")) {
            ("smollm3", Some(Value::Array(a))) if a.len() == n => a
                .iter()
                .enumerate()
                .map(|(i, x)| match x.as_u64() {
                    Some(0) => Ok(false),
                    Some(1) => Ok(true),
                    _ => Err(Error::file(path, format!("`no_rope_layers`[{i}] = {x} is not 0 or 1"))),
                })
                .collect::<Result<_>>()?,
            ("smollm3", Some(Value::Array(a))) => {
                return Err(Error::file(path, format!("`no_rope_layers` has {} entries for {n} layers", a.len())))
            }
            ("smollm3", Some(x)) if !x.is_null() => {
                return Err(Error::file(path, format!("`no_rope_layers` = {x} is not a list")))
            }
            ("smollm3", _) => {
                let every = match get_usize(v, &["no_rope_layer_interval"]).unwrap_or(4) {
                    0 => return Err(Error::file(path, "`no_rope_layer_interval` must be positive")),
                    k => k,
                };
                (0..n).map(|i| (i + 1) % every != 0).collect()
            }
            _ => vec![true; n],
        };
        let max_window_layers = get_usize(v, &["max_window_layers"]).unwrap_or(28);
        let specs = (0..n)
            .map(|i| {
                let sliding = match mt {
                    // every layer of a Mistral slides when `sliding_window` is set
                    "mistral" => true,
                    "qwen2" | "qwen3" => {
                        layer_types.as_ref().map(|t| t[i]).unwrap_or(use_sw && window.is_some() && i >= max_window_layers)
                    }
                    "smollm3" => layer_types.as_ref().map(|t| t[i]).unwrap_or(use_sw && window.is_some() && !has_rope[i]),
                    "olmo3" => layer_types.as_ref().map(|t| t[i]).unwrap_or((i + 1) % 4 != 0),
                    _ => false,
                };
                // Qwen2/3 and SmolLM3 only slide with `use_sliding_window`
                let on = match mt {
                    "qwen2" | "qwen3" | "smollm3" => use_sw,
                    _ => true,
                };
                let rope = match (has_rope[i], mt == "olmo3" && sliding) {
                    (false, _) => None,
                    (true, true) => Some(sliding_rope.clone()),
                    (true, false) => Some(rope.clone()),
                };
                LayerSpec { window: if sliding && on { window } else { None }, rope }
            })
            .collect();
        Ok(specs)
    }

    /// A RoPE's scaling from its `rope_parameters` (or 4.x `rope_scaling`) object; defaults as
    /// transformers 5.x's `standardize_rope_params` sets them (`original_max_position_embeddings`:
    /// the model's `max_position_embeddings`).
    fn rope_scaling(r: Option<&Value>, max_pos: usize, path: &Path) -> Result<RopeScaling> {
        let Some(r) = r else { return Ok(RopeScaling::None) };
        let ty = get_str(r, &["rope_type", "type"]).unwrap_or("default");
        let factor = get_f64(r, &["factor"]);
        let original = get_f64(r, &["original_max_position_embeddings"]).unwrap_or(max_pos as f64);
        Ok(match ty {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: factor.ok_or_else(|| Error::file(path, "linear rope scaling without `factor`"))?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor.ok_or_else(|| Error::file(path, "llama3 rope scaling without `factor`"))?,
                low_freq_factor: get_f64(r, &["low_freq_factor"]).unwrap_or(1.0),
                high_freq_factor: get_f64(r, &["high_freq_factor"]).unwrap_or(4.0),
                original_max_position_embeddings: original,
            },
            "yarn" => {
                if original <= 0.0 {
                    return Err(Error::file(path, "yarn rope scaling: `original_max_position_embeddings` must be positive"));
                }
                let factor = factor.unwrap_or(max_pos as f64 / original);
                if !(factor > 0.0 && factor.is_finite()) {
                    return Err(Error::file(path, format!("yarn rope scaling: `factor` = {factor} must be positive")));
                }
                // transformers' get_mscale: 0.1 mscale ln(factor) + 1 (1 for factor <= 1)
                let mscale = |m: f64| if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 };
                let attention_factor = match (get_f64(r, &["attention_factor"]), get_f64(r, &["mscale"]), get_f64(r, &["mscale_all_dim"])) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(a)) if m != 0.0 && a != 0.0 => mscale(m) / mscale(a),
                    _ => mscale(1.0),
                };
                // `beta_fast` / `beta_slow` null or 0 mean the defaults (transformers' `or`)
                let beta = |k: &str, d: f64| get_f64(r, &[k]).filter(|&b| b != 0.0).unwrap_or(d);
                RopeScaling::Yarn {
                    factor,
                    attention_factor,
                    beta_fast: beta("beta_fast", 32.0),
                    beta_slow: beta("beta_slow", 1.0),
                    original_max_position_embeddings: original,
                    truncate: get_bool(r, &["truncate"]).unwrap_or(true),
                }
            }
            other => {
                return Err(Error::file(
                    path,
                    format!("unsupported rope type `{other}` (supported: default, linear, llama3, yarn)"),
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
        ] {
            if x > max {
                return bad(format!("`{name}` = {x} is implausibly large (at most {max} is accepted)"));
            }
        }
        if self.num_heads == 0 || self.head_dim == 0 {
            return bad("attention heads and head_dim must be positive".into());
        }
        if self.arch != Arch::Llama && !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden size {} is not divisible by {} heads",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.rotary_dim.is_multiple_of(2) {
            return bad(format!("rotary dimension {} is odd", self.rotary_dim));
        }
        Ok(())
    }

    /// The longest window we score in one forward pass: the model's context, capped at the
    /// smallest sliding window when every layer has one (Mistral: attention stays exact and
    /// the windows never bind). Where only some layers slide (OLMo-3, Qwen3 past
    /// `max_window_layers`), the windows are applied inside attention.
    pub fn context_len(&self) -> usize {
        let all_windowed = self.layers.iter().map(|l| l.window).collect::<Option<Vec<usize>>>();
        match all_windowed.and_then(|w| w.into_iter().min()) {
            Some(w) if w > 0 && w < self.max_position_embeddings => w,
            _ => self.max_position_embeddings,
        }
    }

    /// Inverse RoPE frequencies of the model's RoPE ([`Rope::inv_freq`]).
    pub fn inv_freq(&self) -> Vec<f32> {
        self.rope.inv_freq(self.rotary_dim)
    }
}

impl Rope {
    /// The factor on cos and sin (YaRN's `attention_factor`; 1 otherwise).
    pub fn attention_scaling(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn { attention_factor, .. } => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// Inverse frequencies, one per rotated pair of `rotary_dim` dims, with scaling applied (as transformers).
    pub fn inv_freq(&self, rotary_dim: usize) -> Vec<f32> {
        let d = rotary_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| {
                // transformers computes this in float32.
                let e = (2 * i) as f32 / d as f32;
                1.0 / (self.theta as f32).powf(e) as f64
            })
            .collect();
        match &self.scaling {
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
            RopeScaling::Yarn { factor, beta_fast, beta_slow, original_max_position_embeddings: orig, truncate, .. } => {
                // transformers' _compute_yarn_parameters, in float32 where it computes in float32
                let dims = d as f64;
                let corr = |rot: f64| dims * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * self.theta.ln());
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dims - 1.0));
                if low == high {
                    high += 0.001;
                }
                (0..d / 2)
                    .map(|i| {
                        let pos = (self.theta as f32).powf((2 * i) as f32 / d as f32);
                        let (extra, inter) = (1.0 / pos, 1.0 / (*factor as f32 * pos));
                        let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        inter * (1.0 - keep) + extra * keep
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
        assert_eq!(a.rope.theta, 10000.0);
        assert_eq!(a.rotary_dim, 64);
        assert_eq!(a.eos_token_id, Some(2));
        assert_eq!(
            (a.vocab_size, a.hidden_size, a.num_layers, a.num_kv_heads, &a.rope, a.rotary_dim),
            (b.vocab_size, b.hidden_size, b.num_layers, b.num_kv_heads, &b.rope, b.rotary_dim)
        );
    }

    #[test]
    fn neox_v4_and_v5_agree() {
        let (a, b) = (fixture("neox_v4.json"), fixture("neox_v5.json"));
        assert_eq!(a.arch, Arch::GptNeox);
        assert_eq!(a.head_dim, 64);
        assert_eq!(a.rotary_dim, 16, "rotary_pct 0.25 of 64");
        assert!(a.parallel_residual);
        assert_eq!((b.rotary_dim, b.rope.theta, b.parallel_residual), (a.rotary_dim, a.rope.theta, true));
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
        assert_eq!((c.rope.theta, c.rotary_dim), (500000.0, 8));
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
            "num_hidden_layers":1,"intermediate_size":8,"rope_scaling":{"rope_type":"dynamic","factor":4}}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported rope type `dynamic`"), "{e}");
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
    /// A Llama-style config of `n` layers with `extra` keys merged in.
    fn family(model_type: &str, n: usize, extra: serde_json::Value) -> Result<ModelConfig> {
        let mut v = serde_json::json!({"model_type": model_type, "vocab_size": 100, "hidden_size": 64,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": n, "intermediate_size": 96});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        ModelConfig::from_value(&v, Path::new("x/config.json"))
    }

    fn windows(c: &ModelConfig) -> Vec<Option<usize>> {
        c.layers.iter().map(|l| l.window).collect()
    }

    #[test]
    fn olmo1_has_no_norm_weights_and_clips_qkv() {
        // allenai/OLMo-1B-hf's config.json (4.x layout)
        let c = family("olmo", 16, serde_json::json!({"attention_bias": false, "clip_qkv": null, "eos_token_id": 50279,
            "hidden_act": "silu", "max_position_embeddings": 2048, "pad_token_id": 1, "rope_scaling": null,
            "rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "float32"}))
        .unwrap();
        assert_eq!((c.norm, c.post_norm, c.qk_norm, c.clip_qkv), (NormKind::LayerNoAffine, false, QkNorm::None, None));
        assert_eq!(c.norm_eps, 1e-5, "OlmoLayerNorm's fixed eps");
        assert!(c.tie_word_embeddings);
        assert!(c.layers.iter().all(|l| l.window.is_none() && l.rope.as_ref() == Some(&c.rope)));
        let c = family("olmo", 2, serde_json::json!({"clip_qkv": 8.0})).unwrap();
        assert_eq!(c.clip_qkv, Some(8.0));
        for bad in [serde_json::json!(-1.0), serde_json::json!("8")] {
            let e = family("olmo", 2, serde_json::json!({ "clip_qkv": bad })).unwrap_err().to_string();
            assert!(e.contains("x/config.json") && e.contains("`clip_qkv`"), "{e}");
        }
    }

    #[test]
    fn olmo2_norms_follow_the_sublayers_and_normalise_q_and_k() {
        let c = family("olmo2", 2, serde_json::json!({"rope_theta": 500000.0})).unwrap();
        assert_eq!((c.norm, c.post_norm, c.qk_norm), (NormKind::Rms, true, QkNorm::Whole));
        assert_eq!((c.norm_eps, c.rope.theta, c.tie_word_embeddings), (1e-5, 500000.0, false));
        // OLMo-2's code ignores a sliding window and mlp_bias
        let c = family("olmo2", 2, serde_json::json!({"sliding_window": 8, "mlp_bias": true})).unwrap();
        assert_eq!((windows(&c), c.mlp_bias), (vec![None, None], false));
    }

    #[test]
    fn olmo3_layer_types_set_windows_and_ropes() {
        // the default pattern: three sliding layers, then a full one; class defaults window
        // 4096 and theta 500000
        let c = family("olmo3", 8, serde_json::json!({"max_position_embeddings": 65536})).unwrap();
        let s = Some(4096);
        assert_eq!(windows(&c), vec![s, s, s, None, s, s, s, None]);
        assert_eq!(c.rope.theta, 500000.0);
        assert_eq!(c.context_len(), 65536, "full layers: the windows apply inside attention");
        // transformers 5.x: rope_parameters per layer type
        let c = family("olmo3", 4, serde_json::json!({"sliding_window": 16,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 2000.0}}}))
        .unwrap();
        assert_eq!(windows(&c), vec![None, Some(16), Some(16), None]);
        let th: Vec<f64> = c.layers.iter().map(|l| l.rope.as_ref().unwrap().theta).collect();
        assert_eq!(th, vec![1000.0, 2000.0, 2000.0, 1000.0]);
        assert_eq!(c.layers[0].rope.as_ref().unwrap().scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.layers[1].rope.as_ref().unwrap().scaling, RopeScaling::None);
        // transformers 4.x: top-level rope_scaling is the full-attention layers' only
        let c = family("olmo3", 4, serde_json::json!({"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}))
            .unwrap();
        assert_eq!(c.layers[3].rope.as_ref().unwrap().scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(c.layers[0].rope.as_ref().unwrap().scaling, RopeScaling::None);
        // what rho does not implement is named
        let e = family("olmo3", 4, serde_json::json!({"rope_parameters": {"full_attention": {"rope_type": "dynamic", "factor": 8.0},
            "sliding_attention": {"rope_type": "default"}}}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported rope type `dynamic`"), "{e}");
        let e = family("olmo3", 2, serde_json::json!({"layer_types": ["full_attention", "chunked_attention"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`layer_types`[1]") && e.contains("chunked_attention"), "{e}");
        let e = family("olmo3", 3, serde_json::json!({"layer_types": ["full_attention"]})).unwrap_err().to_string();
        assert!(e.contains("`layer_types` has 1 entries for 3 layers"), "{e}");
    }

    #[test]
    fn smollm3_no_rope_layers_and_tied_default() {
        let c = family("smollm3", 8, serde_json::json!({})).unwrap();
        let has: Vec<bool> = c.layers.iter().map(|l| l.rope.is_some()).collect();
        assert_eq!(has, vec![true, true, true, false, true, true, true, false], "every 4th layer without RoPE");
        assert!(c.tie_word_embeddings, "SmolLM3Config ties by default");
        assert_eq!((c.rope.theta, c.max_position_embeddings), (2000000.0, 32768));
        let c = family("smollm3", 3, serde_json::json!({"no_rope_layers": [0, 1, 1], "tie_word_embeddings": false,
            "use_sliding_window": true, "sliding_window": 8}))
        .unwrap();
        assert_eq!(c.layers.iter().map(|l| l.rope.is_some()).collect::<Vec<_>>(), vec![false, true, true]);
        assert_eq!(windows(&c), vec![Some(8), None, None], "SmolLM3 slides its no-RoPE layers");
        assert!(!c.tie_word_embeddings);
        let e = family("smollm3", 3, serde_json::json!({"no_rope_layers": [1, 2, 1]})).unwrap_err().to_string();
        assert!(e.contains("`no_rope_layers`[1]"), "{e}");
        let e = family("smollm3", 3, serde_json::json!({"no_rope_layers": [1, 1]})).unwrap_err().to_string();
        assert!(e.contains("`no_rope_layers` has 2 entries for 3 layers"), "{e}");
    }

    #[test]
    fn qwen3_per_head_norms_and_windows_past_max_window_layers() {
        let mut v = serde_json::json!({"model_type": "qwen3", "vocab_size": 100, "hidden_size": 64,
            "num_attention_heads": 32, "num_hidden_layers": 4, "intermediate_size": 96});
        let c = ModelConfig::from_value(&v, Path::new("x/config.json")).unwrap();
        assert_eq!((c.qk_norm, c.head_dim, c.num_kv_heads), (QkNorm::PerHead, 128, 32), "Qwen3Config's defaults");
        v["num_attention_heads"] = 4.into();
        v["num_key_value_heads"] = 2.into();
        v["head_dim"] = 16.into();
        v["use_sliding_window"] = true.into();
        v["sliding_window"] = 8.into();
        v["max_window_layers"] = 2.into();
        let c = ModelConfig::from_value(&v, Path::new("x/config.json")).unwrap();
        assert_eq!(windows(&c), vec![None, None, Some(8), Some(8)]);
        assert_eq!(c.context_len(), 32768);
        v["use_sliding_window"] = false.into();
        let c = ModelConfig::from_value(&v, Path::new("x/config.json")).unwrap();
        assert_eq!(windows(&c), vec![None; 4], "no window without use_sliding_window");
        assert_eq!((c.attention_bias, c.attention_out_bias), (false, false));
    }

    #[test]
    fn qwen2_biases_and_mistral_default_window_follow_transformers() {
        // Qwen2's code has q/k/v biases whatever `attention_bias` says
        let c = family("qwen2", 2, serde_json::json!({"attention_bias": false})).unwrap();
        assert_eq!((c.attention_bias, c.attention_out_bias), (true, false));
        // MistralConfig's default window where config.json has none; null: no window
        let c = family("mistral", 2, serde_json::json!({"max_position_embeddings": 32768})).unwrap();
        assert_eq!((windows(&c), c.context_len()), (vec![Some(4096); 2], 4096));
        let c = family("mistral", 2, serde_json::json!({"sliding_window": null})).unwrap();
        assert_eq!(windows(&c), vec![None; 2]);
        let e = family("mistral", 2, serde_json::json!({"sliding_window": 0})).unwrap_err().to_string();
        assert!(e.contains("`sliding_window` = 0"), "{e}");
        let e = family("llama", 70000, serde_json::json!({})).unwrap_err().to_string();
        assert!(e.contains("`num_hidden_layers` = 70000") && e.contains("implausibly large"), "{e}");
    }
    /// YaRN's frequencies and attention factor against transformers 5.24's
    /// `ROPE_INIT_FUNCTIONS["yarn"]` (printed by it for these two configs, head_dim 16).
    #[test]
    fn yarn_matches_transformers() {
        let c = family("olmo3", 2, serde_json::json!({"max_position_embeddings": 64, "hidden_size": 64,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
                "full_attention": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}}}))
        .unwrap();
        let full = c.layers[1].rope.as_ref().unwrap();
        let want = [1.0f64, 0.07905694097280502, 0.02500000037252903, 0.007905694656074047, 0.0024999999441206455, 0.0007905694656074047, 0.0002500000118743628, 7.905694656074047e-05];
        let got = full.inv_freq(16);
        for (&g, w) in got.iter().zip(want) {
            assert!((g as f64 - w).abs() <= 1e-6 * w, "{got:?}");
        }
        assert!((full.attention_scaling() as f64 - 1.138629436111989).abs() < 1e-6, "get_mscale(4)");
        assert_eq!(c.layers[0].rope.as_ref().unwrap().attention_scaling(), 1.0);
        // Olmo-3-7B's full-attention RoPE: some dims between interpolation and extrapolation
        let c = family("olmo3", 2, serde_json::json!({"max_position_embeddings": 65536,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 500000.0},
                "full_attention": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 8192,
                    "attention_factor": 1.2079441541679836, "beta_fast": 32, "beta_slow": 1}}}))
        .unwrap();
        let full = c.layers[1].rope.as_ref().unwrap();
        let want = [1.0f64, 0.193922758102417, 0.03760603070259094, 0.005165637470781803, 0.0005892555927857757, 3.428102354519069e-05, 6.647869668086059e-06, 1.289173155782919e-06];
        let got = full.inv_freq(16);
        for (&g, w) in got.iter().zip(want) {
            assert!((g as f64 - w).abs() <= 1e-6 * w, "{got:?}");
        }
        assert_eq!(full.attention_scaling(), 1.207_944_2);
    }
}
