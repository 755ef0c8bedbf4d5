//! Speed of the TUI on a large study (ignored by default; needs a study):
//!
//! ```sh
//! cargo run --release --example synth_study -- --out /tmp/synth1m --tokens 1000000 --checkpoints 16
//! RHO_TUI_BENCH_STUDY=/tmp/synth1m cargo test --release --test tui_bench -- --ignored --nocapture
//! ```
//!
//! Measures the time to open the study (`Study::open` + `App::new`) and, for a
//! scripted sequence of keys over every view, the time to handle each key and draw
//! a frame into a 120x40 `TestBackend` (p50 / p99 / max).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rho::tui::app::{App, Event, JobMsg};
use rho::tui::data::Study;
use std::time::Instant;

#[test]
#[ignore]
fn tui_speed() {
    let Some(dir) = std::env::var_os("RHO_TUI_BENCH_STUDY") else {
        eprintln!("set RHO_TUI_BENCH_STUDY to a study folder");
        return;
    };
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut app = App::new(Study::open(std::path::Path::new(&dir)).unwrap(), tx);
    let open = t0.elapsed().as_secs_f64();
    app.start_background();
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    app.handle(Event::Resize(120, 40));
    term.draw(|f| rho::tui::ui::draw(f, &app)).unwrap();
    let first = t0.elapsed().as_secs_f64();
    eprintln!("{} tokens, {} checkpoints: open {:.3} s, first frame at {:.3} s", app.study.n_rows, app.study.checkpoints().len(), open, first);
    // wait for the background means (the overview chart)
    let tm = Instant::now();
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Event::Job(JobMsg::Means(m))) => {
                app.handle(Event::Job(JobMsg::Means(m)));
                break;
            }
            Ok(ev) => app.handle(ev),
            Err(_) => break,
        }
    }
    eprintln!("category means in the background: {:.3} s", tm.elapsed().as_secs_f64());

    let mut script: Vec<KeyCode> = vec![KeyCode::Tab];
    for _ in 0..200 {
        script.push(KeyCode::Char('l'));
    }
    for _ in 0..50 {
        script.extend([KeyCode::Char('j'), KeyCode::Char('j'), KeyCode::Char('k')]);
    }
    for _ in 0..100 {
        script.push(KeyCode::Char(']'));
    }
    script.push(KeyCode::Char('3'));
    for _ in 0..100 {
        script.push(KeyCode::Char('l'));
    }
    for _ in 0..20 {
        script.push(KeyCode::Char('f'));
    }
    script.push(KeyCode::Char('0'));
    script.extend([KeyCode::Char('/'), KeyCode::Char('t'), KeyCode::Char('h'), KeyCode::Char('e'), KeyCode::Enter]);
    script.extend([KeyCode::Char('n'), KeyCode::Char('n'), KeyCode::Char('N')]);
    for _ in 0..50 {
        script.push(KeyCode::Char('['));
    }
    script.extend([KeyCode::F(3), KeyCode::Down, KeyCode::Down, KeyCode::Down, KeyCode::Enter, KeyCode::Down, KeyCode::Esc]);
    script.extend([KeyCode::F(4), KeyCode::F(1), KeyCode::Char('?'), KeyCode::Esc, KeyCode::F(2)]);
    let mut times = Vec::new();
    let mut slow: Vec<(f64, String)> = Vec::new();
    for k in script {
        let t = Instant::now();
        app.handle(Event::Key(KeyEvent::new(k, KeyModifiers::NONE)));
        term.draw(|f| rho::tui::ui::draw(f, &app)).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if ms > 30.0 {
            slow.push((ms, format!("{k:?}")));
        }
        times.push(ms);
        // what the key asked for in the background (chunks of texts and losses)
        // arrives as events: each is handled and drawn, and timed as a frame too
        while !app.study.pending.is_empty() || app.pending_search.is_some() || (app.var.list_focus && app.study.all_texts.is_none()) {
            let Ok(ev) = rx.recv_timeout(std::time::Duration::from_secs(10)) else { break };
            let t = Instant::now();
            app.handle(ev);
            term.draw(|f| rho::tui::ui::draw(f, &app)).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if ms > 30.0 {
                slow.push((ms, "background event".into()));
            }
            times.push(ms);
        }
    }
    let mut s = times.clone();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    eprintln!("event+frame over {} events (keys and background results): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", s.len(), q(0.5), q(0.99), q(1.0));
    eprintln!("keys over 30 ms: {slow:?}");
}
