//! Training configuration: flags, or a TOML file (`--config FILE`) whose keys
//! mirror the flags (`batch-tokens = 4096`); flags override the file.

use crate::error::{Error, Result};
use crate::select::Select;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    /// Causal language modeling: every token is trained on.
    Clm,
    /// Selective language modeling: only the selected tokens are.
    Slm,
}

impl std::fmt::Display for TrainMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrainMode::Clm => "clm",
            TrainMode::Slm => "slm",
        })
    }
}

/// The flags of `rho train`, all optional so that a TOML file can supply them.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainArgs {
    /// TOML file with the settings below (keys spelled as the flags); flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Continue a run: a checkpoint folder written by `rho train`, or the run's --out folder (latest checkpoint).
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Start over in an --out folder that holds a run (its checkpoints, metrics.jsonl and probe
    /// masks are replaced; what is replaced is said). Without it such a folder is refused.
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    pub force: bool,
    /// Training data (.jsonl, .parquet, plain text), packed into windows with EOS.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder: step-N checkpoints, metrics.jsonl, masks/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Start from this HF checkpoint (continual pretraining).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Start from a random init of this config.json.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// tokenizer.json (default: the --init checkpoint's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// JSON Lines / Parquet field holding the text [default: text].
    #[arg(long)]
    pub text_field: Option<String>,
    /// clm or slm [default: clm].
    #[arg(long, value_enum)]
    pub mode: Option<TrainMode>,
    /// SLM: share of tokens kept, in (0, 1] [default: 0.6].
    #[arg(long)]
    pub ratio: Option<f64>,
    /// SLM: reference model, run on each batch.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// SLM: reference losses precomputed by `rho score`.
    #[arg(long)]
    pub ref_scores: Option<PathBuf>,
    /// SLM selection: batch (top-k of the batch by excess loss), sequence (per sequence),
    /// random (control), loss (top-k by current loss) [default: batch].
    #[arg(long)]
    pub select: Option<Select>,
    /// Save a checkpoint every N steps (and at the end) [default: steps].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Seed of init, data order and random selection [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Peak learning rate [default: 3e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine decay [default: lr / 10].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Warm-up steps [default: 0].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Tokens per batch; the batch holds batch-tokens / seq-len windows [default: 4096].
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Window length [default: the model's context, at most 1024].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// AdamW weight decay on matrices [default: 0.1].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this (0: off) [default: 1.0].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Write the selection mask of a fixed probe batch every N steps (0: never) [default: save-every].
    #[arg(long)]
    pub mask_every: Option<u64>,
    /// Std of the random init of matrices [default: 0.02].
    #[arg(long)]
    pub init_std: Option<f64>,
    /// Print a progress line every N steps [default: 1].
    #[arg(long)]
    pub log_every: Option<u64>,
    /// cpu or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Compute dtype: f32, or bf16 / f16 for mixed precision (f32 master weights and AdamW
    /// state; each step's forward and backward in this dtype, on CUDA through rho's fused
    /// kernels; checkpoints stay f32) [default: f32].
    #[arg(long)]
    pub dtype: Option<String>,
    /// No progress output.
    #[arg(long)]
    #[serde(default)]
    pub quiet: bool,
}

/// The largest `--lr` accepted: AdamW's step is about lr per weight, so anything near 1
/// already destroys a model; a larger value is a typo (`1e30`), refused before training.
pub const MAX_LR: f64 = 1.0;
/// The largest `--init-std` accepted (weights of std 1 already saturate a deep model).
pub const MAX_INIT_STD: f64 = 1.0;

/// A complete, validated training configuration (saved in every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: PathBuf,
    pub out: PathBuf,
    pub steps: u64,
    pub init: Option<PathBuf>,
    pub model_config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub text_field: String,
    pub mode: TrainMode,
    pub ratio: f64,
    pub reference: Option<PathBuf>,
    pub ref_scores: Option<PathBuf>,
    pub select: Select,
    pub save_every: u64,
    pub seed: u64,
    pub lr: f64,
    pub min_lr: Option<f64>,
    pub warmup: u64,
    pub batch_tokens: usize,
    pub seq_len: Option<usize>,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub mask_every: u64,
    pub init_std: f64,
    pub log_every: u64,
    pub device: String,
    /// f32, bf16 or f16 (runs saved before this option existed are f32).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    pub quiet: bool,
}

