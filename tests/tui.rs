//! The TUI: `App` driven by events with no terminal, and snapshots of every view
//! drawn into ratatui's `TestBackend` (insta), on a small study built from the
//! committed fixtures (fixtures/llama step-0/100/200 on fixtures/data/val.jsonl).

mod common;
use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rho::tui::app::{App, Event, JobMsg, JobStatus, View};
use rho::tui::data::{RunInfo, Study};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;

/// Folder holding the fixture studies (built once per test binary).
fn base() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("rho-tui-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let eval = |study: &Path, cks: Vec<PathBuf>| {
            rho::eval::run_eval(&rho::eval::EvalOptions { quiet: true, ..rho::eval::EvalOptions::new(cks, val_data(), study.to_path_buf()) })
            .unwrap();
        };
        // a full study: 3 checkpoints, categorized
        let full = d.join("llama");
        eval(&full, vec![fixtures().join("llama")]);
        rho::dynamics::categorize_study(&full, &Default::default()).unwrap();
        // a study with no trajectories yet (2 checkpoints, not categorized)
        let bare = d.join("uncategorized");
        eval(&bare, vec![fixtures().join("llama/step-0"), fixtures().join("llama/step-100")]);
        // TinyLlama-named checkpoints (tokens seen in the names), categorized
        let series = d.join("tiny-series");
        std::fs::create_dir_all(&series).unwrap();
        for (name, fx) in [("TinyLlama-1.1B-step-50K-105b", "step-0"), ("TinyLlama-1.1B-intermediate-step-480k-1T", "step-100"), ("TinyLlama-1.1B-intermediate-step-715k-1.5T", "step-200")] {
            std::os::unix::fs::symlink(fixtures().join("llama").join(fx), series.join(name)).unwrap();
        }
        let tiny = d.join("tiny");
        eval(&tiny, vec![series]);
        rho::dynamics::categorize_study(&tiny, &Default::default()).unwrap();
        d
    })
}

fn open(name: &str) -> App {
    let (tx, _rx) = mpsc::channel();
    std::mem::forget(_rx);
    let mut app = App::new(Study::open(&base().join(name)).unwrap(), tx);
    app.spawn = false;
    app
}

/// The full study with the category means computed (what the background job sends).
fn full() -> App {
    with_means("llama")
}

fn with_means(name: &str) -> App {
    let mut app = open(name);
    let cats = app.study.traj.as_ref().unwrap().cat.clone();
    let m = rho::tui::data::category_means(&app.study.root, app.study.checkpoints(), &cats).unwrap();
    app.handle(Event::Job(JobMsg::Means(Ok(m))));
    app
}

fn key(app: &mut App, code: KeyCode) {
    app.handle(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)));
}

fn keys(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn render(app: &mut App, w: u16, h: u16) -> String {
    app.handle(Event::Resize(w, h));
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| rho::tui::ui::draw(f, app)).unwrap();
    format!("{}", t.backend())
}

// ---- App updated by events, no terminal ------------------------------------

/// The overview's checkpoint list scrolls when the terminal is too short for it.
#[test]
fn overview_checkpoint_list_scrolls() {
    let mut app = full();
    // 80x12 leaves room for one checkpoint row.
    let top = render(&mut app, 80, 12);
    assert!(top.contains("step-0 ") && !top.contains("step-200"), "{top}");
    assert!(top.contains("rows 1-1 of 3"), "{top}");
    key(&mut app, KeyCode::End);
    let bottom = render(&mut app, 80, 12);
    assert!(bottom.contains("step-200") && !bottom.contains("step-0 "), "{bottom}");
    assert!(bottom.contains("rows 3-3 of 3"), "{bottom}");
    key(&mut app, KeyCode::Up);
    assert_eq!(app.ck_scroll, 1);
    assert!(render(&mut app, 80, 12).contains("step-100"));
    // At full height every row shows, whatever the scroll.
    let all = render(&mut app, 80, 24);
    assert!(all.contains("step-0 ") && all.contains("step-100") && all.contains("step-200"), "{all}");
    assert!(!all.contains("rows "), "{all}");
}

