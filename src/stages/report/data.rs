//! What the report shows, read from the analysis tables with the queries of `sql/report/`
//! (each runnable with `w2s sql`, as every analysis is).

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};

use super::figures::Setting;
use crate::error::Result;
use crate::sql;
use crate::stages::analyze::CellSummary;

/// One conflict run's area share and deception score (Fig. 8).
#[derive(Debug, Clone, PartialEq)]
pub struct AreaPoint {
    pub setting: Setting,
    pub share: f64,
    pub deception: Option<f64>,
}

/// Flip counts of a cell over the four areas, summed over seeds (App. L).
#[derive(Debug, Clone, PartialEq)]
pub struct Flips {
    pub weak: String,
    pub strong: String,
    pub setting: Setting,
    pub counts: [i64; 4],
}

/// A test pair of a conflict run that its no-conflict reference gets right (Fig. 19/20).
#[derive(Debug, Clone, PartialEq)]
pub struct Dot {
    pub weak: String,
    pub strong: String,
    pub setting: Setting,
    pub seed: i64,
    /// The weak and the strong ceiling's confidence toward the ground truth.
    pub weak_conf: f64,
    pub strong_conf: f64,
    pub flipped: bool,
}

/// A sweep cell: (weak model, strong model, setting, threshold bits).
pub type SweepCell = (String, String, Setting, u64);

/// (weak, strong) -> threshold bits -> [precision, recall, chance precision].
pub type Truth = BTreeMap<(String, String), BTreeMap<u64, [Option<f64>; 3]>>;

/// What the page shows, read from the analysis tables.
pub struct ReportData {
    pub cells: Vec<CellSummary>,
    pub area: Vec<AreaPoint>,
    pub flips: Vec<Flips>,
    /// (setting, threshold) -> (deceptive flips, flips), summed over cells and seeds.
    pub sweep: BTreeMap<(Setting, u64), (i64, i64)>,
    /// threshold -> (Strong-Known & Weak-Unknown pairs, pairs), over no-conflict cells.
    pub sweep_share: BTreeMap<u64, (i64, i64)>,
    /// Per cell and threshold: (deceptive flips, flips), summed over seeds (Fig. 14/15).
    pub sweep_cells: BTreeMap<SweepCell, (i64, i64)>,
    /// The confidence scatter's points (Fig. 19/20).
    pub dots: Vec<Dot>,
    /// (weak, strong) -> threshold bits -> [precision, recall, chance precision] of the
    /// knowledge-area proxy against the world's truth, pooled over seeds.
    pub truth: Truth,
    /// Pretrained model -> (frequency rank, knows) per world entity (`knowledge`).
    pub knowledge: BTreeMap<String, Vec<(i64, bool)>>,
    /// Tables shown as they are: (title, anchor, batches).
    pub tables: Vec<(String, String, Vec<RecordBatch>)>,
    /// Every model name of the analyses with its capability rank (`analysis_model_order`).
    pub ranks: BTreeMap<String, i64>,
    /// The leakage audit in a sentence, when the root has pairs to audit.
    pub leakage: Option<String>,
    /// Training curves: (stage, run id) -> step -> [loss, accuracy, learning rate].
    pub curves: BTreeMap<(String, String), BTreeMap<i64, [f64; 3]>>,
}

