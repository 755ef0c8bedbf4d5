//! The report's charts: each takes the data `data.rs` computed and writes one PNG
//! (written under a temporary name, then renamed).

#![allow(clippy::needless_range_loop)]

use super::data::{Dist, Piece};
use super::{init_font, PALETTE};
use crate::dynamics::Category;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type R<T = ()> = std::result::Result<T, String>;

trait S<T> {
    fn s(self) -> R<T>;
}
impl<T, E: std::fmt::Display> S<T> for std::result::Result<T, E> {
    fn s(self) -> R<T> {
        self.map_err(|e| e.to_string())
    }
}

/// Category colours: H->H red, L->H orange, H->L green, L->L blue.
pub const CAT_COLORS: [RGBColor; 4] = [RGBColor(214, 39, 40), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(31, 119, 180)];

fn cat_name(i: usize) -> &'static str {
    Category::ALL[i].as_human_str()
}

const F: &str = "sans-serif";

/// Draw a PNG of `size` with `draw`, atomically ([`super::png_file`]).
pub fn png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> R) -> Result<()> {
    super::png_file(path, size, |root| draw(root).map_err(|e| Error::file(path, format!("cannot draw chart: {e}"))))
}

/// How a legend entry is marked.
#[derive(Clone, Copy)]
pub enum Mark {
    Box,
    Line,
    Dashed,
}

/// A legend drawn in its own area (never over the data): one entry per row.
fn legend(area: &Area, title: Option<&str>, items: &[(String, RGBColor, Mark)], font: u32) -> R {
    let mut y = 10i32;
    let row = (font as f64 * 1.5) as i32;
    if let Some(t) = title {
        area.draw(&Text::new(t.to_string(), (10, y), (F, font).into_font().color(&BLACK))).s()?;
        y += row;
    }
    for (label, c, m) in items {
        let cy = y + font as i32 / 2;
        match m {
            Mark::Box => area.draw(&Rectangle::new([(10, cy - 9), (38, cy + 9)], c.filled())).s()?,
            Mark::Line => area.draw(&PathElement::new(vec![(8, cy), (40, cy)], c.stroke_width(4))).s()?,
            Mark::Dashed => {
                for x in [8, 22, 36] {
                    area.draw(&PathElement::new(vec![(x, cy), (x + 8, cy)], c.stroke_width(4))).s()?;
                }
            }
        }
        area.draw(&Text::new(label.clone(), (50, y), (F, font).into_font().color(&BLACK))).s()?;
        y += row;
    }
    Ok(())
}

/// Split off a title band at the top and draw the title (and a subtitle) centred in it.
fn titled<'a>(root: &Area<'a>, t: &str, sub: Option<&str>) -> R<Area<'a>> {
    let h = if sub.is_some() { 90 } else { 60 };
    let (top, rest) = root.split_vertically(h);
    let w = top.dim_in_pixel().0 as i32;
    top.draw(&Text::new(t.to_string(), (w / 2, 12), (F, 32).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)))).s()?;
    if let Some(s) = sub {
        top.draw(&Text::new(s.to_string(), (w / 2, 54), (F, 22).into_font().color(&RGBColor(80, 80, 80)).pos(Pos::new(HPos::Center, VPos::Top)))).s()?;
    }
    Ok(rest)
}

fn pad_range(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let p = (hi - lo) * frac;
    (lo - p, hi + p)
}

fn minmax(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.filter(|x| x.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Chart 1: Category shares: one bar per category with its count and percentage.
pub fn shares(path: &Path, counts: [u64; 4], sub: &str) -> Result<()> {
    let total: u64 = counts.iter().sum();
    let share = |i: usize| if total == 0 { 0.0 } else { counts[i] as f64 / total as f64 };
    let ymax = ((0..4).map(share).fold(0.0, f64::max) * 1.2).clamp(0.05, 1.05);
    png(path, (1400, 900), |root| {
        let area = titled(root, &format!("Token categories ({total} tokens)"), Some(sub))?;
        let mut ch = ChartBuilder::on(&area)
            .margin(30)
            .x_label_area_size(60)
            .y_label_area_size(100)
            .build_cartesian_2d(0f64..4f64, 0f64..ymax)
            .s()?;
        ch.configure_mesh()
            .disable_x_mesh()
            .x_labels(9)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < 4 { cat_name(i).to_string() } else { String::new() }
            })
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .y_desc("share of tokens")
            .label_style((F, 26))
            .axis_desc_style((F, 26))
            .draw()
            .s()?;
        for i in 0..4 {
            let x0 = i as f64 + 0.2;
            ch.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + 0.6, share(i))], CAT_COLORS[i].filled()))).s()?;
            let top = share(i);
            let lbl = (F, 26).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
            let (px, py) = ch.backend_coord(&(i as f64 + 0.5, top));
            area.draw(&Text::new(format!("{}", counts[i]), (px - area.get_base_pixel().0, py - area.get_base_pixel().1 - 34), lbl.clone())).s()?;
            area.draw(&Text::new(pct(share(i)), (px - area.get_base_pixel().0, py - area.get_base_pixel().1 - 6), lbl)).s()?;
        }
        Ok(())
    })
}

