//! Pipeline files: what a grid is, as written in `pipelines/*.toml`.
//!
//! The file is parsed strictly (an unknown key is an error that names it), `--set KEY=VALUE`
//! overrides are applied to the parsed document before it is read, and [`Pipeline::validate`]
//! checks what the types cannot: that every model a grid names exists, that students are
//! stronger than their teachers when the file asks for that check, that the data source has
//! the keys it needs. Every error names the key at fault. See docs/pipelines.md.
//!
//! The tables that set a stage's options are read into the stage's own option types
//! (`[train]`: [`TrainOpts`], a rung's `pretrain`: [`PretrainOpts`], `[data]`: [`SplitOpts`]
//! and [`WorldOpts`], `[score]`: [`ScoreOpts`], `[analysis]`: [`AnalyzeOpts`]), the types
//! the command line parses: one definition of each setting, its default and its doc.

use std::collections::BTreeSet;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::overrides::apply_override;
use crate::error::{Error, Result};
use crate::scenarios::rm::Objective;
use crate::stages::analyze::AnalyzeOpts;
use crate::stages::score::ScoreOpts;
use crate::stages::split::{SplitOpts, WorldOpts};
use crate::stages::training::pretrain::PretrainOpts;
use crate::stages::training::{Scenario, TrainOpts, ALPHA};

/// A parsed, validated pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// A short name, shown in plans and logs.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Artifact root: a local folder, file:// or s3://bucket/prefix.
    pub artifacts: Option<String>,
    pub data: Option<Data>,
    /// The model ladder, weakest first.
    #[serde(default)]
    pub model: Vec<Model>,
    /// Training settings of every gt-train and w2s-train step, as [`TrainOpts`] keys (a
    /// model's own `train` table overrides them for the runs that train that model; read with
    /// [`Pipeline::train_for`]).
    #[serde(default)]
    pub train: toml::Table,
    /// Settings of the scoring steps.
    #[serde(default)]
    pub score: Score,
    pub grid: Option<Grid>,
    #[serde(default)]
    pub analysis: Analysis,
}

/// Where the data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The embedded synthetic world.
    World,
    /// The built-in sample.
    Sample,
    /// Pre-split gt / w2s / test files.
    Files,
    /// One file split at random.
    Random,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::World => "world",
            Source::Sample => "sample",
            Source::Files => "files",
            Source::Random => "random",
        }
    }
}

/// Where the pairs come from (`w2s split`): the source and its files, plus [`SplitOpts`].
#[derive(Debug, Clone, Default)]
pub struct Data {
    pub source: Option<Source>,
    pub gt: Option<String>,
    pub w2s: Option<String>,
    pub test: Option<String>,
    pub input: Option<String>,
    /// The synthetic world (source = "world").
    pub world: Option<WorldOpts>,
    pub opts: SplitOpts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSource {
    source: Option<Source>,
    gt: Option<String>,
    w2s: Option<String>,
    test: Option<String>,
    input: Option<String>,
    world: Option<WorldOpts>,
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (own, opts): (DataSource, SplitOpts) =
            two_part(d, &["source", "gt", "w2s", "test", "input", "world"])?;
        Ok(Data {
            source: own.source,
            gt: own.gt,
            w2s: own.w2s,
            test: own.test,
            input: own.input,
            world: own.world,
            opts,
        })
    }
}

/// Reads a table whose keys `own` belong to `A` and the rest to `B` (each strict).
fn two_part<'de, D, A, B>(d: D, own: &[&str]) -> std::result::Result<(A, B), D::Error>
where
    D: Deserializer<'de>,
    A: DeserializeOwned,
    B: DeserializeOwned,
{
    let t = toml::Table::deserialize(d)?;
    let (mine, rest): (toml::Table, toml::Table) =
        t.into_iter().partition(|(k, _)| own.contains(&k.as_str()));
    Ok((
        strict(mine).map_err(D::Error::custom)?,
        strict(rest).map_err(D::Error::custom)?,
    ))
}

