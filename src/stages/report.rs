//! `w2s report`: the paper's figures and every run's settings and timings as one
//! self-contained HTML page (inline SVG and CSS, no script, no network: it opens from disk or
//! from a bucket) plus a PNG of every figure, published under `report/<fingerprint>/` in the
//! artifact store.
//!
//! It reads only the `analysis_*` tables (running `w2s analyze` first if they are missing or
//! stale) and the `runs` table, so every number on the page is one a reader can get back with
//! `w2s sql`. Figure data is built here ([`figures`]); drawing is `crate::plots`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;

use super::analyze::{self, AnalyzeSettings, CellSummary};
use super::common;
use super::uncertainty;
use crate::error::{Error, Result};
use crate::plots::{self, BarSeries, Cell, Chart, Figure, Grid, Point, Series};
use crate::sql;
use crate::store::{fingerprint, sha256_hex, ArtifactStore, OutputFile};

/// Manifest key of the report.
pub const KEY: &str = "report";

/// Everything that determines the report: the analysis settings it shows.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ReportSettings {
    pub analyze: AnalyzeSettings,
}

/// What a report run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOutput {
    /// Path of the page relative to the artifact root.
    pub page: String,
    /// Every file written (page first), relative to the root.
    pub files: Vec<String>,
    /// Ids of the figures on the page.
    pub figures: Vec<String>,
    pub up_to_date: bool,
}

/// Runs the report stage: analyses first (a no-op when up to date), then the page.
pub async fn run(store: &ArtifactStore, s: &ReportSettings, force: bool) -> Result<ReportOutput> {
    let analysis = analyze::run(store, &s.analyze, false).await?;
    let am = store
        .manifest(analyze::KEY)
        .await?
        .ok_or_else(|| Error::Config(format!("{}: analyze published no manifest", store.root())))?;
    let mut inputs = vec![common::manifest_input(&am)];
    // Pretrained models' knowledge probes are shown too.
    for m in store.manifests().await? {
        if m.outputs
            .iter()
            .any(|f| f.table.as_deref() == Some("knowledge"))
        {
            inputs.push(common::manifest_input(&m));
        }
    }
    let fp = fingerprint("report", s, &inputs);
    let dir = format!("report/{}", &fp[..16]);
    if !force {
        if let Some(m) = store.current(KEY, &fp).await? {
            let files: Vec<String> = m.outputs.iter().map(|f| f.path.clone()).collect();
            return Ok(ReportOutput {
                page: format!("{dir}/index.html"),
                figures: files
                    .iter()
                    .filter_map(|f| f.strip_suffix(".png"))
                    .filter_map(|f| f.rsplit('/').next())
                    .map(str::to_string)
                    .collect(),
                files,
                up_to_date: true,
            });
        }
    }

    let ctx = sql::context(store).await?;
    let data = ReportData::load(&ctx, analysis.cells).await?;
    let figs = figures(&data);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut svgs = BTreeMap::new();
    for f in &figs {
        svgs.insert(f.id.clone(), plots::svg(f).map_err(Error::Config)?);
        files.push((
            format!("{dir}/{}.png", f.id),
            plots::png(f).map_err(Error::Config)?,
        ));
    }
    let page = html(store.root(), s, &fp, &data, &figs, &svgs);
    files.insert(0, (format!("{dir}/index.html"), page.into_bytes()));

    let mut outputs: Vec<OutputFile> = Vec::new();
    for (path, bytes) in &files {
        let out = OutputFile {
            table: None,
            path: path.clone(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            rows: None,
        };
        if let Err(e) = store.put(path, Bytes::from(bytes.clone())).await {
            store.discard(&outputs).await;
            return Err(e);
        }
        outputs.push(out);
    }
    store
        .publish("report", KEY, &fp, s, inputs, outputs)
        .await?;
    Ok(ReportOutput {
        page: format!("{dir}/index.html"),
        files: files.into_iter().map(|(p, _)| p).collect(),
        figures: figs.into_iter().map(|f| f.id).collect(),
        up_to_date: false,
    })
}

/// Copies a published report to a local folder (for a report in a bucket): written beside it
/// first, then renamed into place, so the folder is either the old report or the new one.
pub async fn copy_to(store: &ArtifactStore, out: &ReportOutput, dest: &Path) -> Result<()> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| Error::Io { path, source }
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "report".into());
    let staging = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let written: Result<()> = async {
        for f in &out.files {
            let bytes = store.get(f).await?;
            let file = staging.join(f.rsplit('/').next().unwrap_or(f));
            std::fs::write(&file, &bytes).map_err(io(&file))?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(&staging, dest).map_err(io(dest))
}

/// A conflict setting: objective and alpha (explicit runs can differ in alpha).
type Setting = (String, Option<u64>);

fn setting_name((objective, alpha): &Setting) -> String {
    match alpha {
        Some(a) if objective == "explicit" => format!("{objective} α={}", f64::from_bits(*a)),
        _ => objective.clone(),
    }
}

/// Rank of an objective on the page: none, explicit, implicit, adaptive, then the rest.
fn rank(objective: &str) -> usize {
    ["none", "explicit", "implicit", "adaptive"]
        .iter()
        .position(|o| *o == objective)
        .unwrap_or(4)
}

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

/// One conflict run's area share and deception score (Fig. 8).
#[derive(Debug, Clone, PartialEq)]
struct AreaPoint {
    setting: Setting,
    share: f64,
    deception: Option<f64>,
}

/// Flip counts of a cell over the four areas, summed over seeds (App. L).
#[derive(Debug, Clone, PartialEq)]
struct Flips {
    weak: String,
    strong: String,
    setting: Setting,
    counts: [i64; 4],
}

/// What the page shows, read from the analysis tables.
struct ReportData {
    cells: Vec<CellSummary>,
    area: Vec<AreaPoint>,
    flips: Vec<Flips>,
    /// (setting, threshold) -> (deceptive flips, flips), summed over cells and seeds.
    sweep: BTreeMap<(Setting, u64), (i64, i64)>,
    /// threshold -> (Strong-Known & Weak-Unknown pairs, pairs), over no-conflict cells.
    sweep_share: BTreeMap<u64, (i64, i64)>,
    /// Pretrained model -> (frequency rank, knows) per world entity (`knowledge`).
    knowledge: BTreeMap<String, Vec<(i64, bool)>>,
    /// Tables shown as they are: (title, anchor, batches).
    tables: Vec<(String, String, Vec<RecordBatch>)>,
}

fn strs(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let c = sql::column(b, "report", name, &DataType::Utf8)?;
    let a = c.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
        .collect())
}