/// A line chart with the legend in a strip on the right. `lines`: (label, colour, dashed, points).
pub struct Line {
    pub label: String,
    pub color: RGBColor,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
    pub markers: bool,
}

#[allow(clippy::too_many_arguments)]
fn line_panel(area: &Area, lines: &[Line], x_desc: &str, y_desc: &str, legend_w: u32, legend_title: Option<&str>, hlines: &[(f64, RGBColor)]) -> R {
    let (plot, leg) = if legend_w > 0 {
        let w = area.dim_in_pixel().0;
        area.split_horizontally(w - legend_w)
    } else {
        let (a, b) = area.split_horizontally(area.dim_in_pixel().0);
        (a, b)
    };
    let (x0, x1) = minmax(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
    let (y0, y1) = minmax(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).chain(hlines.iter().map(|h| h.0)));
    let (x0, x1) = pad_range(x0, x1, 0.03);
    let (y0, y1) = pad_range(y0, y1, 0.06);
    let int_x = lines.iter().flat_map(|l| l.points.iter()).all(|p| p.0.fract() == 0.0);
    // Integer x (steps): label only the integer ticks, without decimals.
    let xfmt = move |x: &f64| {
        if !int_x {
            format!("{x:.2}")
        } else if (x - x.round()).abs() < 1e-9 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let mut ch = ChartBuilder::on(&plot).margin(20).x_label_area_size(70).y_label_area_size(100).build_cartesian_2d(x0..x1, y0..y1).s()?;
    ch.configure_mesh()
        .x_label_formatter(&xfmt)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((F, 22))
        .axis_desc_style((F, 24))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .s()?;
    for (y, c) in hlines {
        ch.draw_series(DashedLineSeries::new(vec![(x0, *y), (x1, *y)], 10, 8, c.stroke_width(2))).s()?;
    }
    for l in lines {
        let style = l.color.stroke_width(3);
        if l.dashed {
            ch.draw_series(DashedLineSeries::new(l.points.clone(), 12, 8, style)).s()?;
        } else {
            ch.draw_series(LineSeries::new(l.points.clone(), style)).s()?;
        }
        if l.markers {
            ch.draw_series(l.points.iter().map(|&p| Circle::new(p, 5, l.color.filled()))).s()?;
        }
    }
    if legend_w > 0 {
        let items: Vec<_> = lines.iter().map(|l| (l.label.clone(), l.color, if l.dashed { Mark::Dashed } else { Mark::Line })).collect();
        legend(&leg.margin(60, 0, 0, 0), legend_title, &items, 22)?;
    }
    Ok(())
}

/// Chart 2: Mean loss per category over the checkpoints (Fig. 3a).
pub fn category_means(path: &Path, sub: &str, x_desc: &str, lines: &[Line]) -> Result<()> {
    png(path, (1500, 900), |root| {
        let area = titled(root, "Mean loss of each category over the checkpoints", Some(sub))?;
        line_panel(&area, lines, x_desc, "mean loss (nats/token)", 290, Some("category (tokens)"), &[])
    })
}

/// One panel of the fluctuating-tokens chart.
pub struct TrajPanel {
    pub title: String,
    pub lines: Vec<Line>,
    pub empty_note: Option<String>,
}

/// Chart 3: Loss trajectories of the most fluctuating tokens, two panels side by side,
/// each with its legend (token texts) below the plot.
pub fn trajectories(path: &Path, sub: &str, x_desc: &str, panels: &[TrajPanel]) -> Result<()> {
    png(path, (2000, 1050), |root| {
        let area = titled(root, "Most fluctuating tokens (largest residual std around their trend)", Some(sub))?;
        let w = area.dim_in_pixel().0;
        let (l, r) = area.split_horizontally(w / 2);
        for (a, p) in [l, r].iter().zip(panels) {
            let (top, bottom) = a.split_vertically(a.dim_in_pixel().1 - 250);
            top.draw(&Text::new(p.title.clone(), (top.dim_in_pixel().0 as i32 / 2, 4), (F, 28).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)))).s()?;
            let plot = top.margin(40, 0, 10, 10);
            if let Some(note) = &p.empty_note {
                plot.draw(&Text::new(note.clone(), (plot.dim_in_pixel().0 as i32 / 2, plot.dim_in_pixel().1 as i32 / 2), (F, 28).into_font().color(&RGBColor(120, 120, 120)).pos(Pos::new(HPos::Center, VPos::Center)))).s()?;
                continue;
            }
            line_panel(&plot, &p.lines, x_desc, "loss (nats)", 0, None, &[])?;
            let items: Vec<_> = p.lines.iter().map(|l| (l.label.clone(), l.color, if l.dashed { Mark::Dashed } else { Mark::Line })).collect();
            legend(&bottom.margin(0, 0, 120, 10), None, &items, 22)?;
        }
        Ok(())
    })
}

