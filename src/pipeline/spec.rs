//! Pipeline files: what a grid is, as written in `pipelines/*.toml`.
//!
//! The file is parsed strictly (an unknown key is an error that names it), `--set KEY=VALUE`
//! overrides are applied to the parsed document before it is read, and [`Pipeline::validate`]
//! checks what the types cannot: that every model a grid names exists, that students are
//! stronger than their teachers when the file asks for that check, that the data source has
//! the keys it needs. Every error names the key at fault. See docs/pipelines.md.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed, validated pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Training settings of every gt-train and w2s-train step (a model's own `train` table
    /// overrides them for the runs that train that model).
    #[serde(default)]
    pub train: Train,
    /// Settings of the scoring steps.
    #[serde(default)]
    pub score: Score,
    pub grid: Option<Grid>,
    #[serde(default)]
    pub analysis: Analysis,
}

/// Where the pairs come from (`w2s split`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// `world` (the embedded synthetic world), `sample` (the built-in sample), `files`
    /// (pre-split gt / w2s / test files) or `random` (one file split at random).
    pub source: Option<String>,
    pub gt: Option<String>,
    pub w2s: Option<String>,
    pub test: Option<String>,
    pub input: Option<String>,
    pub helpful: Option<String>,
    pub n_gt: Option<usize>,
    pub n_w2s: Option<usize>,
    pub n_test: Option<usize>,
    pub n_helpful: Option<usize>,
    /// Seed of the random split.
    pub seed: Option<u64>,
    /// `auto`, `hh` or `explicit`.
    pub shape: Option<String>,
    /// `keep`, `drop` or `error`.
    pub prompt_mismatch: Option<String>,
    /// `verbatim` or `hh`.
    pub template: Option<String>,
    /// The synthetic world (source = "world").
    pub world: Option<World>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    pub seed: Option<u64>,
    pub entities: Option<usize>,
    pub zipf: Option<f64>,
    pub statements: Option<usize>,
}

/// One rung of the ladder: a checkpoint (`path`) or a tiny GPT-2 pretrained here (`pretrain`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    /// A local folder, s3:// or http(s):// prefix, or hf://owner/name[@revision].
    pub path: Option<String>,
    pub pretrain: Option<Pretrain>,
    /// Overrides of the pipeline's `[train]` for runs that train this model.
    #[serde(default)]
    pub train: Train,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pretrain {
    pub layers: Option<usize>,
    pub embd: Option<usize>,
    pub heads: Option<usize>,
    pub ctx: Option<usize>,
    pub batch: Option<usize>,
    pub micro_batch: Option<usize>,
    pub lr: Option<f64>,
    pub schedule: Option<String>,
    pub epochs: Option<usize>,
    pub seed: Option<u64>,
    pub init_seed: Option<u64>,
}

/// Training settings; every field is optional and falls back to the stage's own default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub batch: Option<usize>,
    pub micro_batch: Option<usize>,
    pub lr: Option<f64>,
    pub schedule: Option<String>,
    pub epochs: Option<usize>,
    /// Passes of the SFT phase (preference scenarios).
    pub sft_epochs: Option<usize>,
    pub max_ctx: Option<usize>,
    pub readout: Option<String>,
    /// Preference scenarios: `joint` (default) or `reference` (reference-spec §1.7).
    pub tokenization: Option<String>,
    pub slot_seed: Option<u64>,
    pub head_seed: Option<u64>,
    pub save_every: Option<usize>,
    pub device: Option<String>,
    /// LoRA adapters instead of full fine-tuning (paper App. H).
    pub lora: Option<Lora>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
}

