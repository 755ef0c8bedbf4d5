//! The training order of a checkpoint series.
//!
//! A checkpoint's position in its series comes from, in this order:
//! 1. `trainer_state.json` in its folder: the step is `global_step` (HF Trainer) or `step`
//!    (`rho train`); tokens seen are `tokens_seen` (`rho train`) or `num_input_tokens_seen`
//!    (HF Trainer, when it tracked them: a 0 after step 0 counts as not recorded);
//! 2. else the folder name ([`parse_name`]): a step after `step`, `global_step`, `checkpoint`,
//!    `ckpt`, `iter` or `iteration` (separated by nothing, `-`, `_` or `=`: `step0`, `step-100`,
//!    `step_100`, `step=1000`, `global_step500`, `checkpoint-2000`, `iter_0003000`, `ckpt_123`),
//!    or a name that is only digits; thousands suffixes `k` (x1,000) and `M` (x1,000,000, never
//!    thousands), in either case (`step-715k`, `step-50K`); a stage `stage<N>` (`stage1-…`);
//!    tokens seen after `tokens` or `token` (`tokens21B`, `token-2T`) or as the part right after
//!    the step (`-1.5T`, `-105b`, `-2BT`), with `K`, `M`, `B` (10^9) or `T` (10^12) in either case.
//!    Text after the step is otherwise ignored (NeMo's `-consumed_samples=…`, `-last`).
//!
//! A series is ordered by stage, then step, then tokens seen (the tie-break). It cannot be
//! ordered, and [`order`] lists every reason, when:
//! - a checkpoint has no step (`final`, `best`, `latest` without a trainer_state.json);
//! - some names have a stage and others not (a stage may count its steps from 0 again);
//! - a stage has parallel branches (`stage2-ingredient1-…` and `stage2-ingredient2-…`: runs
//!   from the same start, not one after the other);
//! - the names are of different forms (the text before the step and its keyword differ, the
//!   values of `key=value` pairs left out, e.g. `pretrain_iter_…` and `anneal_iter_…`), unless
//!   no name has a stage, every checkpoint gives tokens seen, and tokens never decrease as the
//!   step increases (TinyLlama's `TinyLlama-1.1B-step-50K-105b` before its
//!   `TinyLlama-1.1B-intermediate-step-240k-503b`). A folder whose step comes from
//!   trainer_state.json and whose name has no step (`final/`) is of any form;
//! - two checkpoints are at the same position (same stage and step, and the same or unknown
//!   tokens seen).
//!
//! The way out is always the same: list the checkpoint folders one by one, in training order;
//! that order is kept as given.

use crate::error::{Error, Result};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// `trainer_state.json`, of HF Trainer and of `rho train`.
pub const TRAINER_STATE: &str = "trainer_state.json";

/// Where a checkpoint's step came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// No step found.
    #[default]
    Nothing,
    /// The folder name.
    Name,
    /// `trainer_state.json` in the folder.
    TrainerState,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Nothing => "-",
            Source::Name => "name",
            Source::TrainerState => TRAINER_STATE,
        }
    }
}

/// A checkpoint's position in its series.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// Optimizer step.
    pub step: Option<u64>,
    /// Training tokens seen.
    pub tokens: Option<u64>,
    /// Training stage (`stage2-…`).
    pub stage: Option<u32>,
    /// The form of the name, what steps are compared within: the text before the stage (or
    /// the step) without the values of `key=value` pairs, and the step's keyword
    /// (`tinyllama-1.1b-intermediate|step`). `None` when the name has no step.
    pub form: Option<String>,
    /// Staged names: the text between the stage and the step (`ingredient1`).
    pub branch: String,
    /// Where the step came from.
    pub source: Source,
    /// Why a name with step-like parts gives no step (two step numbers, ...).
    pub problem: Option<String>,
}

/// The part of a position that orders a study's checkpoints (what study.json records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Key {
    pub stage: Option<u32>,
    pub step: Option<u64>,
    pub tokens: Option<u64>,
}

impl Position {
    pub fn key(&self) -> Key {
        Key { stage: self.stage, step: self.step, tokens: self.tokens }
    }
}

