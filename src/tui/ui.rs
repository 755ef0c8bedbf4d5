//! Drawing: a function of `&App` (no state is changed here).

use super::app::{cat_of, layout, App, InputKind, JobKind, JobStatus, RunMode, View, FORM_FIELDS, VAR_BINS};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Axis, Block, Borders, Cell, Chart, Clear, Dataset, Gauge, GraphType, List, ListItem, ListState, Paragraph, Row, Table, TableState, Wrap};
use crate::eval::order::fmt_tokens;
use ratatui::Frame;

pub const CAT_COLORS: [Color; 4] = [Color::LightRed, Color::Yellow, Color::LightGreen, Color::Cyan];

fn cat_style(c: u8) -> Style {
    Style::default().fg(CAT_COLORS[(c as usize).min(3)])
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

fn block(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::default().borders(Borders::ALL).title(title.into())
}

struct BrowserAreas {
    text: Rect,
    details: Rect,
    chart: Rect,
}

fn body_of(area: Rect) -> Rect {
    Rect { y: area.y + 1, height: area.height.saturating_sub(2), ..area }
}

fn browser_areas(body: Rect) -> BrowserAreas {
    if body.width >= 110 {
        let [text, side] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(body);
        let [details, chart] = Layout::vertical([Constraint::Length(10), Constraint::Min(4)]).areas(side);
        BrowserAreas { text, details, chart }
    } else {
        let bottom_h = if body.height >= 20 { 11 } else { body.height / 2 };
        let [text, bottom] = Layout::vertical([Constraint::Min(3), Constraint::Length(bottom_h)]).areas(body);
        let [details, chart] = Layout::horizontal([Constraint::Length(40.min(body.width / 2)), Constraint::Min(10)]).areas(bottom);
        BrowserAreas { text, details, chart }
    }
}

/// Columns of the token browser's text (used by the app for line moves).
pub fn text_width(size: (u16, u16)) -> usize {
    let a = browser_areas(body_of(Rect::new(0, 0, size.0, size.1)));
    a.text.width.saturating_sub(2) as usize
}

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let [tabs, body, footer] = Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    draw_tabs(f, app, tabs);
    match app.view {
        View::Overview => draw_overview(f, app, body),
        View::Tokens => draw_tokens(f, app, body),
        View::Variance => draw_variance(f, app, body),
        View::Runs => draw_runs(f, app, body),
    }
    draw_footer(f, app, footer);
    if app.form.is_some() {
        draw_form(f, app, area);
    }
    if app.help {
        draw_help(f, app, area);
    }
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = vec![Span::styled(" rho ", bold().fg(Color::Black).bg(Color::Cyan)), Span::raw(" ")];
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, v.title());
        let st = if *v == app.view { Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD) } else { Style::default() };
        spans.push(Span::styled(label, st));
        spans.push(Span::raw(" "));
    }
    let name = app.study.root.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let left = Line::from(spans);
    f.render_widget(Paragraph::new(left), area);
    let right = Line::from(vec![Span::styled(format!("study: {name} "), dim())]);
    f.render_widget(Paragraph::new(right).alignment(Alignment::Right), area);
}

fn draw_footer(f: &mut Frame, app: &App, area: Rect) {
    let running = app.running_jobs();
    let right = format!("{}? help  q quit ", if running > 0 { format!("{running} job(s) running · ") } else { String::new() });
    let [l, r] = Layout::horizontal([Constraint::Min(0), Constraint::Length(right.chars().count() as u16)]).areas(area);
    let left = match &app.input {
        Some(inp) if inp.kind == InputKind::Search => Line::from(vec![Span::styled("/", bold()), Span::raw(inp.text.clone()), Span::styled("█", dim())]),
        _ if !app.status.is_empty() => Line::from(Span::raw(format!(" {}", app.status))),
        _ => Line::from(Span::styled(hint(app), dim())),
    };
    f.render_widget(Paragraph::new(left), l);
    f.render_widget(Paragraph::new(Line::from(Span::styled(right, dim()))), r);
}

fn hint(app: &App) -> &'static str {
    match app.view {
        View::Overview => " Tab views · e evaluate new checkpoints · t x-axis · p PNG",
        View::Tokens => " ←→ token ↑↓ line [ ] doc 1-4 filter / search f fluctuating",
        View::Variance => " ↑↓ bin · Enter list its tokens · 1-4 filter · p export PNG",
        View::Runs => " n new run · x cancel · e evaluate · ↑↓ select · p export PNG",
    }
}