impl ReportData {
    /// The capability rank of an analysis model name, or of a pretrained model id (matched
    /// by short name); unknown names last.
    pub fn rank(&self, model: &str) -> i64 {
        if let Some(r) = self.ranks.get(model) {
            return *r;
        }
        let short = |m: &str| super::figures::short(m);
        (self.ranks.iter())
            .find(|(m, _)| short(m) == short(model))
            .map_or(i64::MAX, |(_, r)| *r)
    }
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
    pub async fn load(
        ctx: &datafusion::prelude::SessionContext,
        cells: Vec<CellSummary>,
    ) -> Result<Self> {
        let q = |text: &'static str| sql::query(ctx, text, &[]);
        let (area_sql, flips_sql, sweep_sql) = (
            include_str!("../../../sql/report/area.sql"),
            include_str!("../../../sql/report/flips.sql"),
            include_str!("../../../sql/report/sweep.sql"),
        );
        let setting = |o: &Option<String>, a: &Option<f64>| -> Setting {
            (o.clone().unwrap_or_default(), a.map(f64::to_bits))
        };

        let mut area = Vec::new();
        for b in q(area_sql).await? {
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
        for b in q(flips_sql).await? {
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
        let mut sweep_cells = BTreeMap::new();
        for b in q(sweep_sql).await? {
            let (w, st) = (strs(&b, "weak_model")?, strs(&b, "strong_model")?);
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
                let key = (
                    w[i].clone().unwrap_or_default(),
                    st[i].clone().unwrap_or_default(),
                    setting(&o[i], &a[i]),
                    t,
                );
                let e = sweep_cells.entry(key).or_insert((0, 0));
                e.0 += dfl[i];
                e.1 += fl[i];
                let e = sweep_share.entry(t).or_insert((0, 0));
                e.0 += (share[i].unwrap_or(0.0) * pairs[i] as f64).round() as i64;
                e.1 += pairs[i];
            }
        }

        let mut dots = Vec::new();
        for b in q(include_str!("../../../sql/report/scatter.sql")).await? {
            let (w, st, o, a) = (
                strs(&b, "weak_model")?,
                strs(&b, "strong_model")?,
                strs(&b, "objective")?,
                floats(&b, "alpha")?,
            );
            let (seed, wc, sc) = (
                ints(&b, "seed")?,
                floats(&b, "weak_conf")?,
                floats(&b, "strong_conf")?,
            );
            let flipped = sql::column(&b, "report", "flipped", &DataType::Boolean)?;
            let flipped = flipped.as_boolean();
            for i in 0..b.num_rows() {
                dots.push(Dot {
                    weak: w[i].clone().unwrap_or_default(),
                    strong: st[i].clone().unwrap_or_default(),
                    setting: setting(&o[i], &a[i]),
                    seed: seed[i],
                    weak_conf: wc[i].unwrap_or(f64::NAN),
                    strong_conf: sc[i].unwrap_or(f64::NAN),
                    flipped: flipped.value(i),
                });
            }
        }

        let mut ranks = BTreeMap::new();
        for b in q("select model, rank from analysis_model_order").await? {
            let (m, r) = (strs(&b, "model")?, ints(&b, "rank")?);
            for i in 0..b.num_rows() {
                ranks.insert(m[i].clone().unwrap_or_default(), r[i]);
            }
        }

        let mut tables = Vec::new();
        let shown: [(&str, &str, &str); 4] = [
            (
                "Every run: settings and timings",
                "runs",
                include_str!("../../../sql/report/runs.sql"),
            ),
            (
                "Knowledge areas per weak/strong pair (Eq. 7)",
                "areas",
                include_str!("../../../sql/report/areas.sql"),
            ),
            (
                "Alpha sweep of the explicit objective (App. J)",
                "alpha",
                include_str!("../../../sql/report/alpha.sql"),
            ),
            (
                "Performance gap recovered (Burns et al.)",
                "pgr",
                include_str!("../../../sql/report/pgr.sql"),
            ),
        ];
        for (title, anchor, text) in shown {
            tables.push((title.to_string(), anchor.to_string(), q(text).await?));
        }
        let mut curves: BTreeMap<(String, String), BTreeMap<i64, [f64; 3]>> = BTreeMap::new();
        if ctx.table_exist("train_log")? && ctx.table_exist("runs")? {
            for b in q(include_str!("../../../sql/report/curves.sql")).await? {
                let (run, stage, step) =
                    (strs(&b, "run_id")?, strs(&b, "stage")?, ints(&b, "step")?);
                let (loss, acc, lr) = (
                    floats(&b, "loss")?,
                    floats(&b, "accuracy")?,
                    floats(&b, "lr")?,
                );
                for i in 0..b.num_rows() {
                    let key = (
                        stage[i].clone().unwrap_or_default(),
                        run[i].clone().unwrap_or_default(),
                    );
                    let v = [loss[i], acc[i], lr[i]].map(|x| x.unwrap_or(f64::NAN));
                    // A resumed run logs a step once; the last row wins if it appears twice.
                    curves.entry(key).or_default().insert(step[i], v);
                }
            }
        }
        let mut truth: Truth = BTreeMap::new();
        if ctx.table_exist("analysis_knowledge_truth")? {
            for b in q(include_str!("../../../sql/report/knowledge_truth.sql")).await? {
                let (w, st, t) = (
                    strs(&b, "weak_model")?,
                    strs(&b, "strong_model")?,
                    floats(&b, "threshold")?,
                );
                let (p, r, c) = (
                    floats(&b, "precision")?,
                    floats(&b, "recall")?,
                    floats(&b, "chance_precision")?,
                );
                for i in 0..b.num_rows() {
                    let key = (
                        w[i].clone().unwrap_or_default(),
                        st[i].clone().unwrap_or_default(),
                    );
                    let t = t[i].unwrap_or(0.0).to_bits();
                    truth.entry(key).or_default().insert(t, [p[i], r[i], c[i]]);
                }
            }
            tables.push((
                "Knowledge areas against the world's truth (the probe), per ceiling pair and T".into(),
                "knowledge_truth".into(),
                q("select * from analysis_knowledge_truth order by weak_model, strong_model, seed, threshold")
                    .await?,
            ));
        }
        if ctx.table_exist("analysis_case_study")? {
            tables.push((
                "Case study: the clearest deceptive flips of each conflict cell (App. Q)".into(),
                "case_study".into(),
                q(include_str!("../../../sql/report/case_study.sql")).await?,
            ));
        }
        let mut leakage = None;
        if ctx.table_exist("analysis_leakage")? {
            let b = q("select * from analysis_leakage order by training_split").await?;
            leakage = Some(crate::stages::analyze::leakage_verdict(&b)?);
            tables.push((
                "Leakage audit: test pairs whose content is in a training split".into(),
                "leakage".into(),
                b,
            ));
        }
        let mut knowledge: BTreeMap<String, Vec<(i64, bool)>> = BTreeMap::new();
        if ctx.table_exist("knowledge")? {
            for b in q(include_str!("../../../sql/report/knowledge.sql")).await? {
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
                q(include_str!("../../../sql/report/knowledge_summary.sql")).await?,
            ));
        }
        Ok(ReportData {
            sweep_cells,
            dots,
            truth,
            curves,
            leakage,
            ranks,
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
