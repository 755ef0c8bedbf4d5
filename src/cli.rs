//! Command-line interface: clap definitions and the dispatch to the library.

use crate::dynamics;
use crate::error::{Error, Result};
use crate::eval::{self, EvalOptions};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "rho", version, about = "A workbench for token-level training dynamics (Rho-1)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score every token of a validation set at every checkpoint of a series.
    Eval(EvalArgs),
    /// What of a study is evaluated and what is missing (exit 3 while incomplete).
    Status(StatusArgs),
    /// Sharded `rho eval` as a Slurm job array (`rho slurm eval --shards N --study S -- <eval args>`).
    #[command(subcommand)]
    Slurm(crate::slurm::SlurmCommand),
    /// Place every token in its Rho-1 loss-trajectory category (App. B.1).
    Categorize(CategorizeArgs),
    /// Train a model: CLM, or Selective Language Modeling (--mode slm --ratio K).
    Train(crate::train::config::TrainArgs),
    /// Precompute reference losses over the packed training stream (for --ref-scores).
    Score(ScoreArgs),
    /// The whole idea on a built-in planted-truth corpus, in a few minutes.
    Demo(DemoArgs),
    /// Reproduce Rho-1's findings at small scale on the planted-truth corpus.
    Experiment(ExperimentArgs),
    /// Draw a study's charts (PNG) and an index.html that shows them.
    Report(ReportArgs),
    /// Category shares and selected tokens with their context (table, JSON, JSONL, CSV); --fail-if gates (exit 3).
    Audit(crate::audit::AuditArgs),
    /// Export a study to other tools (`rho export notebook`: a Jupyter notebook).
    Export(crate::export::ExportArgs),
    /// The interactive terminal app: browse a study's dynamics, start and watch runs.
    Tui(TuiArgs),
    /// Benchmarks run side by side with the PyTorch peers (`rho bench eval`).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward + per-token f32 loss throughput of a random Llama (the shapes and output of ../shared/gpu/torch_peer.py).
    Eval(crate::bench::BenchEvalArgs),
    /// Training-step throughput of a random Llama, CLM or SLM (the shapes and output of ../shared/gpu/torch_train_peer.py).
    Train(crate::bench::BenchTrainArgs),
    /// rho's GPU kernels against their CPU references (GPU, or the CPU emulator), and on CUDA their speed against plain candle ops.
    Kernels(crate::cuda::check::BenchKernelsArgs),
    /// One AdamW step and gradient norm: rho's fused in-place ops against the same update composed of candle ops.
    Optim(crate::bench::BenchOptimArgs),
    /// Checkpoint load time as `rho eval` loads (safetensors or PyTorch .bin), against scripts/bench_load.py's torch.load / from_pretrained.
    Load(crate::bench::BenchLoadArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Study folder (after `rho eval` and `rho categorize`).
    #[arg(long)]
    pub study: PathBuf,
    /// Output folder [default: <study>/report].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// What the charts over the checkpoints put on the x-axis: the training step, or training
    /// tokens seen (recorded by `rho eval` from trainer_state.json or the folder names; every
    /// checkpoint must have them). Either falls back to the checkpoint's index when it does not
    /// increase along the series (stages that count from 0 again).
    #[arg(long, value_enum, default_value_t = crate::report::XAxis::Step)]
    pub x_axis: crate::report::XAxis,
    /// Print nothing.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// Output folder (results/ holds the table, CSVs and charts).
    #[arg(long)]
    pub out: PathBuf,
    /// Seeds of the CLM / SLM / random comparison.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Training steps per run [default: 96 planted, 150 real text].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Real text: the reference model's (curated) training files. With --corpus and --target,
    /// runs the pipeline on these files instead of the planted corpus.
    #[arg(long = "reference-data", num_args = 1..)]
    pub reference_data: Vec<PathBuf>,
    /// Real text: documents of these files are removed from --reference-data (matched on the question / problem).
    #[arg(long, num_args = 1..)]
    pub exclude: Vec<PathBuf>,
    /// Real text: the (noisy) training corpus of the CLM / SLM / random runs.
    #[arg(long, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Real text: target-distribution validation files, each reported on its own.
    #[arg(long, num_args = 1..)]
    pub target: Vec<PathBuf>,
    /// Real text: documents sampled from each target file [default: 120].
    #[arg(long)]
    pub target_docs: Option<usize>,
    /// Real text: reference model training steps [default: 300].
    #[arg(long)]
    pub ref_steps: Option<u64>,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct TuiArgs {
    /// Study folder (after `rho eval`; `rho categorize` for the category views).
    #[arg(long, default_value = ".")]
    pub study: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Study folder (default: a fresh folder under the system's temporary directory).
    #[arg(long)]
    pub study: Option<PathBuf>,
    /// Do not open the TUI at the end.
    #[arg(long)]
    pub no_tui: bool,
    /// Seed of the corpus, the init and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The reference model (HF checkpoint folder).
    #[arg(long)]
    pub model: PathBuf,
    /// The training data, exactly as `rho train --data` will get it.
    #[arg(long)]
    pub data: PathBuf,
    /// Output Parquet file.
    #[arg(long)]
    pub out: PathBuf,
    /// Window length: must equal the training --seq-len [default: the model's context, at most 1024].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// tokenizer.json (default: the model's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16, f16, or auto: f32 on CPU, bf16 on CUDA (losses in f32 either way).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A folder of checkpoint subfolders (ordered by the step in their names), or checkpoint folders.
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// Validation data: .jsonl (.gz), .parquet, or plain text (documents separated by blank lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Study folder to write (created if needed).
    #[arg(long)]
    pub study: PathBuf,
    /// tokenizer.json (default: the first checkpoint's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// JSON Lines / Parquet field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16, f16, or auto: f32 on CPU, bf16 on CUDA (rho's fused kernels need bf16 or
    /// f16). Losses are always computed in f32.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Upper bound on (padded) tokens per forward pass [default: 4096 on CPU, 32768 on CUDA].
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Score at most this many tokens.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Concatenate documents with EOS into full windows, as in training.
    #[arg(long)]
    pub pack: bool,
    /// Scoring context (default: the model's).
    #[arg(long)]
    pub context: Option<usize>,
    /// Redo checkpoints already evaluated (with --shard: this shard's parts only).
    #[arg(long)]
    pub force: bool,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Evaluate only shard I of N (0-based) of the validation rows, for every checkpoint,
    /// into losses/checkpoint=<name>/part-<I>-of-<N>.parquet. Run every I (any order,
    /// any machine sharing the study folder); `rho status` says what is missing.
    #[arg(long, value_name = "I/N", conflicts_with = "devices")]
    pub shard: Option<String>,
    /// Several devices of this machine, one shard each, e.g. cuda:0,cuda:1 (runs
    /// `rho eval --shard I/N --device D` per device and waits for all).
    #[arg(long, value_name = "D1,D2,...")]
    pub devices: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Study folder.
    #[arg(long)]
    pub study: PathBuf,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CategorizeArgs {
    /// Study folder written by `rho eval`.
    #[arg(long)]
    pub study: PathBuf,
    /// |ΔL| above which a token counts as changing (H→L or L→H).
    #[arg(long, default_value_t = 0.2)]
    pub threshold: f64,
    /// Use only these checkpoints (comma-separated names, in study order).
    #[arg(long, value_delimiter = ',')]
    pub checkpoints: Option<Vec<String>>,
    /// Print the shares as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_device(s: &str) -> Result<Device> {
    let bad = || Error::flag("--device", format!("`{s}` is not cpu or cuda:N"));
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let n = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()).ok_or_else(bad)?,
        None => return Err(bad()),
    };
    // cudarc loads the driver library at run time and panics when it is missing (a
    // machine without a GPU driver): turn that into the flag's error.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| Device::new_cuda(n));
    std::panic::set_hook(prev);
    match r {
        Ok(d) => {
            let d = d.map_err(|e| Error::flag("--device", format!("{s}: {e}")))?;
            crate::cuda::configure_pool(&d).map_err(|e| Error::flag("--device", format!("{s}: {e}")))?;
            Ok(d)
        }
        Err(p) => {
            let msg = p.downcast_ref::<String>().map(|m| m.as_str()).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("unknown error");
            let first = msg.split(" - ").next().unwrap_or(msg);
            Err(Error::flag("--device", format!("{s}: {first} (is there a GPU with its driver? on the H200 machine, `source cudalibs.sh` first)")))
        }
    }
}

/// `--dtype` of eval and score: f32, bf16, f16, or auto (f32 on CPU, bf16 on CUDA).
pub fn resolve_dtype(s: &str, device: &Device) -> Result<DType> {
    match s {
        "auto" if device.is_cuda() => Ok(DType::BF16),
        "auto" => Ok(DType::F32),
        _ => parse_dtype(s).map_err(|_| Error::flag("--dtype", format!("`{s}` is not auto, f32, bf16 or f16"))),
    }
}

pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        _ => Err(Error::flag("--dtype", format!("`{s}` is not f32, bf16 or f16"))),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    if let Ok(v) = std::env::var("RHO_FUSED_KERNELS") {
        crate::cuda::parse_fused(Some(&v)).map_err(|e| Error::flag("RHO_FUSED_KERNELS", e))?;
    }
    if let Ok(v) = std::env::var("RHO_CUDA_POOL") {
        crate::cuda::parse_pool(Some(&v)).map_err(|e| Error::flag("RHO_CUDA_POOL", e))?;
    }
    if let Ok(v) = std::env::var("RHO_RESIDUAL") {
        crate::model::transformer::residual_f32(Some(&v)).map_err(|e| Error::flag("RHO_RESIDUAL", e))?;
    }
    match cli.command {
        Command::Audit(a) => crate::audit::run_cli(&a),
        Command::Export(a) => crate::export::run_cli(&a),
        Command::Tui(a) => crate::tui::run(&a.study),
        Command::Bench(BenchCommand::Eval(a)) => crate::bench::run_bench_eval(&a).map(|_| ()),
        Command::Bench(BenchCommand::Train(a)) => crate::bench::run_bench_train(&a).map(|_| ()),
        Command::Bench(BenchCommand::Kernels(a)) => crate::cuda::check::run_bench_kernels(&a).map(|_| ()),
        Command::Bench(BenchCommand::Optim(a)) => crate::bench::run_bench_optim(&a).map(|_| ()),
        Command::Bench(BenchCommand::Load(a)) => crate::bench::run_bench_load(&a).map(|_| ()),
        Command::Eval(a) => {
            if a.batch_tokens == Some(0) {
                return Err(Error::flag("--batch-tokens", "must be positive"));
            }
            if a.max_tokens == Some(0) {
                return Err(Error::flag("--max-tokens", "must be positive"));
            }
            resolve_dtype(&a.dtype, &Device::Cpu)?; // a bad value is refused before anything runs
            let shard = a.shard.as_deref().map(str::parse::<eval::Shard>).transpose()?;
            if let Some(list) = &a.devices {
                let devices: Vec<String> = list.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect();
                if devices.is_empty() {
                    return Err(Error::flag("--devices", "give one or more devices, e.g. cuda:0,cuda:1"));
                }
                for d in &devices {
                    parse_device(d).map_err(|e| Error::flag("--devices", e.to_string()))?;
                }
                let exe = std::env::current_exe().map_err(|e| Error::msg(format!("cannot find the rho binary: {e}")))?;
                let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                let t = std::time::Instant::now();
                eval::devices::run_on_devices(&exe, &eval::devices::child_args(&args), &devices, a.quiet)?;
                let st = eval::status::study_status(&a.study)?;
                if !a.quiet {
                    eprintln!(
                        "rho eval: {} shards on {} in {:.1} s; {} checkpoints complete; study in {}",
                        devices.len(),
                        devices.join(","),
                        t.elapsed().as_secs_f64(),
                        st.checkpoints.iter().filter(|c| c.state != "incomplete" && c.state != "missing").count(),
                        a.study.display()
                    );
                }
                return Ok(());
            }
            let device = parse_device(&a.device)?;
            let dtype = resolve_dtype(&a.dtype, &device)?;
            let batch_tokens = a.batch_tokens.unwrap_or(if device.is_cuda() { 32768 } else { 4096 });
            if device.is_cpu() && dtype != DType::F32 && !a.quiet {
                eprintln!("warning: {} on CPU accumulates in low precision; f32 is recommended", a.dtype);
            }
            let opts = EvalOptions {
                checkpoints: a.checkpoints,
                data: a.data,
                study: a.study,
                tokenizer: a.tokenizer,
                text_field: a.text_field,
                device,
                dtype,
                batch_tokens,
                max_tokens: a.max_tokens,
                pack: a.pack,
                context: a.context,
                force: a.force,
                quiet: a.quiet,
                shard,
            };
            let r = eval::run_eval(&opts)?;
            if !a.quiet {
                eprintln!(
                    "rho eval: {} evaluated, {} skipped, {} tokens each, {:.1} s; study in {}",
                    r.evaluated.len(),
                    r.skipped.len(),
                    r.n_tokens,
                    r.seconds,
                    opts.study.display()
                );
            }
            Ok(())
        }
        Command::Status(a) => eval::status::run_status(&a.study, a.json).map(|_| ()),
        Command::Slurm(c) => crate::slurm::run(c),
        Command::Categorize(a) => {
            let opts = dynamics::CategorizeOptions { threshold: a.threshold, checkpoints: a.checkpoints };
            let summary = dynamics::categorize_study(&a.study, &opts)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| Error::msg(e.to_string()))?);
            } else {
                print!("{}", summary.table());
            }
            Ok(())
        }
        Command::Train(a) => {
            let resume = a.resume.clone();
            let quiet = a.quiet;
            let summary = match &resume {
                // A resumed run takes its settings from the checkpoint; --steps may extend it.
                Some(dir) => {
                    let ckpt = crate::train::checkpoint::resolve_resume(dir)?;
                    let mut cfg = crate::train::checkpoint::load_state(&ckpt)?.config;
                    a.check_resume(&mut cfg)?;
                    // The run continues in the folder that holds the checkpoint, unless --out says otherwise.
                    cfg.out = match a.out {
                        Some(out) => out,
                        None => ckpt.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| cfg.out.clone()),
                    };
                    crate::train::run_train(&cfg, Some(&ckpt))?
                }
                None => {
                    let force = a.force;
                    let cfg = a.merged()?.resolve()?;
                    crate::train::run_train_with(&cfg, None, force, None)?
                }
            };
            if let (Some(last), false) = (summary.checkpoints.last(), quiet) {
                eprintln!("rho train: step {} in {:.1} s; last checkpoint {}", summary.last_step, summary.seconds, last.display());
            }
            Ok(())
        }
        Command::Demo(a) => {
            let study = match a.study {
                Some(s) => s,
                None => {
                    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    std::env::temp_dir().join(format!("rho-demo-{secs}-{}", std::process::id()))
                }
            };
            eprintln!("rho demo: study in {}", study.display());
            let cfg = crate::demo::DemoConfig { seed: a.seed, quiet: a.quiet, ..Default::default() };
            let s = crate::demo::run_demo(&study, &cfg)?;
            println!("{}", s.categories.table());
            println!("{}", crate::demo::recovery_table(&s.recovery));
            println!("report: {}", s.report.display());
            println!("study: {}\ntime: {:.1} s", s.study.display(), s.seconds);
            if !a.no_tui && std::io::IsTerminal::is_terminal(&std::io::stdout()) { crate::tui::run(&s.study)?; }
            Ok(())
        }
        Command::Experiment(a) => {
            if a.seeds.is_empty() {
                return Err(Error::flag("--seeds", "give at least one seed"));
            }
            if !(a.corpus.is_empty() && a.reference_data.is_empty() && a.target.is_empty()) {
                let d = crate::demo::real::RealConfig::default();
                let cfg = crate::demo::real::RealConfig {
                    reference: a.reference_data,
                    exclude: a.exclude,
                    corpus: a.corpus,
                    target: a.target,
                    target_docs: a.target_docs.unwrap_or(d.target_docs),
                    seeds: a.seeds,
                    steps: a.steps.unwrap_or(d.steps),
                    ref_steps: a.ref_steps.unwrap_or(d.ref_steps),
                    quiet: a.quiet,
                    ..d
                };
                let r = crate::demo::real::run_real(&a.out, &cfg)?;
                println!("{}", r.summary_md);
                println!("results in {} ({:.0} s)", a.out.join("results").display(), r.seconds);
                return Ok(());
            }
            let cfg = crate::demo::experiment::ExperimentConfig {
                demo: crate::demo::DemoConfig { quiet: a.quiet, ..Default::default() },
                seeds: a.seeds,
                steps: a.steps.unwrap_or(96),
                ..Default::default()
            };
            let r = crate::demo::experiment::run_experiment(&a.out, &cfg)?;
            println!("{}", r.summary_md);
            println!("results in {} ({:.0} s)", a.out.join("results").display(), r.seconds);
            Ok(())
        }
        Command::Report(a) => {
            let r = crate::report::run_report_x(&a.study, a.out.as_deref(), a.x_axis)?;
            if !a.quiet {
                for c in &r.charts {
                    println!("{}", r.out.join(&c.file).display());
                }
                for n in &r.notes {
                    eprintln!("note: {n}");
                }
                println!("{}", r.index.display());
            }
            Ok(())
        }
        Command::Score(a) => {
            if a.batch_tokens == 0 {
                return Err(Error::flag("--batch-tokens", "must be positive"));
            }
            let device = parse_device(&a.device)?;
            let dtype = resolve_dtype(&a.dtype, &device)?;
            let ck = crate::model::Checkpoint::open(&a.model)?;
            let tok_path = a.tokenizer.clone().unwrap_or_else(|| a.model.join("tokenizer.json"));
            let tok = crate::data::Tok::from_file(&tok_path)?;
            let seq_len = a.seq_len.unwrap_or(ck.config.context_len().min(1024));
            if seq_len > ck.config.context_len() {
                return Err(Error::flag("--seq-len", format!("{seq_len} is longer than the model's context of {}", ck.config.context_len())));
            }
            let stream = crate::train::stream::Stream::build(
                &a.data, &a.text_field, &tok, tok.eos_id(ck.config.eos_token_id), seq_len, ck.config.vocab_size,
            )?;
            crate::train::reference::score_stream(&ck, &stream, &a.out, &device, dtype, a.batch_tokens, a.quiet)
        }
    }
}