fn centered(f: &Frame, w: u16, h: u16) -> Rect {
    let a = f.area();
    let (w, h) = (w.min(a.width), h.min(a.height));
    Rect { x: a.x + (a.width - w) / 2, y: a.y + (a.height - h) / 2, width: w, height: h }
}

fn empty_state(f: &mut Frame, area: Rect, title: &str, lines: Vec<Line<'static>>) {
    let p = Paragraph::new(Text::from(lines)).block(block(format!(" {title} "))).wrap(Wrap { trim: false });
    f.render_widget(p, area);
}

fn no_study(f: &mut Frame, app: &App, area: Rect) {
    let name = app.study.root.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| ".".into());
    empty_state(
        f,
        area,
        "No study",
        vec![
            Line::from(Span::styled(format!("There is no study.json in `{name}`."), bold())),
            Line::from(""),
            Line::from("Make one, then open it with `rho tui --study DIR`:"),
            Line::from("  rho eval --checkpoints RUN_DIR --data VAL.jsonl --study DIR"),
            Line::from("  rho categorize --study DIR"),
            Line::from(""),
            Line::from("Or build the demo study (a few minutes, no downloads):"),
            Line::from("  rho demo"),
        ],
    );
}

// ---- Overview ----------------------------------------------------------

/// The x of each checkpoint on the TUI's charts and a short axis title: steps (or tokens
/// seen, `t`) when they increase along the series, else the index (`report::data::checkpoint_x`).
pub fn checkpoint_x(app: &App) -> (Vec<f64>, String) {
    let ck: Vec<(Option<i64>, Option<u64>)> = app.study.checkpoints().iter().map(|c| (c.step, c.tokens_seen)).collect();
    let (x, title) = crate::report::data::checkpoint_x(&ck, app.x_axis)
        .or_else(|_| crate::report::data::checkpoint_x(&ck, crate::report::data::XAxis::Step))
        .unwrap_or_default();
    let short = if title.starts_with("checkpoint (index") {
        "checkpoint #".to_string()
    } else if title == "checkpoint step" {
        "step".to_string()
    } else {
        title.replace("training tokens seen", "tokens")
    };
    (x, short)
}

/// The x-axis ends as tokens seen (`105B`, `1.5T`) when the charts are against tokens.
fn token_ends(app: &App, x_name: &str) -> Option<[String; 2]> {
    let ck = app.study.checkpoints();
    if !x_name.starts_with("tokens") {
        return None;
    }
    Some([ck.first()?.tokens_seen.map(fmt_tokens)?, ck.last()?.tokens_seen.map(fmt_tokens)?])
}

fn step_text(step: Option<i64>) -> String {
    step.map(|s| s.to_string()).unwrap_or_else(|| "–".into())
}

