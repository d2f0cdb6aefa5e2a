//! The report's figures of student variants beside the plain students of the same cell:
//! bootstrapped (Fig. 9b/9c), high-confidence (Fig. 9a/21) and adaptive (Fig. 23). Each maps a
//! decorated weak model name back to the plain one ([`Variant`]) and draws one bar series per
//! variant.

use std::collections::{BTreeMap, BTreeSet};

use super::figures::{measure, point, setting_name, setting_of, short, Setting, Shown, View};
use crate::plots::{BarSeries, Chart, Figure};
use crate::stages::analyze::CellSummary;

/// Fig. 9b / 9c: bootstrapped students beside the direct ones of the same weak and strong
/// model (deception, then accuracy).
pub(super) fn bootstrap(v: &View, out: &mut Vec<Shown>) {
    let (d, settings) = (v.d, &v.settings);
    for (id, title, name, conflict_only) in [
        (
            "bootstrap_deception",
            "Deception score: bootstrapped through an intermediate model vs direct (Fig. 9b/9c)",
            "deception_score",
            true,
        ),
        (
            "bootstrap_accuracy",
            "Test accuracy: bootstrapped through an intermediate model vs direct (Fig. 9)",
            "accuracy",
            false,
        ),
    ] {
        if let Some(chart) =
            bootstrap_chart(&d.cells, settings, name, conflict_only, &|m| d.rank(m))
        {
            let (caption, command) = if name == "accuracy" {
                (
                    "Test accuracy of the bootstrapped students and of the direct ones of the same weak model, strong model and setting (mean over seeds, 95% intervals).".into(),
                    "w2s sql --artifacts ROOT \"select weak_model, strong_model, objective, value from analysis_summary where measure = 'accuracy' order by strong_model, objective, weak_model\"".into(),
                )
            } else {
                (
                    "Students trained on an intermediate model's labels (weak → intermediate → strong, conflict in the last stage only, docs/reference.md §3.9) beside the direct weak → strong student of the same setting. Both are measured against the same weak and strong ceilings. A missing bar: no flips (the score is undefined) or no run; the deception grid has the counts.".into(),
                    format!("w2s sql sql/deception.sql --artifacts ROOT --param threshold={}", v.s.threshold),
                )
            };
            out.push(Shown {
                caption,
                command,
                figure: Figure {
                    id: id.into(),
                    title: title.into(),
                    chart,
                },
            });
        }
    }
}

/// Fig. 9a / 21: high-confidence students beside the all-data ones of the same weak and
/// strong model (deception, then accuracy).
pub(super) fn high_confidence(v: &View, out: &mut Vec<Shown>) {
    variant_figures(
        v,
        out,
        &CONFIDENT_LABELS,
        [
            (
                "high_confidence_deception",
                "Deception score: high-confidence labels vs all data (Fig. 9a)",
            ),
            (
                "high_confidence_accuracy",
                "Test accuracy: high-confidence labels vs all data (Fig. 21)",
            ),
        ],
        "Students trained only on the teacher's labels at least T confident (paper §6.1; run ids ending in -hc, each against the no-conflict student of the same threshold) beside the all-data students of the same weak model, strong model and setting; the same ceilings measure both (mean over seeds, 95% intervals).",
    );
}

/// Fig. 23: students with adaptive weighting beside the naive ones of the same cell.
pub(super) fn adaptive(v: &View, out: &mut Vec<Shown>) {
    variant_figures(
        v,
        out,
        &ADAPTIVE_WEIGHTS,
        [
            (
                "adaptive_deception",
                "Deception score: adaptive weighting vs naive (Fig. 23)",
            ),
            (
                "adaptive_accuracy",
                "Test accuracy: adaptive weighting vs naive (Fig. 23)",
            ),
        ],
        "Students whose label losses are weighted by the teacher's certainty |2M_w − 1| (paper App. P; run ids ending in -ad, each against the no-conflict student with the same weighting) beside the naive students of the same weak model, strong model and setting (mean over seeds, 95% intervals).",
    );
}