/// Chart 4: Distribution of a per-token value per category: violins (histograms mirrored)
/// with quartile boxes, 5-95% whiskers and the median.
pub fn violins(path: &Path, sub: &str, y_desc: &str, dists: &[Dist; 4], lo: f64, hi: f64) -> Result<()> {
    png(path, (1400, 900), |root| {
        let area = titled(root, "Fluctuation around the trend per category (residual std)", Some(sub))?;
        let span = (hi - lo).max(1e-9);
        let mut ch = ChartBuilder::on(&area)
            .margin(30)
            .x_label_area_size(90)
            .y_label_area_size(100)
            .build_cartesian_2d(0f64..4f64, lo..(hi + span * 0.12))
            .s()?;
        let labels: Vec<String> = (0..4).map(|i| format!("{} (n={})", cat_name(i), dists[i].n)).collect();
        ch.configure_mesh()
            .disable_x_mesh()
            .x_labels(9)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < 4 { labels[i].clone() } else { String::new() }
            })
            .y_desc(y_desc)
            .label_style((F, 22))
            .axis_desc_style((F, 24))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .s()?;
        for (i, d) in dists.iter().enumerate() {
            let cx = i as f64 + 0.5;
            let c = CAT_COLORS[i];
            if d.n == 0 {
                ch.draw_series(std::iter::once(Text::new("no tokens", (cx, lo + span * 0.5), (F, 24).into_font().color(&RGBColor(120, 120, 120)).pos(Pos::new(HPos::Center, VPos::Center))))).s()?;
                continue;
            }
            if !d.few.is_empty() {
                // Few values: every one as a dot (spread sideways so equal values stay visible), and the median.
                let k = d.few.len();
                ch.draw_series(d.few.iter().enumerate().map(|(j, &v)| {
                    let dx = if k == 1 { 0.0 } else { -0.25 + 0.5 * j as f64 / (k - 1) as f64 };
                    Circle::new((cx + dx, (v as f64).min(hi)), 7, c.filled())
                }))
                .s()?;
                ch.draw_series(std::iter::once(PathElement::new(vec![(cx - 0.3, d.median), (cx + 0.3, d.median)], BLACK.stroke_width(2)))).s()?;
                ch.draw_series(std::iter::once(Text::new(format!("median {:.3} (dots: all {k} tokens)", d.median), (cx, hi + span * 0.1), (F, 20).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top))))).s()?;
                continue;
            }
            let bins = d.hist.len();
            let bw = span / bins as f64;
            let mx = d.hist.iter().copied().max().unwrap_or(1).max(1) as f64;
            let mut right: Vec<(f64, f64)> = Vec::new();
            // Only from the first to the last non-empty bin (no hairline up to the range's end).
            let first = d.hist.iter().position(|&n| n > 0).unwrap_or(0);
            let last = d.hist.iter().rposition(|&n| n > 0).unwrap_or(bins - 1);
            for (b, &n) in d.hist.iter().enumerate().take(last + 1).skip(first) {
                let half = 0.42 * n as f64 / mx;
                right.push((cx + half, lo + bw * b as f64));
                right.push((cx + half, lo + bw * (b + 1) as f64));
            }
            let mut poly: Vec<(f64, f64)> = right.clone();
            poly.extend(right.iter().rev().map(|&(x, y)| (2.0 * cx - x, y)));
            ch.draw_series(std::iter::once(Polygon::new(poly.clone(), c.mix(0.35).filled()))).s()?;
            let mut outline = poly;
            outline.push(outline[0]);
            ch.draw_series(std::iter::once(PathElement::new(outline, c.stroke_width(2)))).s()?;
            // whiskers 5-95%, box 25-75%, median
            ch.draw_series(std::iter::once(PathElement::new(vec![(cx, d.q05), (cx, d.q95)], BLACK.stroke_width(2)))).s()?;
            for y in [d.q05, d.q95] {
                ch.draw_series(std::iter::once(PathElement::new(vec![(cx - 0.04, y), (cx + 0.04, y)], BLACK.stroke_width(2)))).s()?;
            }
            ch.draw_series(std::iter::once(Rectangle::new([(cx - 0.06, d.q25), (cx + 0.06, d.q75)], c.filled()))).s()?;
            ch.draw_series(std::iter::once(Rectangle::new([(cx - 0.06, d.q25), (cx + 0.06, d.q75)], BLACK.stroke_width(1)))).s()?;
            ch.draw_series(std::iter::once(PathElement::new(vec![(cx - 0.09, d.median), (cx + 0.09, d.median)], WHITE.stroke_width(4)))).s()?;
            let mut note = format!("median {:.3}", d.median);
            if d.above > 0 {
                note.push_str(&format!(", {} above", d.above));
            }
            ch.draw_series(std::iter::once(Text::new(note, (cx, hi + span * 0.1), (F, 22).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top))))).s()?;
        }
        Ok(())
    })
}

