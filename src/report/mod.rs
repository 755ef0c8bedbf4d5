//! Charts (PNG, plotters) drawn from plain structs. The font is bundled
//! (DejaVu Sans, assets/fonts) and registered with plotters' ab_glyph backend, so
//! no system font is needed.
//!
//! `rho report` ([`run_report`]) draws a study's charts: `data` computes what each
//! chart shows from plain tables (unit-tested), `charts` draws it, `study` reads
//! the study's Parquet files (only the needed columns) and writes `index.html`.

pub mod charts;
pub mod data;
mod study;

pub use data::XAxis;
pub use study::{run_report, run_report_x, ChartFile, ReportSummary, CHARTS, RUN_CHARTS};

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Register the bundled font once (as "sans-serif").
pub fn init_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn draw_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path, format!("cannot draw chart: {e}"))
}

/// Draw a chart of `(w, h)` pixels into memory, encode it as PNG and write it atomically
/// ([`crate::util::write_bytes_atomic`]: a new temporary of this process, never opened
/// through a link, renamed into place). `draw` gets the white canvas.
pub fn png_file(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    init_font();
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        draw(&root)?;
        root.present().map_err(|e| draw_err(path, e))?;
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| draw_err(path, e))?;
        wr.write_image_data(&rgb).map_err(|e| draw_err(path, e))?;
        wr.finish().map_err(|e| draw_err(path, e))?;
    }
    crate::util::write_bytes_atomic(path, &bytes)
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v.filter(|x| x.is_finite()) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// A line chart of several series, 1200x800, written atomically as PNG.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    png_file(path, (1200, 800), |root| {
        let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 32))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| draw_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 20))
            .axis_desc_style(("sans-serif", 24))
            .draw()
            .map_err(|e| draw_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(3)))
                .map_err(|e| draw_err(path, e))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(3)));
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(|e| draw_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 22))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| draw_err(path, e))?;
        Ok(())
    })
}

/// Grouped bars: for each group (x label), one bar per series; values in [0, y_max].
pub fn grouped_bars(path: &Path, title: &str, y_label: &str, groups: &[String], series: &[(String, Vec<f64>)], y_max: f64) -> Result<()> {
    png_file(path, (1200, 800), |root| {
        let n_g = groups.len().max(1);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 32))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(0f64..n_g as f64, 0f64..y_max)
            .map_err(|e| draw_err(path, e))?;
        let gl = groups.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n_g * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < gl.len() {
                    gl[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 22))
            .axis_desc_style(("sans-serif", 24))
            .draw()
            .map_err(|e| draw_err(path, e))?;
        let n_s = series.len().max(1) as f64;
        let w = 0.8 / n_s;
        for (si, (name, vals)) in series.iter().enumerate() {
            let color = PALETTE[si % PALETTE.len()];
            chart
                .draw_series(vals.iter().enumerate().map(|(gi, &v)| {
                    let x = gi as f64 + 0.1 + si as f64 * w;
                    Rectangle::new([(x, 0.0), (x + w * 0.95, v)], color.filled())
                }))
                .map_err(|e| draw_err(path, e))?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 8), (x + 20, y + 8)], color.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 22))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| draw_err(path, e))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(p: &Path) -> (u32, u32) {
        let b = std::fs::read(p).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
    }

    #[test]
    fn charts_are_pngs_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.png");
        let s = vec![Series { name: "a".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] }];
        line_chart(&p, "Title", "x", "y", &s).unwrap();
        assert_eq!(png_size(&p), (1200, 800));
        let q = dir.path().join("b.png");
        grouped_bars(&q, "Bars", "share", &["g1".into(), "g2".into()], &[("s".into(), vec![0.2, 0.5])], 1.0).unwrap();
        assert_eq!(png_size(&q), (1200, 800));
        // The same chart with a long title differs from the one without: the bundled font draws text.
        let (t1, t2) = (dir.path().join("t1.png"), dir.path().join("t2.png"));
        line_chart(&t1, "", "x", "y", &s).unwrap();
        line_chart(&t2, "A long title drawn with the bundled font", "x", "y", &s).unwrap();
        assert!(std::fs::read(&t1).unwrap() != std::fs::read(&t2).unwrap(), "the title was not drawn");
    }
}