impl Key {
    fn sort_key(&self) -> (u32, u64, u64) {
        (self.stage.unwrap_or(0), self.step.unwrap_or(0), self.tokens.unwrap_or(0))
    }
    /// Same stage and step, and tokens seen equal or unknown on either side.
    fn ties(&self, o: &Key) -> bool {
        self.stage == o.stage
            && self.step == o.step
            && match (self.tokens, o.tokens) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

const SEPS: &[u8] = b"-_=";

/// A number at `s[i..]`: digits, an optional `.digits`, an optional unit among `units`
/// (`(letter, multiplier)`, case-insensitive) and, with `trailing_t`, an optional `t` after
/// the unit (`2BT`). The value must be a whole number; it must end at the end of the name or
/// before a character that is not a letter or digit. Returns (value, end).
fn number(s: &[u8], i: usize, units: &[(u8, u128)], unit_required: bool, trailing_t: bool) -> Option<(u64, usize)> {
    let mut j = i;
    while j < s.len() && s[j].is_ascii_digit() {
        j += 1;
    }
    if j == i || j - i > 30 {
        return None;
    }
    let int = &s[i..j];
    let mut frac: &[u8] = &[];
    if j + 1 < s.len() && s[j] == b'.' && s[j + 1].is_ascii_digit() {
        let k0 = j + 1;
        let mut k = k0;
        while k < s.len() && s[k].is_ascii_digit() {
            k += 1;
        }
        if k - k0 > 12 {
            return None;
        }
        frac = &s[k0..k];
        j = k;
    }
    let mut mult: u128 = 1;
    let mut has_unit = false;
    if j < s.len() {
        if let Some(&(_, m)) = units.iter().find(|(u, _)| s[j].eq_ignore_ascii_case(u)) {
            mult = m;
            has_unit = true;
            j += 1;
            if trailing_t && j < s.len() && s[j].eq_ignore_ascii_case(&b't') {
                j += 1;
            }
        }
    }
    if unit_required && !has_unit {
        return None;
    }
    if !frac.is_empty() && !has_unit {
        return None; // `step1.5`: not a step
    }
    if j < s.len() && s[j].is_ascii_alphanumeric() {
        return None;
    }
    let digits: String = int.iter().chain(frac).map(|&b| b as char).collect();
    let mantissa: u128 = digits.parse().ok()?;
    let scale = 10u128.pow(frac.len() as u32);
    let v = mantissa.checked_mul(mult)?;
    if v % scale != 0 {
        return None;
    }
    u64::try_from(v / scale).ok().map(|v| (v, j))
}

const STEP_UNITS: &[(u8, u128)] = &[(b'k', 1_000), (b'm', 1_000_000)];
const TOKEN_UNITS: &[(u8, u128)] = &[(b'k', 1_000), (b'm', 1_000_000), (b'b', 1_000_000_000), (b't', 1_000_000_000_000)];

#[derive(Clone, Copy, PartialEq)]
enum Word {
    Step(&'static str),
    Tokens,
    Stage,
}

/// Keywords, longest first (so that `global_step` is not read as `step`).
const WORDS: &[(&str, Word)] = &[
    ("global_step", Word::Step("global_step")),
    ("checkpoint", Word::Step("checkpoint")),
    ("iteration", Word::Step("iter")),
    ("tokens", Word::Tokens),
    ("token", Word::Tokens),
    ("stage", Word::Stage),
    ("ckpt", Word::Step("ckpt")),
    ("iter", Word::Step("iter")),
    ("step", Word::Step("step")),
];

struct Hit {
    word: Word,
    start: usize,
    end: usize,
    value: u64,
}

/// The position a folder name gives (no file is read).
pub fn parse_name(name: &str) -> Position {
    let lower = name.to_ascii_lowercase();
    let s = lower.as_bytes();
    if !s.is_empty() && s.iter().all(|b| b.is_ascii_digit()) {
        return match number(s, 0, &[], false, false) {
            Some((v, _)) => Position { step: Some(v), form: Some("|#".into()), source: Source::Name, ..Default::default() },
            None => Position { problem: Some("a number too large for a step".into()), ..Default::default() },
        };
    }
    let mut hits: Vec<Hit> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !s[i - 1].is_ascii_alphabetic();
        let mut matched = false;
        if boundary {
            for &(w, word) in WORDS {
                if !s[i..].starts_with(w.as_bytes()) {
                    continue;
                }
                let mut j = i + w.len();
                if j < s.len() && SEPS.contains(&s[j]) {
                    j += 1;
                }
                let parsed = match word {
                    Word::Step(_) => number(s, j, STEP_UNITS, false, false),
                    Word::Tokens => number(s, j, TOKEN_UNITS, false, true),
                    Word::Stage => number(s, j, &[], false, false).filter(|(v, _)| *v <= u32::MAX as u64),
                };
                if let Some((value, end)) = parsed {
                    hits.push(Hit { word, start: i, end, value });
                    i = end;
                    matched = true;
                }
                break; // the longest keyword at i decides
            }
        }
        if !matched {
            i += 1;
        }
    }
    let steps: Vec<&Hit> = hits.iter().filter(|h| matches!(h.word, Word::Step(_))).collect();
    let stages: Vec<&Hit> = hits.iter().filter(|h| h.word == Word::Stage).collect();
    let tokens: Vec<&Hit> = hits.iter().filter(|h| h.word == Word::Tokens).collect();
    let mut p = Position::default();
    if steps.len() > 1 {
        p.problem = Some(format!("{} step numbers", steps.len()));
        return p;
    }
    if stages.len() > 1 {
        p.problem = Some(format!("{} stage numbers", stages.len()));
        return p;
    }
    if tokens.len() > 1 {
        p.problem = Some(format!("{} token counts", tokens.len()));
        return p;
    }
    let Some(step) = steps.first() else {
        // A stage or tokens alone do not place a checkpoint.
        return p;
    };
    p.step = Some(step.value);
    p.source = Source::Name;
    p.stage = stages.first().map(|h| h.value as u32);
    p.tokens = tokens.first().map(|h| h.value);
    if p.tokens.is_none() && step.end < s.len() && (s[step.end] == b'-' || s[step.end] == b'_') {
        // The part right after the step, with a unit: TinyLlama's `-1.5T`, `-105b`.
        p.tokens = number(s, step.end + 1, TOKEN_UNITS, true, true).map(|(v, _)| v);
    }
    // The form: the text before the stage (or the step), its tokens hit and `=value`s left out.
    let anchor = stages.first().map(|h| h.start.min(step.start)).unwrap_or(step.start);
    let mut prefix: Vec<u8> = Vec::new();
    let mut k = 0;
    while k < anchor {
        if let Some(t) = tokens.iter().find(|t| t.start == k) {
            k = t.end.min(anchor);
            continue;
        }
        prefix.push(s[k]);
        if s[k] == b'=' {
            // `val_loss=2.34`: the value is not part of the form
            let mut m = k + 1;
            while m < anchor && (s[m].is_ascii_digit() || s[m] == b'.') {
                m += 1;
            }
            k = m;
            continue;
        }
        k += 1;
    }
    let trim = |t: &str| t.trim_matches(|c: char| SEPS.contains(&(c as u8)) || c == '.').to_string();
    let Word::Step(kw) = step.word else { unreachable!() };
    p.form = Some(format!("{}|{kw}", trim(&String::from_utf8_lossy(&prefix))));
    if let Some(st) = stages.first() {
        if st.end <= step.start {
            p.branch = trim(&lower[st.end..step.start]);
        }
    }
    p
}

/// The position of a checkpoint folder: trainer_state.json first, then the name.
/// An unreadable trainer_state.json, or one without a step, is an error naming it.
pub fn position(dir: &Path) -> Result<Position> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut p = parse_name(&name);
    let ts = dir.join(TRAINER_STATE);
    if ts.is_file() {
        let bytes = crate::limits::read_bounded(&ts, crate::limits::MAX_JSON_BYTES, "trainer_state.json")?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::file(&ts, format!("not valid JSON: {e}")))?;
        let step = v.get("global_step").and_then(|x| x.as_u64()).or_else(|| v.get("step").and_then(|x| x.as_u64()));
        let Some(step) = step else {
            return Err(Error::file(
                &ts,
                "has no `global_step` (HF Trainer) or `step` (rho train): cannot place the checkpoint in its series \
                 (remove the file, or list the checkpoint folders one by one in training order)",
            ));
        };
        let tokens = v
            .get("tokens_seen")
            .and_then(|x| x.as_u64())
            .or_else(|| v.get("num_input_tokens_seen").and_then(|x| x.as_u64()).filter(|&t| t > 0 || step == 0));
        p.step = Some(step);
        p.tokens = tokens.or(p.tokens);
        p.source = Source::TrainerState;
        p.problem = None;
    }
    Ok(p)
}

