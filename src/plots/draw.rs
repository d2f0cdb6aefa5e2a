//! Drawing a [`Figure`] with plotters, on any backend (SVG text, PNG bitmap).

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{BarSeries, Cell, Chart, Figure, Grid, Series};

/// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

const FONT: &str = "sans-serif";

/// How a legend entry is marked.
#[derive(Clone, Copy)]
enum Mark {
    Square,
    Dot,
}

/// Width of a legend strip for these names.
pub(super) fn legend_width(names: &[String]) -> u32 {
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32;
    (longest * 7 + 44).clamp(110, 340)
}

/// Draws a legend in its own strip beside the plot, so it never hides a mark.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    items: &[(String, RGBColor)],
    mark: Mark,
) -> DrawResult<DB> {
    for (i, (name, color)) in items.iter().enumerate() {
        let y = 40 + i as i32 * 20;
        match mark {
            Mark::Square => {
                area.draw(&Rectangle::new([(8, y - 6), (20, y + 6)], color.filled()))?
            }
            Mark::Dot => area.draw(&Circle::new((14, y), 5, color.filled()))?,
        }
        area.draw(&Text::new(
            name.clone(),
            (26, y),
            (FONT, 12)
                .into_font()
                .color(&BLACK)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Left,
                    plotters::style::text_anchor::VPos::Center,
                )),
        ))?;
    }
    Ok(())
}

/// A plot area and the legend strip beside it.
type Split<DB> = (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>);

/// The figure's title, then the plot and a legend strip of `width` on its right.
fn with_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    width: u32,
) -> Result<Split<DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let titled = root.titled(title, (FONT, 18).into_font())?;
    let w = titled.dim_in_pixel().0;
    Ok(titled.split_horizontally(w.saturating_sub(width)))
}

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font bytes are compiled in; a failure here is a build defect, not user input.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// The figure as an SVG document.
pub fn svg(fig: &Figure) -> Result<String, String> {
    register_fonts();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, fig.size()).into_drawing_area();
        draw(&root, fig).map_err(|e| format!("figure {}: {e}", fig.id))?;
        root.present()
            .map_err(|e| format!("figure {}: {e}", fig.id))?;
    }
    Ok(out)
}

/// The figure as PNG bytes.
pub fn png(fig: &Figure) -> Result<Vec<u8>, String> {
    register_fonts();
    let (w, h) = fig.size();
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, fig).map_err(|e| format!("figure {}: {e}", fig.id))?;
        root.present()
            .map_err(|e| format!("figure {}: {e}", fig.id))?;
    }
    let mut bytes = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut bytes, w, h);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| format!("figure {}: {e}", fig.id))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| format!("figure {}: {e}", fig.id))?;
    }
    Ok(bytes)
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    match &fig.chart {
        Chart::Bars {
            groups,
            series,
            y_label,
        } => bars(root, &fig.title, groups, series, y_label),
        Chart::Grids { grids } => {
            let titled = root.titled(&fig.title, (FONT, 18).into_font())?;
            let per_row = grids.len().clamp(1, 2);
            let rows = grids.len().div_ceil(per_row).max(1);
            let panels = titled.split_evenly((rows, per_row));
            for (g, area) in grids.iter().zip(panels.iter()) {
                grid(area, g)?;
            }
            Ok(())
        }
        Chart::Scatter {
            series,
            undefined,
            x_label,
            y_label,
        } => {
            let hi = series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .fold(0.0f64, f64::max);
            let hi = (hi * 1.15).clamp(0.05, 1.0);
            let plot = Plot {
                x_range: (0.0, hi),
                x_label,
                y_label,
                joined: false,
            };
            lines(root, &fig.title, series, undefined, &plot)
        }
        Chart::Lines {
            series,
            x_range,
            x_label,
            y_label,
        } => {
            let plot = Plot {
                x_range: *x_range,
                x_label,
                y_label,
                joined: true,
            };
            lines(root, &fig.title, series, &[], &plot)
        }
        Chart::Stacked {
            rows,
            parts,
            shares,
        } => stacked(root, &fig.title, rows, parts, shares),
        Chart::Curves {
            series,
            x_label,
            y_label,
        } => curves(root, &fig.title, series, x_label, y_label),
    }
}

/// The range of values, padded by 5% (a flat range gets a unit's width).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(if hi > lo { 0.0 } else { 0.5 });
    (lo - pad, hi + pad)
}

