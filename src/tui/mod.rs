//! `rho tui`: the interactive terminal app (ratatui + crossterm).
//!
//! - [`app::App`] is plain data updated by [`app::App::handle`] with one
//!   [`app::Event`] type for keys, resizes and job messages;
//! - [`ui::draw`] renders `&App` (tests draw into ratatui's `TestBackend`);
//! - [`jobs`] run training, evaluation and categorization on threads and report
//!   through the event channel;
//! - [`data::Study`] reads the study lazily (see its docs).
//!
//! The terminal is restored on exit, on error, on panic (a panic hook) and on
//! Ctrl-C (a key in raw mode).

pub mod app;
pub mod data;
pub mod export;
pub mod jobs;
pub mod ui;

use crate::error::{Error, Result};
use app::{App, Event, JobKind, JobMsg, JobStatus};
use crossterm::event::{self as cev, Event as CEvent};
use crossterm::execute;
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("terminal: {e}"))
}

/// Put the terminal back: leave raw mode and the alternate screen, show the cursor.
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

struct Guard;
impl Drop for Guard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Open `study` in the TUI until the user quits.
pub fn run(study: &Path) -> Result<()> {
    let t0 = Instant::now();
    let s = data::Study::open(study)?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (tx, rx) = mpsc::channel::<Event>();
    let mut app = App::new(s, tx.clone());
    if std::env::var_os("RHO_TUI_TIMING").is_some() {
        app.status = format!("opened in {open_ms:.0} ms");
    }

    // Restore the terminal on panic (of the UI thread: job threads catch theirs).
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            restore_terminal();
        }
        prev(info);
    }));
    enable_raw_mode().map_err(io_err)?;
    let _guard = Guard;
    execute!(std::io::stdout(), EnterAlternateScreen).map_err(io_err)?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(io_err)?;
    let size = term.size().map_err(io_err)?;
    app.handle(Event::Resize(size.width, size.height));
    app.start_background();

    // Keys and resizes from crossterm, and a tick, into the app's channel.
    let itx = tx.clone();
    std::thread::spawn(move || loop {
        let ev = match cev::poll(Duration::from_millis(250)) {
            Ok(true) => match cev::read() {
                Ok(CEvent::Key(k)) => Event::Key(k),
                Ok(CEvent::Resize(w, h)) => Event::Resize(w, h),
                Ok(_) => continue,
                Err(_) => break,
            },
            Ok(false) => Event::Tick,
            Err(_) => break,
        };
        if itx.send(ev).is_err() {
            break;
        }
    });

    let timing = std::env::var_os("RHO_TUI_TIMING").is_some();
    let mut frame_ms: Vec<f64> = Vec::new();
    loop {
        term.draw(|f| ui::draw(f, &app)).map_err(io_err)?;
        let ev = rx.recv().map_err(|_| Error::msg("the event channel closed"))?;
        let t = Instant::now();
        let is_key = matches!(ev, Event::Key(_));
        app.handle(ev);
        while let Ok(ev) = rx.try_recv() {
            app.handle(ev);
        }
        if app.quit {
            break;
        }
        if timing && is_key {
            term.draw(|f| ui::draw(f, &app)).map_err(io_err)?;
            frame_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }

    // Running training jobs are cancelled: each saves a checkpoint at its next step.
    let running: Vec<usize> = app
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Running && matches!(j.kind, JobKind::Train { .. }))
        .map(|j| {
            j.cancel.store(true, Ordering::SeqCst);
            j.id
        })
        .collect();
    drop(_guard);
    if !running.is_empty() {
        eprintln!("rho tui: stopping {} run(s); each saves a checkpoint…", running.len());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut left = running.len();
        while left > 0 && Instant::now() < deadline {
            if let Ok(Event::Job(JobMsg::Finished { id, .. })) = rx.recv_timeout(Duration::from_millis(200)) {
                if running.contains(&id) {
                    left -= 1;
                }
            }
        }
    }
    if timing && !frame_ms.is_empty() {
        frame_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p = |q: f64| frame_ms[((frame_ms.len() as f64 - 1.0) * q).round() as usize];
        eprintln!(
            "rho tui: opened in {open_ms:.0} ms; key+frame over {} keys: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            frame_ms.len(),
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
    Ok(())
}