fn floats(b: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>> {
    let c = sql::column(b, "report", name, &DataType::Float64)?;
    let a = c.as_primitive::<Float64Type>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i)))
        .collect())
}

fn ints(b: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let c = sql::column(b, "report", name, &DataType::Int64)?;
    let a = c.as_primitive::<Int64Type>();
    Ok((0..a.len())
        .map(|i| if a.is_null(i) { 0 } else { a.value(i) })
        .collect())
}

impl ReportData {
    async fn load(
        ctx: &datafusion::prelude::SessionContext,
        cells: Vec<CellSummary>,
    ) -> Result<Self> {
        let q = |text: &'static str| sql::query(ctx, text, &[]);
        let setting = |o: &Option<String>, a: &Option<f64>| -> Setting {
            (o.clone().unwrap_or_default(), a.map(f64::to_bits))
        };

        let mut area = Vec::new();
        for b in
            q("select objective, alpha, sk_wuk_share, deception_score from analysis_area_share")
                .await?
        {
            let (o, a, sh, ds) = (
                strs(&b, "objective")?,
                floats(&b, "alpha")?,
                floats(&b, "sk_wuk_share")?,
                floats(&b, "deception_score")?,
            );
            for i in 0..b.num_rows() {
                area.push(AreaPoint {
                    setting: setting(&o[i], &a[i]),
                    share: sh[i].unwrap_or(0.0),
                    deception: ds[i],
                });
            }
        }

        let mut flips = Vec::new();
        for b in q("select weak_model, strong_model, objective, alpha, \
                    sum(sk_wk) as sk_wk, sum(sk_wuk) as sk_wuk, sum(suk_wk) as suk_wk, \
                    sum(suk_wuk) as suk_wuk from analysis_flip_breakdown \
                    group by weak_model, strong_model, objective, alpha \
                    order by weak_model, strong_model, objective, alpha")
        .await?
        {
            let (w, s, o, a) = (
                strs(&b, "weak_model")?,
                strs(&b, "strong_model")?,
                strs(&b, "objective")?,
                floats(&b, "alpha")?,
            );
            let parts = [
                ints(&b, "sk_wk")?,
                ints(&b, "sk_wuk")?,
                ints(&b, "suk_wk")?,
                ints(&b, "suk_wuk")?,
            ];
            for i in 0..b.num_rows() {
                flips.push(Flips {
                    weak: w[i].clone().unwrap_or_default(),
                    strong: s[i].clone().unwrap_or_default(),
                    setting: setting(&o[i], &a[i]),
                    counts: [parts[0][i], parts[1][i], parts[2][i], parts[3][i]],
                });
            }
        }

        let mut sweep = BTreeMap::new();
        let mut sweep_share = BTreeMap::new();
        for b in q(
            "select objective, alpha, threshold, pairs, flips, deceptive_flips, \
                    sk_wuk_share from analysis_threshold_sweep",
        )
        .await?
        {
            let (o, a, t) = (
                strs(&b, "objective")?,
                floats(&b, "alpha")?,
                floats(&b, "threshold")?,
            );
            let (pairs, fl, dfl) = (
                ints(&b, "pairs")?,
                ints(&b, "flips")?,
                ints(&b, "deceptive_flips")?,
            );
            let share = floats(&b, "sk_wuk_share")?;
            for i in 0..b.num_rows() {
                let t = t[i].unwrap_or(0.0).to_bits();
                let e = sweep.entry((setting(&o[i], &a[i]), t)).or_insert((0, 0));
                e.0 += dfl[i];
                e.1 += fl[i];
                let e = sweep_share.entry(t).or_insert((0, 0));
                e.0 += (share[i].unwrap_or(0.0) * pairs[i] as f64).round() as i64;
                e.1 += pairs[i];
            }
        }

        let mut tables = Vec::new();
        let shown: [(&str, &str, &str); 4] = [
            (
                "Every run: settings and timings",
                "runs",
                "select r.run_id, r.stage, r.scenario, r.objective, r.base_model, r.teacher, \
                 r.alpha, r.seed, a.accuracy as test_accuracy, r.steps, r.pairs, r.tokens, \
                 r.final_loss, r.resumed_at_step, r.wall_seconds, r.tokens_per_second, \
                 r.settings \
                 from runs r left join analysis_accuracy a on a.run_id = r.run_id \
                 order by r.stage, r.base_model, r.objective, r.alpha, r.seed, r.run_id",
            ),
            (
                "Knowledge areas per weak/strong pair (Eq. 7)",
                "areas",
                "select weak_model, strong_model, seed, threshold, pairs, sk_wk, sk_wuk, suk_wk, \
                 suk_wuk, sk_wuk_share from analysis_knowledge_areas \
                 order by weak_model, strong_model, seed",
            ),
            (
                "Alpha sweep of the explicit objective (App. J)",
                "alpha",
                "select weak_model, strong_model, alpha, seed, run_id, accuracy, flips, \
                 deception_score from analysis_alpha_sweep \
                 order by weak_model, strong_model, alpha, seed",
            ),
            (
                "Performance gap recovered (Burns et al.)",
                "pgr",
                "select * from analysis_pgr",
            ),
        ];
        for (title, anchor, text) in shown {
            tables.push((title.to_string(), anchor.to_string(), q(text).await?));
        }
        let mut knowledge: BTreeMap<String, Vec<(i64, bool)>> = BTreeMap::new();
        if ctx.table_exist("knowledge")? {
            for b in
                q("select model_id, rank, knows from knowledge order by model_id, rank").await?
            {
                let (m, r) = (strs(&b, "model_id")?, ints(&b, "rank")?);
                let k = b.column(2).as_boolean();
                for i in 0..b.num_rows() {
                    knowledge
                        .entry(m[i].clone().unwrap_or_default())
                        .or_default()
                        .push((r[i], k.value(i)));
                }
            }
            tables.push((
                "What each pretrained model knows (the probe)".into(),
                "knowledge".into(),
                q("select model_id, count(*) as entities, \
                   sum(case when knows then 1 else 0 end) as known, \
                   avg(case when knows then 1.0 else 0.0 end) as share_known, \
                   avg(margin) as mean_margin from knowledge group by model_id order by model_id")
                .await?,
            ));
        }
        Ok(ReportData {
            knowledge,
            cells,
            area,
            flips,
            sweep,
            sweep_share,
            tables,
        })
    }
}

