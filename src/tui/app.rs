//! The TUI's state: plain data updated by [`App::handle`]; drawing is
//! [`super::ui::draw`] of `&App`. Keys and job messages come as one [`Event`].

use crate::report::data::XAxis;
use super::data::{RunInfo, Study};
use super::jobs;
use crate::dynamics::{category_of, Category};
use crate::train::StepMetrics;
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// Everything the app reacts to.
#[derive(Debug)]
pub enum Event {
    Key(KeyEvent),
    Resize(u16, u16),
    /// A timer tick (animations; nothing depends on it).
    Tick,
    Job(JobMsg),
}

/// Messages from background jobs.
#[derive(Debug)]
pub enum JobMsg {
    /// New metrics.jsonl lines of a training run.
    Metrics { id: usize, run: String, metrics: Vec<StepMetrics> },
    /// `done` of `total` units (checkpoints) finished.
    Progress { id: usize, done: usize, total: usize },
    /// The job ended; `message` says how.
    Finished { id: usize, status: JobStatus, message: String },
    /// The study was changed on disk (eval, categorize) and read again.
    StudyReloaded(Box<Study>),
    /// Mean loss per category at each checkpoint.
    Means(std::result::Result<Vec<[Option<f64>; 4]>, String>),
    /// Every token text and the same lower-cased, read in the background.
    Texts(std::result::Result<(Vec<String>, Vec<String>), String>),
    /// A chunk of token texts and losses, read in the background.
    Chunk { k: usize, chunk: Box<super::data::Chunk>, warnings: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Tokens,
    Variance,
    Runs,
}

impl View {
    pub const ALL: [View; 4] = [View::Overview, View::Tokens, View::Variance, View::Runs];
    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Tokens => "Tokens",
            View::Variance => "Variance",
            View::Runs => "Runs",
        }
    }
    fn index(self) -> usize {
        View::ALL.iter().position(|&v| v == self).unwrap()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    Done,
    Cancelled,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    Train { run: String },
    Eval { target: String },
    Categorize,
    Means,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: usize,
    pub kind: JobKind,
    pub label: String,
    pub status: JobStatus,
    pub done: usize,
    pub total: usize,
    pub message: String,
    pub cancel: Arc<AtomicBool>,
}

/// Selection rule of a run started from the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Clm,
    Slm,
    Random,
}

impl RunMode {
    pub fn name(self) -> &'static str {
        match self {
            RunMode::Clm => "clm",
            RunMode::Slm => "slm",
            RunMode::Random => "random",
        }
    }
}

/// The "start a run" form.
#[derive(Debug, Clone)]
pub struct RunForm {
    pub mode: RunMode,
    pub ratio: f64,
    pub steps: u64,
    pub init: String,
    pub reference: String,
    pub data: String,
    /// Focused field: 0 mode, 1 ratio, 2 steps, 3 init, 4 reference, 5 data, 6 start.
    pub field: usize,
}

pub const FORM_FIELDS: usize = 7;

/// What a line of text input is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Search,
    FormField(usize),
}

#[derive(Debug, Clone)]
pub struct Input {
    pub kind: InputKind,
    pub text: String,
}

/// Variance view state: residual_std histogram per category.
#[derive(Debug, Clone, Default)]
pub struct VarState {
    /// counts[bin][category]
    pub counts: Vec<[u64; 4]>,
    pub lo: f64,
    pub hi: f64,
    pub bin: usize,
    /// Rows of the listed bin (by residual_std, highest first), capped.
    pub list: Vec<usize>,
    pub list_sel: usize,
    pub list_focus: bool,
}

pub const VAR_BINS: usize = 12;
const LIST_CAP: usize = 500;
/// Rows laid out at once in the token browser (a "page" of a long document).
pub const PAGE: usize = 1024;

pub struct App {
    pub study: Study,
    pub view: View,
    pub help: bool,
    pub size: (u16, u16),
    /// Row of the token under the cursor.
    pub cursor: usize,
    /// Only tokens of this category are visited (index in Category::ALL).
    pub filter: Option<u8>,
    pub input: Option<Input>,
    pub query: String,
    /// Rows by residual_std (highest first) within the filter, and where `f` is.
    pub fluct: Vec<usize>,
    pub fluct_pos: Option<usize>,
    pub var: VarState,
    pub runs_sel: usize,
    /// First checkpoint row shown in the overview (clamped when drawn).
    pub ck_scroll: usize,
    pub form: Option<RunForm>,
    pub jobs: Vec<Job>,
    pub status: String,
    pub quit: bool,
    pub exports: usize,
    tx: Sender<Event>,
    /// A search waiting for the token texts (its direction).
    pub pending_search: Option<bool>,
    texts_requested: bool,
    /// Start jobs on threads (false in tests that only look at the state).
    pub spawn: bool,
    /// The x-axis of the charts over checkpoints (`t` toggles step / tokens seen).
    pub x_axis: XAxis,
}

