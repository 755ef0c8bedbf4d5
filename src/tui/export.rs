//! `p`: the chart in view as PNG, drawn by the report code.

use super::app::{cat_of, App, View, VAR_BINS};
use crate::error::{Error, Result};
use crate::report::data::{checkpoint_x, XAxis};
use crate::report::{grouped_bars, line_chart, Series};
use std::path::Path;

/// The x of each checkpoint and the axis title, as the report draws them (step or tokens seen: `t`).
fn x_of(app: &App) -> (Vec<f64>, String) {
    let ck: Vec<(Option<i64>, Option<u64>)> = app.study.checkpoints().iter().map(|c| (c.step, c.tokens_seen)).collect();
    checkpoint_x(&ck, app.x_axis).or_else(|_| checkpoint_x(&ck, XAxis::Step)).unwrap_or_default()
}

pub fn export(app: &App, path: &Path) -> Result<()> {
    let s = &app.study;
    match app.view {
        View::Overview => {
            let means = s.cat_means.as_ref().ok_or_else(|| Error::msg("the category means are not computed yet"))?;
            let (steps, x_name) = x_of(app);
            let series: Vec<Series> = (0..4)
                .map(|c| Series {
                    name: cat_of(c as u8).as_human_str().into(),
                    points: steps.iter().zip(means).filter_map(|(&x, m)| m[c].map(|y| (x, y))).collect(),
                })
                .collect();
            line_chart(path, "Mean loss per category", &x_name, "loss (nats)", &series)
        }
        View::Tokens => {
            let losses = s.losses(app.cursor).ok_or_else(|| Error::msg("no losses for this token"))?;
            let (steps, x_name) = x_of(app);
            let mut series = vec![Series { name: "loss".into(), points: steps.iter().zip(&losses).map(|(&x, &y)| (x, y as f64)).collect() }];
            if let Some(t) = &s.traj {
                let (slope, mean) = (t.slope[app.cursor] as f64, t.mean_loss[app.cursor] as f64);
                let n = losses.len() as f64;
                let fit = |i: f64| mean + slope * (i - (n - 1.0) / 2.0);
                series.push(Series { name: "fitted line".into(), points: steps.iter().enumerate().map(|(i, &x)| (x, fit(i as f64))).collect() });
            }
            let text = crate::report::data::token_label(s.text(app.cursor), 24);
            line_chart(path, &format!("Token {text} (row {})", app.cursor), &x_name, "loss (nats)", &series)
        }
        View::Variance => {
            let v = &app.var;
            if v.counts.is_empty() {
                return Err(Error::msg("no trajectories"));
            }
            let w = (v.hi - v.lo) / VAR_BINS as f64;
            let groups: Vec<String> = (0..VAR_BINS).map(|b| format!("{:.2}", v.lo + w * b as f64)).collect();
            let series: Vec<(String, Vec<f64>)> =
                (0..4).map(|c| (cat_of(c as u8).as_human_str().to_string(), v.counts.iter().map(|b| b[c] as f64).collect())).collect();
            let max = v.counts.iter().flat_map(|b| b.iter()).copied().max().unwrap_or(1) as f64;
            grouped_bars(path, "residual_std per category", "tokens", &groups, &series, max * 1.05)
        }
        View::Runs => {
            let r = s.runs.get(app.runs_sel).ok_or_else(|| Error::msg("no run selected"))?;
            if r.metrics.is_empty() {
                return Err(Error::msg("the run has no metrics yet"));
            }
            let series = vec![
                Series { name: "loss, all tokens".into(), points: r.metrics.iter().map(|m| (m.step as f64, m.loss_all)).collect() },
                Series { name: "loss, kept tokens".into(), points: r.metrics.iter().map(|m| (m.step as f64, m.loss_kept)).collect() },
            ];
            line_chart(path, &format!("Run {}", r.name), "step", "loss (nats)", &series)
        }
    }
}
