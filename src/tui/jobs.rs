//! Background jobs of the TUI: training runs, evaluations, categorization and
//! the category means. Each runs on its own thread and reports through the
//! app's event channel.

use super::app::{Event, JobMsg, JobStatus, RunForm, RunMode};
use super::data::{self, Study};
use crate::dynamics::{categorize_study, CategorizeOptions};
use crate::eval::study::{CheckpointEntry, Manifest};
use crate::eval::{run_eval, EvalOptions};
use crate::train::{TrainConfig, TrainMode};
use candle_core::DType;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

fn send(tx: &Sender<Event>, m: JobMsg) {
    let _ = tx.send(Event::Job(m));
}

fn finished(tx: &Sender<Event>, id: usize, status: JobStatus, message: String) {
    send(tx, JobMsg::Finished { id, status, message });
}

/// The training configuration of a run started from the form. The demo's
/// sizes when the study is a demo study (it has data/config.json), otherwise
/// the model's context.
pub fn train_config(root: &Path, f: &RunForm, data: PathBuf, init: PathBuf, reference: Option<PathBuf>, out: PathBuf) -> TrainConfig {
    let demo = crate::demo::DemoConfig { quiet: true, ..Default::default() };
    let mut c = crate::demo::train_cfg(&demo, data, out, f.steps);
    if !root.join("data").join("config.json").exists() {
        c.seq_len = None;
    }
    c.init = Some(init);
    c.save_every = (f.steps / 4).max(1);
    c.mask_every = f.steps;
    c.warmup = 0;
    c.ratio = f.ratio;
    c.quiet = true;
    match f.mode {
        RunMode::Clm => c.mode = TrainMode::Clm,
        RunMode::Slm => {
            c.mode = TrainMode::Slm;
            c.reference = reference;
        }
        RunMode::Random => {
            c.mode = TrainMode::Slm;
            c.select = crate::select::Select::Random;
        }
    }
    c
}

/// New complete lines of a growing file from `offset`.
fn tail(path: &Path, offset: &mut u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    match s.rfind('\n') {
        Some(i) => {
            *offset += i as u64 + 1;
            s.truncate(i + 1);
            s
        }
        None => String::new(),
    }
}

/// Train on a thread; a watcher sends new metrics.jsonl lines as they come.
pub fn spawn_train(id: usize, run: String, cfg: TrainConfig, cancel: Arc<AtomicBool>, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let metrics = cfg.out.join("metrics.jsonl");
        let c2 = cancel.clone();
        let cfg2 = cfg.clone();
        let h = std::thread::spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::train::run_train_cancellable(&cfg2, None, Some(&c2))))
        });
        let mut off = 0u64;
        loop {
            let done = h.is_finished();
            let m = data::parse_metrics(&tail(&metrics, &mut off));
            if !m.is_empty() {
                send(&tx, JobMsg::Metrics { id, run: run.clone(), metrics: m });
            }
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match h.join() {
            Ok(Ok(Ok(s))) if s.interrupted => finished(&tx, id, JobStatus::Cancelled, format!("cancelled at step {}", s.last_step)),
            Ok(Ok(Ok(s))) => finished(&tx, id, JobStatus::Done, format!("done: {} steps in {:.0} s", s.last_step, s.seconds)),
            Ok(Ok(Err(e))) => finished(&tx, id, JobStatus::Failed, format!("failed: {e}")),
            _ => finished(&tx, id, JobStatus::Failed, "failed: the training thread panicked".into()),
        }
    });
}

/// Evaluation options matching the study's settings, for one checkpoint.
fn eval_opts(ck: &Path, target: &Path, m: &Manifest) -> EvalOptions {
    let s = &m.settings;
    let dtype = match s["dtype"].as_str().unwrap_or("f32") {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::F32,
    };
    EvalOptions {
        text_field: s["text_field"].as_str().unwrap_or("text").to_string(),
        dtype,
        batch_tokens: 8192,
        max_tokens: s["max_tokens"].as_u64().map(|v| v as usize),
        pack: s["pack"].as_bool().unwrap_or(false),
        context: s["context"].as_u64().map(|v| v as usize),
        quiet: true,
        ..EvalOptions::new(vec![ck.to_path_buf()], m.data.clone(), target.to_path_buf())
    }
}

/// Evaluate checkpoints one by one (progress per checkpoint) into `target`, then
/// categorize it; with `reload`, read the study (`target`) again for the app.
pub fn spawn_eval(id: usize, cks: Vec<PathBuf>, target: PathBuf, m: &Manifest, reload: bool, tx: Sender<Event>) {
    let m = m.clone();
    std::thread::spawn(move || {
        let total = cks.len();
        for (i, ck) in cks.iter().enumerate() {
            if let Err(e) = run_eval(&eval_opts(ck, &target, &m)) {
                finished(&tx, id, JobStatus::Failed, format!("failed on {}: {e}", ck.file_name().unwrap_or_default().to_string_lossy()));
                return;
            }
            send(&tx, JobMsg::Progress { id, done: i + 1, total });
        }
        let n = Manifest::load(&target).map(|m| m.checkpoints.len()).unwrap_or(0);
        let mut msg = format!("evaluated {total} checkpoints");
        if n >= 2 {
            match categorize_study(&target, &CategorizeOptions::default()) {
                Ok(_) => msg.push_str(", categorized"),
                Err(e) => msg.push_str(&format!(", categorize failed: {e}")),
            }
        }
        if reload {
            match Study::open(&target) {
                Ok(s) => send(&tx, JobMsg::StudyReloaded(Box::new(s))),
                Err(e) => msg.push_str(&format!(", reload failed: {e}")),
            }
        }
        finished(&tx, id, JobStatus::Done, msg);
    });
}

pub fn spawn_categorize(id: usize, root: PathBuf, tx: Sender<Event>) {
    std::thread::spawn(move || match categorize_study(&root, &CategorizeOptions::default()) {
        Ok(s) => {
            match Study::open(&root) {
                Ok(st) => send(&tx, JobMsg::StudyReloaded(Box::new(st))),
                Err(e) => return finished(&tx, id, JobStatus::Failed, format!("reload failed: {e}")),
            }
            finished(&tx, id, JobStatus::Done, format!("{} tokens categorized", s.total));
        }
        Err(e) => finished(&tx, id, JobStatus::Failed, format!("failed: {e}")),
    });
}

pub fn spawn_means(id: usize, root: PathBuf, ckpts: Vec<CheckpointEntry>, cats: Vec<u8>, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let r = data::category_means(&root, &ckpts, &cats).map_err(|e| e.to_string());
        let ok = r.is_ok();
        send(&tx, JobMsg::Means(r));
        finished(&tx, id, if ok { JobStatus::Done } else { JobStatus::Failed }, "means".into());
    });
}

/// Read one chunk of token texts and losses on a thread.
pub fn spawn_chunk(root: PathBuf, ckpts: Vec<CheckpointEntry>, n_rows: usize, k: usize, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let (chunk, warnings) = data::read_chunk(&root, &ckpts, n_rows, k);
        send(&tx, JobMsg::Chunk { k, chunk: Box::new(chunk), warnings });
    });
}

/// Read every token text on a thread (for search and the variance lists).
pub fn spawn_texts(root: PathBuf, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let r = data::read_all_texts(&root).map_err(|e| e.to_string());
        send(&tx, JobMsg::Texts(r));
    });
}
