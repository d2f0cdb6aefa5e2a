//! `w2s split`: preference data in, the `pairs` table out.
//!
//! Three ways to fill the gt / w2s / test splits:
//! * pre-split files, taking the first N rows of each, as the reference does (spec §1.3);
//! * one file split at random: `numpy.random.default_rng(seed).permutation(rows)`, the first
//!   n_gt indices go to gt, the next n_w2s to w2s, the next n_test to test, and each split keeps
//!   file order (so `np.random.default_rng(seed).permutation(n)` reproduces it in Python);
//! * the built-in sample, split at random the same way.
//!
//! The helpful split always comes from its own source, first N rows.
//! All input is read and validated before anything is written, so bad input leaves nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Builder, StringBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::data::world::{World, WorldSettings};
use crate::data::{self, pair_id, Pair, PairRules, PromptMismatch, Record, Shape};
use crate::error::{At, Error, Result};
use crate::rng::numpy_permutation;
use crate::schema::{self, Dimension};
use crate::store::{fingerprint, keys, ArtifactStore, InputFile};

/// Where the gt / w2s / test rows come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    Presplit {
        gt: String,
        w2s: String,
        test: String,
    },
    Random {
        input: String,
        seed: u64,
    },
    Sample {
        seed: u64,
    },
    /// The embedded default's synthetic world (`data::world`): its harmless pairs split at
    /// random with `seed`, its helpful pairs, and its corpus and entities as tables.
    World {
        seed: u64,
        world: WorldSettings,
        /// Also the world's honesty set, as the `honesty-*` splits (paper App. O; left out of
        /// the fingerprint when off).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        honesty: bool,
    },
}

/// Everything that determines the `pairs` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSettings {
    pub mode: Mode,
    pub helpful: Option<String>,
    pub n_gt: Option<usize>,
    pub n_w2s: Option<usize>,
    pub n_test: Option<usize>,
    pub n_helpful: Option<usize>,
    /// Only single-turn helpful dialogues (left out of the fingerprint when off, so roots
    /// split before the option existed stay current).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub helpful_single_turn: bool,
    pub shape: Shape,
    pub rules: PairRules,
    /// The dimension the files' pairs judge, which names their splits (left out of the
    /// fingerprint when harmless; the world writes every dimension's splits).
    #[serde(skip_serializing_if = "Dimension::is_harmless")]
    pub dimension: Dimension,
}

/// Where the pairs come from, as the `w2s split` flags say it: exactly one of pre-split
/// files, one file split at random, the built-in sample or the synthetic world.
#[derive(clap::Args, Debug, Clone, PartialEq, Default, Serialize)]
pub struct Source {
    /// Pre-split mode: ground-truth training file (first --n-gt rows are used).
    #[arg(long)]
    pub gt: Option<String>,
    /// Pre-split mode: weak-to-strong file (first --n-w2s rows).
    #[arg(long)]
    pub w2s: Option<String>,
    /// Pre-split mode: test file (first --n-test rows).
    #[arg(long)]
    pub test: Option<String>,
    /// Random mode: one file split at random into --n-gt / --n-w2s / --n-test rows.
    #[arg(long)]
    pub input: Option<String>,
    /// Use the small built-in sample (no files, no network).
    #[arg(long)]
    pub sample: bool,
    /// Use the embedded default's synthetic world (no files, no network): its harmless pairs
    /// split at random, its helpful pairs, and its `corpus` and `entities` tables.
    #[arg(long)]
    pub world: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub world_opts: WorldOpts,
}

/// The synthetic world's generator: `--world-*` flags, `[data.world]` of a pipeline file.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldOpts {
    /// World: seed of the generator.
    #[arg(id = "world_seed", long = "world-seed", default_value_t = WorldSettings::default().seed)]
    #[serde(rename(serialize = "world_seed"))]
    pub seed: u64,
    /// World: number of entities (half harmful).
    #[arg(id = "world_entities", long = "world-entities", default_value_t = WorldSettings::default().entities)]
    #[serde(rename(serialize = "world_entities"))]
    pub entities: usize,
    /// World: Zipf exponent of how often entities are mentioned, by rank.
    #[arg(id = "world_zipf", long = "world-zipf", default_value_t = WorldSettings::default().zipf)]
    #[serde(rename(serialize = "world_zipf"))]
    pub zipf: f64,
    /// World: statements in the pretraining corpus.
    #[arg(id = "world_statements", long = "world-statements", default_value_t = WorldSettings::default().statements)]
    #[serde(rename(serialize = "world_statements"))]
    pub statements: usize,
    /// World: also its honesty set (paper App. O), as the `honesty-gt`, `honesty-w2s`,
    /// `honesty-test` and `honesty-helpful` splits.
    #[arg(id = "world_honesty", long = "world-honesty")]
    #[serde(rename(serialize = "world_honesty"))]
    pub honesty: bool,
}