/// A table read into `T`, an error naming the key inside it.
fn strict<T: DeserializeOwned>(t: toml::Table) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(toml::Value::Table(t)).map_err(|e| {
        match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            p => format!("`{p}`: {}", e.inner()),
        }
    })
}

/// One rung of the ladder: a checkpoint (`path`) or a tiny GPT-2 pretrained here (`pretrain`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    /// A local folder, s3:// or http(s):// prefix, or hf://owner/name[@revision].
    pub path: Option<String>,
    pub pretrain: Option<PretrainOpts>,
    /// Overrides of the pipeline's `[train]` for runs that train this model.
    #[serde(default)]
    pub train: toml::Table,
}

/// `[score]`: [`ScoreOpts`] and the device (default: the training device).
#[derive(Debug, Clone, Default)]
pub struct Score {
    pub opts: ScoreOpts,
    pub device: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreOwn {
    device: Option<String>,
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (own, opts): (ScoreOwn, ScoreOpts) = two_part(d, &["device"])?;
        Ok(Score {
            opts,
            device: own.device,
        })
    }
}

/// The experiment grid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    #[serde(default = "default_scenarios")]
    pub scenarios: Vec<Scenario>,
    /// Teachers; every one is trained on the gt split (its ceiling) and labels the w2s split.
    #[serde(default)]
    pub weak: Vec<String>,
    /// Students; every one also gets its own ceiling.
    #[serde(default)]
    pub strong: Vec<String>,
    /// Explicit (weak, strong) pairs, instead of every stronger combination of `weak` x `strong`.
    #[serde(default)]
    pub pairs: Vec<[String; 2]>,
    /// Refuse a pair whose student is not later in the ladder than its teacher. Without it,
    /// such combinations of `weak` x `strong` are left out (and explicit pairs kept).
    #[serde(default)]
    pub check_stronger: bool,
    #[serde(default = "default_objectives")]
    pub objectives: Vec<Objective>,
    /// Weights of the explicit objective.
    #[serde(default = "default_alphas")]
    pub alphas: Vec<f64>,
    /// Seeds of the students' training order.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// High-confidence students (paper §6.1; preference scenarios): beside every direct
    /// student, one trained only on the teacher's labels at least this confident, with its
    /// own run id (`...-hc`) and its own no-conflict reference.
    pub high_confidence: Option<f64>,
    /// Train the all-data students too (with `high_confidence`; false: only the
    /// high-confidence ones).
    #[serde(default = "default_true")]
    pub all_data: bool,
    /// Adaptive weighting (paper App. P; reward modeling): beside every student, one whose
    /// label losses are weighted by the teacher's certainty (`...-ad`), with its own
    /// no-conflict reference.
    #[serde(default)]
    pub adaptive: bool,
    /// The alignment dimension the grid trains and scores on (default: `[data] dimension`;
    /// with the world, which writes every dimension's splits, this picks one).
    #[serde(default)]
    pub dimension: Option<crate::schema::Dimension>,
    /// Bootstrapping (paper §6.2): weak -> each of these -> strong, the conflict only in the
    /// last stage; `"*"`: every model between each pair's weak and strong model in the ladder.
    #[serde(default)]
    pub intermediates: Vec<String>,
}

/// `grid.intermediates` entry meaning every model between a pair's weak and strong model.
pub const EVERY_INTERMEDIATE: &str = "*";

fn default_true() -> bool {
    true
}
fn default_scenarios() -> Vec<Scenario> {
    vec![Scenario::Rm]
}
fn default_objectives() -> Vec<Objective> {
    vec![Objective::None, Objective::Explicit, Objective::Implicit]
}
fn default_alphas() -> Vec<f64> {
    vec![ALPHA]
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// `[analysis]`: the closing `w2s report`'s [`AnalyzeOpts`], and where to copy the report.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub opts: AnalyzeOpts,
    /// Also copy the report into this local folder.
    pub out: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalysisOwn {
    out: Option<String>,
}

impl<'de> Deserialize<'de> for Analysis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (own, opts): (AnalysisOwn, AnalyzeOpts) = two_part(d, &["out"])?;
        Ok(Analysis { opts, out: own.out })
    }
}

