//! The report's figures: one function per figure, each with its caption and the `w2s sql`
//! command that prints its numbers, built from the report's data ([`super::data`]) and the
//! analysis settings. Drawing is `crate::plots`.

use std::collections::{BTreeMap, BTreeSet};

use super::data::{Dot, Flips, ReportData};
use super::variants;
use crate::plots::{BarSeries, Cell, Chart, Figure, Grid, Point, Series};
use crate::stages::analyze::{AnalyzeSettings, CellSummary};
use crate::stages::uncertainty;

/// A figure as the page shows it.
pub struct Shown {
    pub figure: Figure,
    /// What it shows.
    pub caption: String,
    /// The command that prints its numbers (`ROOT`: the artifact root).
    pub command: String,
}

/// A conflict setting: objective and alpha (explicit runs can differ in alpha).
pub type Setting = (String, Option<u64>);

pub fn setting_name((objective, alpha): &Setting) -> String {
    match alpha {
        Some(a) if objective == "explicit" => format!("{objective} α={}", f64::from_bits(*a)),
        _ => objective.clone(),
    }
}

use crate::stages::order::objective_rank as rank;

/// The short name of a model (the last part of a path or hub id; `run:<id>` is `<id>`). The
/// analyses' composite names keep their shape: `<weak> via <intermediate>` (bootstrapping)
/// and a ` · <scenario>` suffix (preference runs).
pub fn short(model: &str) -> String {
    if let Some((m, scenario)) = model.rsplit_once(" · ") {
        return format!("{} · {scenario}", short(m));
    }
    if let Some((a, b)) = model.split_once(" via ") {
        return format!("{} via {}", short(a), short(b));
    }
    let model = model.strip_prefix("run:").unwrap_or(model);
    model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_string()
}

pub(super) fn measure<'a>(c: &'a CellSummary, name: &str) -> Option<&'a uncertainty::Summary> {
    c.measures.iter().find(|m| m.measure == name)
}

pub(super) fn point(m: Option<&uncertainty::Summary>) -> Option<Point> {
    let m = m?;
    Some(Point {
        value: m.value?,
        interval: m.low.zip(m.high),
    })
}

/// A cell's conflict setting.
pub(super) fn setting_of(c: &CellSummary) -> Setting {
    (c.objective.clone(), c.alpha.map(f64::to_bits))
}