impl Default for WorldOpts {
    fn default() -> Self {
        crate::cli::argv::defaults()
    }
}

/// How the pairs are selected and read: the `w2s split` flags besides the source, and the
/// same keys of a pipeline file's `[data]`.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitOpts {
    /// Seed of the random split (numpy default_rng(seed).permutation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// File of helpful pairs (the conflicting objective), first --n-helpful rows.
    #[arg(long)]
    pub helpful: Option<String>,
    /// Rows of the gt split.
    #[arg(long)]
    pub n_gt: Option<usize>,
    /// Rows of the w2s split.
    #[arg(long)]
    pub n_w2s: Option<usize>,
    /// Rows of the test split.
    #[arg(long)]
    pub n_test: Option<usize>,
    /// Rows of the helpful set.
    #[arg(long)]
    pub n_helpful: Option<usize>,
    /// Keep only helpful pairs whose dialogue has one Human turn (a stand-in for the
    /// reference's single-turn helpful pairs, which are not published); --n-helpful then
    /// counts the pairs kept.
    #[arg(long)]
    pub helpful_single_turn: bool,
    /// Record shape: HH transcripts, or explicit prompt/chosen/rejected columns.
    #[arg(long, value_enum, default_value_t = Shape::Auto)]
    pub shape: Shape,
    /// HH rows whose two transcripts give different prompts: keep (as the reference), drop, error.
    #[arg(long, value_enum, default_value_t = PromptMismatch::Keep)]
    pub prompt_mismatch: PromptMismatch,
    /// Explicit-shape rows: use prompt + response verbatim, or wrap them as one HH turn.
    #[arg(long, value_enum, default_value_t = data::Template::Verbatim)]
    pub template: data::Template,
    /// The alignment dimension the pairs judge: their splits are `gt`, `w2s`, `test`, `helpful`
    /// for harmlessness and `honesty-gt` ... for honesty (paper App. O). The world writes
    /// both dimensions' splits whatever this says.
    #[arg(long, value_enum, default_value_t = Dimension::Harmless)]
    pub dimension: Dimension,
}

impl Default for SplitOpts {
    fn default() -> Self {
        crate::cli::argv::defaults()
    }
}

impl SplitSettings {
    /// The settings of a split from its source and options; the source must name exactly one
    /// way to get the pairs.
    pub fn new(src: &Source, o: &SplitOpts) -> Result<SplitSettings> {
        let presplit = [&src.gt, &src.w2s, &src.test];
        let n_presplit = presplit.iter().filter(|x| x.is_some()).count();
        let modes = usize::from(n_presplit > 0)
            + usize::from(src.input.is_some())
            + usize::from(src.sample)
            + usize::from(src.world);
        if modes != 1 {
            return Err(Error::Config(
                "give exactly one data source: --gt/--w2s/--test (pre-split files), --input (random split), --sample or --world".into(),
            ));
        }
        let mode = if n_presplit > 0 {
            match (&src.gt, &src.w2s, &src.test) {
                (Some(gt), Some(w2s), Some(test)) => Mode::Presplit {
                    gt: gt.clone(),
                    w2s: w2s.clone(),
                    test: test.clone(),
                },
                _ => {
                    return Err(Error::Config(
                        "pre-split mode needs all of --gt, --w2s and --test".into(),
                    ))
                }
            }
        } else if let Some(input) = &src.input {
            Mode::Random {
                input: input.clone(),
                seed: o.seed,
            }
        } else if src.world {
            if !o.dimension.is_harmless() {
                return Err(Error::Config(format!(
                    "--world names its own splits (and writes honesty-* with --world-honesty): drop --dimension {}",
                    o.dimension.name()
                )));
            }
            let w = &src.world_opts;
            Mode::World {
                seed: o.seed,
                world: WorldSettings {
                    seed: w.seed,
                    entities: w.entities,
                    zipf: w.zipf,
                    statements: w.statements,
                },
                honesty: w.honesty,
            }
        } else {
            Mode::Sample { seed: o.seed }
        };
        Ok(SplitSettings {
            mode,
            helpful: o.helpful.clone(),
            n_gt: o.n_gt,
            n_w2s: o.n_w2s,
            n_test: o.n_test,
            n_helpful: o.n_helpful,
            helpful_single_turn: o.helpful_single_turn,
            shape: o.shape,
            rules: PairRules {
                prompt_mismatch: o.prompt_mismatch,
                template: o.template,
            },
            dimension: o.dimension,
        })
    }
}