fn config(file: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{file}: {msg}"))
}

/// `over`'s keys on top of `base`'s.
fn merged(base: &toml::Table, over: &toml::Table) -> toml::Table {
    let mut t = base.clone();
    t.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
    t
}

/// A `[train]`-like table as [`TrainOpts`], errors naming `key`.
fn train_opts(key: &str, t: &toml::Table) -> std::result::Result<TrainOpts, String> {
    let opts: TrainOpts =
        serde_path_to_error::deserialize(toml::Value::Table(t.clone())).map_err(|e| {
            match e.path().to_string().as_str() {
                "." => format!("`{key}`: {}", e.inner()),
                p => format!("`{key}.{p}`: {}", e.inner()),
            }
        })?;
    opts.check().map_err(|m| format!("`{key}`: {m}"))?;
    Ok(opts)
}

impl Pipeline {
    /// Reads `path`, applies `overrides` (`KEY=VALUE`, dotted keys; `model.<id>.<field>`
    /// addresses a rung by id) and validates the result.
    pub fn load(path: &str, overrides: &[String]) -> Result<Pipeline> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.into(),
            source: e,
        })?;
        Self::parse(path, &text, overrides)
    }

    /// As [`Pipeline::load`], from text; `file` names it in errors.
    pub fn parse(file: &str, text: &str, overrides: &[String]) -> Result<Pipeline> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| config(file, e))?;
        for o in overrides {
            apply_override(&mut doc, o).map_err(|e| config(file, e))?;
        }
        let mut p: Pipeline =
            serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
                let after = if overrides.is_empty() {
                    ""
                } else {
                    " (after --set)"
                };
                config(file, format!("`{}`{after}: {}", e.path(), e.inner()))
            })?;
        // An empty location (`--set data.helpful=`) means "none".
        if let Some(d) = &mut p.data {
            for v in [
                &mut d.gt,
                &mut d.w2s,
                &mut d.test,
                &mut d.input,
                &mut d.opts.helpful,
            ] {
                if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    *v = None;
                }
            }
        }
        p.validate(file)?;
        Ok(p)
    }

    /// The artifact root (checked by [`Pipeline::validate`]).
    pub fn root(&self) -> &str {
        self.artifacts.as_deref().unwrap_or_default()
    }

    /// The grid (checked by [`Pipeline::validate`]).
    pub fn grid(&self) -> &Grid {
        self.grid.as_ref().expect("validated")
    }

    /// The dimension the grid trains and scores on.
    pub fn dimension(&self) -> crate::schema::Dimension {
        (self.grid().dimension)
            .or(self.data.as_ref().map(|d| d.opts.dimension))
            .unwrap_or_default()
    }

    /// Position of a model in the ladder.
    pub fn rank(&self, id: &str) -> Option<usize> {
        self.model.iter().position(|m| m.id == id)
    }

    /// The intermediates of pair (`weak`, `strong`): the listed ones, or with `"*"` every
    /// model between the two in the ladder (weakest first).
    pub fn intermediates(&self, weak: &str, strong: &str) -> Vec<String> {
        let g = self.grid();
        let mut out: Vec<String> = Vec::new();
        for m in &g.intermediates {
            if m == EVERY_INTERMEDIATE {
                let (lo, hi) = (self.rank(weak), self.rank(strong));
                out.extend(
                    (self.model.iter())
                        .filter(|x| lo < self.rank(&x.id) && self.rank(&x.id) < hi)
                        .map(|x| x.id.clone()),
                );
            } else {
                out.push(m.clone());
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|m| seen.insert(m.clone()));
        out
    }

    pub fn model(&self, id: &str) -> &Model {
        &self.model[self.rank(id).expect("validated")]
    }

    /// The training options of the runs that train model `id`: `[train]` with the model's
    /// own `train` table on top.
    pub fn train_for(&self, id: &str) -> TrainOpts {
        train_opts("train", &merged(&self.train, &self.model(id).train)).expect("validated")
    }

    /// The (weak, strong) pairs of the grid, in file order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let g = self.grid();
        if !g.pairs.is_empty() {
            return g
                .pairs
                .iter()
                .map(|[w, s]| (w.clone(), s.clone()))
                .collect();
        }
        let mut out = Vec::new();
        for w in &g.weak {
            for s in &g.strong {
                if self.rank(s) > self.rank(w) {
                    out.push((w.clone(), s.clone()));
                }
            }
        }
        out
    }

    fn validate(&self, file: &str) -> Result<()> {
        let err = |msg: String| Err(config(file, msg));
        match &self.artifacts {
            None => {
                return err(
                    "`artifacts` is missing (the artifact root: a folder or s3:// URL)".into(),
                )
            }
            Some(a) if a.trim().is_empty() => return err("`artifacts` is empty".into()),
            _ => {}
        }
        let Some(data) = &self.data else {
            return err("the data source is missing: add a [data] table with `source` = \"world\", \"sample\", \"files\" or \"random\"".into());
        };
        let Some(source) = data.source else {
            return err(
                "`data.source` is missing (\"world\", \"sample\", \"files\" or \"random\")".into(),
            );
        };
        let need = |key: &str, v: &Option<String>| -> Result<()> {
            if v.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(config(
                    file,
                    format!(
                        "`data.{key}` is missing (needed when data.source = \"{}\")",
                        source.name()
                    ),
                ));
            }
            Ok(())
        };
        match source {
            Source::Files => {
                need("gt", &data.gt)?;
                need("w2s", &data.w2s)?;
                need("test", &data.test)?;
            }
            Source::Random => need("input", &data.input)?,
            Source::World | Source::Sample => {}
        }
        if data.world.is_some() && source != Source::World {
            return err(format!(
                "`data.world` is set but data.source = \"{}\"",
                source.name()
            ));
        }

        train_opts("train", &self.train).map_err(|m| config(file, m))?;
        let mut ids = BTreeSet::new();
        for (i, m) in self.model.iter().enumerate() {
            let key = format!("model[{i}]");
            if m.id.trim().is_empty()
                || !m
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return err(format!(
                    "`{key}.id` = \"{}\": use letters, digits, '-', '_' or '.'",
                    m.id
                ));
            }
            if !ids.insert(m.id.clone()) {
                return err(format!("`{key}.id`: model `{}` is listed twice", m.id));
            }
            match (&m.path, &m.pretrain) {
                (Some(_), Some(_)) => {
                    return err(format!(
                        "`model.{}`: give `path` or `pretrain`, not both",
                        m.id
                    ))
                }
                (None, None) => {
                    return err(format!(
                        "`model.{}`: give `path` (a checkpoint) or a `pretrain` table",
                        m.id
                    ))
                }
                (None, Some(_)) if source != Source::World => {
                    return err(format!(
                        "`model.{}.pretrain`: pretraining needs the world's corpus (data.source = \"world\")",
                        m.id
                    ))
                }
                _ => {}
            }
            train_opts(&format!("model.{}.train", m.id), &m.train)
                .and_then(|_| train_opts("train", &merged(&self.train, &m.train)))
                .map_err(|msg| config(file, msg))?;
        }

        let Some(g) = &self.grid else {
            return err("the [grid] table is missing (weak, strong, objectives, ...)".into());
        };
        let known = |key: String, id: &str| -> Result<()> {
            if self.rank(id).is_none() {
                let list: Vec<&str> = self.model.iter().map(|m| m.id.as_str()).collect();
                return Err(config(
                    file,
                    format!(
                        "`{key}`: unknown model `{id}` (the [[model]] ladder has: {})",
                        if list.is_empty() {
                            "none".to_string()
                        } else {
                            list.join(", ")
                        }
                    ),
                ));
            }
            Ok(())
        };
        for (i, w) in g.weak.iter().enumerate() {
            known(format!("grid.weak[{i}]"), w)?;
        }
        for (i, s) in g.strong.iter().enumerate() {
            known(format!("grid.strong[{i}]"), s)?;
        }
        for (i, [w, s]) in g.pairs.iter().enumerate() {
            known(format!("grid.pairs[{i}][0]"), w)?;
            known(format!("grid.pairs[{i}][1]"), s)?;
        }
        for (i, m) in g.intermediates.iter().enumerate() {
            if m != EVERY_INTERMEDIATE {
                known(format!("grid.intermediates[{i}]"), m)?;
            }
        }
        if !g.pairs.is_empty() && (!g.weak.is_empty() || !g.strong.is_empty()) {
            return err("give `grid.pairs` or `grid.weak` + `grid.strong`, not both".into());
        }
        if g.check_stronger {
            for (i, [w, s]) in g.pairs.iter().enumerate() {
                if self.rank(s) <= self.rank(w) {
                    return err(format!(
                        "`grid.pairs[{i}]`: `{s}` is not stronger than `{w}` (check_stronger: a student must come later in the [[model]] ladder than its teacher)"
                    ));
                }
            }
            for (i, s) in g.strong.iter().enumerate() {
                for w in &g.weak {
                    if self.rank(s) <= self.rank(w) {
                        return err(format!(
                            "`grid.strong[{i}]`: `{s}` is not stronger than the weak model `{w}` (check_stronger: a student must come later in the [[model]] ladder than every teacher; list explicit `grid.pairs` for a triangular grid)"
                        ));
                    }
                }
            }
            for (i, m) in g.intermediates.iter().enumerate() {
                if m == EVERY_INTERMEDIATE {
                    continue;
                }
                for (w, s) in self.pairs() {
                    if !(self.rank(&w) < self.rank(m) && self.rank(m) < self.rank(&s)) {
                        return err(format!(
                            "`grid.intermediates[{i}]`: `{m}` is not between `{w}` and `{s}` in the ladder"
                        ));
                    }
                }
            }
        }
        if self.pairs().is_empty() {
            return err("the grid has no (weak, strong) pair: list `grid.weak` and `grid.strong` with students later in the ladder, or `grid.pairs`".into());
        }
        if g.seeds.is_empty() {
            return err("`grid.seeds` is empty".into());
        }
        if g.objectives.contains(&Objective::Explicit) && g.alphas.is_empty() {
            return err("`grid.alphas` is empty but the explicit objective needs one".into());
        }
        for (i, a) in g.alphas.iter().enumerate() {
            if !a.is_finite() || *a < 0.0 {
                return err(format!(
                    "`grid.alphas[{i}]` = {a}: give a finite weight >= 0"
                ));
            }
        }
        if let Some(t) = g.high_confidence {
            crate::stages::training::check_high_confidence(t)
                .map_err(|m| config(file, format!("`grid.high_confidence`: {m}")))?;
        }
        if let (Some(d), Some(data)) = (g.dimension, &self.data) {
            let files = data.source.is_some_and(|s| s != Source::World);
            if files && d != data.opts.dimension {
                return err(format!(
                    "`grid.dimension = \"{}\"` but the data's pairs judge `{}`: set `data.dimension` (the split names the files' pairs by it)",
                    d.name(),
                    data.opts.dimension.name()
                ));
            }
        }
        if let Some(data) = &self.data {
            if data.source == Some(Source::World) {
                if !data.opts.dimension.is_harmless() {
                    return err("`data.dimension`: the world names its own splits; choose the grid's with `grid.dimension` (and `data.world.honesty = true`)".into());
                }
                let honesty = data.world.as_ref().is_some_and(|w| w.honesty);
                if g.dimension == Some(crate::schema::Dimension::Honesty) && !honesty {
                    return err("`grid.dimension = \"honesty\"` needs the world's honesty set: set `data.world.honesty = true`".into());
                }
            }
        }
        if !g.all_data && g.high_confidence.is_none() {
            return err(
                "`grid.all_data = false` leaves no students without `grid.high_confidence`".into(),
            );
        }
        if let Err(e) = self.analysis.opts.settings() {
            return err(format!("`analysis.sweep`: {e}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
artifacts = "artifacts/t"
[data]
source = "world"
[[model]]
id = "a"
pretrain = { layers = 1 }
[[model]]
id = "b"
path = "/models/b"
[[model]]
id = "c"
path = "/models/c"
[grid]
weak = ["a", "b"]
strong = ["b", "c"]
"#;

    fn parse(text: &str, sets: &[&str]) -> Result<Pipeline> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Pipeline::parse("p.toml", text, &sets)
    }

    fn message(r: Result<Pipeline>) -> String {
        r.expect_err("should fail").to_string()
    }

    #[test]
    fn stronger_combinations_only() {
        let p = parse(BASE, &[]).unwrap();
        let pairs = p.pairs();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "b".into()),
                ("a".into(), "c".into()),
                ("b".into(), "c".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let m = message(parse(&BASE.replace("[grid]", "[grid]\nlrr = 1"), &[]));
        assert!(m.contains("p.toml") && m.contains("lrr"), "{m}");
        let m = message(parse(
            &BASE.replace("strong = [\"b\", \"c\"]", "strong = [\"b\", \"x\"]"),
            &[],
        ));
        assert!(
            m.contains("grid.strong[1]") && m.contains("unknown model `x`"),
            "{m}"
        );
        let m = message(parse(
            &BASE.replace("[grid]", "[grid]\ncheck_stronger = true"),
            &[],
        ));
        assert!(
            m.contains("grid.strong[0]") && m.contains("not stronger"),
            "{m}"
        );
        let m = message(parse(
            &BASE.replace("source = \"world\"", "source = \"files\""),
            &[],
        ));
        assert!(m.contains("data.gt"), "{m}");
        let no_data = BASE.replace("[data]\nsource = \"world\"\n", "");
        let m = message(parse(&no_data, &[]));
        assert!(m.contains("data source is missing"), "{m}");
        let m = message(parse(&BASE.replace("artifacts = \"artifacts/t\"", ""), &[]));
        assert!(m.contains("`artifacts` is missing"), "{m}");
        let m = message(parse(BASE, &["train.schedule=linear"]));
        assert!(m.contains("train.schedule"), "{m}");
    }

    #[test]
    fn overrides_reach_rungs_by_id() {
        let p = parse(
            BASE,
            &[
                "model.c.path=/tmp/fixture",
                "train.lr=1e-3",
                "artifacts=/tmp/x",
                "grid.seeds=[0, 1]",
            ],
        )
        .unwrap();
        assert_eq!(p.model("c").path.as_deref(), Some("/tmp/fixture"));
        assert_eq!(p.train_for("a").lr, Some(1e-3));
        assert_eq!(p.root(), "/tmp/x");
        assert_eq!(p.grid().seeds, vec![0, 1]);
        let all = parse(BASE, &["model.*.path=/fixture", "model.a.pretrain={}"]);
        let m = message(all);
        assert!(m.contains("model.a") && m.contains("not both"), "{m}");
        let dotted = BASE
            .replace("id = \"c\"", "id = \"c.7b\"")
            .replace("\"c\"]", "\"c.7b\"]");
        let p = parse(&dotted, &["model.c.7b.path=/tmp/c"]).unwrap();
        assert_eq!(p.model("c.7b").path.as_deref(), Some("/tmp/c"));
        let m = message(parse(BASE, &["model.zz.path=/x"]));
        assert!(m.contains("no `model` with id `zz`"), "{m}");
        let m = message(parse(BASE, &["model.c.paht=/x"]));
        assert!(m.contains("paht"), "{m}");
    }
}