fn curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
    x_label: &str,
    y_label: &str,
) -> DrawResult<DB> {
    let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
    let (plot, side) = with_legend(root, title, legend_width(&names))?;
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let (x0, x1) = padded(points().map(|p| p.0));
    let (y0, y1) = padded(points().map(|p| p.1));
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&|y| format!("{y:.3}"))
        // Steps are whole numbers: no label between them.
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FONT, 13))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    for (j, s) in series.iter().enumerate() {
        let c = color(j);
        let pts = s.points.iter().copied().filter(|p| p.1.is_finite());
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        chart.draw_series(pts.map(|p| Circle::new(p, 2, c.filled())))?;
    }
    let items: Vec<(String, RGBColor)> = names
        .into_iter()
        .enumerate()
        .map(|(j, n)| (n, color(j)))
        .collect();
    legend(&side, &items, Mark::Dot)
}

/// A label formatter for category axes: the name at a category's centre (x = i + 0.5, which
/// the 0.5-step key points of a range of `names.len()` units hit exactly), nothing elsewhere.
fn centre_label(x: f64, names: &[String]) -> String {
    let i = x.floor();
    if (x - i - 0.5).abs() < 1e-9 && i >= 0.0 && (i as usize) < names.len() {
        names[i as usize].clone()
    } else {
        String::new()
    }
}

fn centred(size: u32, ink: RGBColor) -> TextStyle<'static> {
    (FONT, size)
        .into_font()
        .color(&ink)
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ))
}

/// Grouped bars: group `g` spans x in [g, g+1], one bar per series, whiskers for intervals,
/// the value above each bar when the bars are wide enough to carry it.
fn bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    groups: &[String],
    series: &[BarSeries],
    y_label: &str,
) -> DrawResult<DB> {
    let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
    let (plot, side) = with_legend(root, title, legend_width(&names))?;
    let n = groups.len().max(1);
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, 0f64..1.05f64)?;
    let labels = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(2 * n + 1)
        .x_label_formatter(&|x| centre_label(*x, &labels))
        .y_desc(y_label)
        .label_style((FONT, 13))
        .draw()?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    let bar_px = plot.dim_in_pixel().0 as f64 / n as f64 * width;
    for (j, s) in series.iter().enumerate() {
        let c = color(j);
        let x0 = |g: usize| g as f64 + 0.1 + j as f64 * width;
        chart.draw_series(s.values.iter().enumerate().filter_map(|(g, v)| {
            v.map(|p| Rectangle::new([(x0(g), 0.0), (x0(g) + width * 0.92, p.value)], c.filled()))
        }))?;
        chart.draw_series(s.values.iter().enumerate().filter_map(|(g, v)| {
            let p = (*v)?;
            let (lo, hi) = p.interval?;
            let xc = x0(g) + width * 0.46;
            Some(PathElement::new(
                vec![
                    (xc - width * 0.2, lo),
                    (xc + width * 0.2, lo),
                    (xc, lo),
                    (xc, hi),
                    (xc - width * 0.2, hi),
                    (xc + width * 0.2, hi),
                ],
                BLACK.stroke_width(1),
            ))
        }))?;
        if bar_px >= 26.0 {
            chart.draw_series(s.values.iter().enumerate().filter_map(|(g, v)| {
                let p = (*v)?;
                let top = p.interval.map_or(p.value, |(_, h)| h.max(p.value));
                Some(Text::new(
                    format!("{:.2}", p.value),
                    (x0(g) + width * 0.46, (top + 0.025).min(1.03)),
                    centred(11, BLACK),
                ))
            }))?;
        }
    }
    let items: Vec<(String, RGBColor)> = names
        .into_iter()
        .enumerate()
        .map(|(j, n)| (n, color(j)))
        .collect();
    legend(&side, &items, Mark::Square)
}

/// A heat map: white (0) to dark blue (1), grey where undefined, blank where no run.
fn grid<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, g: &Grid) -> DrawResult<DB> {
    let (nr, nc) = (g.rows.len().max(1), g.cols.len().max(1));
    // Room for the longest row name (`tiny-1 via tiny-2 · simpo`) and the axis title.
    let longest = g.rows.iter().map(|r| r.chars().count()).max().unwrap_or(8) as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(&g.title, (FONT, 15))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size((longest * 7 + 30).clamp(80, 260))
        .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)?;
    // Row 0 at the top: the y axis counts rows from the bottom.
    let rows: Vec<String> = g.rows.iter().rev().cloned().collect();
    let cols = g.cols.clone();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * nc + 1)
        .y_labels(2 * nr + 1)
        .x_label_formatter(&|x| centre_label(*x, &cols))
        .y_label_formatter(&|y| centre_label(*y, &rows))
        .x_desc("strong model")
        .y_desc("weak model")
        .label_style((FONT, 12))
        .draw()?;
    for (r, row) in g.values.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let (x, y) = (c as f64, (nr - 1 - r) as f64);
            let (fill, main, sub) = match v {
                Cell::Missing => continue,
                Cell::Undefined(label) => {
                    (RGBColor(215, 215, 215), "n/a".to_string(), label.clone())
                }
                Cell::Value(v, label) => (shade(*v), format!("{v:.2}"), label.clone()),
            };
            let ink = match v {
                Cell::Value(v, _) if *v > 0.55 => WHITE,
                _ => BLACK,
            };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.02, y + 0.02), (x + 0.98, y + 0.98)],
                fill.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                main,
                (x + 0.5, y + 0.58),
                centred(16, ink),
            )))?;
            if !sub.is_empty() {
                chart.draw_series(std::iter::once(Text::new(
                    sub,
                    (x + 0.5, y + 0.34),
                    centred(11, ink),
                )))?;
            }
        }
    }
    Ok(())
}