pub fn cat_of(i: u8) -> Category {
    Category::ALL[(i as usize).min(3)]
}

impl App {
    pub fn new(study: Study, tx: Sender<Event>) -> App {
        let mut app = App {
            study,
            view: View::Overview,
            help: false,
            size: (80, 24),
            cursor: 0,
            filter: None,
            input: None,
            query: String::new(),
            fluct: Vec::new(),
            fluct_pos: None,
            var: VarState::default(),
            runs_sel: 0,
            ck_scroll: 0,
            form: None,
            jobs: Vec::new(),
            status: String::new(),
            quit: false,
            exports: 0,
            tx,
            pending_search: None,
            texts_requested: false,
            spawn: true,
            x_axis: XAxis::Step,
        };
        app.after_study_change();
        app
    }

    fn after_study_change(&mut self) {
        self.cursor = self.cursor.min(self.study.n_rows.saturating_sub(1));
        self.fluct.clear();
        self.fluct_pos = None;
        self.var = self.compute_var();
        self.set_cursor(self.cursor);
        if self.study.manifest.is_none() {
            self.status = "no study here: see the Overview for how to make one".into();
        } else if self.study.traj.is_none() {
            self.status = "no trajectories yet: press c to categorize".into();
        }
    }

    /// Start computing what is slow at open (category means) in the background.
    pub fn start_background(&mut self) {
        if let Some(cats) = self.study.traj.as_ref().map(|t| t.cat.clone()) {
            let ckpts = self.study.checkpoints().to_vec();
            if !ckpts.is_empty() && self.study.cat_means.is_none() {
                let id = self.add_job(JobKind::Means, "mean loss per category".into(), ckpts.len());
                if self.spawn {
                    jobs::spawn_means(id, self.study.root.clone(), ckpts, cats, self.tx.clone());
                }
            }
        }
    }

    fn add_job(&mut self, kind: JobKind, label: String, total: usize) -> usize {
        let id = self.jobs.len();
        self.jobs.push(Job {
            id,
            kind,
            label,
            status: JobStatus::Running,
            done: 0,
            total,
            message: String::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        });
        id
    }

    pub fn running_jobs(&self) -> usize {
        self.jobs.iter().filter(|j| j.status == JobStatus::Running && j.kind != JobKind::Means).count()
    }