/// What a split run did.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitReport {
    pub counts: BTreeMap<String, usize>,
    pub up_to_date: bool,
    pub fingerprint: String,
    /// Rows kept whose two transcripts gave different prompts.
    pub prompt_mismatches: usize,
    /// Rows left out by `--prompt-mismatch drop`.
    pub dropped: usize,
    /// Pairs whose content repeats an earlier pair (they get distinct ids).
    pub repeats: usize,
}

/// A selected pair with its provenance.
struct Row {
    split: &'static str,
    source: String,
    source_row: u64,
    pair: Pair,
}

/// Validated pairs of one source, with provenance.
struct Loaded {
    input: InputFile,
    pairs: Vec<(u64, Pair)>,
    dropped: usize,
}

async fn load_pairs(
    location: &str,
    shape: Shape,
    rules: PairRules,
    limit: Option<usize>,
) -> Result<Loaded> {
    // With `drop`, dropped rows are replaced by later ones, so the whole file is needed.
    let read_limit = match rules.prompt_mismatch {
        PromptMismatch::Drop => None,
        _ => limit,
    };
    let src = data::load(location, shape, read_limit).await?;
    let (pairs, dropped) = validate(location, &src.records, src.shape, rules, limit)?;
    Ok(Loaded {
        input: src.input,
        pairs,
        dropped,
    })
}

type Validated = (Vec<(u64, Pair)>, usize);

fn validate(
    file: &str,
    records: &[Record],
    shape: Shape,
    rules: PairRules,
    limit: Option<usize>,
) -> Result<Validated> {
    let mut pairs = Vec::new();
    let mut dropped = 0;
    for r in records {
        if limit.is_some_and(|n| pairs.len() >= n) {
            break;
        }
        match Pair::from_record(file, r, shape, rules)? {
            Some(p) => pairs.push((r.row, p)),
            None => dropped += 1,
        }
    }
    Ok((pairs, dropped))
}

fn need(file: &str, have: usize, want: Option<usize>, flag: &str) -> Result<()> {
    match want {
        // An empty split is never what was meant (an empty or all-dropped file).
        None if have == 0 => Err(Error::data(At::file(file), "has no usable rows")),
        Some(n) if have < n => Err(Error::data(
            At::file(file),
            format!("has {have} usable rows, fewer than the {n} that {flag} asks for"),
        )),
        _ => Ok(()),
    }
}

fn take_first(
    rows: &mut Vec<Row>,
    split: &'static str,
    source: &str,
    pairs: Vec<(u64, Pair)>,
    n: Option<usize>,
) {
    let n = n.unwrap_or(pairs.len());
    rows.extend(pairs.into_iter().take(n).map(|(source_row, pair)| Row {
        split,
        source: source.to_string(),
        source_row,
        pair,
    }));
}

/// Splits `pairs` at random into gt / w2s / test, each in file order.
fn random_split(
    rows: &mut Vec<Row>,
    source: &str,
    pairs: Vec<(u64, Pair)>,
    seed: u64,
    counts: [usize; 3],
    dim: Dimension,
) -> Result<()> {
    let total: usize = counts.iter().sum();
    if total > pairs.len() {
        return Err(Error::data(
            At::file(source),
            format!(
                "has {} usable rows, fewer than --n-gt + --n-w2s + --n-test = {total}",
                pairs.len()
            ),
        ));
    }
    let perm = numpy_permutation(seed, pairs.len());
    let mut slots: Vec<Option<(u64, Pair)>> = pairs.into_iter().map(Some).collect();
    let mut start = 0;
    for (split, n) in dim.splits().into_iter().zip(counts) {
        let mut idx: Vec<usize> = perm[start..start + n].to_vec();
        idx.sort_unstable();
        for i in idx {
            let (source_row, pair) = slots[i].take().expect("permutation indices are distinct");
            rows.push(Row {
                split,
                source: source.to_string(),
                source_row,
                pair,
            });
        }
        start += n;
    }
    Ok(())
}