#[test]
fn views_help_and_quit() {
    let mut app = full();
    assert_eq!(app.view, View::Overview);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.view, View::Tokens);
    key(&mut app, KeyCode::BackTab);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.view, View::Runs);
    key(&mut app, KeyCode::F(3));
    assert_eq!(app.view, View::Variance);
    key(&mut app, KeyCode::Char('?'));
    assert!(app.help);
    key(&mut app, KeyCode::Char('q')); // closes the help, does not quit
    assert!(!app.help && !app.quit);
    app.handle(Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    assert!(app.quit);
    let mut app = full();
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit);
}

#[test]
fn token_cursor_documents_filter_search_fluctuating() {
    let mut app = full();
    key(&mut app, KeyCode::Tab);
    let n = app.study.n_rows;
    assert!(n > 50 && app.study.n_docs() == 6, "{n} rows, {} docs", app.study.n_docs());
    assert_eq!(app.cursor, 0);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Char('l'));
    assert_eq!(app.cursor, 2);
    key(&mut app, KeyCode::Left);
    assert_eq!(app.cursor, 1);
    // documents
    key(&mut app, KeyCode::Char(']'));
    assert_eq!(app.cursor, app.study.doc_starts[1]);
    key(&mut app, KeyCode::Char('G'));
    assert_eq!(app.cursor, app.study.doc_starts[2] - 1);
    key(&mut app, KeyCode::Char('['));
    assert_eq!(app.cursor, 0);
    // line moves go down and come back
    app.handle(Event::Resize(80, 24));
    key(&mut app, KeyCode::Char(']'));
    key(&mut app, KeyCode::Char(']'));
    let start = app.cursor;
    key(&mut app, KeyCode::Char('j'));
    assert!(app.cursor > start, "j moves down a line");
    key(&mut app, KeyCode::Char('k'));
    assert_eq!(app.cursor, start);
    // filter by category: every visited token is in it
    let cats = app.study.traj.as_ref().unwrap().cat.clone();
    let target = cats[n / 2];
    keys(&mut app, &(target + 1).to_string());
    assert_eq!(app.filter, Some(target));
    for _ in 0..5 {
        key(&mut app, KeyCode::Right);
        assert_eq!(cats[app.cursor], target);
    }
    key(&mut app, KeyCode::Char('0'));
    assert_eq!(app.filter, None);
    // search
    key(&mut app, KeyCode::Char('/'));
    keys(&mut app, "$");
    key(&mut app, KeyCode::Enter);
    assert!(app.study.text(app.cursor).contains('$'), "{:?}", app.study.text(app.cursor));
    assert_eq!(app.query, "$");
    let first_hit = app.cursor;
    key(&mut app, KeyCode::Char('n'));
    assert!(app.cursor != first_hit && app.study.text(app.cursor).contains('$'));
    key(&mut app, KeyCode::Char('N'));
    assert_eq!(app.cursor, first_hit);
    // most fluctuating: f visits residual_std in decreasing order
    key(&mut app, KeyCode::Char('f'));
    let rs = app.study.traj.as_ref().unwrap().residual_std.clone();
    let first = app.cursor;
    assert_eq!(rs[first], rs.iter().cloned().fold(f32::MIN, f32::max));
    key(&mut app, KeyCode::Char('f'));
    assert!(rs[app.cursor] <= rs[first]);
    key(&mut app, KeyCode::Char('F'));
    assert_eq!(app.cursor, first);
    // the token has losses at every checkpoint, read lazily
    assert_eq!(app.study.losses(app.cursor).unwrap().len(), 3);
    let (c, why) = app.why(app.cursor).unwrap();
    assert_eq!(c.index() as u8, cats[app.cursor]);
    assert!(why.contains("ΔL"));
}