    /// Update the state with one event.
    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Key(k) => {
                if k.kind != KeyEventKind::Release {
                    self.key(k)
                }
            }
            Event::Resize(w, h) => self.size = (w, h),
            Event::Tick => {}
            Event::Job(m) => self.job_msg(m),
        }
    }

    fn job_msg(&mut self, m: JobMsg) {
        match m {
            JobMsg::Metrics { id, run, metrics } => {
                if let Some(j) = self.jobs.get_mut(id) {
                    if let Some(last) = metrics.last() {
                        j.done = last.step as usize;
                    }
                }
                let r = match self.study.runs.iter_mut().find(|r| r.name == run) {
                    Some(r) => r,
                    None => {
                        self.study.runs.push(RunInfo { name: run.clone(), dir: self.study.root.join("runs").join(&run), ..Default::default() });
                        self.study.runs.last_mut().unwrap()
                    }
                };
                r.metrics.extend(metrics);
            }
            JobMsg::Progress { id, done, total } => {
                if let Some(j) = self.jobs.get_mut(id) {
                    j.done = done;
                    j.total = total;
                }
            }
            JobMsg::Finished { id, status, message } => {
                if let Some(j) = self.jobs.get_mut(id) {
                    j.status = status;
                    j.message = message.clone();
                    if let JobKind::Train { run } = &j.kind {
                        let dir = self.study.root.join("runs").join(run);
                        let mut info = super::data::read_run(&dir);
                        if let Some(r) = self.study.runs.iter_mut().find(|r| &r.name == run) {
                            if info.mode == "?" {
                                info.mode = std::mem::take(&mut r.mode);
                                info.steps = r.steps;
                            }
                            *r = info;
                        }
                    }
                    if j.kind != JobKind::Means {
                        self.status = format!("{}: {}", j.label, message);
                    }
                }
            }
            JobMsg::StudyReloaded(s) => {
                let runs = std::mem::take(&mut self.study.runs);
                self.study = *s;
                // keep live metrics of running runs
                for r in runs {
                    if !self.study.runs.iter().any(|x| x.name == r.name) {
                        self.study.runs.push(r);
                    }
                }
                self.after_study_change();
                self.start_background();
            }
            JobMsg::Texts(r) => {
                self.texts_requested = false;
                match r {
                    Ok((v, l)) => {
                        self.study.all_texts = Some(v);
                        self.study.all_lower = Some(l);
                        if let Some(fwd) = self.pending_search.take() {
                            self.search(fwd);
                        } else if self.status.starts_with("reading") {
                            self.status.clear();
                        }
                    }
                    Err(e) => self.status = format!("cannot read the token texts: {e}"),
                }
            }
            JobMsg::Chunk { k, chunk, warnings } => {
                self.study.warnings.extend(warnings);
                let cur = self.cursor / super::data::CHUNK;
                self.study.insert_chunk(k, *chunk, cur);
            }
            JobMsg::Means(r) => match r {
                Ok(v) => self.study.cat_means = Some(v),
                Err(e) => self.study.warnings.push(e),
            },
        }
    }

    fn key(&mut self, k: KeyEvent) {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            self.quit = true;
            return;
        }
        if self.input.is_some() {
            self.input_key(k);
            return;
        }
        if self.help {
            if matches!(k.code, KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter) {
                self.help = false;
            }
            return;
        }
        if self.form.is_some() {
            self.form_key(k);
            return;
        }
        match k.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return;
            }
            KeyCode::Char('?') => {
                self.help = true;
                return;
            }
            KeyCode::Tab => {
                self.view = View::ALL[(self.view.index() + 1) % 4];
                self.on_view();
                return;
            }
            KeyCode::BackTab => {
                self.view = View::ALL[(self.view.index() + 3) % 4];
                self.on_view();
                return;
            }
            KeyCode::F(n) if (1..=4).contains(&n) => {
                self.view = View::ALL[n as usize - 1];
                self.on_view();
                return;
            }
            KeyCode::Char('p') => {
                self.export();
                return;
            }
            KeyCode::Char('t') => {
                self.toggle_x_axis();
                return;
            }
            KeyCode::Char('c') if self.study.traj.is_none() && self.study.manifest.is_some() => {
                self.start_categorize();
                return;
            }
            _ => {}
        }
        match self.view {
            View::Overview => self.overview_key(k),
            View::Tokens => self.tokens_key(k),
            View::Variance => self.variance_key(k),
            View::Runs => self.runs_key(k),
        }
    }

    fn on_view(&mut self) {
        if self.view == View::Tokens {
            self.set_cursor(self.cursor);
        }
    }

    fn input_key(&mut self, k: KeyEvent) {
        let Some(inp) = self.input.as_mut() else { return };
        match k.code {
            KeyCode::Esc => self.input = None,
            KeyCode::Backspace => {
                inp.text.pop();
            }
            KeyCode::Char(c) => inp.text.push(c),
            KeyCode::Enter => {
                let inp = self.input.take().unwrap();
                match inp.kind {
                    InputKind::Search => {
                        self.query = inp.text;
                        self.search(true);
                    }
                    InputKind::FormField(i) => {
                        if let Some(f) = self.form.as_mut() {
                            match i {
                                3 => f.init = inp.text,
                                4 => f.reference = inp.text,
                                5 => f.data = inp.text,
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // ---- Overview ------------------------------------------------------

    fn overview_key(&mut self, k: KeyEvent) {
        // The checkpoint list scrolls (a Pythia-style series has 150 checkpoints).
        let rows = self.study.checkpoints().len() + self.study.new_checkpoints.len();
        let last = rows.saturating_sub(1);
        match k.code {
            KeyCode::Char('e') => self.start_series_eval(),
            KeyCode::Down | KeyCode::Char('j') => self.ck_scroll = (self.ck_scroll + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => self.ck_scroll = self.ck_scroll.saturating_sub(1),
            KeyCode::PageDown => self.ck_scroll = (self.ck_scroll + 10).min(last),
            KeyCode::PageUp => self.ck_scroll = self.ck_scroll.saturating_sub(10),
            KeyCode::Home | KeyCode::Char('g') => self.ck_scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.ck_scroll = last,
            _ => {}
        }
    }

    /// `t`: the charts over checkpoints against step or tokens seen (when every checkpoint records them).
    pub fn toggle_x_axis(&mut self) {
        if self.x_axis == XAxis::Tokens {
            self.x_axis = XAxis::Step;
            self.status = "x-axis: training step".into();
            return;
        }
        let ck = self.study.checkpoints();
        let missing = ck.iter().filter(|c| c.tokens_seen.is_none()).count();
        if ck.is_empty() || missing > 0 {
            self.status = format!("tokens seen are not recorded for {missing} of the {} checkpoints: the x-axis stays on the step", ck.len());
            return;
        }
        self.x_axis = XAxis::Tokens;
        self.status = "x-axis: training tokens seen".into();
    }

    fn start_categorize(&mut self) {
        if self.jobs.iter().any(|j| j.status == JobStatus::Running && matches!(j.kind, JobKind::Categorize | JobKind::Eval { .. })) {
            self.status = "a categorize or eval job is already running".into();
            return;
        }
        let id = self.add_job(JobKind::Categorize, "categorize".into(), 1);
        self.status = "categorizing…".into();
        if self.spawn {
            jobs::spawn_categorize(id, self.study.root.clone(), self.tx.clone());
        }
    }

    fn start_series_eval(&mut self) {
        if self.study.new_checkpoints.is_empty() {
            self.status = "no new checkpoints of the series to evaluate".into();
            return;
        }
        if self.jobs.iter().any(|j| j.status == JobStatus::Running && matches!(j.kind, JobKind::Categorize | JobKind::Eval { .. })) {
            self.status = "an eval job is already running".into();
            return;
        }
        let Some(m) = self.study.manifest.clone() else { return };
        let cks = self.study.new_checkpoints.clone();
        let id = self.add_job(JobKind::Eval { target: "study".into() }, format!("eval {} new checkpoints", cks.len()), cks.len());
        self.status = format!("evaluating {} new checkpoints in the background", cks.len());
        if self.spawn {
            jobs::spawn_eval(id, cks, self.study.root.clone(), &m, true, self.tx.clone());
        }
    }

    // ---- Token browser -------------------------------------------------

    fn matches(&self, row: usize) -> bool {
        match (self.filter, &self.study.traj) {
            (Some(f), Some(t)) => t.cat.get(row) == Some(&f),
            _ => true,
        }
    }

    /// Next row from `from` (exclusive) in direction `dir` that passes the filter.
    fn step_filtered(&self, from: usize, forward: bool) -> Option<usize> {
        let n = self.study.n_rows;
        if forward {
            (from + 1..n).find(|&r| self.matches(r))
        } else {
            (0..from).rev().find(|&r| self.matches(r))
        }
    }

    pub fn set_cursor(&mut self, row: usize) {
        if self.study.n_rows == 0 {
            return;
        }
        self.cursor = row.min(self.study.n_rows - 1);
        let d = self.study.doc_of(self.cursor);
        let (lo, hi) = self.page_range(d);
        if !self.spawn {
            self.study.ensure_rows(lo, hi);
            return;
        }
        // read what is missing in the background: the frame shows "loading…" meanwhile
        let ckpts = self.study.checkpoints().to_vec();
        for k in self.study.missing_chunks(lo, hi) {
            if self.study.pending.insert(k) {
                jobs::spawn_chunk(self.study.root.clone(), ckpts.clone(), self.study.n_rows, k, self.tx.clone());
            }
        }
    }

    /// Rows laid out around the cursor: the page of its document that holds it.
    pub fn page_range(&self, d: usize) -> (usize, usize) {
        let (s, e) = self.study.doc_range(d);
        let lo = s + (self.cursor.saturating_sub(s) / PAGE) * PAGE;
        (lo, (lo + PAGE).min(e))
    }

    fn tokens_key(&mut self, k: KeyEvent) {
        let n = self.study.n_rows;
        if n == 0 {
            return;
        }
        match k.code {
            KeyCode::Right | KeyCode::Char('l') => match self.step_filtered(self.cursor, true) {
                Some(r) => self.set_cursor(r),
                None => self.status = "no further token in this filter".into(),
            },
            KeyCode::Left | KeyCode::Char('h') => match self.step_filtered(self.cursor, false) {
                Some(r) => self.set_cursor(r),
                None => self.status = "no earlier token in this filter".into(),
            },
            KeyCode::Down | KeyCode::Char('j') => self.move_line(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_line(-1),
            KeyCode::PageDown | KeyCode::Char(']') | KeyCode::Char('J') => self.move_doc(true),
            KeyCode::PageUp | KeyCode::Char('[') | KeyCode::Char('K') => self.move_doc(false),
            KeyCode::Home | KeyCode::Char('g') => {
                let (s, _) = self.study.doc_range(self.study.doc_of(self.cursor));
                self.set_cursor(s);
            }
            KeyCode::End | KeyCode::Char('G') => {
                let (_, e) = self.study.doc_range(self.study.doc_of(self.cursor));
                self.set_cursor(e.saturating_sub(1));
            }
            KeyCode::Char(c @ '0'..='4') => {
                self.filter = if c == '0' { None } else { Some(c as u8 - b'1') };
                self.fluct.clear();
                self.fluct_pos = None;
                if self.study.traj.is_none() {
                    self.filter = None;
                    self.status = "no trajectories yet: press c to categorize".into();
                    return;
                }
                let name = self.filter.map(|f| cat_of(f).as_human_str()).unwrap_or("all");
                self.status = format!("filter: {name}");
                if !self.matches(self.cursor) {
                    if let Some(r) = self.step_filtered(self.cursor, true).or_else(|| self.step_filtered(self.cursor, false)) {
                        self.set_cursor(r);
                    }
                }
            }
            KeyCode::Char('/') => self.input = Some(Input { kind: InputKind::Search, text: String::new() }),
            KeyCode::Char('n') => self.search(true),
            KeyCode::Char('N') => self.search(false),
            KeyCode::Char('f') => self.fluct_jump(true),
            KeyCode::Char('F') => self.fluct_jump(false),
            _ => {}
        }
    }

    fn move_doc(&mut self, forward: bool) {
        let d = self.study.doc_of(self.cursor);
        let nd = self.study.n_docs();
        let mut t = d;
        loop {
            if forward {
                if t + 1 >= nd {
                    self.status = "last document".into();
                    return;
                }
                t += 1;
            } else {
                if t == 0 {
                    self.status = "first document".into();
                    return;
                }
                t -= 1;
            }
            let (s, e) = self.study.doc_range(t);
            if let Some(r) = (s..e).find(|&r| self.matches(r)) {
                self.set_cursor(r);
                return;
            }
        }
    }

    fn move_line(&mut self, dl: i64) {
        let d = self.study.doc_of(self.cursor);
        let (lo, hi) = self.page_range(d);
        if !self.study.rows_loaded(lo, hi) {
            return;
        }
        let width = super::ui::text_width(self.size);
        let lay = layout(&self.study, lo, hi, width);
        let Some(&(line, c0, _)) = lay.pos.get(self.cursor - lo) else { return };
        let target = line as i64 + dl;
        if target < 0 {
            if lo > self.study.doc_range(d).0 {
                self.set_cursor(lo - 1);
            }
            return;
        }
        let target = target as usize;
        if target >= lay.n_lines {
            if hi < self.study.doc_range(d).1 {
                self.set_cursor(hi);
            }
            return;
        }
        // the token of the target line closest to the cursor's column
        let best = lay
            .pos
            .iter()
            .enumerate()
            .filter(|(_, p)| p.0 == target)
            .min_by_key(|(_, p)| if c0 < p.1 { p.1 - c0 } else if c0 >= p.2 { c0 + 1 - p.2 } else { 0 })
            .map(|(i, _)| lo + i);
        if let Some(r) = best {
            self.set_cursor(r);
        }
    }

    fn search(&mut self, forward: bool) {
        if self.query.is_empty() {
            self.status = "search: press / and type some text".into();
            return;
        }
        if !self.texts_ready() {
            self.pending_search = Some(forward);
            self.status = format!("reading the token texts to search /{}…", self.query);
            return;
        }
        let q = self.query.to_lowercase();
        let n = self.study.n_rows;
        let found = {
            let Some(all) = &self.study.all_lower else { return };
            let hit = |r: usize| self.matches(r) && all[r].contains(&q);
            if forward {
                (self.cursor + 1..n).chain(0..=self.cursor.min(n.saturating_sub(1))).find(|&r| hit(r))
            } else {
                (0..self.cursor).rev().chain((self.cursor..n).rev()).find(|&r| hit(r))
            }
        };
        match found {
            Some(r) => {
                self.set_cursor(r);
                self.status = format!("/{}: doc {} token {}", self.query, self.study.doc_of(r), r - self.study.doc_range(self.study.doc_of(r)).0);
            }
            None => self.status = format!("/{}: not found", self.query),
        }
    }

    fn fluct_jump(&mut self, forward: bool) {
        let Some(t) = &self.study.traj else {
            self.status = "no trajectories yet: press c to categorize".into();
            return;
        };
        if self.fluct.is_empty() {
            let mut rows: Vec<usize> = (0..t.residual_std.len()).filter(|&r| self.matches(r)).collect();
            let cap = 1000.min(rows.len());
            let key = |r: &usize| std::cmp::Reverse(ordered(t.residual_std[*r]));
            if cap > 0 && cap < rows.len() {
                rows.select_nth_unstable_by_key(cap - 1, key);
                rows.truncate(cap);
            }
            rows.sort_by_key(|r| (key(r), *r));
            self.fluct = rows;
        }
        if self.fluct.is_empty() {
            return;
        }
        let p = match (self.fluct_pos, forward) {
            (None, _) => 0,
            (Some(p), true) => (p + 1).min(self.fluct.len() - 1),
            (Some(p), false) => p.saturating_sub(1),
        };
        self.fluct_pos = Some(p);
        let r = self.fluct[p];
        let rs = t.residual_std[r];
        self.set_cursor(r);
        self.status = format!("most fluctuating #{} (residual_std {rs:.3})", p + 1);
    }

    /// Whether every token text is in memory; if not, read them (in the
    /// background when jobs run on threads, else now).
    fn texts_ready(&mut self) -> bool {
        if self.study.all_lower.is_some() {
            return true;
        }
        if !self.spawn {
            self.study.ensure_all_texts();
            return self.study.all_lower.is_some();
        }
        if !self.texts_requested {
            self.texts_requested = true;
            jobs::spawn_texts(self.study.root.clone(), self.tx.clone());
        }
        false
    }

    // ---- Variance view -------------------------------------------------

    fn compute_var(&self) -> VarState {
        let Some(t) = &self.study.traj else { return VarState::default() };
        let mut v: Vec<f32> = t.residual_std.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return VarState::default();
        }
        let k = ((v.len() as f64 * 0.99) as usize).min(v.len() - 1);
        let (_, q, _) = v.select_nth_unstable_by_key(k, |x| ordered(*x));
        let hi = (*q as f64).max(1e-6);
        let mut counts = vec![[0u64; 4]; VAR_BINS];
        for (i, &x) in t.residual_std.iter().enumerate() {
            if x.is_finite() {
                counts[bin_of(x as f64, hi)][(t.cat[i] as usize).min(3)] += 1;
            }
        }
        VarState { counts, lo: 0.0, hi, ..Default::default() }
    }

    fn variance_key(&mut self, k: KeyEvent) {
        if self.var.counts.is_empty() {
            return;
        }
        if self.var.list_focus {
            match k.code {
                KeyCode::Down | KeyCode::Char('j') => self.var.list_sel = (self.var.list_sel + 1).min(self.var.list.len().saturating_sub(1)),
                KeyCode::Up | KeyCode::Char('k') => self.var.list_sel = self.var.list_sel.saturating_sub(1),
                KeyCode::Esc | KeyCode::Left | KeyCode::Char('h') => self.var.list_focus = false,
                KeyCode::Enter => {
                    if let Some(&r) = self.var.list.get(self.var.list_sel) {
                        self.view = View::Tokens;
                        self.set_cursor(r);
                    }
                }
                _ => {}
            }
            return;
        }
        match k.code {
            KeyCode::Down | KeyCode::Char('j') => {
                self.var.bin = (self.var.bin + 1).min(VAR_BINS - 1);
                self.var.list.clear();
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.var.bin = self.var.bin.saturating_sub(1);
                self.var.list.clear();
            }
            KeyCode::Char(c @ '0'..='4') => {
                self.filter = if c == '0' { None } else { Some(c as u8 - b'1') };
                self.fluct.clear();
                self.fluct_pos = None;
                self.var.list.clear();
            }
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => {
                self.list_bin();
                if !self.var.list.is_empty() {
                    self.var.list_focus = true;
                }
            }
            _ => {}
        }
    }

    /// List the tokens of the selected bin (within the filter).
    fn list_bin(&mut self) {
        let Some(t) = &self.study.traj else { return };
        let (b, hi) = (self.var.bin, self.var.hi);
        let mut rows: Vec<usize> = (0..t.residual_std.len())
            .filter(|&r| t.residual_std[r].is_finite() && bin_of(t.residual_std[r] as f64, hi) == b && self.matches(r))
            .collect();
        let key = |r: &usize| (std::cmp::Reverse(ordered(t.residual_std[*r])), *r);
        if rows.len() > LIST_CAP {
            rows.select_nth_unstable_by_key(LIST_CAP - 1, key);
            rows.truncate(LIST_CAP);
        }
        rows.sort_by_key(key);
        self.var.list = rows;
        self.var.list_sel = 0;
        if !self.var.list.is_empty() && !self.texts_ready() {
            self.status = "reading the token texts…".into();
        }
    }

    // ---- Runs ----------------------------------------------------------

    fn runs_key(&mut self, k: KeyEvent) {
        let n = self.study.runs.len();
        match k.code {
            KeyCode::Down | KeyCode::Char('j') => self.runs_sel = (self.runs_sel + 1).min(n.saturating_sub(1)),
            KeyCode::Up | KeyCode::Char('k') => self.runs_sel = self.runs_sel.saturating_sub(1),
            KeyCode::Char('n') => self.form = Some(self.default_form()),
            KeyCode::Char('x') => {
                let Some(r) = self.study.runs.get(self.runs_sel) else { return };
                let name = r.name.clone();
                match self.jobs.iter().find(|j| j.status == JobStatus::Running && j.kind == JobKind::Train { run: name.clone() }) {
                    Some(j) => {
                        j.cancel.store(true, Ordering::SeqCst);
                        self.status = format!("cancelling {name} (it stops after the current step)");
                    }
                    None => self.status = format!("{name} is not running"),
                }
            }
            KeyCode::Char('e') => self.start_run_eval(),
            _ => {}
        }
    }

    /// The run under the cursor, if its job is running.
    pub fn run_job(&self, run: &str) -> Option<&Job> {
        self.jobs.iter().rev().find(|j| matches!(&j.kind, JobKind::Train { run: r } if r == run))
    }

    fn start_run_eval(&mut self) {
        let Some(r) = self.study.runs.get(self.runs_sel).cloned() else { return };
        if self.run_job(&r.name).is_some_and(|j| j.status == JobStatus::Running) {
            self.status = format!("{} is still running: evaluate it when it has finished", r.name);
            return;
        }
        let Some(m) = self.study.manifest.clone() else {
            self.status = "no study.json: nothing to evaluate against".into();
            return;
        };
        let cks: Vec<PathBuf> = super::data::run_checkpoints(&r.dir).into_iter().map(|c| c.1).collect();
        if cks.is_empty() {
            self.status = format!("{} has no checkpoints", r.name);
            return;
        }
        let target = r.dir.join("study");
        let id = self.add_job(
            JobKind::Eval { target: format!("runs/{}/study", r.name) },
            format!("eval {} ({} checkpoints) into runs/{}/study", r.name, cks.len(), r.name),
            cks.len(),
        );
        self.status = format!("evaluating {} in the background", r.name);
        if self.spawn {
            jobs::spawn_eval(id, cks, target, &m, false, self.tx.clone());
        }
    }

    pub fn default_form(&self) -> RunForm {
        let root = &self.study.root;
        let latest = |run: &str| super::data::run_checkpoints(&root.join("runs").join(run)).last().map(|c| c.1.clone());
        let rel = |p: PathBuf| {
            // a relative path in study.json is relative to where `rho eval` ran: best effort
            let p = if p.is_relative() && !root.join(&p).exists() { std::fs::canonicalize(&p).unwrap_or(p) } else { p };
            rel_path(root, &p)
        };
        let data = if root.join("data/noisy.jsonl").exists() {
            "data/noisy.jsonl".to_string()
        } else {
            self.study.manifest.as_ref().map(|m| rel(m.data.clone())).unwrap_or_default()
        };
        let init = latest("base").or_else(|| self.study.checkpoints().last().map(|c| c.path.clone())).map(rel).unwrap_or_default();
        let reference = latest("reference").map(rel).unwrap_or_default();
        RunForm { mode: RunMode::Slm, ratio: 0.6, steps: 32, init, reference, data, field: 0 }
    }

    fn form_key(&mut self, k: KeyEvent) {
        let Some(f) = self.form.as_mut() else { return };
        let delta: i64 = match k.code {
            KeyCode::Right | KeyCode::Char('l') | KeyCode::Char('+') => 1,
            KeyCode::Left | KeyCode::Char('h') | KeyCode::Char('-') => -1,
            _ => 0,
        };
        match k.code {
            KeyCode::Esc => self.form = None,
            KeyCode::Down | KeyCode::Char('j') => f.field = (f.field + 1) % FORM_FIELDS,
            KeyCode::Up | KeyCode::Char('k') => f.field = (f.field + FORM_FIELDS - 1) % FORM_FIELDS,
            KeyCode::Char('s') => self.start_run(),
            KeyCode::Enter => match f.field {
                3..=5 => {
                    let text = [&f.init, &f.reference, &f.data][f.field - 3].clone();
                    self.input = Some(Input { kind: InputKind::FormField(f.field), text });
                }
                6 => self.start_run(),
                _ => f.field += 1,
            },
            _ if delta != 0 => match f.field {
                0 => {
                    let modes = [RunMode::Clm, RunMode::Slm, RunMode::Random];
                    let i = modes.iter().position(|&m| m == f.mode).unwrap() as i64;
                    f.mode = modes[((i + delta).rem_euclid(3)) as usize];
                }
                1 => f.ratio = ((f.ratio + 0.05 * delta as f64).clamp(0.05, 1.0) * 100.0).round() / 100.0,
                2 => {
                    let s = f.steps as i64 + 8 * delta;
                    f.steps = s.clamp(1, 100_000) as u64;
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn start_run(&mut self) {
        let Some(f) = self.form.clone() else { return };
        let root = self.study.root.clone();
        let abs = |s: &str| -> Option<PathBuf> {
            if s.trim().is_empty() {
                None
            } else {
                let p = PathBuf::from(s.trim());
                Some(if p.is_absolute() || !root.join(&p).exists() { p } else { root.join(p) })
            }
        };
        let Some(data) = abs(&f.data) else {
            self.status = "the run needs training data".into();
            return;
        };
        let Some(init) = abs(&f.init) else {
            self.status = "the run needs an initial checkpoint".into();
            return;
        };
        let reference = abs(&f.reference);
        if f.mode == RunMode::Slm && reference.is_none() {
            self.status = "SLM needs a reference model (or choose random)".into();
            return;
        }
        let runs = root.join("runs");
        let mut k = 1;
        let name = loop {
            let n = format!("tui-{}-{k}", f.mode.name());
            if !runs.join(&n).exists() && !self.study.runs.iter().any(|r| r.name == n) {
                break n;
            }
            k += 1;
        };
        let cfg = jobs::train_config(&root, &f, data, init, reference, runs.join(&name));
        let id = self.add_job(JobKind::Train { run: name.clone() }, format!("run {name}"), f.steps as usize);
        let mode = match f.mode {
            RunMode::Clm => "clm".to_string(),
            RunMode::Slm => format!("slm batch {:.2}", f.ratio),
            RunMode::Random => format!("slm random {:.2}", f.ratio),
        };
        self.study.runs.push(RunInfo { name: name.clone(), dir: runs.join(&name), mode, steps: Some(f.steps), ..Default::default() });
        self.runs_sel = self.study.runs.len() - 1;
        self.form = None;
        self.status = format!("started {name} ({} steps)", f.steps);
        if self.spawn {
            let cancel = self.jobs[id].cancel.clone();
            jobs::spawn_train(id, name, cfg, cancel, self.tx.clone());
        }
    }

    // ---- Export --------------------------------------------------------

    fn export(&mut self) {
        let dir = self.study.root.join("exports");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.status = format!("export: {e}");
            return;
        }
        self.exports += 1;
        let name = format!("{}-{}.png", self.view.title().to_lowercase(), self.exports);
        let path = dir.join(&name);
        match super::export::export(self, &path) {
            Ok(()) => self.status = format!("exported exports/{name}"),
            Err(e) => {
                self.exports -= 1;
                self.status = format!("export: {e}");
            }
        }
    }

    // ---- What the views show -------------------------------------------

    /// The token under the cursor: category, ΔL etc. and why.
    pub fn why(&self, row: usize) -> Option<(Category, String)> {
        let t = self.study.traj.as_ref()?;
        let s = self.study.summary.as_ref()?;
        let (d, last) = (*t.delta.get(row)? as f64, t.last_loss[row] as f64);
        let c = category_of(d, last, s.l_mean, s.threshold);
        let why = match c {
            Category::HL => format!("ΔL {d:+.3} < -{:.2}: the loss falls", s.threshold),
            Category::LH => format!("ΔL {d:+.3} > {:.2}: the loss rises", s.threshold),
            Category::LL => format!("|ΔL| {:.3} ≤ {:.2}, last {last:.3} ≤ L_mean {:.3}", d.abs(), s.threshold, s.l_mean),
            Category::HH => format!("|ΔL| {:.3} ≤ {:.2}, last {last:.3} > L_mean {:.3}", d.abs(), s.threshold, s.l_mean),
        };
        Some((c, why))
    }
}

/// Path relative to the study when inside it (what the form shows).
pub fn rel_path(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn ordered(x: f32) -> u32 {
    // total order for non-negative finite floats; NaN last
    if x.is_nan() {
        0
    } else {
        x.max(0.0).to_bits()
    }
}

pub fn bin_of(x: f64, hi: f64) -> usize {
    (((x / hi) * VAR_BINS as f64) as usize).min(VAR_BINS - 1)
}

/// Token text as drawn: newlines as ⏎ plus a line break, tabs and control characters visible.
pub fn display_parts(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    for ch in text.chars() {
        match ch {
            '\n' => {
                parts.last_mut().unwrap().push('⏎');
                parts.push(String::new());
            }
            '\t' => parts.last_mut().unwrap().push('→'),
            '\r' => {}
            c if c.is_control() => parts.last_mut().unwrap().push('·'),
            c => parts.last_mut().unwrap().push(c),
        }
    }
    if parts.len() > 1 && parts.last().unwrap().is_empty() {
        parts.pop();
        // a token ending with a newline breaks the line after it
        parts.push(String::new());
    }
    if parts.iter().all(|p| p.is_empty()) {
        parts[0].push('∅');
    }
    parts
}

/// Rows `[lo, hi)` laid out in lines of `width` columns.
pub struct TextLayout {
    /// pieces[line] = (row, text)
    pub lines: Vec<Vec<(usize, String)>>,
    /// (line, first column, end column) of each row's first piece, by row - lo.
    pub pos: Vec<(usize, usize, usize)>,
    pub n_lines: usize,
}

fn width_of(s: &str) -> usize {
    ratatui::text::Span::raw(s).width()
}

/// The longest prefix of `s` at most `room` columns wide, and the rest.
fn split_at_width(s: &str, room: usize) -> (&str, &str) {
    let mut w = 0;
    for (i, ch) in s.char_indices() {
        let cw = width_of(ch.encode_utf8(&mut [0u8; 4]));
        if w + cw > room {
            return (&s[..i], &s[i..]);
        }
        w += cw;
    }
    (s, "")
}

pub fn layout(study: &Study, lo: usize, hi: usize, width: usize) -> TextLayout {
    let width = width.max(4);
    let mut lines: Vec<Vec<(usize, String)>> = vec![Vec::new()];
    let mut pos = Vec::with_capacity(hi.saturating_sub(lo));
    let mut col = 0usize;
    for row in lo..hi {
        let parts = display_parts(study.text(row));
        let mut first = true;
        for (pi, part) in parts.iter().enumerate() {
            if pi > 0 {
                lines.push(Vec::new());
                col = 0;
            }
            let mut rest: &str = part;
            if col > 0 && col + width_of(rest) > width {
                lines.push(Vec::new());
                col = 0;
            }
            loop {
                let (piece, tail) = split_at_width(rest, width - col);
                if piece.is_empty() && !rest.is_empty() {
                    lines.push(Vec::new());
                    col = 0;
                    continue;
                }
                let w = width_of(piece);
                if first {
                    pos.push((lines.len() - 1, col, col + w.max(1)));
                    first = false;
                }
                lines.last_mut().unwrap().push((row, piece.to_string()));
                col += w;
                if tail.is_empty() {
                    break;
                }
                lines.push(Vec::new());
                col = 0;
                rest = tail;
            }
        }
    }
    let n_lines = lines.len();
    TextLayout { lines, pos, n_lines }
}