fn counts_for_random(s: &SplitSettings, default: usize) -> Result<[usize; 3]> {
    let get = |v: Option<usize>, flag: &str| {
        v.or((default > 0).then_some(default)).ok_or_else(|| {
            Error::Config(format!(
                "a random split needs {flag} (and --n-gt, --n-w2s, --n-test)"
            ))
        })
    };
    Ok([
        get(s.n_gt, "--n-gt")?,
        get(s.n_w2s, "--n-w2s")?,
        get(s.n_test, "--n-test")?,
    ])
}

/// Runs the split stage against `store`. Skips the work if the committed output was made from
/// the same settings and input bytes, unless `force`.
pub async fn run(store: &ArtifactStore, s: &SplitSettings, force: bool) -> Result<SplitReport> {
    let mut rows = Vec::new();
    let mut inputs = Vec::new();
    let mut dropped = 0;
    let mut world = None;
    match &s.mode {
        Mode::Presplit { gt, w2s, test } => {
            let names = s.dimension.splits();
            for (split, loc, n, flag) in [
                (names[0], gt, s.n_gt, "--n-gt"),
                (names[1], w2s, s.n_w2s, "--n-w2s"),
                (names[2], test, s.n_test, "--n-test"),
            ] {
                let l = load_pairs(loc, s.shape, s.rules, n).await?;
                need(loc, l.pairs.len(), n, flag)?;
                dropped += l.dropped;
                inputs.push(l.input);
                take_first(&mut rows, split, loc, l.pairs, n);
            }
        }
        Mode::Random { input, seed } => {
            let counts = counts_for_random(s, 0)?;
            let l = load_pairs(input, s.shape, s.rules, None).await?;
            dropped += l.dropped;
            inputs.push(l.input);
            random_split(&mut rows, input, l.pairs, *seed, counts, s.dimension)?;
        }
        Mode::Sample { seed } => {
            let source = "builtin:sample/harmless";
            let recs = data::sample::harmless();
            let (pairs, d) = validate(source, &recs, Shape::Hh, s.rules, None)?;
            dropped += d;
            let counts = counts_for_random(s, pairs.len() / 3)?;
            random_split(&mut rows, source, pairs, *seed, counts, s.dimension)?;
        }
        Mode::World {
            seed,
            world: ws,
            honesty,
        } => {
            let w = World::generate(ws)?;
            let source = "builtin:world/harmless";
            let recs: Vec<Record> = w.harmless_pairs().into_iter().map(|(_, r)| r).collect();
            let (pairs, d) = validate(source, &recs, Shape::Hh, s.rules, None)?;
            dropped += d;
            let counts = counts_for_random(s, pairs.len() / 3)?;
            random_split(&mut rows, source, pairs, *seed, counts, Dimension::Harmless)?;
            // The honesty set (paper App. O), split at random into thirds with the same seed,
            // and its helpful pairs.
            if *honesty {
                let source = "builtin:world/honesty";
                let recs: Vec<Record> = w.honesty_pairs().into_iter().map(|p| p.record).collect();
                let (pairs, d) = validate(source, &recs, Shape::Hh, s.rules, None)?;
                dropped += d;
                let third = pairs.len() / 3;
                random_split(
                    &mut rows,
                    source,
                    pairs,
                    *seed,
                    [third; 3],
                    Dimension::Honesty,
                )?;
                let source = "builtin:world/honesty-helpful";
                let (pairs, d) =
                    validate(source, &w.honesty_helpful_pairs(), Shape::Hh, s.rules, None)?;
                dropped += d;
                take_first(&mut rows, schema::HONESTY_SPLITS[3], source, pairs, None);
            }
            world = Some(w);
        }
    }
    match (&s.helpful, &s.mode) {
        (Some(loc), _) => {
            // The filter drops rows, so it needs the whole file before taking the first n.
            let limit = if s.helpful_single_turn {
                None
            } else {
                s.n_helpful
            };
            let mut l = load_pairs(loc, s.shape, s.rules, limit).await?;
            if s.helpful_single_turn {
                let before = l.pairs.len();
                l.pairs
                    .retain(|(_, p)| data::hh::human_turns(&p.prompt) == 1);
                tracing::info!(
                    "{loc}: {} of {before} helpful pairs are single-turn",
                    l.pairs.len()
                );
            }
            let flag = if s.helpful_single_turn {
                "--n-helpful (single-turn pairs)"
            } else {
                "--n-helpful"
            };
            need(loc, l.pairs.len(), s.n_helpful, flag)?;
            dropped += l.dropped;
            inputs.push(l.input);
            take_first(
                &mut rows,
                s.dimension.splits()[3],
                loc,
                l.pairs,
                s.n_helpful,
            );
        }
        (None, Mode::Sample { .. }) => {
            let source = "builtin:sample/helpful";
            let (pairs, d) = validate(source, &data::sample::helpful(), Shape::Hh, s.rules, None)?;
            need(source, pairs.len(), s.n_helpful, "--n-helpful")?;
            dropped += d;
            take_first(&mut rows, "helpful", source, pairs, s.n_helpful);
        }
        (None, Mode::World { .. }) => {
            let source = "builtin:world/helpful";
            let w = world.as_ref().expect("world mode made a world");
            let recs: Vec<Record> = w.helpful_pairs().into_iter().map(|(_, r)| r).collect();
            let (pairs, d) = validate(source, &recs, Shape::Hh, s.rules, None)?;
            need(source, pairs.len(), s.n_helpful, "--n-helpful")?;
            dropped += d;
            take_first(&mut rows, "helpful", source, pairs, s.n_helpful);
        }
        (None, _) => {}
    }

    let fingerprint = fingerprint("split", s, &inputs);

    let mut report = SplitReport {
        counts: BTreeMap::new(),
        up_to_date: false,
        fingerprint: fingerprint.clone(),
        prompt_mismatches: rows
            .iter()
            .filter(|r| r.pair.rejected_prompt.is_some())
            .count(),
        dropped,
        repeats: 0,
    };
    for r in &rows {
        *report.counts.entry(r.split.to_string()).or_default() += 1;
    }

    if !force && store.current(keys::SPLIT, &fingerprint).await?.is_some() {
        report.up_to_date = true;
        return Ok(report);
    }

    let (batch, repeats) = to_batch(&rows)?;
    report.repeats = repeats;
    let tag = format!("split-{}", keys::part_tag(&fingerprint));
    let mut parts = vec![store.write_table_part("pairs", &tag, &batch).await?];
    if let Some(w) = &world {
        for (table, b) in [
            ("entities", entities_batch(w)?),
            ("corpus", corpus_batch(w)?),
        ] {
            match store.write_table_part(table, &tag, &b).await {
                Ok(f) => parts.push(f),
                Err(e) => {
                    store.discard(&parts).await;
                    return Err(e);
                }
            }
        }
    }
    store
        .publish("split", keys::SPLIT, &fingerprint, s, inputs, parts)
        .await?;
    Ok(report)
}