const LIST_MAX: usize = 8;

/// `a, b, c and 5 more`
fn list<S: AsRef<str>>(names: &[S]) -> String {
    let shown: Vec<&str> = names.iter().take(LIST_MAX).map(|s| s.as_ref()).collect();
    let mut out = shown.join(", ");
    if names.len() > LIST_MAX {
        out += &format!(" and {} more", names.len() - LIST_MAX);
    }
    out
}

/// Human form of a token count: `1B`, `1.5T`, `503B`, `12.3M`, `950`.
pub fn fmt_tokens(t: u64) -> String {
    for (unit, m) in [("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)] {
        if t as f64 >= m {
            let v = t as f64 / m;
            let s = if v >= 100.0 { format!("{v:.0}") } else if v >= 10.0 { format!("{v:.1}") } else { format!("{v:.2}") };
            let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
            return format!("{s}{unit}");
        }
    }
    t.to_string()
}

/// The training order of `items` (name, position): indices, first to last, or the reasons
/// it cannot be decided (one line each).
pub fn order(items: &[(String, Position)]) -> std::result::Result<Vec<usize>, Vec<String>> {
    let mut problems = Vec::new();
    let missing: Vec<String> = items
        .iter()
        .filter(|(_, p)| p.step.is_none())
        .map(|(n, p)| match &p.problem {
            Some(why) => format!("{n} ({why})"),
            None => n.clone(),
        })
        .collect();
    if !missing.is_empty() {
        problems.push(format!("no training step in the name and no trainer_state.json: {}", list(&missing)));
    }
    let known: Vec<usize> = (0..items.len()).filter(|&i| items[i].1.step.is_some()).collect();
    let staged: Vec<&str> = known.iter().filter(|&&i| items[i].1.stage.is_some()).map(|&i| items[i].0.as_str()).collect();
    let unstaged: Vec<&str> = known.iter().filter(|&&i| items[i].1.stage.is_none()).map(|&i| items[i].0.as_str()).collect();
    if !staged.is_empty() && !unstaged.is_empty() {
        problems.push(format!(
            "names with a stage ({}, e.g. {}) and without ({}: {}) are mixed: a stage may count its steps from 0 again",
            staged.len(),
            staged[0],
            unstaged.len(),
            list(&unstaged)
        ));
    }
    // Forms: one example name per form, in first-seen order.
    let mut forms: Vec<(&str, Vec<&str>)> = Vec::new();
    for &i in &known {
        if let Some(f) = items[i].1.form.as_deref() {
            match forms.iter_mut().find(|(g, _)| *g == f) {
                Some((_, v)) => v.push(&items[i].0),
                None => forms.push((f, vec![&items[i].0])),
            }
        }
    }
    if forms.len() > 1 {
        let agree = staged.is_empty() && tokens_agree(items, &known);
        if !agree {
            let shown: Vec<String> = forms
                .iter()
                .map(|(_, v)| if v.len() > 1 { format!("{} (and {} like it)", v[0], v.len() - 1) } else { v[0].to_string() })
                .collect();
            problems.push(format!(
                "names of different forms, whose steps may not count the same run: {} (names of different forms are compared \
                 only when none names a stage, each gives tokens seen, and tokens never decrease as the step increases)",
                list(&shown)
            ));
        }
    }
    // Parallel branches within a stage.
    let mut stages: Vec<u32> = known.iter().filter_map(|&i| items[i].1.stage).collect();
    stages.sort();
    stages.dedup();
    for st in stages {
        let mut branches: Vec<(&str, Vec<&str>)> = Vec::new();
        for &i in known.iter().filter(|&&i| items[i].1.stage == Some(st)) {
            let b = items[i].1.branch.as_str();
            match branches.iter_mut().find(|(g, _)| *g == b) {
                Some((_, v)) => v.push(&items[i].0),
                None => branches.push((b, vec![&items[i].0])),
            }
        }
        if branches.len() > 1 {
            let shown: Vec<String> = branches
                .iter()
                .map(|(b, v)| format!("{} ({})", if b.is_empty() { "no branch" } else { b }, list(v)))
                .collect();
            problems.push(format!("stage {st} has parallel branches, not one after the other: {}", shown.join("; ")));
        }
    }
    // Ties.
    let mut sorted = known.clone();
    sorted.sort_by_key(|&i| items[i].1.key().sort_key());
    let mut k = 0;
    while k < sorted.len() {
        let mut e = k + 1;
        while e < sorted.len() && items[sorted[e - 1]].1.key().ties(&items[sorted[e]].1.key()) {
            e += 1;
        }
        if e - k > 1 {
            let p = &items[sorted[k]].1;
            let at = match p.stage {
                Some(st) => format!("stage {st}, step {}", p.step.unwrap_or(0)),
                None => format!("step {}", p.step.unwrap_or(0)),
            };
            let names: Vec<&str> = sorted[k..e].iter().map(|&i| items[i].0.as_str()).collect();
            problems.push(format!("same position ({at}): {}", list(&names)));
        }
        k = e;
    }
    if problems.is_empty() {
        Ok(sorted)
    } else {
        Err(problems)
    }
}

/// Every checkpoint gives tokens seen, and tokens never decrease as the step increases.
fn tokens_agree(items: &[(String, Position)], known: &[usize]) -> bool {
    if known.iter().any(|&i| items[i].1.tokens.is_none()) {
        return false;
    }
    let mut by_step: Vec<(u64, u64)> = known.iter().map(|&i| (items[i].1.step.unwrap_or(0), items[i].1.tokens.unwrap_or(0))).collect();
    by_step.sort();
    by_step.windows(2).all(|w| w[0].1 <= w[1].1)
}

/// The one error for a folder whose checkpoints cannot be ordered: every reason, and how to
/// give the order instead.
pub fn order_error(dir: &Path, names: &[String], problems: &[String]) -> Error {
    let mut example: Vec<String> = names.iter().take(3).map(|n| dir.join(n).display().to_string()).collect();
    if names.len() > 3 {
        example.push("…".into());
    }
    Error::file(
        dir,
        format!(
            "cannot put its {} checkpoints in training order:\n  - {}\nGive the order yourself: list the checkpoint folders one by one, \
             in training order (that order is kept), e.g. `--checkpoints {}`",
            names.len(),
            crate::limits::brief_list(problems, "\n  - ", 8),
            example.join(" ")
        ),
    )
}

/// Pairs of a given order that their positions put the other way round: (earlier as given,
/// later as given), for a warning. Empty when the positions cannot order the set at all.
pub fn contradictions(items: &[(String, Position)]) -> Vec<(usize, usize)> {
    let Ok(sorted) = order(items) else { return Vec::new() };
    let rank: HashMap<usize, usize> = sorted.iter().enumerate().map(|(r, &i)| (i, r)).collect();
    (1..items.len()).filter(|&i| rank[&(i - 1)] > rank[&i]).map(|i| (i - 1, i)).collect()
}

/// One line of the order table: `stage 1, step 150, tokens 1B (name)`.
pub fn describe(p: &Position) -> String {
    let from = match p.source {
        Source::Nothing => String::new(),
        s => format!(" ({})", s.as_str()),
    };
    format!("{}{from}", brief(p))
}

/// `stage 1, step 150, tokens 1B`
pub fn brief(p: &Position) -> String {
    let mut parts = Vec::new();
    if let Some(st) = p.stage {
        parts.push(format!("stage {st}"));
    }
    parts.push(match p.step {
        Some(s) => format!("step {s}"),
        None => "step ?".into(),
    });
    if let Some(t) = p.tokens {
        parts.push(format!("tokens {}", fmt_tokens(t)));
    }
    parts.join(", ")
}

/// The order of a study after a run: `old` (the study's checkpoints as recorded) with `run`
/// (the run's checkpoints, in the run's order) merged in; names only.
///
/// When every checkpoint has a step, all or none a stage, no two share a position, and the
/// recorded order and the run's both follow the positions, the result is ordered by position
/// (new checkpoints of a series fall into place). Otherwise the run's order holds for its
/// checkpoints, and each other checkpoint stays after the one it followed in the study (the
/// ones at the start stay at the start).
pub fn merge(old: &[(String, Key)], run: &[(String, Key)]) -> Vec<String> {
    if let Some(v) = by_position(old, run) {
        return v;
    }
    let in_run: HashSet<&str> = run.iter().map(|(n, _)| n.as_str()).collect();
    let mut head: Vec<String> = Vec::new();
    let mut after: HashMap<&str, Vec<String>> = HashMap::new();
    let mut anchor: Option<&str> = None;
    for (n, _) in old {
        if in_run.contains(n.as_str()) {
            anchor = Some(n);
        } else {
            match anchor {
                None => head.push(n.clone()),
                Some(a) => after.entry(a).or_default().push(n.clone()),
            }
        }
    }
    let mut out = head;
    for (n, _) in run {
        out.push(n.clone());
        if let Some(v) = after.remove(n.as_str()) {
            out.extend(v);
        }
    }
    out
}

/// `old` and `run` together ordered by position (a run's key wins for a checkpoint in both),
/// when every checkpoint has a step, all or none a stage, no two share a position, and both
/// `old` and `run` already follow their positions; else `None`.
pub fn by_position(old: &[(String, Key)], run: &[(String, Key)]) -> Option<Vec<String>> {
    let in_run: HashSet<&str> = run.iter().map(|(n, _)| n.as_str()).collect();
    let mut union: Vec<(&str, Key)> = old.iter().filter(|(n, _)| !in_run.contains(n.as_str())).map(|(n, k)| (n.as_str(), *k)).collect();
    union.extend(run.iter().map(|(n, k)| (n.as_str(), *k)));
    let key_of: HashMap<&str, Key> = union.iter().copied().collect();
    let keyed = union.iter().all(|(_, k)| k.step.is_some())
        && (union.iter().all(|(_, k)| k.stage.is_some()) || union.iter().all(|(_, k)| k.stage.is_none()));
    if !keyed {
        return None;
    }
    let mut sorted = union.clone();
    sorted.sort_by_key(|(_, k)| k.sort_key());
    let distinct = sorted.windows(2).all(|w| !w[0].1.ties(&w[1].1));
    let follows = |names: Vec<&str>| names.windows(2).all(|w| key_of[w[0]].sort_key().cmp(&key_of[w[1]].sort_key()) == Ordering::Less);
    (distinct && follows(old.iter().map(|(n, _)| n.as_str()).collect()) && follows(run.iter().map(|(n, _)| n.as_str()).collect()))
        .then(|| sorted.into_iter().map(|(n, _)| n.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(name: &str) -> Position {
        parse_name(name)
    }

    fn st(name: &str) -> (Option<u32>, Option<u64>, Option<u64>) {
        let p = pos(name);
        (p.stage, p.step, p.tokens)
    }

    const B: u64 = 1_000_000_000;
    const T: u64 = 1_000_000_000_000;

    /// Real checkpoint names of the series researchers study (branch names of the Hub
    /// repositories, or folders their trainers write), with what they say.
    #[test]
    fn real_names_parse() {
        type Case<'a> = (&'a str, Option<u32>, Option<u64>, Option<u64>);
        let cases: &[Case] = &[
            // Pythia (EleutherAI/pythia-*): 154 branches step0 .. step143000
            ("step0", None, Some(0), None),
            ("step1", None, Some(1), None),
            ("step512", None, Some(512), None),
            ("step143000", None, Some(143000), None),
            // OLMo 1 (allenai/OLMo-1B-hf, OLMo-7B, OLMo-1.7-7B-hf, OLMoE-1B-7B-0924)
            ("step1000-tokens4B", None, Some(1000), Some(4 * B)),
            ("step20000-tokens84B", None, Some(20000), Some(84 * B)),
            ("step556000-tokens2460B", None, Some(556000), Some(2460 * B)),
            ("step452000-tokens2000B", None, Some(452000), Some(2000 * B)),
            ("step1200000-tokens5033B", None, Some(1_200_000), Some(5033 * B)),
            // OLMo 2 (allenai/OLMo-2-1124-7B, -13B, OLMo-2-0425-1B, OLMo-2-0325-32B)
            ("stage1-step928646-tokens3896B", Some(1), Some(928646), Some(3896 * B)),
            ("stage1-step150-tokens1B", Some(1), Some(150), Some(B)),
            ("stage2-ingredient1-step11931-tokens50B", Some(2), Some(11931), Some(50 * B)),
            ("stage2-ingredient4-step35773-tokens300B", Some(2), Some(35773), Some(300 * B)),
            ("stage2-ingredient1-step23852-tokens51B", Some(2), Some(23852), Some(51 * B)),
            ("stage1-step721901-tokens6056B", Some(1), Some(721901), Some(6056 * B)),
            ("step600-tokens3B", None, Some(600), Some(3 * B)),
            // OLMo 3 (allenai/Olmo-3-1025-7B: stage1-step0 .. stage1-step1413814, stage2-step…, stage3-step…)
            ("stage1-step0", Some(1), Some(0), None),
            ("stage1-step1413814", Some(1), Some(1413814), None),
            ("stage2-step47684", Some(2), Some(47684), None),
            ("stage3-step11921", Some(3), Some(11921), None),
            // TinyLlama (TinyLlama/TinyLlama-1.1B-…)
            ("TinyLlama-1.1B-step-50K-105b", None, Some(50_000), Some(105 * B)),
            ("TinyLlama-1.1B-intermediate-step-240k-503b", None, Some(240_000), Some(503 * B)),
            ("TinyLlama-1.1B-intermediate-step-480k-1T", None, Some(480_000), Some(T)),
            ("TinyLlama-1.1B-intermediate-step-715k-1.5T", None, Some(715_000), Some(1_500 * B)),
            ("TinyLlama-1.1B-intermediate-step-955k-token-2T", None, Some(955_000), Some(2 * T)),
            ("TinyLlama-1.1B-intermediate-step-1195k-token-2.5T", None, Some(1_195_000), Some(2_500 * B)),
            ("TinyLlama-1.1B-intermediate-step-1431k-3T", None, Some(1_431_000), Some(3 * T)),
            // LLM360 Amber (LLM360/Amber: ckpt_000 .. ckpt_359)
            ("ckpt_000", None, Some(0), None),
            ("ckpt_100", None, Some(100), None),
            ("ckpt_359", None, Some(359), None),
            // SmolLM2 (HuggingFaceTB/SmolLM2-1.7B-intermediate-checkpoints), SmolLM3 (HuggingFaceTB/SmolLM3-3B-checkpoints)
            ("step-125000", None, Some(125000), None),
            ("stage1-step-40000", Some(1), Some(40000), None),
            // FineWeb ablation models (HuggingFaceFW/ablation-model-fineweb-edu): step-001000-2BT
            ("step-001000-2BT", None, Some(1000), Some(2 * B)),
            // HF Trainer, DeepSpeed, Megatron-LM, OpenCoder (Megatron), camembertv2
            ("checkpoint-500", None, Some(500), None),
            ("global_step500", None, Some(500), None),
            ("iter_0003000", None, Some(3000), None),
            ("pretrain_iter_0373000", None, Some(373000), None),
            ("anneal_iter_0023841", None, Some(23841), None),
            ("ckpt-100000", None, Some(100000), None),
            // NeMo (PyTorch Lightning ModelCheckpoint names)
            ("megatron_gpt--val_loss=2.34-step=1000-consumed_samples=8000.0", None, Some(1000), None),
            ("megatron_gpt--val_loss=2.30-step=2000-consumed_samples=16000.0-last", None, Some(2000), None),
            // rho train
            ("step-100", None, Some(100), None),
            ("step_100", None, Some(100), None),
        ];
        assert!(cases.len() >= 25);
        for &(name, stage, step, tokens) in cases {
            assert_eq!(st(name), (stage, step, tokens), "{name}");
            assert_eq!(pos(name).source, Source::Name, "{name}");
        }
    }

    #[test]
    fn forms_and_branches() {
        assert_eq!(pos("stage2-ingredient1-step11931-tokens50B").branch, "ingredient1");
        assert_eq!(pos("stage1-step150-tokens1B").branch, "");
        assert_eq!(pos("step1000-tokens4B").form.as_deref(), Some("|step"));
        assert_eq!(pos("global_step500").form.as_deref(), Some("|global_step"));
        assert_eq!(pos("TinyLlama-1.1B-intermediate-step-480k-1T").form.as_deref(), Some("tinyllama-1.1b-intermediate|step"));
        // NeMo: the metric's value is not part of the form
        assert_eq!(
            pos("megatron_gpt--val_loss=2.34-step=1000-consumed_samples=8000.0").form,
            pos("megatron_gpt--val_loss=1.98-step=3000-consumed_samples=24000.0").form
        );
        assert_ne!(pos("pretrain_iter_0373000").form, pos("anneal_iter_0001000").form);
    }

    #[test]
    fn names_without_a_step() {
        for n in ["final", "best", "latest", "main", "model_v2", "run2", "stage1", "tokens4B", "step", "checkpoints", "stepwise-3", "step1.5", "step2b"] {
            let p = pos(n);
            assert_eq!(p.step, None, "{n}");
            assert_eq!(p.source, Source::Nothing, "{n}");
        }
        // pure digits are a step
        assert_eq!(st("42"), (None, Some(42), None));
        // other scripts around the step are fine
        assert_eq!(st("modèle-étape-step-7"), (None, Some(7), None));
        // two step numbers: ambiguous, with the reason
        let p = pos("ckpt_5-step100");
        assert_eq!(p.step, None);
        assert_eq!(p.problem.as_deref(), Some("2 step numbers"));
        // M is a million, never thousands; k and K are thousands
        assert_eq!(st("step-2M"), (None, Some(2_000_000), None));
        assert_eq!(st("step-2m-tokens3m"), (None, Some(2_000_000), Some(3_000_000)));
        assert_eq!(st("step-1.5k"), (None, Some(1500), None));
        assert_eq!(st("step-1.2345k"), (None, None, None), "not a whole step");
    }

    fn names(v: &[&str]) -> Vec<(String, Position)> {
        v.iter().map(|n| (n.to_string(), pos(n))).collect()
    }

    fn sorted(v: &[&str]) -> Vec<String> {
        let items = names(v);
        order(&items).unwrap_or_else(|e| panic!("{e:?}")).into_iter().map(|i| items[i].0.clone()).collect()
    }

    /// A deterministic shuffle (no rand dependency in unit tests).
    fn shuffled<'a>(v: &[&'a str]) -> Vec<&'a str> {
        let mut out = v.to_vec();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in (1..out.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.swap(i, (x % (i as u64 + 1)) as usize);
        }
        out
    }

    #[test]
    fn whole_series_sort() {
        let olmo2 = [
            "stage1-step0-tokens0B",
            "stage1-step150-tokens1B",
            "stage1-step600-tokens3B",
            "stage1-step700-tokens3B",
            "stage1-step2000-tokens9B",
            "stage1-step100000-tokens420B",
            "stage1-step928646-tokens3896B",
            "stage2-ingredient1-step1000-tokens5B",
            "stage2-ingredient1-step2000-tokens9B",
            "stage2-ingredient1-step11931-tokens50B",
        ];
        let got = sorted(&shuffled(&olmo2));
        assert_eq!(got, olmo2);
        let tiny = [
            "TinyLlama-1.1B-step-50K-105b",
            "TinyLlama-1.1B-intermediate-step-240k-503b",
            "TinyLlama-1.1B-intermediate-step-480k-1T",
            "TinyLlama-1.1B-intermediate-step-715k-1.5T",
            "TinyLlama-1.1B-intermediate-step-955k-token-2T",
            "TinyLlama-1.1B-intermediate-step-1195k-token-2.5T",
            "TinyLlama-1.1B-intermediate-step-1431k-3T",
        ];
        assert_eq!(sorted(&shuffled(&tiny)), tiny);
        let pythia = ["step0", "step1", "step2", "step4", "step8", "step512", "step1000", "step10000", "step143000"];
        assert_eq!(sorted(&shuffled(&pythia)), pythia);
        let olmo3 = ["stage1-step0", "stage1-step1000", "stage1-step1413814", "stage2-step1000", "stage2-step47684", "stage3-step1000", "stage3-step11921"];
        assert_eq!(sorted(&shuffled(&olmo3)), olmo3);
        let smollm3 = ["stage1-step-40000", "stage1-step-3440000", "stage2-step-3480000", "stage3-step-4720000"];
        assert_eq!(sorted(&shuffled(&smollm3)), smollm3);
        let amber: Vec<String> = (0..360).map(|i| format!("ckpt_{i:03}")).collect();
        let amber: Vec<&str> = amber.iter().map(String::as_str).collect();
        assert_eq!(sorted(&shuffled(&amber)), amber);
        let nemo = [
            "megatron_gpt--val_loss=3.10-step=500-consumed_samples=4000.0",
            "megatron_gpt--val_loss=2.34-step=1000-consumed_samples=8000.0",
            "megatron_gpt--val_loss=2.30-step=2000-consumed_samples=16000.0-last",
        ];
        assert_eq!(sorted(&shuffled(&nemo)), nemo);
        let trainer = ["checkpoint-500", "checkpoint-1000", "checkpoint-1500", "checkpoint-10000"];
        assert_eq!(sorted(&shuffled(&trainer)), trainer);
    }

    fn problems(v: &[&str]) -> String {
        order(&names(v)).expect_err("must not order").join("\n")
    }

    #[test]
    fn what_cannot_be_ordered_is_listed() {
        let e = problems(&["checkpoint-500", "final", "best", "checkpoint-1000"]);
        assert!(e.contains("no training step") && e.contains("final, best"), "{e}");
        let e = problems(&["step100", "step-100", "step200"]);
        assert!(e.contains("same position (step 100): step100, step-100"), "{e}");
        // the same step with tokens that differ is not a tie: tokens break it
        assert_eq!(sorted(&["step100-tokens2B", "step100-tokens1B"]), ["step100-tokens1B", "step100-tokens2B"]);
        // NeMo's -last copy of the same step
        let e = problems(&["megatron_gpt--val_loss=2.30-step=2000-consumed_samples=16000.0", "megatron_gpt--val_loss=2.30-step=2000-consumed_samples=16000.0-last"]);
        assert!(e.contains("same position (step 2000)"), "{e}");
        // OLMo 2's un-prefixed stage-1 branches mixed with stage-prefixed ones
        let e = problems(&["step150-tokens1B", "stage1-step2000-tokens9B", "stage2-ingredient1-step11931-tokens50B"]);
        assert!(e.contains("names with a stage (2, e.g. stage1-step2000-tokens9B) and without (1: step150-tokens1B)"), "{e}");
        // OLMo 2's soup ingredients are parallel runs
        let e = problems(&["stage2-ingredient1-step11931-tokens50B", "stage2-ingredient2-step5000-tokens21B", "stage1-step928646-tokens3896B"]);
        assert!(e.contains("stage 2 has parallel branches") && e.contains("ingredient1") && e.contains("ingredient2"), "{e}");
        // OpenCoder's phases: different forms, no tokens
        let e = problems(&["pretrain_iter_0373000", "anneal_iter_0001000", "anneal_iter_0023841"]);
        assert!(e.contains("different forms") && e.contains("pretrain_iter_0373000"), "{e}");
        // Amber's checkpoint index and a Trainer's steps
        let e = problems(&["ckpt_005", "checkpoint-500"]);
        assert!(e.contains("different forms"), "{e}");
        // different forms whose tokens go against their steps
        let e = problems(&["runA-step100-tokens5B", "runB-step200-tokens1B"]);
        assert!(e.contains("different forms"), "{e}");
        // every problem at once
        let e = problems(&["final", "step1", "step-1", "stage1-step5"]);
        assert_eq!(e.lines().count(), 3, "{e}");
    }

    #[test]
    fn trainer_state_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, state: Option<&str>| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(s) = state {
                std::fs::write(d.join(TRAINER_STATE), s).unwrap();
            }
            d
        };
        // HF Trainer: global_step beats the name; num_input_tokens_seen 0 is "not tracked"
        let p = position(&mk("checkpoint-500", Some(r#"{"global_step": 750, "num_input_tokens_seen": 0, "log_history": []}"#))).unwrap();
        assert_eq!((p.step, p.tokens, p.source), (Some(750), None, Source::TrainerState));
        let p = position(&mk("final", Some(r#"{"global_step": 2000, "num_input_tokens_seen": 4096000}"#))).unwrap();
        assert_eq!((p.step, p.tokens, p.form.clone()), (Some(2000), Some(4_096_000), None));
        // rho train: step and tokens_seen
        let p = position(&mk("step-8", Some(r#"{"step": 8, "tokens_seen": 1234, "config": {}, "stream_fingerprint": "x"}"#))).unwrap();
        assert_eq!((p.step, p.tokens, p.form.as_deref()), (Some(8), Some(1234), Some("|step")));
        // no trainer_state.json: the name
        let p = position(&mk("step-0", None)).unwrap();
        assert_eq!((p.step, p.source), (Some(0), Source::Name));
        // a final/ with trainer_state.json orders among named ones; a step-0 copy without one too
        let items: Vec<(String, Position)> = ["checkpoint-500", "final", "step-8", "step-0"]
            .iter()
            .map(|n| (n.to_string(), position(&dir.path().join(n)).unwrap()))
            .collect();
        let e = order(&items).expect_err("checkpoint- and step- are different forms");
        assert!(e[0].contains("different forms"), "{e:?}");
        let items: Vec<(String, Position)> = ["step-8", "final", "step-0"].iter().map(|n| (n.to_string(), position(&dir.path().join(n)).unwrap())).collect();
        let o: Vec<&str> = order(&items).unwrap().into_iter().map(|i| items[i].0.as_str()).collect();
        assert_eq!(o, ["step-0", "step-8", "final"]);
        // broken or stepless trainer_state.json: an error naming the file
        let e = position(&mk("checkpoint-9", Some("{not json"))).unwrap_err().to_string();
        assert!(e.contains("checkpoint-9/trainer_state.json") && e.contains("not valid JSON"), "{e}");
        let e = position(&mk("checkpoint-10", Some(r#"{"epoch": 1.0}"#))).unwrap_err().to_string();
        assert!(e.contains("checkpoint-10/trainer_state.json") && e.contains("global_step"), "{e}");
    }

    #[test]
    fn contradictions_of_a_given_order() {
        let items = names(&["step-200", "step-0", "step-100"]);
        assert_eq!(contradictions(&items), vec![(0, 1)]);
        assert!(contradictions(&names(&["early", "mid", "late"])).is_empty());
        assert!(contradictions(&names(&["step-0", "step-100"])).is_empty());
    }

    #[test]
    fn tokens_print_short() {
        assert_eq!(fmt_tokens(B), "1B");
        assert_eq!(fmt_tokens(1_500 * B), "1.5T");
        assert_eq!(fmt_tokens(503 * B), "503B");
        assert_eq!(fmt_tokens(3896 * B), "3.9T");
        assert_eq!(fmt_tokens(12_345_678), "12.3M");
        assert_eq!(fmt_tokens(950), "950");
    }

    fn k(step: Option<u64>) -> Key {
        Key { stage: None, step, tokens: None }
    }

    fn merged(old: &[(&str, Key)], run: &[(&str, Key)]) -> Vec<String> {
        let o: Vec<(String, Key)> = old.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        let r: Vec<(String, Key)> = run.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        merge(&o, &r)
    }

    #[test]
    fn merging_a_run_into_a_study() {
        // new checkpoints of a series fall into place by position
        assert_eq!(merged(&[("s0", k(Some(0))), ("s200", k(Some(200)))], &[("s100", k(Some(100)))]), ["s0", "s100", "s200"]);
        // a study given in its own order keeps it; a run's checkpoints follow its order
        let (e, m, l) = (("early", k(None)), ("mid", k(None)), ("late", k(None)));
        assert_eq!(merged(&[e, m, l], &[("later", k(None))]), ["early", "mid", "late", "later"]);
        assert_eq!(merged(&[e, m, l], &[m]), ["early", "mid", "late"], "re-evaluating one keeps its place");
        assert_eq!(merged(&[e, m, l], &[l, e]), ["late", "early", "mid"], "the run's order holds for its checkpoints; mid stays after early");
        assert_eq!(merged(&[], &[l, e, m]), ["late", "early", "mid"]);
        // a given order against the steps is kept, and so is a study recorded that way
        let (a, b, c) = (("s0", k(Some(0))), ("s100", k(Some(100))), ("s200", k(Some(200))));
        assert_eq!(merged(&[], &[c, a, b]), ["s200", "s0", "s100"]);
        assert_eq!(merged(&[c, a, b], &[("s300", k(Some(300)))]), ["s200", "s0", "s100", "s300"]);
        // stages: by stage first
        let s = |stage, step| Key { stage: Some(stage), step: Some(step), tokens: None };
        assert_eq!(merged(&[("a", s(1, 100)), ("b", s(2, 10))], &[("c", s(1, 900))]), ["a", "c", "b"]);
    }
}