/// A variant's two figures, (id, title) each: its deception score (conflict settings only),
/// then its test accuracy, both with `caption`; a figure without variant cells is left out.
fn variant_figures(
    v: &View,
    out: &mut Vec<Shown>,
    variant: &Variant,
    [deception, accuracy]: [(&str, &str); 2],
    caption: &str,
) {
    let d = v.d;
    let rank = |m: &str| d.rank(m);
    for ((id, title), name, conflict_only) in [
        (deception, "deception_score", true),
        (accuracy, "accuracy", false),
    ] {
        let Some(chart) = variant_chart(&d.cells, &v.settings, name, conflict_only, &rank, variant)
        else {
            continue;
        };
        out.push(Shown {
            caption: caption.into(),
            command: format!("w2s sql --artifacts ROOT \"select weak_model, strong_model, objective, value, ci_low, ci_high from analysis_summary where measure = '{name}' order by strong_model, objective, weak_model\""),
            figure: Figure {
                id: id.into(),
                title: title.into(),
                chart,
            },
        });
    }
}

/// A bootstrapped weak model `<weak> via <intermediate>[ · <scenario>]` as its direct weak
/// model `<weak>[ · <scenario>]` and the intermediate.
fn unchain(weak: &str) -> Option<(String, String)> {
    let (w, rest) = weak.split_once(" via ")?;
    Some(match rest.rsplit_once(" · ") {
        Some((mid, scenario)) => (format!("{w} · {scenario}"), mid.to_string()),
        None => (w.to_string(), rest.to_string()),
    })
}

/// A weak model name with a label decoration, `<weak> (<labels>)[ · <scenario>]`, as its
/// plain name `<weak>[ · <scenario>]` and `<labels>`.
fn unlabel(weak: &str) -> Option<(String, String)> {
    let labels = crate::stages::order::parts(weak).labels?;
    let tag = format!(" ({labels})");
    let at = weak.rfind(&tag)?;
    Some((
        format!("{}{}", &weak[..at], &weak[at + tag.len()..]),
        labels.to_string(),
    ))
}

/// A high-confidence student's weak model (labels `confident ≥ T` only) as the all-data one.
fn unconfident(weak: &str) -> Option<(String, String)> {
    unlabel(weak).filter(|(_, l)| !l.contains(crate::stages::order::ADAPTIVE))
}

/// An adaptive student's weak model (all labels, weighted) as the unweighted one.
fn unweighted(weak: &str) -> Option<(String, String)> {
    unlabel(weak).filter(|(_, l)| l == crate::stages::order::ADAPTIVE)
}

/// A cell's variant: how a decorated weak model name maps to the plain one and the variant's
/// series name (bootstrapping's `via <intermediate>`, high confidence's `confident ≥ T`).
struct Variant<'a> {
    split: &'a dyn Fn(&str) -> Option<(String, String)>,
    /// The series of the plain cells.
    plain: &'a str,
    /// The series name of a variant.
    label: &'a dyn Fn(&str) -> String,
}

/// Bootstrapped students by their intermediate.
const CHAINS: Variant = Variant {
    split: &unchain,
    plain: "direct",
    label: &|mid| format!("via {}", short(mid)),
};

/// High-confidence students by their label threshold.
const CONFIDENT_LABELS: Variant = Variant {
    split: &unconfident,
    plain: "all data",
    label: &|l| l.to_string(),
};

/// Adaptive students beside the naive (unweighted) ones.
const ADAPTIVE_WEIGHTS: Variant = Variant {
    split: &unweighted,
    plain: "naive",
    label: &|_| "adaptive weighting".to_string(),
};

/// Bars of one measure per (weak, strong, setting) that has a variant cell (bootstrapped, or
/// high-confidence): the plain run and one series per variant.
fn bootstrap_chart(
    cells: &[CellSummary],
    settings: &[Setting],
    name: &str,
    conflict_only: bool,
    rank: &dyn Fn(&str) -> i64,
) -> Option<Chart> {
    variant_chart(cells, settings, name, conflict_only, rank, &CHAINS)
}