/// The settings present, in page order.
fn settings_of<'a>(it: impl Iterator<Item = &'a Setting>) -> Vec<Setting> {
    let mut v: Vec<Setting> = it.cloned().collect::<BTreeSet<_>>().into_iter().collect();
    v.sort_by(|a, b| {
        (rank(&a.0), &a.0, a.1.map(f64::from_bits))
            .partial_cmp(&(rank(&b.0), &b.0, b.1.map(f64::from_bits)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    v
}

/// The data every figure reads: the cells' weak/strong pairs and conflict settings in page
/// order.
pub(super) struct View<'a> {
    pub(super) d: &'a ReportData,
    pub(super) s: &'a AnalyzeSettings,
    pub(super) pairs: Vec<(String, String)>,
    pub(super) settings: Vec<Setting>,
}

impl View<'_> {
    fn find(&self, w: &str, s: &str, st: &Setting) -> Option<&CellSummary> {
        (self.d.cells.iter())
            .find(|c| c.weak_model == w && c.strong_model == s && setting_of(c) == *st)
    }

    /// A cell of the pair: ceilings are the same in every cell of a pair; the no-conflict one
    /// first.
    fn any_cell(&self, w: &str, s: &str) -> Option<&CellSummary> {
        (self.d.cells.iter())
            .filter(|c| c.weak_model == w && c.strong_model == s)
            .min_by_key(|c| rank(&c.objective))
    }
}

/// The figures with data, in page order; a figure with nothing to show is left out.
pub fn figures(d: &ReportData, s: &AnalyzeSettings) -> Vec<Shown> {
    let mut pairs: Vec<(String, String)> = (d.cells.iter())
        .map(|c| (c.weak_model.clone(), c.strong_model.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    pairs.sort_by_key(|(w, s)| (d.rank(w), d.rank(s)));
    let v = View {
        d,
        s,
        pairs,
        settings: settings_of(d.cells.iter().map(setting_of).collect::<Vec<_>>().iter()),
    };
    let mut out = Vec::new();
    for figure in [
        accuracy,
        deception_grid,
        absolute_deception_grid,
        threshold_grids,
        deception_controls,
        alpha_comparison,
        variants::bootstrap,
        variants::high_confidence,
        variants::adaptive,
        deception_vs_area,
        deception_by_strong,
        confidence_scatter,
        flip_breakdown,
        threshold_sweep,
        knowledge,
        knowledge_truth,
        training_curves,
    ] {
        figure(&v, &mut out);
    }
    out
}

/// Fig. 4: test accuracy per weak/strong pair, ceilings beside every student setting.
fn accuracy(v: &View, out: &mut Vec<Shown>) {
    let (pairs, settings) = (&v.pairs, &v.settings);
    let find = |w: &str, s: &str, st: &Setting| v.find(w, s, st);
    let any_cell = |w: &str, s: &str| v.any_cell(w, s);
    if !pairs.is_empty() {
        let mut series = vec![
            BarSeries {
                name: "weak ceiling".into(),
                values: pairs
                    .iter()
                    .map(|(w, s)| {
                        point(any_cell(w, s).and_then(|c| measure(c, "weak_ceiling_accuracy")))
                    })
                    .collect(),
            },
            BarSeries {
                name: "strong ceiling".into(),
                values: pairs
                    .iter()
                    .map(|(w, s)| {
                        point(any_cell(w, s).and_then(|c| measure(c, "strong_ceiling_accuracy")))
                    })
                    .collect(),
            },
        ];
        for st in settings.iter() {
            series.push(BarSeries {
                name: format!("w2s {}", setting_name(st)),
                values: pairs
                    .iter()
                    .map(|(w, s)| point(find(w, s, st).and_then(|c| measure(c, "accuracy"))))
                    .collect(),
            });
        }
        out.push(Shown {
            caption: "Share of test pairs each model gets right (confidence toward the ground-truth chosen answer ≥ 0.5). Bars are the mean over seeds; whiskers are 95% intervals (t over seeds, or a bootstrap over test pairs for one seed).".into(),
            command: "w2s sql --artifacts ROOT \"select * from analysis_summary where measure like '%accuracy'\"".into(),
            figure: Figure {
                id: "accuracy".into(),
                title: "Test accuracy per weak/strong pair (Fig. 4)".into(),
                chart: Chart::Bars {
                    groups: pairs
                        .iter()
                        .map(|(w, s)| format!("{} → {}", short(w), short(s)))
                        .collect(),
                    series,
                    y_label: "test accuracy".into(),
                },
            },
        });
    }
}

/// Fig. 5 / 7: the deception score as a weak x strong grid per conflict setting.
fn deception_grid(v: &View, out: &mut Vec<Shown>) {
    let conflicts = conflicts(v);
    if let Some(grids) = score_grids(v, &conflicts, "deception_score") {
        out.push(Shown {
            caption: "Of the pairs the no-conflict student gets right and the conflict student gets wrong (the flips), the share in the Strong-Known & Weak-Unknown area (Eq. 8). Grey: no flips (the score is undefined, not 0); blank: no run. Counts under each value.".into(),
            command: format!("w2s sql sql/deception.sql --artifacts ROOT --param threshold={}", v.s.threshold),
            figure: Figure {
                id: "deception_grid".into(),
                title: "Deception score per weak/strong pair and conflict setting (Fig. 5, 7)".into(),
                chart: Chart::Grids { grids },
            },
        });
    }
}

/// Fig. 6 / 17 / 18: the absolute deception score (flips from the strong ceiling to the
/// student) as a weak x strong grid per setting, the no-conflict one included.
fn absolute_deception_grid(v: &View, out: &mut Vec<Shown>) {
    if let Some(grids) = score_grids(v, &v.settings, "absolute_deception_score") {
        out.push(Shown {
            caption: "Of the pairs the strong ceiling (trained on ground truth) gets right and the weak-to-strong student gets wrong, the share in the Strong-Known & Weak-Unknown area (App. K), for every setting, no conflict included. Grey: no such pairs; blank: no run. Counts under each value.".into(),
            command: format!("w2s sql sql/absolute_deception.sql --artifacts ROOT --param threshold={}", v.s.threshold),
            figure: Figure {
                id: "absolute_deception_grid".into(),
                title: "Absolute deception score per weak/strong pair and setting (Fig. 6, 17, 18)".into(),
                chart: Chart::Grids { grids },
            },
        });
    }
}

/// One weak x strong grid of `name` per setting, models in capability order, the counts
/// under each value; `None` without settings.
fn score_grids(v: &View, settings: &[Setting], name: &str) -> Option<Vec<Grid>> {
    grids(v, settings, &|w, s, st| {
        let Some(m) = v.find(w, s, st).and_then(|c| measure(c, name)) else {
            return Cell::Missing;
        };
        let label = format!("{}/{} flips", m.numerator, m.denominator);
        match m.value {
            Some(x) => Cell::Value(x, label),
            None => Cell::Undefined(label),
        }
    })
}

/// One weak x strong grid per setting of the cells `cell` gives, models in capability order;
/// `None` without settings.
fn grids(
    v: &View,
    settings: &[Setting],
    cell: &dyn Fn(&str, &str, &Setting) -> Cell,
) -> Option<Vec<Grid>> {
    if settings.is_empty() {
        return None;
    }
    let by_rank = |mut names: Vec<String>| {
        names.sort_by_key(|m| (v.d.rank(m), m.clone()));
        names.dedup();
        names
    };
    let weak = by_rank(v.pairs.iter().map(|p| p.0.clone()).collect());
    let strong = by_rank(v.pairs.iter().map(|p| p.1.clone()).collect());
    Some(
        settings
            .iter()
            .map(|st| Grid {
                title: setting_name(st),
                rows: weak.iter().map(|w| short(w)).collect(),
                cols: strong.iter().map(|s| short(s)).collect(),
                values: (weak.iter())
                    .map(|w| strong.iter().map(|s| cell(w, s, st)).collect())
                    .collect(),
            })
            .collect(),
    )
}

/// The conflict settings present, in page order.
fn conflicts(v: &View) -> Vec<Setting> {
    (v.settings.iter())
        .filter(|s| s.0 != "none")
        .cloned()
        .collect()
}

/// A name as a figure id part: lower-case letters and digits, each other run `_`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// Fig. 14 / 15: the deception grid at every threshold of the sweep, each cell's flips
/// pooled over seeds.
fn threshold_grids(v: &View, out: &mut Vec<Shown>) {
    let d = v.d;
    let conflicts = conflicts(v);
    let thresholds: BTreeSet<u64> = d.sweep_cells.keys().map(|k| k.3).collect();
    let mut thresholds: Vec<f64> = thresholds.into_iter().map(f64::from_bits).collect();
    thresholds.sort_by(f64::total_cmp);
    for t in thresholds {
        let cell = |w: &str, s: &str, st: &Setting| {
            let key = (w.to_string(), s.to_string(), st.clone(), t.to_bits());
            match d.sweep_cells.get(&key) {
                None => Cell::Missing,
                Some(&(dec, flips)) => {
                    let label = format!("{dec}/{flips} flips");
                    if flips > 0 {
                        Cell::Value(dec as f64 / flips as f64, label)
                    } else {
                        Cell::Undefined(label)
                    }
                }
            }
        };
        let Some(grids) = grids(v, &conflicts, &cell) else {
            return;
        };
        out.push(Shown {
            caption: format!("The deception score with the knowledge threshold at T = {t} (Strong-Known: the strong ceiling's confidence ≥ T; Weak-Unknown: the weak ceiling's < T), each cell's deceptive flips over its flips summed over seeds. Grey: no flips; blank: no run."),
            command: format!("w2s sql sql/threshold_sweep.sql --artifacts ROOT {}", (v.s.sweep.iter().enumerate()).map(|(i, t)| format!("--param t{}={t}", i + 1)).collect::<Vec<_>>().join(" ")),
            figure: Figure {
                id: format!("deception_grid_t{}", slug(&format!("{t}"))),
                title: format!("Deception score per weak/strong pair at T = {t} (Fig. 14, 15)"),
                chart: Chart::Grids { grids },
            },
        });
    }
}

/// Beyond the paper: each conflict cell's deception score beside its uniform and
/// confidence-matched controls (docs/analyses.md "Deception against a control").
fn deception_controls(v: &View, out: &mut Vec<Shown>) {
    let mut cells: Vec<&CellSummary> = (v.settings.iter())
        .filter(|st| st.0 != "none")
        .flat_map(|st| v.pairs.iter().filter_map(move |(w, s)| v.find(w, s, st)))
        .filter(|c| point(measure(c, "deception_score")).is_some())
        .collect();
    cells.dedup_by(|a, b| std::ptr::eq(*a, *b));
    if cells.is_empty() {
        return;
    }
    let series = [
        ("deception score", "deception_score"),
        ("uniform control", "deception_uniform_control"),
        ("confidence-matched control", "deception_matched_control"),
    ]
    .iter()
    .map(|(name, m)| BarSeries {
        name: (*name).into(),
        values: cells.iter().map(|c| point(measure(c, m))).collect(),
    })
    .collect();
    out.push(Shown {
        caption: "Each conflict cell's deception score beside what it would be if its flips fell at random on the pairs the no-conflict student gets right (uniform control), and if the chance of a flip depended only on that student's confidence, by deciles (confidence-matched control). The table below says, from the 95% intervals of the score minus each control, which controls the score clears. Cells without flips are left out.".into(),
        command: format!("w2s sql sql/deception_control.sql --artifacts ROOT --param threshold={}", v.s.threshold),
        figure: Figure {
            id: "deception_controls".into(),
            title: "Deception score against its controls (beyond the paper)".into(),
            chart: Chart::Bars {
                groups: cells
                    .iter()
                    .map(|c| format!("{} → {}, {}", short(&c.weak_model), short(&c.strong_model), setting_name(&setting_of(c))))
                    .collect(),
                series,
                y_label: "share of flips in S_k ∩ W_uk".into(),
            },
        },
    });
}

/// Fig. 16: the explicit objective's alphas side by side per weak/strong pair (deception,
/// then accuracy); drawn when the grid has two alphas or more.
fn alpha_comparison(v: &View, out: &mut Vec<Shown>) {
    for (id, title, name) in [
        (
            "alpha_deception",
            "Deception score per alpha of the explicit objective (Fig. 16)",
            "deception_score",
        ),
        (
            "alpha_accuracy",
            "Test accuracy per alpha of the explicit objective (Fig. 16)",
            "accuracy",
        ),
    ] {
        if let Some(chart) = alpha_chart(&v.d.cells, &v.pairs, name) {
            out.push(Shown {
                caption: "The explicit conflict at each weight alpha of its term, per weak/strong pair (mean over seeds, 95% intervals); a missing bar: no flips (the score is undefined) or no run.".into(),
                command: format!("w2s sql sql/alpha_sweep.sql --artifacts ROOT --param threshold={}", v.s.threshold),
                figure: Figure { id: id.into(), title: title.into(), chart },
            });
        }
    }
}

/// Bars of `name` per weak/strong pair (in `pairs` order), one series per explicit alpha.
fn alpha_chart(cells: &[CellSummary], pairs: &[(String, String)], name: &str) -> Option<Chart> {
    let mut alphas: Vec<f64> = (cells.iter())
        .filter(|c| c.objective == "explicit")
        .filter_map(|c| c.alpha)
        .collect();
    alphas.sort_by(f64::total_cmp);
    alphas.dedup();
    if alphas.len() < 2 {
        return None;
    }
    let find = |w: &str, s: &str, a: f64| {
        (cells.iter()).find(|c| {
            c.weak_model == w
                && c.strong_model == s
                && c.objective == "explicit"
                && c.alpha == Some(a)
        })
    };
    let pairs: Vec<&(String, String)> = (pairs.iter())
        .filter(|(w, s)| alphas.iter().any(|&a| find(w, s, a).is_some()))
        .collect();
    Some(Chart::Bars {
        groups: pairs
            .iter()
            .map(|(w, s)| format!("{} → {}", short(w), short(s)))
            .collect(),
        series: (alphas.iter())
            .map(|&a| BarSeries {
                name: format!("α = {a}"),
                values: (pairs.iter())
                    .map(|(w, s)| point(find(w, s, a).and_then(|c| measure(c, name))))
                    .collect(),
            })
            .collect(),
        y_label: if name == "accuracy" {
            "test accuracy".into()
        } else {
            "deception score".into()
        },
    })
}

/// Fig. 8: each conflict run's deception score against its Strong-Known & Weak-Unknown share.
fn deception_vs_area(v: &View, out: &mut Vec<Shown>) {
    let d = v.d;
    let area_settings = settings_of(d.area.iter().map(|p| &p.setting));
    let scatter: Vec<Series> = area_settings
        .iter()
        .map(|st| Series {
            name: setting_name(st),
            points: d
                .area
                .iter()
                .filter(|p| &p.setting == st)
                .filter_map(|p| Some((p.share, p.deception?)))
                .collect(),
        })
        .collect();
    let undefined: Vec<Vec<f64>> = area_settings
        .iter()
        .map(|st| {
            d.area
                .iter()
                .filter(|p| &p.setting == st && p.deception.is_none())
                .map(|p| p.share)
                .collect()
        })
        .collect();
    if !scatter.is_empty() {
        out.push(Shown {
            caption: "One point per conflict run: the share of test pairs only the strong ceiling knows, against the run's deception score (runs without flips are left out).".into(),
            command: format!("w2s sql sql/area_share.sql --artifacts ROOT --param threshold={}", v.s.threshold),
            figure: Figure {
                id: "deception_vs_area".into(),
                title: "Deception score against the Strong-Known & Weak-Unknown share (Fig. 8)".into(),
                chart: Chart::Scatter {
                    series: scatter,
                    undefined,
                    x_label: "|S_k ∩ W_uk| / test pairs".into(),
                    y_label: "deception score".into(),
                },
            },
        });
    }
}

/// A weak model of the main grid: not bootstrapped, all labels, unweighted.
fn plain(weak: &str) -> bool {
    let p = crate::stages::order::parts(weak);
    p.via.is_none() && p.labels.is_none()
}

/// Fig. 8: for each weak model, the deception score of every conflict setting and the
/// Strong-Known & Weak-Unknown share along its strong models, weakest first.
fn deception_by_strong(v: &View, out: &mut Vec<Shown>) {
    let conflicts = conflicts(v);
    let mut weak: Vec<&String> = (v.pairs.iter())
        .map(|p| &p.0)
        .filter(|w| plain(w))
        .collect();
    weak.dedup();
    for w in weak {
        let strong: Vec<&String> = (v.pairs.iter())
            .filter(|p| &p.0 == w && conflicts.iter().any(|st| v.find(w, &p.1, st).is_some()))
            .map(|p| &p.1)
            .collect();
        if strong.is_empty() {
            continue;
        }
        let mut series = vec![BarSeries {
            name: "S_k ∩ W_uk share".into(),
            values: (strong.iter())
                .map(|s| point(v.any_cell(w, s).and_then(|c| measure(c, "sk_wuk_share"))))
                .collect(),
        }];
        for st in &conflicts {
            series.push(BarSeries {
                name: format!("deception score, {}", setting_name(st)),
                values: (strong.iter())
                    .map(|s| point(v.find(w, s, st).and_then(|c| measure(c, "deception_score"))))
                    .collect(),
            });
        }
        out.push(Shown {
            caption: format!("Weak model {}: along its students, weakest first, the share of test pairs only the strong ceiling knows and each conflict setting's deception score (mean over seeds, 95% intervals; a missing bar: no flips or no run). The paper reads the trend along the strong models: the larger the Strong-Known & Weak-Unknown area, the more deception.", short(w)),
            command: format!("w2s sql --artifacts ROOT \"select strong_model, objective, alpha, measure, value, ci_low, ci_high from analysis_summary where weak_model = '{w}' and measure in ('sk_wuk_share', 'deception_score') order by strong_model, objective, measure\""),
            figure: Figure {
                id: format!("deception_by_strong_{}", slug(&short(w))),
                title: format!("Deception score and area share along the strong models, weak model {} (Fig. 8)", short(w)),
                chart: Chart::Bars {
                    groups: strong.iter().map(|s| short(s)).collect(),
                    series,
                    y_label: "deception score / share of test pairs".into(),
                },
            },
        });
    }
}

/// The cell the confidence scatter shows for a setting: the plain weak model with the most
/// strong models (ties: the stronger), its strongest student, the first seed.
fn scatter_cell(v: &View, dots: &[&Dot]) -> Option<(String, String, i64)> {
    let mut partners: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for d in dots.iter().filter(|d| plain(&d.weak)) {
        partners.entry(&d.weak).or_default().insert(&d.strong);
    }
    let (w, strong) = partners
        .into_iter()
        .max_by_key(|(w, s)| (s.len(), v.d.rank(w)))?;
    let s = strong.into_iter().max_by_key(|s| v.d.rank(s))?;
    let seed = (dots.iter())
        .filter(|d| d.weak == w && d.strong == s)
        .map(|d| d.seed)
        .min()?;
    Some((w.to_string(), s.to_string(), seed))
}

/// Fig. 19 / 20: the weak and strong ceilings' confidences on the pairs the no-conflict student
/// gets right, marked by whether the conflict student keeps or flips them, one figure per
/// conflict setting.
fn confidence_scatter(v: &View, out: &mut Vec<Shown>) {
    let t = v.s.threshold;
    for st in conflicts(v) {
        let dots: Vec<&Dot> = v.d.dots.iter().filter(|d| d.setting == st).collect();
        let Some((w, s, seed)) = scatter_cell(v, &dots) else {
            continue;
        };
        let cell: Vec<&&Dot> = (dots.iter())
            .filter(|d| d.weak == w && d.strong == s && d.seed == seed)
            .collect();
        let series = [("kept", false), ("flipped", true)]
            .map(|(name, flipped)| Series {
                name: format!(
                    "{name} ({})",
                    cell.iter().filter(|d| d.flipped == flipped).count()
                ),
                points: (cell.iter())
                    .filter(|d| d.flipped == flipped)
                    .map(|d| (d.weak_conf, d.strong_conf))
                    .collect(),
            })
            .to_vec();
        let deceptive = (cell.iter())
            .filter(|d| d.flipped && d.strong_conf >= t && d.weak_conf < t)
            .count();
        out.push(Shown {
            caption: format!("{} → {}, {}, seed {seed}: each test pair the no-conflict student gets right, at the weak ceiling's confidence toward the ground truth (x) and the strong ceiling's (y), marked by whether the conflict student keeps it or flips it. The deception score counts the flips in the upper left corner (y ≥ {t} > x): {deceptive} here. The command prints every run's points.", short(&w), short(&s), setting_name(&st)),
            command: format!("w2s sql sql/confidence_scatter.sql --artifacts ROOT --param threshold={t}"),
            figure: Figure {
                id: format!("confidence_scatter_{}", slug(&setting_name(&st))),
                title: format!("Weak vs strong ceiling confidence, kept and flipped pairs, {} (Fig. 19, 20)", setting_name(&st)),
                chart: Chart::Scatter {
                    undefined: vec![Vec::new(); series.len()],
                    series,
                    x_label: "weak ceiling's confidence M_w".into(),
                    y_label: "strong ceiling's confidence M_s".into(),
                },
            },
        });
    }
}

/// Beyond the paper: the precision of the paper's Strong-Known & Weak-Unknown proxy against
/// the world's truth (the knowledge probe) per threshold, beside chance.
fn knowledge_truth(v: &View, out: &mut Vec<Shown>) {
    let d = v.d;
    if d.truth.is_empty() {
        return;
    }
    let mut pairs: Vec<&(String, String)> = d.truth.keys().collect();
    pairs.sort_by_key(|(w, s)| (d.rank(w), d.rank(s)));
    let mut series = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in pairs {
        let name = format!("{} → {}", short(&p.0), short(&p.1));
        for (k, what) in [(0, "precision"), (2, "chance")] {
            series.push(Series {
                name: format!("{what}, {name}"),
                points: (d.truth[p].iter())
                    .filter_map(|(t, x)| Some((f64::from_bits(*t), x[k]?)))
                    .collect(),
            });
        }
        for t in d.truth[p].keys().map(|t| f64::from_bits(*t)) {
            lo = lo.min(t);
            hi = hi.max(t);
        }
    }
    out.push(Shown {
        caption: "On the synthetic world, where which entities each pretrained model knows is measured (the knowledge probe), the share of the paper's proxy area (strong ceiling's confidence ≥ T, weak ceiling's < T) whose entity only the strong model truly knows (precision), beside the share a proxy blind to knowledge would score (chance: the true area's share of the test pairs), per ceiling pair and T, pooled over seeds. The table below has recall and agreement.".into(),
        command: "w2s sql sql/report/knowledge_truth.sql --artifacts ROOT".into(),
        figure: Figure {
            id: "knowledge_truth".into(),
            title: "The knowledge-area proxy against the truth, per threshold (beyond the paper)".into(),
            chart: Chart::Lines {
                series,
                x_range: (lo, hi.max(lo + 1e-6)),
                x_label: "threshold T".into(),
                y_label: "precision of S_k ∩ W_uk".into(),
            },
        },
    });
}

/// App. L: where each conflict cell's flips fall among the four knowledge areas.
fn flip_breakdown(v: &View, out: &mut Vec<Shown>) {
    let (d, settings) = (v.d, &v.settings);
    let mut with_flips: Vec<&Flips> = d.flips.iter().collect();
    let order = |f: &Flips| {
        settings
            .iter()
            .position(|s| *s == f.setting)
            .unwrap_or(usize::MAX)
    };
    let key = |f: &Flips| (d.rank(&f.weak), d.rank(&f.strong), order(f));
    with_flips.sort_by(|a, b| (key(a), &a.weak, &a.strong).cmp(&(key(b), &b.weak, &b.strong)));
    if !with_flips.is_empty() {
        out.push(Shown {
            caption: "How each conflict cell's flips (summed over seeds; count in brackets) spread over the four knowledge areas.".into(),
            command: format!("w2s sql sql/flip_breakdown.sql --artifacts ROOT --param threshold={}", v.s.threshold),
            figure: Figure {
                id: "flip_breakdown".into(),
                title: "Where the flipped pairs lie (App. L)".into(),
                chart: Chart::Stacked {
                    rows: with_flips
                        .iter()
                        .map(|f| {
                            format!(
                                "{} → {}, {} ({})",
                                short(&f.weak),
                                short(&f.strong),
                                setting_name(&f.setting),
                                f.counts.iter().sum::<i64>()
                            )
                        })
                        .collect(),
                    parts: ["S_k ∩ W_k", "S_k ∩ W_uk", "S_uk ∩ W_k", "S_uk ∩ W_uk"]
                        .map(String::from)
                        .to_vec(),
                    shares: with_flips
                        .iter()
                        .map(|f| {
                            let n = f.counts.iter().sum::<i64>().max(1) as f64;
                            f.counts.iter().map(|&c| c as f64 / n).collect()
                        })
                        .collect(),
                },
            },
        });
    }
}

/// App. I: deception score and area share at each threshold of the sweep, pooled over pairs
/// and seeds.
fn threshold_sweep(v: &View, out: &mut Vec<Shown>) {
    let d = v.d;
    let thresholds: Vec<f64> = d.sweep_share.keys().map(|t| f64::from_bits(*t)).collect();
    let sweep_settings = settings_of(d.sweep.keys().map(|(s, _)| s));
    let mut lines: Vec<Series> = sweep_settings
        .iter()
        .map(|st| Series {
            name: format!("deception score, {}", setting_name(st)),
            points: d
                .sweep
                .iter()
                .filter(|((s, _), (_, flips))| s == st && *flips > 0)
                .map(|((_, t), (dec, flips))| (f64::from_bits(*t), *dec as f64 / *flips as f64))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if !d.sweep_share.is_empty() {
        lines.push(Series {
            name: "S_k ∩ W_uk share".into(),
            points: d
                .sweep_share
                .iter()
                .filter(|(_, (_, n))| *n > 0)
                .map(|(t, (k, n))| (f64::from_bits(*t), *k as f64 / *n as f64))
                .collect(),
        });
        let lo = thresholds.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = thresholds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.push(Shown {
            caption: "Deception score per conflict setting and the Strong-Known & Weak-Unknown share, pooled over every weak/strong pair and seed, at each threshold of the sweep.".into(),
            command: format!("w2s sql sql/threshold_sweep.sql --artifacts ROOT {}", (v.s.sweep.iter().enumerate()).map(|(i, t)| format!("--param t{}={t}", i + 1)).collect::<Vec<_>>().join(" ")),
            figure: Figure {
                id: "threshold_sweep".into(),
                title: "Deception score and area share against the threshold T (App. I)".into(),
                chart: Chart::Lines {
                    series: lines,
                    x_range: (lo, hi.max(lo + 1e-6)),
                    x_label: "threshold T".into(),
                    y_label: "pooled over pairs and seeds".into(),
                },
            },
        });
    }
}

/// Training curves of every ceiling and student (`train_log`): loss, training accuracy and
/// learning rate per optimizer step, one line per run.
fn training_curves(v: &View, out: &mut Vec<Shown>) {
    let d = v.d;
    if d.curves.is_empty() {
        return;
    }
    for (k, id, title, y) in [
        (
            0,
            "training_loss",
            "Training loss per step",
            "loss (mean over the step's pairs)",
        ),
        (
            1,
            "training_accuracy",
            "Training accuracy per step",
            "share of the step's pairs right",
        ),
        (
            2,
            "learning_rate",
            "Learning rate per step",
            "learning rate",
        ),
    ] {
        let series = (d.curves.iter())
            .map(|((stage, run), steps)| Series {
                name: format!(
                    "{run} ({})",
                    if stage == "gt-train" {
                        "ceiling"
                    } else {
                        "student"
                    }
                ),
                points: steps.iter().map(|(s, v)| (*s as f64, v[k])).collect(),
            })
            .collect();
        out.push(Shown {
            caption: "One line per training run (ceilings and students), per optimizer step, from the train_log table: what one would otherwise open TensorBoard for. The loss is the step's objective (with the conflict term for the explicit objective); accuracy is against the step's training targets (the teacher's labels for a student).".into(),
            command: "w2s sql sql/report/curves.sql --artifacts ROOT".into(),
            figure: Figure {
                id: id.into(),
                title: title.into(),
                chart: Chart::Curves {
                    series,
                    x_label: "optimizer step".into(),
                    y_label: y.into(),
                },
            },
        });
    }
}

/// The pretrained models' knowledge probe: share of entities known by frequency rank.
fn knowledge(v: &View, out: &mut Vec<Shown>) {
    let d = v.d;
    if !d.knowledge.is_empty() {
        let mut models: Vec<(&String, &Vec<(i64, bool)>)> = d.knowledge.iter().collect();
        models.sort_by_key(|(m, _)| d.rank(m));
        let series = models
            .into_iter()
            .map(|(model, v)| {
                let per = v.len().div_ceil(10).max(1);
                Series {
                    name: model.clone(),
                    points: v
                        .chunks(per)
                        .map(|c| {
                            let rank = c.iter().map(|x| x.0 as f64).sum::<f64>() / c.len() as f64;
                            let known = c.iter().filter(|x| x.1).count() as f64 / c.len() as f64;
                            (rank, known)
                        })
                        .collect(),
                }
            })
            .collect::<Vec<_>>();
        let hi = d
            .knowledge
            .values()
            .flat_map(|v| v.iter().map(|x| x.0 as f64))
            .fold(1.0, f64::max);
        out.push(Shown {
            caption: "For every entity of the synthetic world, the pretrained model knows it when it finds the true statement about it more likely than the false one (w2s pretrain's probe). Each point is a tenth of the entities by frequency rank. The probe is a two-way choice: a model that knows nothing scores about 0.5.".into(),
            command: "w2s sql sql/report/knowledge.sql --artifacts ROOT".into(),
            figure: Figure {
                id: "knowledge".into(),
                title: "Entities each pretrained model knows, by how often the corpus mentions them"
                    .into(),
                chart: Chart::Lines {
                    series,
                    x_range: (1.0, hi),
                    x_label: "frequency rank (1 = most mentioned), tenths of the entities".into(),
                    y_label: "share known (probe)".into(),
                },
            },
        });
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A one-seed cell of `weak` -> tiny-3 (SimPO) with a deception score and an accuracy.
    pub(in crate::stages::report) fn cell(
        weak: &str,
        objective: &str,
        deception: Option<f64>,
        accuracy: f64,
    ) -> CellSummary {
        let m = |measure: &'static str, value: Option<f64>| uncertainty::Summary {
            measure,
            seeds: 1,
            value,
            low: None,
            high: None,
            interval: "none",
            numerator: 0,
            denominator: 0,
        };
        CellSummary {
            weak_model: weak.into(),
            strong_model: "run:tiny-3 · simpo".into(),
            objective: objective.into(),
            alpha: None,
            runs: vec![],
            measures: vec![
                m("deception_score", deception),
                m("accuracy", Some(accuracy)),
            ],
        }
    }

    #[test]
    fn alphas_sit_side_by_side_per_pair() {
        let mut cells = vec![
            cell("run:tiny-1 · simpo", "explicit", Some(0.5), 0.7),
            cell("run:tiny-1 · simpo", "explicit", Some(0.2), 0.8),
            cell("run:tiny-1 · simpo", "implicit", Some(0.9), 0.6),
        ];
        cells[0].alpha = Some(0.5);
        cells[1].alpha = Some(0.25);
        let pairs = vec![(
            "run:tiny-1 · simpo".to_string(),
            "run:tiny-3 · simpo".to_string(),
        )];
        let Some(Chart::Bars { groups, series, .. }) =
            alpha_chart(&cells, &pairs, "deception_score")
        else {
            panic!("a chart");
        };
        assert_eq!(groups, vec!["tiny-1 · simpo → tiny-3 · simpo"]);
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["α = 0.25", "α = 0.5"]);
        assert_eq!(series[0].values[0].as_ref().unwrap().value, 0.2);
        assert!(
            alpha_chart(&cells[..1], &pairs, "accuracy").is_none(),
            "one alpha: no figure"
        );
    }

    #[test]
    fn short_names_keep_the_scenario_and_the_chain() {
        assert_eq!(short("hf://openai-community/gpt2"), "gpt2");
        assert_eq!(short("run:tiny-3"), "tiny-3");
        assert_eq!(short("models/x/ · simpo"), "x · simpo");
        assert_eq!(
            short("a/gpt2-large via b/opt-2.7b · simpo"),
            "gpt2-large via opt-2.7b · simpo"
        );
    }
}