/// Chart 5: The categorisation plane: ΔL against last-checkpoint loss, one dot per token.
#[allow(clippy::too_many_arguments)]
pub fn plane(path: &Path, sub: &str, pts: &[(f64, f64, u8)], threshold: f64, l_mean: f64, counts: [u64; 4]) -> Result<()> {
    png(path, (1500, 1000), |root| {
        let area = titled(root, "Categorisation plane: trend ΔL against last-checkpoint loss", Some(sub))?;
        let w = area.dim_in_pixel().0;
        let (plot, leg) = area.split_horizontally(w - 300);
        let (x0, x1) = minmax(pts.iter().map(|p| p.0).chain(std::iter::once(l_mean)));
        let (y0, y1) = minmax(pts.iter().map(|p| p.1).chain([threshold * 2.0, -threshold * 2.0]));
        let (x0, x1) = pad_range(x0, x1, 0.03);
        let (y0, y1) = pad_range(y0, y1, 0.05);
        let mut ch = ChartBuilder::on(&plot).margin(20).x_label_area_size(70).y_label_area_size(100).build_cartesian_2d(x0..x1, y0..y1).s()?;
        ch.configure_mesh()
            .x_desc("loss at the last checkpoint (nats)")
            .y_desc("ΔL = fitted end − fitted start (nats)")
            .label_style((F, 22))
            .axis_desc_style((F, 24))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .s()?;
        // Bigger categories first, so the small ones stay visible on top.
        let mut order: Vec<usize> = (0..4).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
        let r = if pts.len() > 20_000 { 2 } else if pts.len() > 2_000 { 3 } else { 5 };
        for &k in &order {
            let c = CAT_COLORS[k];
            ch.draw_series(pts.iter().filter(|p| p.2 as usize == k).map(|&(x, y, _)| Circle::new((x, y), r, c.mix(0.55).filled()))).s()?;
        }
        let grey = RGBColor(60, 60, 60);
        for y in [threshold, -threshold] {
            ch.draw_series(DashedLineSeries::new(vec![(x0, y), (x1, y)], 12, 8, grey.stroke_width(2))).s()?;
        }
        ch.draw_series(DashedLineSeries::new(vec![(l_mean, -threshold), (l_mean, threshold)], 8, 6, BLACK.stroke_width(3))).s()?;
        ch.draw_series(DashedLineSeries::new(vec![(l_mean, y0), (l_mean, y1)], 4, 10, grey.stroke_width(1))).s()?;
        let style = |hp, vp| (F, 24).into_font().color(&BLACK).pos(Pos::new(hp, vp));
        ch.draw_series(std::iter::once(Text::new(format!("L_mean = {l_mean:.3}"), (l_mean, y1), style(HPos::Left, VPos::Top)))).s()?;
        ch.draw_series(std::iter::once(Text::new(format!("+{threshold}"), (x1, threshold), style(HPos::Right, VPos::Bottom)))).s()?;
        ch.draw_series(std::iter::once(Text::new(format!("−{threshold}"), (x1, -threshold), style(HPos::Right, VPos::Top)))).s()?;
        let items: Vec<_> = (0..4).map(|i| (format!("{} ({})", cat_name(i), counts[i]), CAT_COLORS[i], Mark::Box)).collect();
        let mut leg_items = items;
        leg_items.push(("±threshold".into(), grey, Mark::Dashed));
        leg_items.push(("L_mean".into(), BLACK, Mark::Dashed));
        legend(&leg.margin(60, 0, 0, 0), Some("category (tokens)"), &leg_items, 22)?;
        let notes = [
            "ΔL > +threshold: L→H",
            "ΔL < −threshold: H→L",
            "otherwise: L→L left of",
            "L_mean, H→H right of it",
        ];
        for (j, n) in notes.iter().enumerate() {
            leg.draw(&Text::new(n.to_string(), (10, 420 + 30 * j as i32), (F, 20).into_font().color(&RGBColor(70, 70, 70)))).s()?;
        }
        Ok(())
    })
}