fn default_dtype() -> String {
    "f32".into()
}

macro_rules! merge {
    ($flags:expr, $file:expr, $($f:ident),*) => {
        $( if $flags.$f.is_none() { $flags.$f = $file.$f.clone(); } )*
    };
}

impl TrainArgs {
    /// Fill the flags not given from the TOML file.
    pub fn merged(mut self) -> Result<TrainArgs> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let bytes = crate::limits::read_bounded(&path, crate::limits::MAX_JSON_BYTES, "a --config file")?;
        let text = String::from_utf8(bytes).map_err(|_| Error::file(&path, "not valid UTF-8"))?;
        let file: TrainArgs = toml::from_str(&text).map_err(|e| Error::file(&path, format!("invalid config: {}", e.message())))?;
        merge!(self, file, data, out, steps, init, model_config, tokenizer, text_field, mode, ratio, reference,
            ref_scores, select, save_every, seed, lr, min_lr, warmup, batch_tokens, seq_len, weight_decay,
            grad_clip, mask_every, init_std, log_every, device, dtype);
        self.quiet |= file.quiet;
        Ok(self)
    }

    /// Apply defaults and check the required flags.
    pub fn resolve(self) -> Result<TrainConfig> {
        let need = |name: &str| Error::flag(format!("--{name}"), "is required (as a flag or in --config)");
        let steps = self.steps.ok_or_else(|| need("steps"))?;
        let cfg = TrainConfig {
            data: self.data.ok_or_else(|| need("data"))?,
            out: self.out.ok_or_else(|| need("out"))?,
            steps,
            init: self.init,
            model_config: self.model_config,
            tokenizer: self.tokenizer,
            text_field: self.text_field.unwrap_or_else(|| "text".into()),
            mode: self.mode.unwrap_or(TrainMode::Clm),
            ratio: self.ratio.unwrap_or(0.6),
            reference: self.reference,
            ref_scores: self.ref_scores,
            select: self.select.unwrap_or(Select::Batch),
            save_every: self.save_every.unwrap_or(steps),
            seed: self.seed.unwrap_or(0),
            lr: self.lr.unwrap_or(3e-4),
            min_lr: self.min_lr,
            warmup: self.warmup.unwrap_or(0),
            batch_tokens: self.batch_tokens.unwrap_or(4096),
            seq_len: self.seq_len,
            weight_decay: self.weight_decay.unwrap_or(0.1),
            grad_clip: self.grad_clip.unwrap_or(1.0),
            mask_every: self.mask_every.unwrap_or_else(|| self.save_every.unwrap_or(steps)),
            init_std: self.init_std.unwrap_or(0.02),
            log_every: self.log_every.unwrap_or(1),
            device: self.device.unwrap_or_else(|| "cpu".into()),
            dtype: self.dtype.unwrap_or_else(default_dtype),
            quiet: self.quiet,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl TrainArgs {
    /// With `--resume`, `cfg` is the run's saved configuration: a resumed run keeps it. The
    /// flags (and `--config` keys) that may change apply: `--steps`, `--quiet`, `--device`,
    /// `--log-every`, and `--data` when it holds the same data (the stream fingerprint in
    /// trainer_state.json is checked before training: other data is refused, naming the file).
    /// Any other flag whose value differs from the run's is refused, naming it, where it was
    /// silently ignored before. (`--out` is the caller's.)
    pub fn check_resume(&self, cfg: &mut TrainConfig) -> Result<()> {
        let args = self.clone().merged()?;
        fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        let differs = |flag: &str, given: String, run: String| {
            Err(Error::flag(
                flag,
                format!(
                    "{given}: the run was started with {run}, and a resumed run keeps its settings (only --steps, --data \
                     with the same data, --device, --log-every and --out may be given); start a new run to change it"
                ),
            ))
        };
        macro_rules! keep {
            ($($f:ident: $flag:literal),*) => {$(
                if let Some(v) = &args.$f {
                    if *v != cfg.$f {
                        return differs($flag, format!("{v:?}"), format!("{:?}", cfg.$f));
                    }
                }
            )*};
        }
        keep!(text_field: "--text-field", mode: "--mode", ratio: "--ratio", select: "--select", save_every: "--save-every",
            seed: "--seed", lr: "--lr", warmup: "--warmup", batch_tokens: "--batch-tokens", weight_decay: "--weight-decay",
            grad_clip: "--grad-clip", mask_every: "--mask-every", init_std: "--init-std", dtype: "--dtype");
        if let Some(m) = args.min_lr.filter(|&m| Some(m) != cfg.min_lr) {
            return differs("--min-lr", format!("{m:?}"), format!("{:?}", cfg.min_lr));
        }
        if let Some(l) = args.seq_len.filter(|&l| Some(l) != cfg.seq_len) {
            return differs("--seq-len", format!("{l}"), format!("{:?}", cfg.seq_len));
        }
        for (flag, given, run) in [
            ("--init", &args.init, &cfg.init),
            ("--model-config", &args.model_config, &cfg.model_config),
            ("--tokenizer", &args.tokenizer, &cfg.tokenizer),
            ("--reference", &args.reference, &cfg.reference),
            ("--ref-scores", &args.ref_scores, &cfg.ref_scores),
        ] {
            if let Some(g) = given {
                if !run.as_deref().is_some_and(|r| same_path(g, r)) {
                    let run = run.as_ref().map(|r| r.display().to_string()).unwrap_or_else(|| "none".into());
                    return differs(flag, g.display().to_string(), run);
                }
            }
        }
        if let Some(s) = args.steps {
            cfg.steps = s;
        }
        if let Some(d) = args.data {
            cfg.data = d; // checked against the run's stream fingerprint before training
        }
        if let Some(d) = args.device {
            cfg.device = d;
        }
        if let Some(l) = args.log_every {
            cfg.log_every = l;
        }
        cfg.quiet |= args.quiet;
        Ok(())
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, msg: String| Err(Error::flag(flag, msg));
        if self.steps == 0 {
            return bad("--steps", "must be positive".into());
        }
        match (&self.init, &self.model_config) {
            (Some(_), Some(_)) => return bad("--init", "give --init or --model-config, not both".into()),
            (None, None) => return bad("--init", "give --init CKPT (continual pretraining) or --model-config config.json (random init)".into()),
            _ => {}
        }
        crate::select::check_ratio(self.ratio)?;
        if self.mode == TrainMode::Clm && (self.reference.is_some() || self.ref_scores.is_some()) {
            return bad("--mode", "a reference is only used with --mode slm".into());
        }
        if self.reference.is_some() && self.ref_scores.is_some() {
            return bad("--reference", "give --reference or --ref-scores, not both".into());
        }
        if self.save_every == 0 {
            return bad("--save-every", "must be positive".into());
        }
        if self.log_every == 0 {
            return bad("--log-every", "must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr <= MAX_LR) {
            return bad("--lr", format!("must be in (0, {MAX_LR}], got {}", self.lr));
        }
        if let Some(m) = self.min_lr {
            if !(m >= 0.0 && m <= self.lr) {
                return bad("--min-lr", format!("must be in [0, --lr = {}], got {m}", self.lr));
            }
        }
        if !(self.init_std > 0.0 && self.init_std <= MAX_INIT_STD) {
            return bad("--init-std", format!("must be in (0, {MAX_INIT_STD}], got {}", self.init_std));
        }
        if self.batch_tokens == 0 {
            return bad("--batch-tokens", "must be positive".into());
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return bad("--grad-clip", format!("must be >= 0 and finite (0: off), got {}", self.grad_clip));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return bad("--weight-decay", format!("must be in [0, 1), got {}", self.weight_decay));
        }
        self.compute_dtype()?;
        Ok(())
    }

    /// The `dtype` setting as a candle dtype (an error names `--dtype`).
    pub fn compute_dtype(&self) -> Result<candle_core::DType> {
        crate::cli::parse_dtype(&self.dtype)
    }

    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.lr / 10.0)
    }

    pub fn adamw(&self) -> super::optim::AdamWParams {
        super::optim::AdamWParams { weight_decay: self.weight_decay, ..Default::default() }
    }
}