fn draw_overview(f: &mut Frame, app: &App, area: Rect) {
    let s = &app.study;
    let Some(m) = &s.manifest else { return no_study(f, app, area) };
    let [left, right] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let [ck_area, shares_area] = Layout::vertical([Constraint::Min(4), Constraint::Length(6)]).areas(left);

    // checkpoints with their evaluation status
    let mut rows: Vec<Row> = m
        .checkpoints
        .iter()
        .map(|c| {
            Row::new(vec![
                Cell::from(c.name.clone()),
                Cell::from(format!("{:>6}", step_text(c.step))),
                Cell::from(format!("{:>7.4}", c.mean_loss)),
                Cell::from(Span::styled("evaluated", Style::default().fg(Color::Green))),
            ])
        })
        .collect();
    for (name, step, parts) in &s.incomplete {
        rows.push(Row::new(vec![
            Cell::from(name.clone()),
            Cell::from(format!("{:>6}", step_text(*step))),
            Cell::from("      –"),
            Cell::from(Span::styled(parts.clone(), Style::default().fg(Color::Yellow))),
        ]));
    }
    let eval_job = app.jobs.iter().rev().find(|j| j.kind == JobKind::Eval { target: "study".into() } && j.status == JobStatus::Running);
    for (i, p) in s.new_checkpoints.iter().enumerate() {
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let st = match eval_job {
            Some(j) if i < j.done => Span::styled("done", Style::default().fg(Color::Green)),
            Some(j) if i == j.done => Span::styled("running", Style::default().fg(Color::Yellow)),
            Some(_) => Span::styled("queued", dim()),
            None => Span::styled("new: e", Style::default().fg(Color::Yellow)),
        };
        let step = s.new_steps.get(i).copied().flatten();
        rows.push(Row::new(vec![Cell::from(name), Cell::from(format!("{:>6}", step_text(step))), Cell::from("      –"), Cell::from(st)]));
    }
    // Scroll: ck_scroll is clamped so the last page stays full.
    let visible = (ck_area.height as usize).saturating_sub(3).max(1);
    let first = app.ck_scroll.min(rows.len().saturating_sub(visible));
    let n_rows_all = rows.len();
    let rows: Vec<Row> = rows.into_iter().skip(first).take(visible).collect();
    let title = format!(" Checkpoints ({} tokens, {} docs) ", s.n_rows, s.n_docs());
    let mut b = block(title);
    if n_rows_all > visible {
        b = b.title_bottom(Line::from(format!(" rows {}-{} of {n_rows_all} ↑↓ ", first + 1, first + rows.len())).right_aligned());
    }
    if let Some(w) = s.warnings.last() {
        // The latest problem met while reading, on the frame (never fatal).
        let scroll_title = if n_rows_all > visible { 24 } else { 0 };
        let room = (ck_area.width as usize).saturating_sub(12 + scroll_title).max(8);
        let mut text: String = w.chars().take(room).collect();
        if w.chars().count() > room {
            text.push('…');
        }
        let more = if s.warnings.len() > 1 { format!(" (+{})", s.warnings.len() - 1) } else { String::new() };
        b = b.title_bottom(Line::from(Span::styled(format!(" ⚠ {text}{more} "), Style::default().fg(Color::Yellow))).left_aligned());
    }
    let t = Table::new(rows, [Constraint::Min(8), Constraint::Length(6), Constraint::Length(7), Constraint::Length(9)])
        .header(Row::new(vec!["name", "  step", "   loss", "status"]).style(bold()))
        .block(b);
    f.render_widget(t, ck_area);
    if let Some(j) = eval_job {
        let g = Rect { y: ck_area.y + ck_area.height.saturating_sub(2), height: 1, x: ck_area.x + 1, width: ck_area.width.saturating_sub(2) };
        gauge(f, g, j.done, j.total, &format!("eval {}/{}", j.done, j.total));
    }

    // category shares
    match &s.summary {
        Some(sum) if s.traj.is_some() => {
            let w = shares_area.width.saturating_sub(2 + 20) as usize;
            let lines: Vec<Line> = sum
                .categories
                .iter()
                .map(|c| {
                    let i = c.category.index() as u8;
                    let n = (c.share * w as f64).round() as usize;
                    Line::from(vec![
                        Span::styled(format!("{} ", c.category.as_human_str()), cat_style(i).add_modifier(Modifier::BOLD)),
                        Span::raw(format!("{:>7} {:>5.1}% ", c.count, 100.0 * c.share)),
                        Span::styled("█".repeat(n), cat_style(i)),
                    ])
                })
                .collect();
            let title = format!(" Categories: |ΔL| ≤ {}, L_mean {:.3} ", sum.threshold, sum.l_mean);
            f.render_widget(Paragraph::new(lines).block(block(title)), shares_area);
        }
        _ => empty_state(
            f,
            shares_area,
            "Categories",
            vec![Line::from("No trajectories yet."), Line::from(Span::styled("Press c to categorize now", bold())), Line::from("(or `rho categorize --study DIR`).")],
        ),
    }

    // mean loss per category over the checkpoints
    let (steps, x_name) = checkpoint_x(app);
    match &s.cat_means {
        Some(means) if !steps.is_empty() => {
            let series: Vec<Vec<(f64, f64)>> = (0..4).map(|c| steps.iter().zip(means).filter_map(|(&x, m)| m[c].map(|y| (x, y))).collect()).collect();
            let xl = token_ends(app, &x_name);
            let x_name = if xl.is_some() { "tokens seen" } else { x_name.as_str() };
            line_chart_x(f, right, " Mean loss per category ", &series, &["H→H", "L→H", "H→L", "L→L"], &CAT_COLORS, x_name, xl);
        }
        _ => {
            let msg = if s.traj.is_none() {
                "The chart needs trajectories: press c."
            } else if s.warnings.is_empty() {
                "computing the mean loss per category…"
            } else {
                "the means could not be computed (see warnings)"
            };
            empty_state(f, right, "Mean loss per category", vec![Line::from(msg)]);
        }
    }
}

fn gauge(f: &mut Frame, area: Rect, done: usize, total: usize, label: &str) {
    let ratio = if total == 0 { 0.0 } else { (done as f64 / total as f64).clamp(0.0, 1.0) };
    let g = Gauge::default().gauge_style(Style::default().fg(Color::Green).bg(Color::DarkGray)).ratio(ratio).label(label.to_string());
    f.render_widget(g, area);
}