/// The `entities` table of a world.
fn entities_batch(w: &World) -> Result<RecordBatch> {
    use datafusion::arrow::array::{BooleanArray, Int64Array, StringArray};
    let e = &w.entities;
    let int = |f: &dyn Fn(&data::world::Entity) -> usize| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(e.iter().map(|x| f(x) as i64)))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            e.iter().map(|x| x.name.as_str()),
        )),
        Arc::new(BooleanArray::from(
            e.iter().map(|x| x.harmful).collect::<Vec<_>>(),
        )),
        int(&|x| x.rank),
        int(&|x| x.mentions),
        int(&|x| x.harm_mentions),
        Arc::new(StringArray::from_iter_values(e.iter().map(|x| x.kind))),
        Arc::new(StringArray::from_iter_values(e.iter().map(|x| x.place))),
    ];
    RecordBatch::try_new(schema::entities(), cols).map_err(|e| Error::Format {
        file: "entities".into(),
        msg: e.to_string(),
    })
}

/// The `corpus` table of a world: one statement per row, in corpus order.
fn corpus_batch(w: &World) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Int64Array, StringArray};
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..w.corpus.len() as i64)),
        Arc::new(StringArray::from_iter_values(
            w.corpus.iter().map(|(i, _)| w.entities[*i].name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            w.corpus.iter().map(|(_, t)| t.as_str()),
        )),
    ];
    RecordBatch::try_new(schema::corpus(), cols).map_err(|e| Error::Format {
        file: "corpus".into(),
        msg: e.to_string(),
    })
}