#[test]
fn variance_bins_list_and_open() {
    let mut app = full();
    key(&mut app, KeyCode::F(3));
    let total: u64 = app.var.counts.iter().flat_map(|b| b.iter()).sum();
    assert_eq!(total as usize, app.study.n_rows);
    key(&mut app, KeyCode::Enter);
    assert!(app.var.list_focus && !app.var.list.is_empty());
    key(&mut app, KeyCode::Down);
    let r = app.var.list[app.var.list_sel];
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Tokens);
    assert_eq!(app.cursor, r);
}

#[test]
fn run_form_adjusts_and_validates() {
    let mut app = full();
    key(&mut app, KeyCode::F(4));
    key(&mut app, KeyCode::Char('n'));
    let f = app.form.clone().unwrap();
    assert!(f.init.ends_with("step-200"), "{}", f.init);
    assert!(f.data.ends_with("val.jsonl"));
    key(&mut app, KeyCode::Down); // ratio
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Left);
    assert!((app.form.as_ref().unwrap().ratio - 0.65).abs() < 1e-9);
    key(&mut app, KeyCode::Down); // steps
    key(&mut app, KeyCode::Left);
    assert_eq!(app.form.as_ref().unwrap().steps, 24);
    // SLM without a reference is refused
    key(&mut app, KeyCode::Char('s'));
    assert!(app.form.is_some() && app.status.contains("reference"), "{}", app.status);
    // random selection needs none
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Char('s'));
    assert!(app.form.is_none(), "{}", app.status);
    assert_eq!(app.study.runs.len(), 1);
    let name = app.study.runs[0].name.clone();
    assert_eq!(name, "tui-random-1");
    assert_eq!(app.jobs.last().unwrap().status, JobStatus::Running);
    // job messages: metrics then finish
    let id = app.jobs.last().unwrap().id;
    let m: rho::train::StepMetrics = serde_json::from_str(
        r#"{"step":1,"loss_all":5.0,"loss_kept":4.0,"kept_frac":0.65,"excess_mean":null,"lr":0.001,"grad_norm":1.0,"tokens_per_s":100.0,"tokens_seen":10}"#,
    )
    .unwrap();
    app.handle(Event::Job(JobMsg::Metrics { id, run: name.clone(), metrics: vec![m] }));
    assert_eq!(app.study.runs[0].metrics.len(), 1);
    assert_eq!(app.jobs[id].done, 1);
    key(&mut app, KeyCode::Char('x'));
    assert!(app.jobs[id].cancel.load(std::sync::atomic::Ordering::SeqCst));
    app.handle(Event::Job(JobMsg::Finished { id, status: JobStatus::Cancelled, message: "cancelled at step 1".into() }));
    assert_eq!(app.jobs[id].status, JobStatus::Cancelled);
    assert_eq!(app.running_jobs(), 0);
}

// ---- snapshots --------------------------------------------------------------

#[test]
fn snapshot_overview() {
    let mut app = full();
    insta::assert_snapshot!("overview_80x24", render(&mut app, 80, 24));
    insta::assert_snapshot!("overview_120x32", render(&mut app, 120, 32));
}

#[test]
fn snapshot_tokens() {
    let mut app = full();
    key(&mut app, KeyCode::Tab);
    keys(&mut app, "]lll");
    insta::assert_snapshot!("tokens_80x24", render(&mut app, 80, 24));
    key(&mut app, KeyCode::Char('3'));
    insta::assert_snapshot!("tokens_filtered_120x32", render(&mut app, 120, 32));
}

#[test]
fn snapshot_variance() {
    let mut app = full();
    key(&mut app, KeyCode::F(3));
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!("variance_80x24", render(&mut app, 80, 24));
}