fn bounds(it: impl Iterator<Item = f64>) -> [f64; 2] {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in it.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return [0.0, 1.0];
    }
    if hi - lo < 1e-9 {
        return [lo - 0.5, hi + 0.5];
    }
    let pad = (hi - lo) * 0.05;
    [lo - pad, hi + pad]
}

fn line_chart(f: &mut Frame, area: Rect, title: &str, series: &[Vec<(f64, f64)>], names: &[&str], colors: &[Color], x_name: &str) {
    line_chart_x(f, area, title, series, names, colors, x_name, None)
}

#[allow(clippy::too_many_arguments)]
fn line_chart_x(
    f: &mut Frame,
    area: Rect,
    title: &str,
    series: &[Vec<(f64, f64)>],
    names: &[&str],
    colors: &[Color],
    x_name: &str,
    x_labels: Option<[String; 2]>,
) {
    let mut xb = bounds(series.iter().flatten().map(|p| p.0));
    let xs: Vec<f64> = series.iter().flatten().map(|p| p.0).filter(|x| x.is_finite()).collect();
    if let (Some(lo), Some(hi)) = (xs.iter().cloned().reduce(f64::min), xs.iter().cloned().reduce(f64::max)) {
        if hi > lo {
            xb = [lo, hi];
        }
    }
    let yb = bounds(series.iter().flatten().map(|p| p.1));
    let ds: Vec<Dataset> = series
        .iter()
        .enumerate()
        .map(|(i, pts)| {
            Dataset::default()
                .name(names[i].to_string())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(colors[i % colors.len()]))
                .data(pts)
        })
        .collect();
    let fmt = |v: f64| if v.abs() >= 100.0 || v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") };
    let xl = x_labels.unwrap_or_else(|| [fmt(xb[0]), fmt(xb[1])]);
    let c = Chart::new(ds)
        .block(block(title.to_string()))
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)))
        .x_axis(Axis::default().title(x_name.to_string()).bounds(xb).labels(xl).style(dim()))
        .y_axis(Axis::default().bounds(yb).labels([fmt(yb[0]), fmt(yb[1])]).style(dim()));
    f.render_widget(c, area);
}

// ---- Token browser -----------------------------------------------------