fn to_batch(rows: &[Row]) -> Result<(RecordBatch, usize)> {
    let mut id = StringBuilder::new();
    let mut split = StringBuilder::new();
    let mut split_index = Int64Builder::new();
    let mut source = StringBuilder::new();
    let mut source_row = Int64Builder::new();
    let mut prompt = StringBuilder::new();
    let mut chosen = StringBuilder::new();
    let mut rejected = StringBuilder::new();
    let mut rejected_prompt = StringBuilder::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut per_split: HashMap<&str, i64> = HashMap::new();
    let mut repeats = 0;
    for r in rows {
        let base = pair_id(&r.pair, 0);
        let occurrence = seen.entry(base.clone()).or_insert(0);
        let pid = if *occurrence == 0 {
            base
        } else {
            repeats += 1;
            pair_id(&r.pair, *occurrence)
        };
        *occurrence += 1;
        let idx = per_split.entry(r.split).or_insert(0);
        id.append_value(pid);
        split.append_value(r.split);
        split_index.append_value(*idx);
        *idx += 1;
        source.append_value(&r.source);
        source_row.append_value(r.source_row as i64);
        prompt.append_value(&r.pair.prompt);
        chosen.append_value(&r.pair.chosen);
        rejected.append_value(&r.pair.rejected);
        rejected_prompt.append_option(r.pair.rejected_prompt.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(split.finish()),
        Arc::new(split_index.finish()),
        Arc::new(source.finish()),
        Arc::new(source_row.finish()),
        Arc::new(prompt.finish()),
        Arc::new(chosen.finish()),
        Arc::new(rejected.finish()),
        Arc::new(rejected_prompt.finish()),
    ];
    let batch = RecordBatch::try_new(schema::pairs(), columns).map_err(|e| Error::Format {
        file: "pairs".into(),
        msg: e.to_string(),
    })?;
    Ok((batch, repeats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_settings() -> SplitSettings {
        SplitSettings {
            mode: Mode::Sample { seed: 0 },
            helpful: None,
            n_gt: None,
            n_w2s: None,
            n_test: None,
            n_helpful: None,
            helpful_single_turn: false,
            shape: Shape::Auto,
            rules: PairRules::default(),
            dimension: Dimension::Harmless,
        }
    }

    #[tokio::test]
    async fn sample_split_writes_pairs_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        let s = sample_settings();
        let r = run(&store, &s, false).await.unwrap();
        assert!(!r.up_to_date);
        assert_eq!(r.counts["gt"], 32);
        assert_eq!(r.counts["w2s"], 32);
        assert_eq!(r.counts["test"], 32);
        assert_eq!(r.counts["helpful"], 16);
        let again = run(&store, &s, false).await.unwrap();
        assert!(again.up_to_date);
        let m = store.manifest(keys::SPLIT).await.unwrap().unwrap();
        let batches = store.read_table_part(&m.outputs[0]).await.unwrap();
        assert_eq!(batches[0].num_rows(), 112);
        assert_eq!(batches[0].schema(), schema::pairs());
    }

    #[test]
    fn random_split_uses_numpy_permutation_in_file_order() {
        let pairs: Vec<(u64, Pair)> = (0..10u64)
            .map(|i| {
                (
                    i,
                    Pair {
                        prompt: format!("p{i}"),
                        chosen: "c".into(),
                        rejected: "r".into(),
                        rejected_prompt: None,
                    },
                )
            })
            .collect();
        let mut rows = Vec::new();
        random_split(&mut rows, "f", pairs, 0, [3, 3, 3], Dimension::Harmless).unwrap();
        // numpy 2.4: default_rng(0).permutation(10) = [4 6 2 7 3 5 9 0 8 1] (computed in Python)
        let gt: Vec<u64> = rows
            .iter()
            .filter(|r| r.split == "gt")
            .map(|r| r.source_row)
            .collect();
        let w2s: Vec<u64> = rows
            .iter()
            .filter(|r| r.split == "w2s")
            .map(|r| r.source_row)
            .collect();
        let test: Vec<u64> = rows
            .iter()
            .filter(|r| r.split == "test")
            .map(|r| r.source_row)
            .collect();
        assert_eq!(gt, vec![2, 4, 6]);
        assert_eq!(w2s, vec![3, 5, 7]);
        assert_eq!(test, vec![0, 8, 9]);
    }
}