#[test]
fn snapshot_runs() {
    let mut app = full();
    key(&mut app, KeyCode::F(4));
    insta::assert_snapshot!("runs_empty_80x24", render(&mut app, 80, 24));
    // a run with fixed metrics
    let metrics = (1..=20)
        .map(|s| {
            serde_json::from_value(serde_json::json!({
                "step": s, "loss_all": 5.0 - 0.1 * s as f64, "loss_kept": 4.5 - 0.12 * s as f64, "kept_frac": 0.6,
                "excess_mean": 0.1, "lr": 0.001, "grad_norm": 1.0, "tokens_per_s": 1234.0, "tokens_seen": 100 * s
            }))
            .unwrap()
        })
        .collect();
    app.study.runs.push(RunInfo {
        name: "slm-0.6".into(),
        dir: app.study.root.join("runs/slm-0.6"),
        metrics,
        checkpoints: vec![],
        mode: "slm batch 0.60".into(),
        steps: Some(32),
    });
    insta::assert_snapshot!("runs_80x24", render(&mut app, 80, 24));
    key(&mut app, KeyCode::Char('n'));
    // the defaults are absolute paths here (the fixtures'): fixed values keep the snapshot portable
    let f = app.form.as_mut().unwrap();
    assert!(f.init.ends_with("fixtures/llama/step-200") && f.data.ends_with("fixtures/data/val.jsonl"));
    f.init = "runs/base/step-400".into();
    f.data = "data/noisy.jsonl".into();
    key(&mut app, KeyCode::Down);
    insta::assert_snapshot!("runs_form_80x24", render(&mut app, 80, 24));
}

#[test]
fn snapshot_help() {
    let mut app = full();
    key(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!("help_80x24", render(&mut app, 80, 24));
}

#[test]
fn snapshot_empty_states() {
    let mut app = open("uncategorized");
    assert!(app.study.traj.is_none());
    insta::assert_snapshot!("uncategorized_overview_80x24", render(&mut app, 80, 24));
    key(&mut app, KeyCode::Tab);
    insta::assert_snapshot!("uncategorized_tokens_80x24", render(&mut app, 80, 24));
    key(&mut app, KeyCode::Tab);
    insta::assert_snapshot!("uncategorized_variance_80x24", render(&mut app, 80, 24));
    let mut app = open("no-study-here");
    insta::assert_snapshot!("no_study_80x24", render(&mut app, 80, 24));
}

/// `t`: the charts over checkpoints against tokens seen, when every checkpoint records them.
#[test]
fn x_axis_step_or_tokens_seen() {
    let mut app = full();
    key(&mut app, KeyCode::Char('t'));
    assert_eq!(app.x_axis, rho::report::XAxis::Step);
    assert!(app.status.contains("tokens seen are not recorded for 3 of the 3 checkpoints"), "{}", app.status);

    let mut app = with_means("tiny");
    let names: Vec<&str> = app.study.checkpoints().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names[0], "TinyLlama-1.1B-step-50K-105b", "training order");
    let step = render(&mut app, 120, 32);
    assert!(step.contains("50000") && !step.contains("tokens seen"), "{step}");
    key(&mut app, KeyCode::Char('t'));
    assert_eq!(app.x_axis, rho::report::XAxis::Tokens);
    assert_eq!(rho::tui::ui::checkpoint_x(&app), (vec![0.105, 1.0, 1.5], "tokens (T)".to_string()));
    let tokens = render(&mut app, 120, 32);
    assert!(tokens.contains("tokens seen") && tokens.contains("105B") && tokens.contains("1.5T"), "{tokens}");
    assert_ne!(step, tokens);
    // the token view's chart: its ends are the tokens seen
    key(&mut app, KeyCode::Tab);
    let view = render(&mut app, 120, 32);
    assert!(view.contains("105B") && view.contains("1.5T"), "{view}");
    // exported against tokens seen too
    key(&mut app, KeyCode::Char('p'));
    assert!(app.status.starts_with("exported exports/"), "{}", app.status);
    key(&mut app, KeyCode::Char('t'));
    assert_eq!(app.x_axis, rho::report::XAxis::Step);
    assert_eq!(rho::tui::ui::checkpoint_x(&app).0, vec![50_000.0, 480_000.0, 715_000.0]);
}