/// Light background of a category for text highlighting.
pub fn light(c: RGBColor, a: f64) -> RGBColor {
    let m = |x: u8| (255.0 - (255.0 - x as f64) * a).round() as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

/// Chart 6: A passage of text, each token on the background colour of its category.
/// `layout` gets a text measurer (pixels at `font` px) and returns the lines and a
/// footnote; the picture is `width` wide and as tall as the lines need (>= 800).
pub fn passage(path: &Path, t: &str, sub: &str, width: u32, font: u32, layout: impl FnOnce(&dyn Fn(&str) -> u32) -> (Vec<Vec<Piece>>, String, usize)) -> Result<()> {
    init_font();
    // Measure with a scratch backend (text size does not depend on the picture).
    let mut buf = vec![0u8; 3 * 64 * 64];
    let (lines, foot, ncols) = {
        let scratch = BitMapBackend::with_buffer(&mut buf, (64, 64)).into_drawing_area();
        let style: TextStyle = (F, font).into();
        let measure = |s: &str| scratch.estimate_text_size(s, &style).map(|d| d.0).unwrap_or(font * s.chars().count() as u32);
        layout(&measure)
    };
    let line_h = (font as f64 * 1.55) as u32;
    let top = 190u32;
    let ncols = ncols.max(1);
    let place = super::data::columns(&lines, ncols);
    let per_col = place.iter().flatten().map(|p| p.1 + 1).max().unwrap_or(1);
    let col_w = (width as i32 - 100) / ncols as i32;
    let height = (top + line_h * per_col as u32 + 80).max(800);
    png(path, (width, height), |root| {
        let area = titled(root, t, Some(sub))?;
        // legend row
        let mut x = 60;
        for i in 0..4 {
            let bg = light(CAT_COLORS[i], 0.45);
            area.draw(&Rectangle::new([(x, 12), (x + 120, 52)], bg.filled())).s()?;
            area.draw(&Rectangle::new([(x, 12), (x + 120, 52)], CAT_COLORS[i].stroke_width(2))).s()?;
            area.draw(&Text::new(cat_name(i).to_string(), (x + 60, 32), (F, 26).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center)))).s()?;
            x += 150;
        }
        area.draw(&Text::new("grey text: not scored (e.g. a document's first token) or between tokens", (x + 10, 22), (F, 20).into_font().color(&RGBColor(110, 110, 110)))).s()?;
        let style = (F, font).into_font().color(&BLACK);
        let grey = (F, font).into_font().color(&RGBColor(130, 130, 130));
        let y_top = (top - 90) as i32;
        for (line, at) in lines.iter().zip(&place) {
            let Some((c, r)) = *at else { continue };
            let y = y_top + r as i32 * line_h as i32;
            let mut x = 50i32 + col_w * c as i32;
            for p in line {
                let w = area.estimate_text_size(&p.text, &style).s()?.0 as i32;
                match p.cat {
                    Some(c) => {
                        let c = c as usize;
                        // 1 px of white between neighbouring tokens shows where each token ends.
                        let (a, b) = (x + 1, (x + w - 1).max(x + 2));
                        area.draw(&Rectangle::new([(a, y - 2), (b, y + line_h as i32 - 8)], light(CAT_COLORS[c], 0.45).filled())).s()?;
                        area.draw(&Rectangle::new([(a, y + line_h as i32 - 10), (b, y + line_h as i32 - 7)], CAT_COLORS[c].filled())).s()?;
                        area.draw(&Text::new(p.text.clone(), (x, y), style.clone())).s()?;
                    }
                    None => area.draw(&Text::new(p.text.clone(), (x, y), grey.clone())).s()?,
                }
                x += w;
            }
        }
        let y = y_top + (per_col as i32) * line_h as i32;
        area.draw(&Text::new(foot.clone(), (50, y + 16), (F, 20).into_font().color(&RGBColor(110, 110, 110)))).s()?;
        Ok(())
    })
}