fn measure<'a>(c: &'a CellSummary, name: &str) -> Option<&'a uncertainty::Summary> {
    c.measures.iter().find(|m| m.measure == name)
}

fn point(m: Option<&uncertainty::Summary>) -> Option<Point> {
    let m = m?;
    Some(Point {
        value: m.value?,
        interval: m.low.zip(m.high),
    })
}

/// A cell's conflict setting.
fn setting_of(c: &CellSummary) -> Setting {
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

/// The figures with data; a figure with nothing to show is left out.
fn figures(d: &ReportData) -> Vec<Figure> {
    let mut out = Vec::new();
    let pairs: Vec<(String, String)> = d
        .cells
        .iter()
        .map(|c| (c.weak_model.clone(), c.strong_model.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let settings = settings_of(d.cells.iter().map(setting_of).collect::<Vec<_>>().iter());
    let find = |w: &str, s: &str, st: &Setting| {
        d.cells
            .iter()
            .find(|c| c.weak_model == w && c.strong_model == s && setting_of(c) == *st)
    };
    let any_cell = |w: &str, s: &str| {
        // Ceilings are the same in every cell of a pair; prefer the no-conflict one.
        d.cells
            .iter()
            .filter(|c| c.weak_model == w && c.strong_model == s)
            .min_by_key(|c| rank(&c.objective))
    };

    // Fig. 4: test accuracy per weak/strong pair.
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
        for st in &settings {
            series.push(BarSeries {
                name: format!("w2s {}", setting_name(st)),
                values: pairs
                    .iter()
                    .map(|(w, s)| point(find(w, s, st).and_then(|c| measure(c, "accuracy"))))
                    .collect(),
            });
        }
        out.push(Figure {
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
        });
    }

    // Fig. 5 / 7: deception score as a weak x strong grid per conflict setting.
    let conflicts: Vec<Setting> = settings.iter().filter(|s| s.0 != "none").cloned().collect();
    if !conflicts.is_empty() {
        let weak: Vec<String> = pairs
            .iter()
            .map(|p| p.0.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let strong: Vec<String> = pairs
            .iter()
            .map(|p| p.1.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let grids = conflicts
            .iter()
            .map(|st| Grid {
                title: setting_name(st),
                rows: weak.iter().map(|w| short(w)).collect(),
                cols: strong.iter().map(|s| short(s)).collect(),
                values: weak
                    .iter()
                    .map(|w| {
                        strong
                            .iter()
                            .map(|s| {
                                let Some(m) =
                                    find(w, s, st).and_then(|c| measure(c, "deception_score"))
                                else {
                                    return Cell::Missing;
                                };
                                let label = format!("{}/{} flips", m.numerator, m.denominator);
                                match m.value {
                                    Some(v) => Cell::Value(v, label),
                                    None => Cell::Undefined(label),
                                }
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        out.push(Figure {
            id: "deception_grid".into(),
            title: "Deception score per weak/strong pair and conflict setting (Fig. 5, 7)".into(),
            chart: Chart::Grids { grids },
        });
    }

    // Fig. 9b/9c: bootstrapped students beside the direct ones of the same weak and strong model.
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
        if let Some(chart) = bootstrap_chart(&d.cells, &settings, name, conflict_only) {
            out.push(Figure {
                id: id.into(),
                title: title.into(),
                chart,
            });
        }
    }

    // Fig. 8: deception score against the Strong-Known & Weak-Unknown share, per run.
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
        out.push(Figure {
            id: "deception_vs_area".into(),
            title: "Deception score against the Strong-Known & Weak-Unknown share (Fig. 8)".into(),
            chart: Chart::Scatter {
                series: scatter,
                undefined,
                x_label: "|S_k ∩ W_uk| / test pairs".into(),
                y_label: "deception score".into(),
            },
        });
    }

    // App. L: where the flips fall.
    let mut with_flips: Vec<&Flips> = d.flips.iter().collect();
    let order = |f: &Flips| {
        settings
            .iter()
            .position(|s| *s == f.setting)
            .unwrap_or(usize::MAX)
    };
    with_flips.sort_by(|a, b| (&a.weak, &a.strong, order(a)).cmp(&(&b.weak, &b.strong, order(b))));
    if !with_flips.is_empty() {
        out.push(Figure {
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
        });
    }

    // App. I: the threshold sweep, pooled over pairs and seeds.
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
        out.push(Figure {
            id: "threshold_sweep".into(),
            title: "Deception score and area share against the threshold T (App. I)".into(),
            chart: Chart::Lines {
                series: lines,
                x_range: (lo, hi.max(lo + 1e-6)),
                x_label: "threshold T".into(),
                y_label: "pooled over pairs and seeds".into(),
            },
        });
    }

    // The knowledge probe of pretrained models: share of entities known by frequency rank.
    if !d.knowledge.is_empty() {
        let series = d
            .knowledge
            .iter()
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
        out.push(Figure {
            id: "knowledge".into(),
            title: "Entities each pretrained model knows, by how often the corpus mentions them"
                .into(),
            chart: Chart::Lines {
                series,
                x_range: (1.0, hi),
                x_label: "frequency rank (1 = most mentioned), tenths of the entities".into(),
                y_label: "share known (probe)".into(),
            },
        });
    }
    out
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

/// Bars of one measure per (weak, strong, setting) that has a bootstrapped cell: the direct
/// run and one series per intermediate model.
fn bootstrap_chart(
    cells: &[CellSummary],
    settings: &[Setting],
    name: &str,
    conflict_only: bool,
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
        if let Some((direct, mid)) = unchain(&c.weak_model) {
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
    let routes: Vec<String> = std::iter::once(String::new()).chain(mids).collect();
    let series = routes
        .iter()
        .map(|r| BarSeries {
            name: if r.is_empty() {
                "direct".into()
            } else {
                format!("via {}", short(r))
            },
            values: groups
                .values()
                .map(|g| point(g.get(r).and_then(|c| measure(c, name))))
                .collect(),
        })
        .collect();
    Some(Chart::Bars {
        groups: groups
            .keys()
            .map(|(w, s, pos)| {
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(batches: &[RecordBatch]) -> String {
    let Some(first) = batches.first() else {
        return "<p class=\"empty\">no rows</p>".into();
    };
    let schema = first.schema();
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for f in schema.fields() {
        out.push_str(&format!("<th>{}</th>", esc(f.name())));
    }
    out.push_str("</tr></thead><tbody>");
    let opts = FormatOptions::default().with_null("");
    let mut rows = 0;
    for b in batches {
        let fmts: Vec<Option<ArrayFormatter>> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).ok())
            .collect();
        for i in 0..b.num_rows() {
            rows += 1;
            out.push_str("<tr>");
            for (k, f) in fmts.iter().enumerate() {
                let v = f
                    .as_ref()
                    .map(|f| f.value(i).to_string())
                    .unwrap_or_default();
                let numeric = matches!(
                    b.column(k).data_type(),
                    DataType::Float64 | DataType::Float32
                );
                let v = match (numeric, v.parse::<f64>()) {
                    (true, Ok(x)) if x.fract() != 0.0 => format!("{x:.4}"),
                    _ => v,
                };
                if schema.field(k).name() == "settings" {
                    out.push_str(&format!(
                        "<td><details><summary>settings</summary><code>{}</code></details></td>",
                        esc(&v)
                    ));
                } else {
                    out.push_str(&format!("<td>{}</td>", esc(&v)));
                }
            }
            out.push_str("</tr>");
        }
    }
    out.push_str("</tbody></table></div>");
    if rows == 0 {
        return "<p class=\"empty\">no rows</p>".into();
    }
    out
}

fn summary_table(cells: &[CellSummary]) -> String {
    let mut out = String::from(
        "<div class=\"scroll\"><table><thead><tr><th>weak</th><th>strong</th><th>setting</th>\
         <th>seeds</th><th>measure</th><th>value</th><th>95% interval</th><th>counts</th>\
         <th>interval from</th></tr></thead><tbody>",
    );
    for c in cells {
        let st = (c.objective.clone(), c.alpha.map(f64::to_bits));
        for m in &c.measures {
            let v = m.value.map_or("NULL".into(), |v| format!("{v:.3}"));
            let ci = match (m.low, m.high) {
                (Some(l), Some(h)) => format!("[{l:.3}, {h:.3}]"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{v}</td><td>{ci}</td><td>{}/{}</td><td>{}</td></tr>",
                esc(&short(&c.weak_model)),
                esc(&short(&c.strong_model)),
                esc(&setting_name(&st)),
                m.seeds,
                m.measure,
                m.numerator,
                m.denominator,
                m.interval
            ));
        }
    }
    out.push_str("</tbody></table></div>");
    out
}

/// What each figure shows and the command that gives its numbers.
fn caption(id: &str, t: f64) -> String {
    let (text, cmd) = match id {
        "accuracy" => (
            "Share of test pairs each model gets right (confidence toward the ground-truth chosen answer ≥ 0.5). Bars are the mean over seeds; whiskers are 95% intervals (t over seeds, or a bootstrap over test pairs for one seed).",
            "w2s sql --artifacts ROOT \"select * from analysis_summary where measure like '%accuracy'\"".to_string(),
        ),
        "deception_grid" => (
            "Of the pairs the no-conflict student gets right and the conflict student gets wrong (the flips), the share in the Strong-Known & Weak-Unknown area (Eq. 8). Grey: no flips (the score is undefined, not 0); blank: no run. Counts under each value.",
            format!("w2s sql sql/deception.sql --artifacts ROOT --param threshold={t}"),
        ),
        "bootstrap_deception" => (
            "Students trained on an intermediate model's labels (weak → intermediate → strong, conflict in the last stage only, reference-spec §3.9) beside the direct weak → strong student of the same setting. Both are measured against the same weak and strong ceilings. A missing bar: no flips (the score is undefined) or no run; the deception grid has the counts.",
            format!("w2s sql sql/deception.sql --artifacts ROOT --param threshold={t}"),
        ),
        "bootstrap_accuracy" => (
            "Test accuracy of the bootstrapped students and of the direct ones of the same weak model, strong model and setting (mean over seeds, 95% intervals).",
            "w2s sql --artifacts ROOT \"select weak_model, strong_model, objective, value from analysis_summary where measure = 'accuracy' order by strong_model, objective, weak_model\"".to_string(),
        ),
        "deception_vs_area" => (
            "One point per conflict run: the share of test pairs only the strong ceiling knows, against the run's deception score (runs without flips are left out).",
            format!("w2s sql sql/area_share.sql --artifacts ROOT --param threshold={t}"),
        ),
        "flip_breakdown" => (
            "How each conflict cell's flips (summed over seeds; count in brackets) spread over the four knowledge areas.",
            format!("w2s sql sql/flip_breakdown.sql --artifacts ROOT --param threshold={t}"),
        ),
        "knowledge" => (
            "For every entity of the synthetic world, the pretrained model knows it when it finds the true statement about it more likely than the false one (w2s pretrain's probe). Each point is a tenth of the entities by frequency rank. The probe is a two-way choice: a model that knows nothing scores about 0.5.",
            "w2s sql --artifacts ROOT \"select model_id, rank, margin, knows from knowledge order by model_id, rank\"".to_string(),
        ),
        "threshold_sweep" => (
            "Deception score per conflict setting and the Strong-Known & Weak-Unknown share, pooled over every weak/strong pair and seed, at each threshold of the sweep.",
            "w2s sql sql/threshold_sweep.sql --artifacts ROOT --param t1=0.70 --param t2=0.75 --param t3=0.80 --param t4=0.85".to_string(),
        ),
        _ => ("", String::new()),
    };
    format!("{} <code>{}</code>", esc(text), esc(&cmd))
}

const STYLE: &str = "body{font-family:'DejaVu Sans',system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}\
figure{margin:1.5em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\
figcaption{font-size:.9em;color:#444;margin-top:.4em}code{font-size:.85em;background:#f4f4f4;padding:0 .2em}\
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.8em}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}\
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}details code{white-space:pre-wrap;display:block;max-width:40em;text-align:left}\
.meta{color:#555;font-size:.9em}.empty{color:#777}";

fn html(
    root: &str,
    s: &ReportSettings,
    fp: &str,
    d: &ReportData,
    figs: &[Figure],
    svgs: &BTreeMap<String, String>,
) -> String {
    let t = s.analyze.threshold;
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>w2s report</title><style>{STYLE}</style></head><body>\n\
         <h1>Weak-to-strong deception report</h1>\n\
         <p class=\"meta\">Artifacts: <code>{}</code> · threshold T = {t} · sweep {:?} · \
         bootstrap {} replicates (seed {}) · report {}</p>\n\
         <p>Every number here is in the <code>analysis_*</code> tables of the artifact root; \
         each figure names the <code>w2s sql</code> command that prints it. Definitions: \
         docs/analyses.md.</p>\n<nav><ul>",
        esc(root),
        s.analyze.sweep,
        s.analyze.bootstrap,
        s.analyze.bootstrap_seed,
        &fp[..16]
    );
    for f in figs {
        out.push_str(&format!(
            "<li><a href=\"#{0}\">{1}</a></li>",
            f.id,
            esc(&f.title)
        ));
    }
    out.push_str("<li><a href=\"#summary\">Every measure with its interval</a></li>");
    for (title, anchor, _) in &d.tables {
        out.push_str(&format!(
            "<li><a href=\"#{anchor}\">{}</a></li>",
            esc(title)
        ));
    }
    out.push_str("</ul></nav>\n");
    if figs.is_empty() {
        out.push_str("<p class=\"empty\">No weak-to-strong runs with scores yet: train and score some (docs/scenarios.md), then run the report again.</p>\n");
    }
    for f in figs {
        let svg = svgs.get(&f.id).map(String::as_str).unwrap_or_default();
        let svg = match svg.find("<svg") {
            Some(i) => &svg[i..],
            None => svg,
        };
        out.push_str(&format!(
            "<h2>{}</h2>\n<figure id=\"{}\" class=\"w2s-figure\">\n{svg}\n<figcaption>{} · <a href=\"{1}.png\">PNG</a></figcaption></figure>\n",
            esc(&f.title),
            f.id,
            caption(&f.id, t)
        ));
    }
    out.push_str(&format!(
        "<h2 id=\"summary\">Every measure with its interval</h2>\n{}\n",
        summary_table(&d.cells)
    ));
    for (title, anchor, batches) in &d.tables {
        out.push_str(&format!(
            "<h2 id=\"{anchor}\">{}</h2>\n{}\n",
            esc(title),
            html_table(batches)
        ));
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(weak: &str, objective: &str, deception: Option<f64>, accuracy: f64) -> CellSummary {
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
            bootstrap_chart(&cells, &settings, "deception_score", true)
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
            bootstrap_chart(&cells, &settings, "accuracy", false)
        else {
            panic!("a chart");
        };
        assert_eq!(groups.len(), 2);
        assert_eq!(series[1].values[0].as_ref().unwrap().value, 0.81);
        assert!(bootstrap_chart(&cells[..3], &settings, "accuracy", false).is_none());
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