impl Train {
    /// `self` with the fields `over` sets replaced.
    pub fn merged(&self, over: &Train) -> Train {
        Train {
            batch: over.batch.or(self.batch),
            micro_batch: over.micro_batch.or(self.micro_batch),
            lr: over.lr.or(self.lr),
            schedule: over.schedule.clone().or_else(|| self.schedule.clone()),
            epochs: over.epochs.or(self.epochs),
            sft_epochs: over.sft_epochs.or(self.sft_epochs),
            max_ctx: over.max_ctx.or(self.max_ctx),
            readout: over.readout.clone().or_else(|| self.readout.clone()),
            tokenization: over
                .tokenization
                .clone()
                .or_else(|| self.tokenization.clone()),
            slot_seed: over.slot_seed.or(self.slot_seed),
            head_seed: over.head_seed.or(self.head_seed),
            save_every: over.save_every.or(self.save_every),
            device: over.device.clone().or_else(|| self.device.clone()),
            lora: over.lora.clone().or_else(|| self.lora.clone()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    pub batch_pairs: Option<usize>,
    pub device: Option<String>,
}

/// The experiment grid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// `rm`, `simpo`, `dpo`.
    #[serde(default = "default_scenarios")]
    pub scenarios: Vec<String>,
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
    /// `none`, `explicit`, `implicit`, `adaptive`.
    #[serde(default = "default_objectives")]
    pub objectives: Vec<String>,
    /// Weights of the explicit objective.
    #[serde(default = "default_alphas")]
    pub alphas: Vec<f64>,
    /// Seeds of the students' training order.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Keep only the teacher's labels at least this confident (paper §6.1; preference
    /// scenarios).
    pub high_confidence: Option<f64>,
    /// Bootstrapping (paper §6.2): weak -> each of these -> strong, the conflict only in the
    /// last stage.
    #[serde(default)]
    pub intermediates: Vec<String>,
}

fn default_scenarios() -> Vec<String> {
    vec!["rm".into()]
}
fn default_objectives() -> Vec<String> {
    vec!["none".into(), "explicit".into(), "implicit".into()]
}
fn default_alphas() -> Vec<f64> {
    vec![0.5]
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Settings of the closing `w2s report` (which runs `w2s analyze`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    pub threshold: Option<f64>,
    pub sweep: Option<Vec<f64>>,
    pub bootstrap: Option<usize>,
    pub bootstrap_seed: Option<u64>,
    /// Also copy the report into this local folder.
    pub out: Option<String>,
}

pub const SCENARIOS: &[&str] = &["rm", "simpo", "dpo"];
pub const OBJECTIVES: &[&str] = &["none", "explicit", "implicit", "adaptive"];
const SOURCES: &[&str] = &["world", "sample", "files", "random"];

fn config(file: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{file}: {msg}"))
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
        let p: Pipeline = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| config(file, e))?
        } else {
            let mut doc: toml::Table = toml::from_str(text).map_err(|e| config(file, e))?;
            for o in overrides {
                apply_override(&mut doc, o).map_err(|e| config(file, e))?;
            }
            // Re-read from text so that errors keep toml's key context.
            let text = toml::to_string(&doc).map_err(|e| config(file, e))?;
            toml::from_str(&text).map_err(|e| config(file, format!("after --set: {e}")))?
        };
        let mut p = p;
        // An empty location (`--set data.helpful=`) means "none".
        if let Some(d) = &mut p.data {
            for v in [
                &mut d.gt,
                &mut d.w2s,
                &mut d.test,
                &mut d.input,
                &mut d.helpful,
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

    /// Position of a model in the ladder.
    pub fn rank(&self, id: &str) -> Option<usize> {
        self.model.iter().position(|m| m.id == id)
    }

    pub fn model(&self, id: &str) -> &Model {
        &self.model[self.rank(id).expect("validated")]
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
        let Some(source) = &data.source else {
            return err(
                "`data.source` is missing (\"world\", \"sample\", \"files\" or \"random\")".into(),
            );
        };
        if !SOURCES.contains(&source.as_str()) {
            return err(format!(
                "`data.source` = \"{source}\" is not one of {}",
                SOURCES.join(", ")
            ));
        }
        let need = |key: &str, v: &Option<String>| -> Result<()> {
            if v.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(config(
                    file,
                    format!("`data.{key}` is missing (needed when data.source = \"{source}\")"),
                ));
            }
            Ok(())
        };
        match source.as_str() {
            "files" => {
                need("gt", &data.gt)?;
                need("w2s", &data.w2s)?;
                need("test", &data.test)?;
            }
            "random" => need("input", &data.input)?,
            _ => {}
        }
        if data.world.is_some() && source != "world" {
            return err(format!(
                "`data.world` is set but data.source = \"{source}\""
            ));
        }

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
                (None, Some(_)) if source != "world" => {
                    return err(format!(
                        "`model.{}.pretrain`: pretraining needs the world's corpus (data.source = \"world\")",
                        m.id
                    ))
                }
                _ => {}
            }
            check_train(file, &format!("model.{}.train", m.id), &m.train)?;
        }
        check_train(file, "train", &self.train)?;

        let Some(g) = &self.grid else {
            return err("the [grid] table is missing (weak, strong, objectives, ...)".into());
        };
        for (i, s) in g.scenarios.iter().enumerate() {
            if !SCENARIOS.contains(&s.as_str()) {
                return err(format!(
                    "`grid.scenarios[{i}]` = \"{s}\" is not one of {}",
                    SCENARIOS.join(", ")
                ));
            }
        }
        for (i, o) in g.objectives.iter().enumerate() {
            if !OBJECTIVES.contains(&o.as_str()) {
                return err(format!(
                    "`grid.objectives[{i}]` = \"{o}\" is not one of {}",
                    OBJECTIVES.join(", ")
                ));
            }
        }
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
            known(format!("grid.intermediates[{i}]"), m)?;
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
        if g.objectives.iter().any(|o| o == "explicit") && g.alphas.is_empty() {
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
            if !(0.5..1.0).contains(&t) {
                return err(format!(
                    "`grid.high_confidence` = {t}: give a threshold in [0.5, 1)"
                ));
            }
        }
        if let Some(sweep) = &self.analysis.sweep {
            if sweep.len() != 4 {
                return err(format!(
                    "`analysis.sweep` has {} thresholds; give 4",
                    sweep.len()
                ));
            }
        }
        Ok(())
    }
}