fn variant_chart(
    cells: &[CellSummary],
    settings: &[Setting],
    name: &str,
    conflict_only: bool,
    rank: &dyn Fn(&str) -> i64,
    variant: &Variant,
) -> Option<Chart> {
    // (direct weak, strong, setting) -> cells by route ("direct" or the intermediate).
    let mut groups: BTreeMap<(String, String, usize), BTreeMap<String, &CellSummary>> =
        BTreeMap::new();
    let mut mids = BTreeSet::new();
    for c in cells {
        let st = setting_of(c);
        if conflict_only && st.0 == "none" {
            continue;
        }
        let Some(pos) = settings.iter().position(|x| *x == st) else {
            continue;
        };
        if let Some((direct, mid)) = (variant.split)(&c.weak_model) {
            mids.insert(mid.clone());
            groups
                .entry((direct, c.strong_model.clone(), pos))
                .or_default()
                .insert(mid, c);
        }
    }
    if groups.is_empty() {
        return None;
    }
    for c in cells {
        if let Some(pos) = settings.iter().position(|x| *x == setting_of(c)) {
            if let Some(g) = groups.get_mut(&(c.weak_model.clone(), c.strong_model.clone(), pos)) {
                g.insert(String::new(), c);
            }
        }
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|((w, s, pos), _)| (rank(w), rank(s), *pos));
    let mut mids: Vec<String> = mids.into_iter().collect();
    mids.sort_by_key(|m| rank(m));
    let routes: Vec<String> = std::iter::once(String::new()).chain(mids).collect();
    let series = routes
        .iter()
        .map(|r| BarSeries {
            name: if r.is_empty() {
                variant.plain.into()
            } else {
                (variant.label)(r)
            },
            values: groups
                .iter()
                .map(|(_, g)| point(g.get(r).and_then(|c| measure(c, name))))
                .collect(),
        })
        .collect();
    Some(Chart::Bars {
        groups: groups
            .iter()
            .map(|((w, s, pos), _)| {
                format!(
                    "{} → {}, {}",
                    short(w),
                    short(s),
                    setting_name(&settings[*pos])
                )
            })
            .collect(),
        series,
        y_label: if name == "accuracy" {
            "test accuracy".into()
        } else {
            "deception score".into()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::report::figures::tests::cell;

    #[test]
    fn bootstrapped_cells_sit_beside_their_direct_runs() {
        assert_eq!(
            unchain("run:tiny-1 via run:tiny-2 · simpo"),
            Some(("run:tiny-1 · simpo".into(), "run:tiny-2".into()))
        );
        assert_eq!(unchain("a via b"), Some(("a".into(), "b".into())));
        assert_eq!(unchain("run:tiny-1 · simpo"), None);
        let cells = vec![
            cell("run:tiny-1 · simpo", "none", None, 0.57),
            cell("run:tiny-1 · simpo", "implicit", Some(0.5), 0.775),
            cell("run:tiny-2 · simpo", "implicit", Some(0.2), 0.8),
            cell("run:tiny-1 via run:tiny-2 · simpo", "none", None, 0.81),
            cell(
                "run:tiny-1 via run:tiny-2 · simpo",
                "implicit",
                Some(0.571),
                0.828,
            ),
        ];
        let settings = vec![("none".to_string(), None), ("implicit".to_string(), None)];
        let Some(Chart::Bars { groups, series, .. }) =
            bootstrap_chart(&cells, &settings, "deception_score", true, &|_| 0)
        else {
            panic!("a chart");
        };
        // Only the conflict setting, only the weak model that has a bootstrapped run.
        assert_eq!(groups, vec!["tiny-1 · simpo → tiny-3 · simpo, implicit"]);
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["direct", "via tiny-2"]);
        assert_eq!(series[0].values[0].as_ref().unwrap().value, 0.5);
        assert_eq!(series[1].values[0].as_ref().unwrap().value, 0.571);
        let Some(Chart::Bars { groups, series, .. }) =
            bootstrap_chart(&cells, &settings, "accuracy", false, &|_| 0)
        else {
            panic!("a chart");
        };
        assert_eq!(groups.len(), 2);
        assert_eq!(series[1].values[0].as_ref().unwrap().value, 0.81);
        assert!(bootstrap_chart(&cells[..3], &settings, "accuracy", false, &|_| 0).is_none());
    }

    #[test]
    fn high_confidence_cells_sit_beside_their_all_data_runs() {
        assert_eq!(
            unconfident("run:tiny-1 (confident ≥ 0.75) · simpo"),
            Some(("run:tiny-1 · simpo".into(), "confident ≥ 0.75".into()))
        );
        assert_eq!(unconfident("run:tiny-1 · simpo"), None);
        let cells = vec![
            cell("run:tiny-1 · simpo", "implicit", Some(0.5), 0.7),
            cell(
                "run:tiny-1 (confident ≥ 0.75) · simpo",
                "implicit",
                Some(0.3),
                0.8,
            ),
        ];
        let settings = vec![("implicit".to_string(), None)];
        let Some(Chart::Bars { groups, series, .. }) = variant_chart(
            &cells,
            &settings,
            "deception_score",
            true,
            &|_| 0,
            &CONFIDENT_LABELS,
        ) else {
            panic!("a chart");
        };
        assert_eq!(groups, vec!["tiny-1 · simpo → tiny-3 · simpo, implicit"]);
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["all data", "confident ≥ 0.75"]);
        assert_eq!(series[1].values[0].as_ref().unwrap().value, 0.3);
    }
}
