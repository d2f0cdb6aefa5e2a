//! `w2s analyze` over a scores table of about 1,000,000 rows (target: under 3 s on the 2-core
//! machine), against a baseline measured in the same run: one DataFusion scan of the same
//! table (`select count(*), sum(confidence) from scores`), the least any analysis must do.
//!
//! Two grids of the same size: three seeds (intervals over seeds) and one seed (bootstrap
//! intervals, 1000 replicates). Run: `cargo bench --bench analyze`. Prints medians of 3.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use w2s::stages::analyze::{self, AnalyzeSettings};
use w2s::store::ArtifactStore;

const MODELS: usize = 6;
const OBJECTIVES: [(&str, Option<f64>); 5] = [
    ("none", None),
    ("explicit", Some(0.5)),
    ("explicit", Some(1.0)),
    ("implicit", None),
    ("adaptive", None),
];

/// (run id, stage, objective, base model, teacher, alpha, seed)
type Run = (
    String,
    &'static str,
    &'static str,
    String,
    Option<String>,
    Option<f64>,
    i64,
);

fn strs(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

/// A deterministic pseudo-confidence in (0, 1).
fn conf(run: usize, pair: usize) -> f64 {
    let x = (run as u64 * 0x9E37_79B9 + pair as u64 * 0x85EB_CA6B) % 10_007;
    0.02 + 0.96 * x as f64 / 10_007.0
}

/// Writes a grid of `seeds` seeds over `pairs` test pairs; returns the scores row count.
async fn build(root: &str, seeds: usize, pairs: usize) -> usize {
    let store = ArtifactStore::open(root).unwrap();
    let mut runs: Vec<Run> = Vec::new();
    for s in 0..seeds as i64 {
        for m in 0..MODELS {
            runs.push((
                format!("gt-m{m}-s{s}"),
                "gt-train",
                "none",
                format!("m{m}"),
                None,
                None,
                s,
            ));
        }
        for w in 0..MODELS {
            for st in w + 1..MODELS {
                for (o, a) in OBJECTIVES {
                    let id = format!("w2s-m{w}-m{st}-{o}-{}-s{s}", a.unwrap_or(0.0));
                    runs.push((
                        id,
                        "w2s-train",
                        o,
                        format!("m{st}"),
                        Some(format!("gt-m{w}-s{s}")),
                        a,
                        s,
                    ));
                }
            }
        }
    }
    let n = runs.len();
    let batch = RecordBatch::try_new(
        w2s::schema::runs(),
        vec![
            strs(runs.iter().map(|r| r.0.clone()).collect()),
            strs(runs.iter().map(|r| r.1.to_string()).collect()),
            strs(vec!["rm".into(); n]),
            strs(runs.iter().map(|r| r.2.to_string()).collect()),
            strs(runs.iter().map(|r| r.3.clone()).collect()),
            Arc::new(StringArray::from(
                runs.iter().map(|r| r.4.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                runs.iter().map(|r| r.5).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                runs.iter().map(|r| r.6).collect::<Vec<_>>(),
            )),
            strs(vec!["{}".into(); n]),
            strs(vec!["fp".into(); n]),
            Arc::new(Int64Array::from(vec![1; n])),
            Arc::new(Int64Array::from(vec![1; n])),
            Arc::new(Int64Array::from(vec![1; n])),
            Arc::new(Float64Array::from(vec![0.5; n])),
            Arc::new(Int64Array::from(vec![0; n])),
            Arc::new(Float64Array::from(vec![1.0; n])),
            Arc::new(Float64Array::from(vec![1.0; n])),
        ],
    )
    .unwrap();
    let part = store
        .write_table_part("runs", "bench", &batch)
        .await
        .unwrap();
    store
        .publish("bench", "bench/runs", "runs", &(), vec![], vec![part])
        .await
        .unwrap();
    // Scores in parts of 16 runs, as many `w2s score` runs would leave them.
    for (k, chunk) in runs.chunks(16).enumerate() {
        let rows = chunk.len() * pairs;
        let mut run_id = Vec::with_capacity(rows);
        let mut pair_id = Vec::with_capacity(rows);
        let mut idx = Vec::with_capacity(rows);
        let mut c = Vec::with_capacity(rows);
        for (j, r) in chunk.iter().enumerate() {
            for p in 0..pairs {
                run_id.push(r.0.clone());
                pair_id.push(format!("{p:016x}{p:016x}"));
                idx.push(p as i64);
                c.push(conf(k * 16 + j, p));
            }
        }
        let b = RecordBatch::try_new(
            w2s::schema::scores(),
            vec![
                strs(run_id),
                strs(pair_id),
                strs(vec!["test".into(); rows]),
                Arc::new(Int64Array::from(idx)),
                strs(vec!["rm".into(); rows]),
                Arc::new(Float64Array::from(
                    c.iter().map(|p| (p / (1.0 - p)).ln()).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(c.clone())),
                Arc::new(BooleanArray::from(
                    c.iter().map(|&p| p >= 0.5).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(vec![None::<f64>; rows])),
                Arc::new(Float64Array::from(vec![None::<f64>; rows])),
                Arc::new(Float64Array::from(vec![None::<f64>; rows])),
                Arc::new(Float64Array::from(vec![None::<f64>; rows])),
                Arc::new(Int64Array::from(vec![10; rows])),
                Arc::new(Int64Array::from(vec![10; rows])),
            ],
        )
        .unwrap();
        let part = store
            .write_table_part("scores", &format!("part-{k}"), &b)
            .await
            .unwrap();
        store
            .publish(
                "score",
                &format!("score/part-{k}"),
                &format!("p{k}"),
                &(),
                vec![],
                vec![part],
            )
            .await
            .unwrap();
    }
    n * pairs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn measure(label: &str, seeds: usize, pairs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root").display().to_string();
    let rows = build(&root, seeds, pairs).await;
    let store = ArtifactStore::open(&root).unwrap();
    let settings = AnalyzeSettings::default();
    let (mut base, mut full) = (Vec::new(), Vec::new());
    let reps: usize = std::env::var("W2S_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for _ in 0..reps {
        let t = Instant::now();
        let ctx = w2s::sql::context(&store).await.unwrap();
        w2s::sql::query(&ctx, "select count(*), sum(confidence) from scores", &[])
            .await
            .unwrap();
        base.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let r = analyze::run(&store, &settings, true).await.unwrap();
        full.push(t.elapsed().as_secs_f64());
        assert!(r.cells.len() > 1);
    }
    let (b, f) = (median(base), median(full));
    println!(
        "{label}: {rows} score rows, {seeds} seed(s): baseline scan {b:.3} s, analyze {f:.3} s \
         = {:.1}x the scan (target: analyze < 3 s)",
        f / b
    );
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("W2S_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // W2S_BENCH_ROOT=DIR: only write the three-seed grid there (to explore it with `w2s sql`).
    if let Ok(root) = std::env::var("W2S_BENCH_ROOT") {
        let rows = rt.block_on(build(&root, 3, 4116));
        println!("{rows} score rows -> {root}");
        return;
    }
    rt.block_on(async {
        // 18 ceilings + 225 weak-to-strong runs = 243 runs x 4116 pairs = 1,000,188 rows.
        measure("three seeds", 3, 4116).await;
        // 6 + 75 = 81 runs x 12346 pairs = 1,000,026 rows; bootstrap intervals.
        measure("one seed", 1, 12346).await;
    });
}
