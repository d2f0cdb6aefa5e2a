//! Figures for `w2s report`, drawn with plotters once per backend: SVG text for the page
//! (inline, no network) and PNG files beside it. Text is laid out with an embedded font
//! (DejaVu Sans through ab_glyph), so the figures look the same on every machine and no system
//! font is needed.
//!
//! A figure is data ([`Chart`]), not drawing code: the report builds the data from the
//! analysis tables and tests can check it without parsing pixels.

mod draw;

pub use draw::{png, svg, PALETTE};

/// A value with an optional 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub value: f64,
    pub interval: Option<(f64, f64)>,
}

/// One named series of grouped bars: a value (or none) per group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<Option<Point>>,
}

/// A cell of a heat map.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// No run there (left blank).
    Missing,
    /// A run whose measure is undefined (NULL: no flips), with its label (counts).
    Undefined(String),
    /// A value with its label (counts).
    Value(f64, String),
}

/// One weak x strong grid of a heat map: `values[row][col]`; row 0 is drawn at the top.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<Cell>>,
}

/// A named set of (x, y) points or a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What a figure shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    /// Grouped bars with error bars, y in [0, 1].
    Bars {
        groups: Vec<String>,
        series: Vec<BarSeries>,
        y_label: String,
    },
    /// Heat maps side by side, values in [0, 1].
    Grids { grids: Vec<Grid> },
    /// Points per series, both axes in [0, 1]; `undefined[j]` holds the x of series j's points
    /// whose y is undefined (NULL), drawn hollow in a band under the axis.
    Scatter {
        series: Vec<Series>,
        undefined: Vec<Vec<f64>>,
        x_label: String,
        y_label: String,
    },
    /// Lines with markers; x over the given range, y in [0, 1].
    Lines {
        series: Vec<Series>,
        x_range: (f64, f64),
        x_label: String,
        y_label: String,
    },
    /// Curves (training logs): lines over both axes' data ranges, small markers.
    Curves {
        series: Vec<Series>,
        x_label: String,
        y_label: String,
    },
    /// Horizontal stacked bars of shares (each row sums to 1, or is all zero: "no flips"),
    /// with the parts' names.
    Stacked {
        rows: Vec<String>,
        parts: Vec<String>,
        shares: Vec<Vec<f64>>,
    },
}

/// A figure: an id (file name), a title and the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub id: String,
    pub title: String,
    pub chart: Chart,
}

impl Figure {
    /// Pixel size: wide enough for its groups or panels.
    pub fn size(&self) -> (u32, u32) {
        match &self.chart {
            Chart::Bars { groups, series, .. } => {
                let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
                // Each group is wide enough for its bars and for the longest group label.
                let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(0) as u32;
                let per = (30 + 24 * series.len() as u32).max(longest * 7 + 12);
                let w = 120 + draw::legend_width(&names) + groups.len() as u32 * per;
                (w.clamp(720, 1800), 420)
            }
            Chart::Grids { grids } => {
                let cell = grids
                    .iter()
                    .map(|g| g.cols.len().max(g.rows.len()))
                    .max()
                    .unwrap_or(1) as u32;
                let panel = (200 + cell * 90).clamp(300, 640);
                let w = panel * grids.len().clamp(1, 2) as u32;
                let rows = grids.len().div_ceil(2).max(1) as u32;
                (w.max(640), panel * rows)
            }
            Chart::Stacked { rows, .. } => (960, 110 + 30 * rows.len() as u32),
            // Tall enough for a legend entry per series (20 px each).
            Chart::Curves { series, .. } => (960, (120 + 20 * series.len() as u32).max(460)),
            _ => (860, 460),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Vec<Figure> {
        let p = |v: f64| {
            Some(Point {
                value: v,
                interval: Some((v - 0.05, v + 0.05)),
            })
        };
        vec![
            Figure {
                id: "bars".into(),
                title: "accuracy".into(),
                chart: Chart::Bars {
                    groups: vec!["a -> b".into(), "a -> c".into()],
                    series: vec![
                        BarSeries {
                            name: "weak".into(),
                            values: vec![p(0.6), p(0.6)],
                        },
                        BarSeries {
                            name: "strong".into(),
                            values: vec![p(0.8), None],
                        },
                    ],
                    y_label: "accuracy".into(),
                },
            },
            Figure {
                id: "grid".into(),
                title: "deception".into(),
                chart: Chart::Grids {
                    grids: vec![Grid {
                        title: "explicit".into(),
                        rows: vec!["a".into()],
                        cols: vec!["b".into(), "c".into()],
                        values: vec![vec![
                            Cell::Value(0.7, "7/10".into()),
                            Cell::Undefined("0 flips".into()),
                        ]],
                    }],
                },
            },
            Figure {
                id: "stacked".into(),
                title: "flips".into(),
                chart: Chart::Stacked {
                    rows: vec!["x".into()],
                    parts: vec!["p".into(), "q".into()],
                    shares: vec![vec![0.25, 0.75]],
                },
            },
            Figure {
                id: "lines".into(),
                title: "sweep".into(),
                chart: Chart::Lines {
                    series: vec![Series {
                        name: "s".into(),
                        points: vec![(0.7, 0.2), (0.8, 0.4)],
                    }],
                    x_range: (0.7, 0.8),
                    x_label: "T".into(),
                    y_label: "DS".into(),
                },
            },
            Figure {
                id: "curves".into(),
                title: "loss".into(),
                chart: Chart::Curves {
                    series: vec![Series {
                        name: "run-a".into(),
                        points: vec![(1.0, 2.5), (2.0, 1.25), (3.0, 0.75)],
                    }],
                    x_label: "step".into(),
                    y_label: "loss".into(),
                },
            },
        ]
    }

    #[test]
    fn svg_has_the_labels_and_marks() {
        for f in figures() {
            let s = svg(&f).unwrap();
            assert!(s.starts_with("<svg"), "{}", f.id);
            assert!(s.contains(&f.title), "{}: title", f.id);
            assert!(s.matches("<rect").count() + s.matches("<circle").count() >= 2);
        }
        let s = svg(&figures()[0]).unwrap();
        for label in ["a -&gt; b", "a -&gt; c", "0.80", "weak", "strong"] {
            assert!(s.contains(label), "bars: {label} missing");
        }
        let s = svg(&figures()[1]).unwrap();
        for label in ["0.70", "7/10", "n/a", "strong model"] {
            assert!(s.contains(label), "grid: {label} missing");
        }
        // Curves span their data: a loss of 2.5 is on the axis, not clipped to [0, 1].
        let s = svg(figures().last().unwrap()).unwrap();
        for label in ["run-a", "step", "2.000"] {
            assert!(s.contains(label), "curves: {label} missing");
        }
    }

    #[test]
    fn png_decodes_at_the_figure_size_and_is_not_blank() {
        for f in figures() {
            let bytes = png(&f).unwrap();
            let dec = ::png::Decoder::new(std::io::Cursor::new(bytes));
            let mut reader = dec.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), f.size());
            let px = &buf[..info.buffer_size()];
            let dark = px.chunks(3).filter(|c| c.iter().all(|&v| v < 100)).count();
            let coloured = px
                .chunks(3)
                .filter(|c| c.iter().max().unwrap() - c.iter().min().unwrap() > 60)
                .count();
            assert!(dark > 200, "{}: no text or axes ({dark} dark pixels)", f.id);
            assert!(coloured > 200, "{}: no marks ({coloured})", f.id);
        }
    }
}