fn draw_tokens(f: &mut Frame, app: &App, body: Rect) {
    let s = &app.study;
    if s.manifest.is_none() {
        return no_study(f, app, body);
    }
    if s.n_rows == 0 {
        return empty_state(f, body, "Tokens", vec![Line::from("This study has no scored tokens: run `rho eval`.")]);
    }
    let a = browser_areas(body);
    let d = s.doc_of(app.cursor);
    let (lo, hi) = app.page_range(d);
    if !s.rows_loaded(lo, hi) {
        empty_state(f, a.text, "Tokens", vec![Line::from("loading…")]);
        draw_token_details(f, app, a.details);
        return empty_state(f, a.chart, "Loss by checkpoint", vec![Line::from("loading…")]);
    }
    let width = a.text.width.saturating_sub(2) as usize;
    let lay = layout(s, lo, hi, width);
    let inner_h = a.text.height.saturating_sub(2) as usize;
    let cur_line = lay.pos.get(app.cursor - lo).map(|p| p.0).unwrap_or(0);
    let top = cur_line.saturating_sub(inner_h / 2).min(lay.n_lines.saturating_sub(inner_h));
    let cats = s.traj.as_ref().map(|t| &t.cat);
    let lines: Vec<Line> = lay.lines[top..(top + inner_h).min(lay.n_lines)]
        .iter()
        .map(|l| {
            Line::from(
                l.iter()
                    .map(|(row, text)| {
                        let mut st = match cats {
                            Some(c) => {
                                let ci = c[*row];
                                if app.filter.is_some_and(|f| f != ci) {
                                    dim()
                                } else {
                                    cat_style(ci)
                                }
                            }
                            None => Style::default(),
                        };
                        if *row == app.cursor {
                            st = st.add_modifier(Modifier::REVERSED | Modifier::BOLD);
                        }
                        Span::styled(text.clone(), st)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let filter = app.filter.map(|f| cat_of(f).as_human_str()).unwrap_or("all");
    let page = if hi - lo < s.doc_range(d).1 - s.doc_range(d).0 { format!(" rows {}-{}", lo - s.doc_range(d).0, hi - s.doc_range(d).0) } else { String::new() };
    let mut title = vec![Span::raw(format!(" Doc {} ({}/{}){page} · filter ", s.doc_seq.get(d).copied().unwrap_or(0), d + 1, s.n_docs()))];
    title.push(Span::styled(filter.to_string(), app.filter.map(cat_style).unwrap_or_default().add_modifier(Modifier::BOLD)));
    title.push(Span::raw(" "));
    if !app.query.is_empty() {
        title.push(Span::raw(format!("· /{} ", app.query)));
    }
    f.render_widget(Paragraph::new(lines).block(block(Line::from(title))), a.text);
    draw_token_details(f, app, a.details);
    draw_token_chart(f, app, a.chart);
}

fn draw_token_details(f: &mut Frame, app: &App, area: Rect) {
    let s = &app.study;
    let r = app.cursor;
    let d = s.doc_of(r);
    let label = crate::report::data::token_label(s.text(r), 16);
    let mut lines = vec![Line::from(vec![Span::styled(label, bold()), Span::raw(format!("  token {} of doc", r - s.doc_range(d).0))])];
    match (&s.traj, app.why(r)) {
        (Some(t), Some((c, why))) => {
            let ci = c.index() as u8;
            lines.push(Line::from(vec![Span::styled(format!("{} ", c.as_human_str()), cat_style(ci).add_modifier(Modifier::BOLD)), Span::raw(why)]));
            lines.push(Line::from(format!("ΔL {:+.3}  slope {:+.4}/ckpt", t.delta[r], t.slope[r])));
            lines.push(Line::from(format!("residual_std {:.3}", t.residual_std[r])));
            lines.push(Line::from(format!("loss first {:.3} last {:.3} mean {:.3}", t.first_loss[r], t.last_loss[r], t.mean_loss[r])));
            if let Some(p) = app.fluct_pos {
                lines.push(Line::from(Span::styled(format!("fluctuating #{} of {}", p + 1, app.fluct.len()), dim())));
            }
        }
        _ => {
            lines.push(Line::from("No trajectories yet:"));
            lines.push(Line::from(Span::styled("press c to categorize.", bold())));
        }
    }
    f.render_widget(Paragraph::new(lines).block(block(" Token ")).wrap(Wrap { trim: false }), area);
}

fn draw_token_chart(f: &mut Frame, app: &App, area: Rect) {
    let s = &app.study;
    let Some(losses) = s.losses(app.cursor) else {
        let msg = if s.chunks.contains_key(&(app.cursor / super::data::CHUNK)) { "no losses for this token" } else { "loading…" };
        return empty_state(f, area, "Loss by checkpoint", vec![Line::from(msg)]);
    };
    let n = losses.len();
    let (mut xs, x_name) = checkpoint_x(app);
    if xs.len() != n {
        xs = (0..n).map(|i| i as f64).collect();
    }
    let pts: Vec<(f64, f64)> = xs.iter().zip(&losses).map(|(&x, &l)| (x, l as f64)).collect();
    let mut series = vec![pts];
    if let (Some(t), Some(&x0), Some(&x1)) = (&s.traj, xs.first(), xs.last()) {
        // The fitted line is against the checkpoint index (Rho-1's x = 0..n-1): its ends.
        let (slope, mean) = (t.slope[app.cursor] as f64, t.mean_loss[app.cursor] as f64);
        let fit = |i: f64| mean + slope * (i - (n as f64 - 1.0) / 2.0);
        series.push(vec![(x0, fit(0.0)), (x1, fit((n - 1) as f64))]);
    }
    let ci = s.traj.as_ref().map(|t| t.cat[app.cursor]).unwrap_or(3);
    let colors = [CAT_COLORS[ci as usize], Color::Gray];
    let ck = s.checkpoints();
    // The ends: the checkpoints' names, or their tokens seen when the x-axis is tokens.
    let tokens = token_ends(app, &x_name);
    let x_name = if tokens.is_some() { "tokens" } else { "" };
    let xl = tokens.or_else(|| ck.first().zip(ck.last()).map(|(a, b)| [a.name.clone(), b.name.clone()]));
    line_chart_x(f, area, " Loss by checkpoint ", &series, &["loss", "fit"], &colors, x_name, xl);
}

// ---- Variance view -----------------------------------------------------

fn draw_variance(f: &mut Frame, app: &App, body: Rect) {
    let s = &app.study;
    if s.manifest.is_none() {
        return no_study(f, app, body);
    }
    let v = &app.var;
    if v.counts.is_empty() {
        return empty_state(
            f,
            body,
            "Variance",
            vec![
                Line::from("No trajectories yet: the residual_std of each token comes from `rho categorize`."),
                Line::from(Span::styled("Press c to categorize now.", bold())),
            ],
        );
    }
    let table_h = (VAR_BINS as u16 + 3).min(body.height.saturating_sub(4));
    let [ta, la] = Layout::vertical([Constraint::Length(table_h), Constraint::Min(0)]).areas(body);
    let w = (v.hi - v.lo) / VAR_BINS as f64;
    let col_w = ((ta.width.saturating_sub(2 + 12)) / 4).max(8) as usize;
    let bar_w = col_w.saturating_sub(8);
    let maxc: Vec<u64> = (0..4).map(|c| v.counts.iter().map(|b| b[c]).max().unwrap_or(0).max(1)).collect();
    let rows: Vec<Row> = v
        .counts
        .iter()
        .enumerate()
        .map(|(b, cs)| {
            let lo = v.lo + w * b as f64;
            let range = if b + 1 == VAR_BINS { format!("≥{lo:.3}") } else { format!("{lo:.3}–{:.3}", lo + w) };
            let mut cells = vec![Cell::from(range)];
            for c in 0..4 {
                let n = ((cs[c] as f64 / maxc[c] as f64) * bar_w as f64).round() as usize;
                let st = if app.filter.is_some_and(|f| f as usize != c) { dim() } else { cat_style(c as u8) };
                cells.push(Cell::from(Line::from(vec![Span::styled(format!("{:<bar_w$}", "▇".repeat(n)), st), Span::raw(format!("{:>7}", cs[c]))])));
            }
            Row::new(cells)
        })
        .collect();
    let header = Row::new(
        std::iter::once(Cell::from("residual_std"))
            .chain((0..4).map(|c| Cell::from(Span::styled(format!("{:>col_w$}", cat_of(c).as_human_str()), cat_style(c).add_modifier(Modifier::BOLD)))))
            .collect::<Vec<_>>(),
    );
    let widths = [Constraint::Length(12), Constraint::Length(col_w as u16), Constraint::Length(col_w as u16), Constraint::Length(col_w as u16), Constraint::Length(col_w as u16)];
    let t = Table::new(rows, widths)
        .header(header)
        .column_spacing(0)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(block(" Distribution of residual_std per category (↑↓ bin, Enter list) "));
    let mut st = TableState::default();
    st.select(Some(v.bin));
    f.render_stateful_widget(t, ta, &mut st);

    // the tokens of the selected bin
    let t = s.traj.as_ref().unwrap();
    let total: u64 = match app.filter {
        Some(c) => v.counts[v.bin][c as usize],
        None => v.counts[v.bin].iter().sum(),
    };
    let filter = app.filter.map(|f| cat_of(f).as_human_str()).unwrap_or("all");
    let title = if v.list.is_empty() {
        format!(" Bin {}: {total} tokens (filter {filter}) · Enter lists them ", v.bin + 1)
    } else {
        format!(" Bin {}: {} of {total} tokens, filter {filter}, by residual_std{} ", v.bin + 1, v.list.len(), if v.list_focus { " · Enter opens" } else { "" })
    };
    let items: Vec<ListItem> = v
        .list
        .iter()
        .map(|&r| {
            let d = s.doc_of(r);
            let c = t.cat[r];
            ListItem::new(Line::from(vec![
                Span::raw(format!("{:<20}", crate::report::data::token_label(s.text(r), 16))),
                Span::styled(format!(" {} ", cat_of(c).as_human_str()), cat_style(c)),
                Span::raw(format!(" rs {:.3}  ΔL {:+.3}  doc {} tok {}", t.residual_std[r], t.delta[r], s.doc_seq.get(d).copied().unwrap_or(0), r - s.doc_range(d).0)),
            ]))
        })
        .collect();
    let list = List::new(items).block(block(title)).highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut ls = ListState::default();
    if v.list_focus {
        ls.select(Some(v.list_sel));
    }
    f.render_stateful_widget(list, la, &mut ls);
}

// ---- Runs --------------------------------------------------------------

fn draw_runs(f: &mut Frame, app: &App, body: Rect) {
    let s = &app.study;
    if s.runs.is_empty() {
        return empty_state(
            f,
            body,
            "Runs",
            vec![
                Line::from(Span::styled("No runs yet.", bold())),
                Line::from(""),
                Line::from("Press n to start a CLM, SLM or random-selection run from a checkpoint of"),
                Line::from("this study. Runs go in the background (several at once) and are written to"),
                Line::from("runs/<name>/ in the study; their loss curves show here as they train."),
                Line::from(""),
                Line::from("From the command line: rho train --init CKPT --data FILE --out STUDY/runs/NAME"),
            ],
        );
    }
    let [la, da] = Layout::horizontal([Constraint::Length(28.min(body.width / 3)), Constraint::Min(20)]).areas(body);
    let items: Vec<ListItem> = s
        .runs
        .iter()
        .map(|r| {
            let (mark, st) = run_state(app, &r.name);
            ListItem::new(Line::from(vec![Span::styled(format!("{mark} "), st), Span::raw(r.name.clone())]))
        })
        .collect();
    let list = List::new(items).block(block(" Runs (n new) ")).highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut ls = ListState::default();
    ls.select(Some(app.runs_sel.min(s.runs.len() - 1)));
    f.render_stateful_widget(list, la, &mut ls);

    let Some(r) = s.runs.get(app.runs_sel) else { return };
    let job = app.run_job(&r.name);
    let eval = app.jobs.iter().rev().find(|j| j.kind == JobKind::Eval { target: format!("runs/{}/study", r.name) });
    let last = r.metrics.last();
    let status = match job.map(|j| &j.status) {
        Some(JobStatus::Running) => "running".to_string(),
        Some(JobStatus::Done) => "done".to_string(),
        Some(JobStatus::Cancelled) => "cancelled".to_string(),
        Some(JobStatus::Failed) => "failed".to_string(),
        None => "finished".to_string(),
    };
    let steps = r.steps.or(job.map(|j| j.total as u64));
    let mut info = vec![
        Line::from(vec![Span::styled(r.name.clone(), bold()), Span::raw(format!(" · {} · {status}", r.mode))]),
        Line::from(match last {
            Some(m) => format!("step {}{}  loss all {:.3}  kept {:.3}", m.step, steps.map(|s| format!("/{s}")).unwrap_or_default(), m.loss_all, m.loss_kept),
            None => "waiting for the first step…".to_string(),
        }),
        Line::from(match last {
            Some(m) => format!("kept share {:.1}%  {:.0} tokens/s", 100.0 * m.kept_frac, m.tokens_per_s),
            None => String::new(),
        }),
    ];
    if let Some(j) = job.filter(|j| j.status != JobStatus::Running && !j.message.is_empty()) {
        info.push(Line::from(Span::styled(j.message.clone(), dim())));
    } else {
        let n = super::data::run_checkpoints(&r.dir).len();
        info.push(Line::from(Span::styled(
            format!("{n} checkpoints · {}", if status == "running" { "x cancel" } else { "e evaluate into runs/<run>/study" }),
            dim(),
        )));
    }
    let has_eval = eval.is_some();
    let [ia, ga, ca, ea] = Layout::vertical([
        Constraint::Length(info.len() as u16 + 3),
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(if has_eval { 1 } else { 0 }),
    ])
    .areas(da);
    f.render_widget(Paragraph::new(info).block(block(" Run ")).wrap(Wrap { trim: false }), ia);
    let done = last.map(|m| m.step as usize).unwrap_or(0);
    let total = steps.unwrap_or(done as u64) as usize;
    gauge(f, ga, done, total, &format!("step {done}/{total}"));
    if r.metrics.is_empty() {
        empty_state(f, ca, "Loss", vec![Line::from("no steps yet")]);
    } else {
        let all: Vec<(f64, f64)> = r.metrics.iter().map(|m| (m.step as f64, m.loss_all)).collect();
        let kept: Vec<(f64, f64)> = r.metrics.iter().map(|m| (m.step as f64, m.loss_kept)).collect();
        line_chart(f, ca, " Loss: all vs kept tokens ", &[all, kept], &["all", "kept"], &[Color::LightBlue, Color::LightRed], "step");
    }
    if let Some(j) = eval {
        let label = match j.status {
            JobStatus::Running => format!("eval {}/{}", j.done, j.total),
            _ => format!("eval: {}", j.message),
        };
        gauge(f, ea, j.done, j.total, &label);
    }
}

fn run_state(app: &App, run: &str) -> (&'static str, Style) {
    match app.run_job(run).map(|j| &j.status) {
        Some(JobStatus::Running) => ("▶", Style::default().fg(Color::Yellow)),
        Some(JobStatus::Failed) => ("✗", Style::default().fg(Color::Red)),
        Some(JobStatus::Cancelled) => ("■", dim()),
        _ => ("✓", Style::default().fg(Color::Green)),
    }
}

fn draw_form(f: &mut Frame, app: &App, _area: Rect) {
    let Some(form) = &app.form else { return };
    let a = centered(f, 66, 13);
    f.render_widget(Clear, a);
    let editing = app.input.as_ref().and_then(|i| if let InputKind::FormField(k) = i.kind { Some((k, i.text.clone())) } else { None });
    let mode = |m: RunMode| if m == form.mode { Span::styled(format!("[{}]", m.name()), bold()) } else { Span::raw(format!(" {} ", m.name())) };
    let ratio_note = if form.mode == RunMode::Clm { "  (not used by clm)" } else { "" };
    let reference_note = if form.mode == RunMode::Slm { "" } else { "  (slm only)" };
    let path = |k: usize, v: &str| match &editing {
        Some((e, t)) if *e == k => Line::from(vec![Span::raw(t.clone()), Span::styled("█", dim())]),
        _ => Line::from(if v.is_empty() { "(none)".to_string() } else { v.to_string() }),
    };
    let fields: Vec<(String, Line)> = vec![
        ("Mode".into(), Line::from(vec![mode(RunMode::Clm), mode(RunMode::Slm), mode(RunMode::Random)])),
        ("Ratio".into(), Line::from(format!("◀ {:.2} ▶{ratio_note}", form.ratio))),
        ("Steps".into(), Line::from(format!("◀ {} ▶", form.steps))),
        ("Init".into(), path(3, &form.init)),
        (format!("Reference{reference_note}"), path(4, &form.reference)),
        ("Data".into(), path(5, &form.data)),
        (String::new(), Line::from(Span::styled("[ Start ]", bold()))),
    ];
    let mut lines = Vec::new();
    for (i, (name, val)) in fields.into_iter().enumerate() {
        let mut spans = vec![Span::styled(format!(" {:<10} ", name.split("  ").next().unwrap_or("")), bold())];
        spans.extend(val.spans);
        if name.contains("(slm only)") {
            spans.push(Span::styled("  (slm only)", dim()));
        }
        let mut l = Line::from(spans);
        if i == form.field {
            l = l.style(Style::default().add_modifier(Modifier::REVERSED));
        }
        lines.push(l);
    }
    debug_assert_eq!(lines.len(), FORM_FIELDS);
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled(" ↑↓ field  ←→ adjust  Enter edit / start  s start  Esc close", dim())));
    lines.push(Line::from(Span::styled(" paths are relative to the study folder", dim())));
    f.render_widget(Paragraph::new(lines).block(block(" New training run ")), a);
}

const HELP: &[(&str, &str)] = &[
    ("Everywhere", ""),
    ("Tab / S-Tab, F1-F4", "next / previous view, or view 1-4"),
    ("? / q, Ctrl-C", "this help (Esc closes) / quit"),
    ("p", "export the chart in view as PNG (study/exports/)"),
    ("t", "charts over checkpoints: x-axis step ↔ tokens seen"),
    ("c", "categorize (when the study has no trajectories)"),
    ("Overview", ""),
    ("e", "evaluate new checkpoints of the series"),
    ("↑↓ jk PgUp/Dn g G", "scroll the checkpoint list"),
    ("Tokens", ""),
    ("←→ h l / ↑↓ k j", "previous / next token, line up / down"),
    ("[ ] PgUp PgDn J K", "previous / next document"),
    ("g G Home End", "first / last token of the document"),
    ("1-4, 0", "filter H→H L→H H→L L→L, all"),
    ("/ text, n N", "search, next / previous match"),
    ("f F", "next / previous most fluctuating token"),
    ("Variance", ""),
    ("↑↓, Enter, Esc", "select bin, list / open its tokens, back"),
    ("Runs", ""),
    ("n", "new run form: ↑↓ field, ←→ adjust, Enter edit, s start"),
    ("x / e", "cancel the run / evaluate its checkpoints"),
];

fn draw_help(f: &mut Frame, _app: &App, _area: Rect) {
    let a = centered(f, 78, HELP.len() as u16 + 2);
    f.render_widget(Clear, a);
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                Line::from(Span::styled(k.to_string(), bold().fg(Color::Cyan)))
            } else {
                Line::from(vec![Span::styled(format!("  {k:<20}"), bold()), Span::raw(v.to_string())])
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block(" Keys (? or Esc to close) ")), a);
}
