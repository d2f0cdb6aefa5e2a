//! The command line against the settings it stands for: every planned step of every pipeline
//! file parses back to the very command that was planned, and rendering leaves out defaults.

use clap::Parser;

use super::{argv, Cli, Command};
use crate::pipeline::{plan, Pipeline};

/// Every `pipelines/*.toml`, with each model pointed at a folder (planning never reads it).
fn pipeline_files() -> Vec<(String, Pipeline)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for f in files {
        let f = f.display().to_string();
        let p = Pipeline::load(&f, &[]).unwrap_or_else(|e| panic!("{f}: {e}"));
        out.push((f, p));
    }
    assert!(out.len() >= 9, "{} pipeline files", out.len());
    out
}

/// The artifact root a stage command writes to.
fn artifacts(c: &Command) -> Option<&str> {
    match c {
        Command::Split(a) => Some(a.root.artifacts.as_str()),
        Command::Pretrain(a) => Some(a.root.artifacts.as_str()),
        Command::GtTrain(a) => Some(a.root.artifacts.as_str()),
        Command::WeakLabel(a) => Some(a.root.artifacts.as_str()),
        Command::W2sTrain(a) => Some(a.root.artifacts.as_str()),
        Command::Score(a) => Some(a.root.artifacts.as_str()),
        Command::Analyze(a) => Some(a.root.artifacts.as_str()),
        Command::Report(a) => Some(a.analysis.root.artifacts.as_str()),
        Command::Sql(a) => Some(a.root.artifacts.as_str()),
        _ => None,
    }
}

#[test]
fn every_planned_step_parses_back_to_its_command() {
    let mut checked = 0;
    for (file, p) in pipeline_files() {
        let steps = plan::expand(&p).unwrap();
        for s in &steps {
            for force in [false, true] {
                let argv = s.argv(force);
                let cli =
                    Cli::try_parse_from(std::iter::once("w2s".to_string()).chain(argv.clone()))
                        .unwrap_or_else(|e| {
                            panic!("{file}: step {}: `w2s {}`: {e}", s.id, argv.join(" "))
                        });
                assert_eq!(
                    cli.command,
                    s.command.clone().forced(force),
                    "{file}: step {}: `w2s {}`",
                    s.id,
                    argv.join(" ")
                );
            }
            assert_eq!(s.stage, s.command.name());
            assert_eq!(
                artifacts(&s.command),
                Some(p.root()),
                "{file}: step {} writes to the pipeline's root",
                s.id
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} steps");
}

#[test]
fn rendering_writes_what_differs_from_the_default() {
    let parse = |args: &[&str]| -> Command {
        Cli::try_parse_from(std::iter::once("w2s").chain(args.iter().copied()))
            .unwrap()
            .command
    };
    let c = parse(&["gt-train", "--model", "m", "--artifacts", "a"]);
    assert_eq!(
        argv::render(&c, &[]),
        ["gt-train", "--artifacts", "a", "--model", "m"]
    );
    // Defaults given explicitly are left out; an enum is written by its command-line name.
    let c = parse(&[
        "gt-train",
        "--model",
        "m",
        "--batch",
        "32",
        "--schedule",
        "warmup_constant",
        "--lr",
        "1e-4",
        "--scenario",
        "simpo",
    ]);
    assert_eq!(
        argv::render(&c, &["artifacts"]),
        [
            "gt-train",
            "--scenario",
            "simpo",
            "--model",
            "m",
            "--lr",
            "0.0001",
            "--schedule",
            "warmup-constant"
        ]
    );
    // Repeated and multi-valued flags.
    let c = parse(&["analyze", "--sweep", "0.6", "0.7", "0.8", "0.9"]);
    let r = argv::render(&c, &["artifacts"]);
    assert_eq!(r, ["analyze", "--sweep", "0.6", "0.7", "0.8", "0.9"]);
    assert_eq!(parse(&r.iter().map(String::as_str).collect::<Vec<_>>()), c);
    let c = parse(&["run", "p.toml", "--set", "a=1", "--set", "b=2", "-j", "2"]);
    let r = argv::render(&c, &[]);
    assert_eq!(
        r,
        ["run", "p.toml", "--set", "a=1", "--set", "b=2", "--jobs", "2"]
    );
    // The artifact root can come from the environment, so it is always written.
    let c = parse(&["score", "--run-id", "x", "--artifacts", "artifacts"]);
    assert!(argv::render(&c, &[]).contains(&"--artifacts".to_string()));
}

#[test]
fn option_defaults_are_the_command_lines() {
    use crate::stages::training::TrainOpts;
    let t = TrainOpts::default();
    let Command::GtTrain(a) = Cli::try_parse_from(["w2s", "gt-train", "--model", "m"])
        .unwrap()
        .command
    else {
        panic!("gt-train")
    };
    assert_eq!(a.run.opts, t);
    assert_eq!(t.max_ctx, crate::tokenize::MAX_CTX);
    // A pipeline table with no keys is the same defaults.
    let from_toml: TrainOpts = toml::from_str("").unwrap();
    assert_eq!(from_toml, t);
    let bad = toml::from_str::<TrainOpts>("schedule = \"linear\"").unwrap_err();
    assert!(bad.to_string().contains("warmup-constant"), "{bad}");
}