/// Chart 7a: Loss on kept and not-kept tokens over training, per run.
pub fn kept_loss(path: &Path, sub: &str, lines: &[Line]) -> Result<()> {
    png(path, (1500, 900), |root| {
        let area = titled(root, "Training loss on kept and not-kept tokens", Some(sub))?;
        line_panel(&area, lines, "training step", "mean loss (nats/token)", 330, Some("run: tokens"), &[])
    })
}

/// Chart 7b: Kept share per trajectory category: groups are categories plus "all", bars are runs.
pub fn kept_share(path: &Path, sub: &str, runs: &[(String, [Option<f64>; 4], f64)]) -> Result<()> {
    png(path, (1500, 900), |root| {
        let area = titled(root, "Share of tokens kept by the selection, per trajectory category", Some(sub))?;
        let w = area.dim_in_pixel().0;
        let (plot, leg) = area.split_horizontally(w - 280);
        let groups: Vec<String> = (0..4).map(|i| cat_name(i).to_string()).chain(std::iter::once("all tokens".to_string())).collect();
        let mut ch = ChartBuilder::on(&plot).margin(20).x_label_area_size(60).y_label_area_size(100).build_cartesian_2d(0f64..5f64, 0f64..1.12).s()?;
        ch.configure_mesh()
            .disable_x_mesh()
            .x_labels(11)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < 5 { groups[i].clone() } else { String::new() }
            })
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .y_desc("share kept")
            .label_style((F, 24))
            .axis_desc_style((F, 24))
            .draw()
            .s()?;
        let n = runs.len().max(1) as f64;
        let bw = 0.8 / n;
        let font = if runs.len() > 3 { 16 } else { 20 };
        for (ri, (_, share, all)) in runs.iter().enumerate() {
            let c = PALETTE[ri % PALETTE.len()];
            for g in 0..5 {
                let v = if g < 4 { share[g] } else { Some(*all) };
                let x = g as f64 + 0.1 + ri as f64 * bw;
                match v {
                    Some(v) => {
                        ch.draw_series(std::iter::once(Rectangle::new([(x, 0.0), (x + bw * 0.92, v)], c.filled()))).s()?;
                        ch.draw_series(std::iter::once(Text::new(format!("{:.0}%", v * 100.0), (x + bw * 0.46, v), (F, font).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom))))).s()?;
                    }
                    None => {
                        ch.draw_series(std::iter::once(Text::new("–", (x + bw * 0.46, 0.02), (F, font).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom))))).s()?;
                    }
                }
            }
        }
        let items: Vec<_> = runs.iter().enumerate().map(|(i, r)| (r.0.clone(), PALETTE[i % PALETTE.len()], Mark::Box)).collect();
        legend(&leg.margin(60, 0, 0, 0), Some("run"), &items, 22)
    })
}