/// White to the palette's blue.
fn shade(v: f64) -> RGBColor {
    let t = v.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(247, 8), mix(251, 48), mix(255, 107))
}

/// Axes of a line or scatter plot.
struct Plot<'a> {
    x_range: (f64, f64),
    x_label: &'a str,
    y_label: &'a str,
    joined: bool,
}

/// Where undefined values are drawn, under y = 0.
const UNDEFINED_Y: f64 = -0.08;

fn lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
    undefined: &[Vec<f64>],
    p: &Plot,
) -> DrawResult<DB> {
    let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
    let (plot, side) = with_legend(root, title, legend_width(&names))?;
    let (x0, x1) = p.x_range;
    let pad = ((x1 - x0) * 0.05).max(1e-3);
    let band = undefined.iter().any(|u| !u.is_empty());
    let y0 = if band { UNDEFINED_Y - 0.05 } else { -0.03 };
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x0 - pad..x1 + pad, y0..1.05f64)?;
    chart
        .configure_mesh()
        .x_desc(p.x_label)
        .y_desc(p.y_label)
        .y_label_formatter(&|y| {
            if *y < -1e-9 {
                String::new()
            } else {
                format!("{y:.1}")
            }
        })
        .label_style((FONT, 13))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    for (j, s) in series.iter().enumerate() {
        let c = color(j);
        if p.joined {
            chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?;
        }
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        if let Some(xs) = undefined.get(j) {
            chart.draw_series(
                xs.iter()
                    .map(|&x| Circle::new((x, UNDEFINED_Y), 4, c.stroke_width(2))),
            )?;
        }
    }
    if band {
        chart.draw_series(std::iter::once(Text::new(
            "no flips (undefined)",
            (x0 - pad, UNDEFINED_Y + 0.035),
            (FONT, 11).into_font().color(&BLACK.mix(0.7)),
        )))?;
    }
    let items: Vec<(String, RGBColor)> = names
        .into_iter()
        .enumerate()
        .map(|(j, n)| (n, color(j)))
        .collect();
    legend(&side, &items, Mark::Dot)
}

fn stacked<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[String],
    parts: &[String],
    shares: &[Vec<f64>],
) -> DrawResult<DB> {
    let (plot, side) = with_legend(root, title, legend_width(parts))?;
    let n = rows.len().max(1);
    let longest = rows.iter().map(|r| r.chars().count()).max().unwrap_or(10) as u32;
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size((longest * 7 + 16).clamp(80, 360))
        .build_cartesian_2d(0f64..1f64, 0f64..n as f64)?;
    // Row 0 at the top.
    let names: Vec<String> = rows.iter().rev().cloned().collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .y_labels(2 * n + 1)
        .y_label_formatter(&|y| centre_label(*y, &names))
        .x_desc("share of the flip set")
        .label_style((FONT, 12))
        .draw()?;
    for (r, s) in shares.iter().enumerate() {
        if s.iter().sum::<f64>() <= 0.0 {
            let y = (n - 1 - r) as f64 + 0.5;
            chart.draw_series(std::iter::once(Text::new(
                "no flips",
                (0.01, y),
                (FONT, 12).into_font().color(&BLACK.mix(0.7)).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Left,
                        plotters::style::text_anchor::VPos::Center,
                    ),
                ),
            )))?;
        }
    }
    for k in 0..parts.len() {
        let c = color(k);
        chart.draw_series(shares.iter().enumerate().map(|(r, s)| {
            let start: f64 = s[..k].iter().sum();
            let y = (n - 1 - r) as f64;
            Rectangle::new([(start, y + 0.15), (start + s[k], y + 0.85)], c.filled())
        }))?;
    }
    let items: Vec<(String, RGBColor)> = parts
        .iter()
        .enumerate()
        .map(|(k, p)| (p.clone(), color(k)))
        .collect();
    legend(&side, &items, Mark::Square)
}