fn check_train(file: &str, key: &str, t: &Train) -> Result<()> {
    let bad = |field: &str, msg: String| Err(config(file, format!("`{key}.{field}`{msg}")));
    if let Some(s) = &t.schedule {
        if !["cosine", "warmup-constant", "constant"].contains(&s.as_str()) {
            return bad(
                "schedule",
                format!(" = \"{s}\" is not one of cosine, warmup-constant, constant"),
            );
        }
    }
    if let Some(r) = &t.readout {
        if !["last-token", "reference"].contains(&r.as_str()) {
            return bad(
                "readout",
                format!(" = \"{r}\" is not one of last-token, reference"),
            );
        }
    }
    if let Some(r) = &t.tokenization {
        if !["joint", "reference"].contains(&r.as_str()) {
            return bad(
                "tokenization",
                format!(" = \"{r}\" is not one of joint, reference"),
            );
        }
    }
    for (field, v) in [
        ("batch", t.batch),
        ("micro_batch", t.micro_batch),
        ("epochs", t.epochs),
        ("sft_epochs", t.sft_epochs),
        ("max_ctx", t.max_ctx),
    ] {
        if v == Some(0) {
            return bad(field, " must be at least 1".into());
        }
    }
    if let Some(lr) = t.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return bad("lr", format!(" = {lr}: give a positive learning rate"));
        }
    }
    Ok(())
}

/// Applies one `KEY=VALUE` override. The value is read as a TOML value when it parses as one
/// (numbers, booleans, arrays, quoted strings), else as a bare string.
fn apply_override(doc: &mut toml::Table, spec: &str) -> std::result::Result<(), String> {
    let Some((key, raw)) = spec.split_once('=') else {
        return Err(format!("--set `{spec}`: write KEY=VALUE"));
    };
    let key = key.trim();
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("--set `{spec}`: `{key}` is not a dotted key"));
    }
    let mut table = doc;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        // `model.<id>`: the rung of the ladder with that id.
        if let Some(toml::Value::Array(items)) = table.get_mut(*part) {
            if i + 2 >= parts.len() {
                return Err(format!(
                    "--set `{spec}`: `{part}` is a list: write `{part}.<id>.<field>`"
                ));
            }
            // The id may itself contain dots (`model.opt-2.7b.path`): the longest run of
            // segments that names an entry, leaving at least one for the field.
            let ids: Vec<String> = items
                .iter()
                .filter_map(|v| v.get("id").and_then(|x| x.as_str()).map(str::to_string))
                .collect();
            let (id, used) = (1..parts.len() - i - 1)
                .rev()
                .map(|k| (parts[i + 1..i + 1 + k].join("."), k))
                .find(|(cand, _)| cand == "*" || ids.contains(cand))
                .unwrap_or_else(|| (parts[i + 1].to_string(), 1));
            // `*` sets the field on every entry (e.g. one fixture checkpoint for the ladder).
            let mut found = 0;
            for v in items.iter_mut() {
                if let toml::Value::Table(t) = v {
                    if id == "*" || t.get("id").and_then(|x| x.as_str()) == Some(id.as_str()) {
                        // Continue below the matched entry, skipping the id segments.
                        set_path(t, &parts[i + 1 + used..], value.clone(), spec)?;
                        found += 1;
                    }
                }
            }
            if found == 0 {
                return Err(format!("--set `{spec}`: no `{part}` with id `{id}`"));
            }
            return Ok(());
        }
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => table = t,
            _ => return Err(format!("--set `{spec}`: `{part}` is not a table")),
        }
    }
    Ok(())
}

fn set_path(
    table: &mut toml::Table,
    parts: &[&str],
    value: toml::Value,
    spec: &str,
) -> std::result::Result<(), String> {
    let mut table = table;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => table = t,
            _ => return Err(format!("--set `{spec}`: `{part}` is not a table")),
        }
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
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
        assert_eq!(p.train.lr, Some(1e-3));
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