/// `e` on the Overview evaluates the series' new checkpoint in the background
/// (progress messages), categorizes, and the app reads the study again.
#[test]
fn evaluate_new_checkpoints_in_the_background() {
    let dir = base().join("series");
    // step-100 is the new one: evaluated later, it falls into its place in the series.
    let cks = vec![fixtures().join("llama/step-0"), fixtures().join("llama/step-200")];
    rho::eval::run_eval(&rho::eval::EvalOptions { quiet: true, ..rho::eval::EvalOptions::new(cks, val_data(), dir.clone()) })
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let mut app = App::new(Study::open(&dir).unwrap(), tx);
    assert_eq!(app.study.new_checkpoints.len(), 1);
    assert!(app.study.traj.is_none());
    key(&mut app, KeyCode::Char('e'));
    assert_eq!(app.running_jobs(), 1);
    let t0 = std::time::Instant::now();
    let mut progress = 0;
    while app.running_jobs() > 0 && t0.elapsed().as_secs() < 120 {
        if let Ok(ev) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            if let Event::Job(JobMsg::Progress { done, .. }) = &ev {
                progress = *done;
            }
            app.handle(ev);
        }
    }
    assert_eq!(progress, 1);
    assert_eq!(app.jobs[0].status, JobStatus::Done, "{}", app.jobs[0].message);
    let names: Vec<&str> = app.study.checkpoints().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["step-0", "step-100", "step-200"]);
    assert!(app.study.traj.is_some() && app.study.new_checkpoints.is_empty());
}

#[test]
fn export_png_of_each_view() {
    let mut app = full();
    for v in 0..3 {
        key(&mut app, KeyCode::Char('p'));
        assert!(app.status.starts_with("exported exports/"), "view {v}: {}", app.status);
        let name = app.status.trim_start_matches("exported ").to_string();
        let b = std::fs::read(app.study.root.join(&name)).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        key(&mut app, KeyCode::Tab);
    }
}

#[test]
fn e2e_tmux_script() {
    let tmux = std::process::Command::new("tmux").arg("-V").output();
    if tmux.map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("tmux not installed: skipping the end-to-end test");
        return;
    }
    let o = std::process::Command::new("bash")
        .arg(root().join("scripts/tui_e2e.sh"))
        .env("RHO", env!("CARGO_BIN_EXE_rho"))
        .output()
        .unwrap();
    assert!(o.status.success(), "tui_e2e.sh failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// A study still being evaluated in shards opens with its complete checkpoints; the
/// incomplete one is listed with its parts, and the problem is shown on the frame.
#[test]
fn incomplete_sharded_study_opens_with_what_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("s");
    let eval = |cks: Vec<PathBuf>, shard: Option<rho::eval::Shard>| {
        rho::eval::run_eval(&rho::eval::EvalOptions { quiet: true, shard, ..rho::eval::EvalOptions::new(cks, val_data(), study.clone()) })
            .unwrap();
    };
    eval(vec![fixtures().join("llama/step-0"), fixtures().join("llama/step-100")], None);
    eval(vec![fixtures().join("llama")], Some(rho::eval::Shard { index: 0, count: 2 }));
    let st = Study::open(&study).unwrap();
    assert_eq!(st.checkpoints().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["step-0", "step-100"]);
    assert_eq!(st.incomplete, vec![("step-200".to_string(), Some(200), "1/2 parts".to_string())]);
    assert!(st.warnings.iter().any(|w| w.contains("missing shards 1")), "{:?}", st.warnings);
    let (tx, rx) = mpsc::channel();
    std::mem::forget(rx);
    let mut app = App::new(st, tx);
    app.spawn = false;
    let screen = render(&mut app, 120, 30);
    assert!(screen.contains("step-200") && screen.contains("1/2 parts"), "{screen}");
    assert!(screen.contains("⚠ incomplete: checkpoint `step-200`"), "{screen}");
    assert_eq!(screen.matches("step-200").count(), 2, "listed once (plus the warning), not also as new: {screen}");
}
