//! `w2s plan --format slurm`: a pipeline's pending steps as a Slurm submission script
//! (docs/pipelines.md, "Running on a cluster").
//!
//! One job array per level of the plan: task i of level k runs the i-th step of that level, one
//! `w2s <stage> ...` invocation, exactly the command `w2s run` would run. Level k is submitted
//! with `--dependency=afterok:<level k-1>`, so it starts once every task before it succeeded;
//! a failed task cancels what depends on it (`--kill-on-invalid-dep=yes`). Every stage skips
//! what is already up to date and publishes atomically, so the script can be submitted again
//! after a failure. The artifact root must be reachable from every node: a shared filesystem
//! path or an `s3://` prefix.

use super::exec::shell_words;
use super::plan::Step;

/// The submission script for `steps` (the plan's steps that are to run, in plan order).
/// `record` is the `w2s plan <file> ... --record` argv each task runs after its stage, with the
/// step id appended, so that `w2s run` and `w2s plan` see the step up to date afterwards.
pub fn script(name: &str, record: &[String], root: &str, steps: &[&Step]) -> String {
    let pipeline_file = record.get(1).map_or("", String::as_str);
    let mut levels: Vec<usize> = steps.iter().map(|s| s.level).collect();
    levels.sort_unstable();
    levels.dedup();
    let tag: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut out = format!(
        r#"#!/usr/bin/env bash
# Slurm submission of pipeline `{name}` ({pipeline_file}), written by `w2s plan --format slurm`.
# Artifacts: {root}
# {n} steps in {l} job arrays, one per plan level; each task is one `w2s` stage invocation and
# each level starts after every task of the level before it succeeded (afterok).
#
#   bash THIS_FILE [sbatch options...]      e.g.  bash THIS_FILE --partition=cpu --time=4:00:00
#
# W2S: the w2s binary the tasks run (default: w2s on PATH). JOBS_DIR: where the per-level task
# scripts and logs go (default ./w2s-slurm-{tag}); like the artifact root, the nodes must see it.
set -euo pipefail
export W2S=${{W2S:-w2s}}
JOBS_DIR=${{JOBS_DIR:-$PWD/w2s-slurm-{tag}}}
mkdir -p "$JOBS_DIR/logs"
SBATCH_OPTS=("$@")
prev=""
submit() {{
    local level=$1 tasks=$2 dep=()
    if [ -n "$prev" ]; then
        dep=("--dependency=afterok:$prev" "--kill-on-invalid-dep=yes")
    fi
    prev=$(sbatch --parsable --job-name="w2s-{tag}-L$level" --array="0-$((tasks - 1))" \
        --output="$JOBS_DIR/logs/L$level-%a.out" "${{dep[@]}}" "${{SBATCH_OPTS[@]}}" \
        "$JOBS_DIR/level-$level.sh" | cut -d';' -f1)
    echo "level $level: job $prev ($tasks tasks)"
}}
"#,
        n = steps.len(),
        l = levels.len(),
    );
    for level in levels {
        let tasks: Vec<&&Step> = steps.iter().filter(|s| s.level == level).collect();
        out.push_str(&format!(
            "\ncat > \"$JOBS_DIR/level-{level}.sh\" <<'W2S_LEVEL'\n#!/usr/bin/env bash\nset -euo pipefail\ncase \"${{SLURM_ARRAY_TASK_ID:?not a Slurm array task}}\" in\n"
        ));
        for (i, s) in tasks.iter().enumerate() {
            let mut rec = record.to_vec();
            rec.push(s.id.clone());
            out.push_str(&format!(
                "    {i}) \"$W2S\" {} && exec \"$W2S\" --log warn {} ;;\n",
                shell_words(&s.argv(false)),
                shell_words(&rec),
            ));
        }
        out.push_str(
            "    *) echo \"no task $SLURM_ARRAY_TASK_ID in this level\" >&2; exit 64 ;;\nesac\nW2S_LEVEL\n",
        );
        out.push_str(&format!("submit {level} {}\n", tasks.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, level: usize) -> Step {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "w2s",
            "score",
            "--run-id",
            "it's",
            "--artifacts",
            "s3://b/x",
        ])
        .unwrap();
        let mut s = Step::new(id.into(), None, cli.command);
        s.level = level;
        s
    }

    #[test]
    fn one_array_per_level_chained_by_afterok() {
        let steps = [
            step("split", 0),
            step("gt-train:a", 1),
            step("gt-train:b", 1),
            step("report", 3),
        ];
        let refs: Vec<&Step> = steps.iter().collect();
        let rec: Vec<String> = ["plan", "/p.toml", "--record"].map(String::from).to_vec();
        let s = script("my grid", &rec, "s3://b/x", &refs);
        assert!(s.contains("2 tasks") || s.contains("submit 1 2"), "{s}");
        assert!(
            s.contains("submit 0 1\n") && s.contains("submit 1 2\n") && s.contains("submit 3 1\n")
        );
        // Level 3 follows level 1 directly (no pending step at level 2).
        assert!(!s.contains("submit 2 "));
        assert!(s.contains("    1) \"$W2S\" score --artifacts s3://b/x --run-id 'it'\\''s' && exec \"$W2S\" --log warn plan /p.toml --record gt-train:b ;;"), "{s}");
        assert!(s.contains("--dependency=afterok:$prev"));
        assert!(s.contains("w2s-slurm-my_grid"));
    }
}
