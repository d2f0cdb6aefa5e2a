//! Command lines rendered from typed arguments, so that a pipeline step is planned as a value
//! of the same type the CLI parses, never as hand-written flag strings.
//!
//! [`render`] walks clap's own description of the command (flags, actions, defaults, possible
//! values) over the serde form of the arguments (field name = clap id), writing every argument
//! whose value differs from its default. Parsing the result with [`super::Cli`] gives back
//! the same value; the planned-command test checks this for every step of every pipeline file.
//! [`defaults`] builds an options group from its clap defaults, so the pipeline files' serde
//! defaults are the CLI's defaults by construction.

use clap::{ArgAction, CommandFactory};
use serde_json::Value;

use super::{Cli, Command};

/// An options group with every field at its clap default (the group must have no required
/// argument; each field has a default or is optional).
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let m = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("an options group has a default for every field");
    T::from_arg_matches(&m).expect("defaults parse")
}

/// The arguments after `w2s` that parse back to `cmd`, leaving out the ids in `omit` and
/// every argument at its default (an argument that can come from the environment is always
/// written, so the environment cannot change what a planned step does).
pub fn render(cmd: &Command, omit: &[&str]) -> Vec<String> {
    let value = serde_json::to_value(cmd).expect("arguments serialize");
    let mut out = Vec::new();
    subcommand(&Cli::command(), &value, omit, &mut out);
    out
}

/// `value` is `{ "<subcommand>": <its arguments> }`.
fn subcommand(parent: &clap::Command, value: &Value, omit: &[&str], out: &mut Vec<String>) {
    let (name, inner) = match value {
        Value::Object(m) if m.len() == 1 => m.iter().next().expect("one entry"),
        Value::String(name) => (name, &Value::Null),
        _ => panic!("a command serializes as {{name: arguments}}"),
    };
    let sub = parent
        .find_subcommand(name)
        .unwrap_or_else(|| panic!("`{name}` is a subcommand of `{}`", parent.get_name()));
    out.push(name.clone());
    if sub.has_subcommands() {
        return subcommand(sub, inner, omit, out);
    }
    let Value::Object(fields) = inner else {
        return;
    };
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        if omit.contains(&id) || arg.is_global_set() {
            continue;
        }
        let Some(v) = fields.get(id) else { continue };
        write_arg(arg, v, out);
    }
}

fn write_arg(arg: &clap::Arg, v: &Value, out: &mut Vec<String>) {
    let values: Vec<String> = match v {
        Value::Null => return,
        Value::Array(items) => items.iter().map(|x| scalar(arg, x)).collect(),
        x => vec![scalar(arg, x)],
    };
    let flag = arg.get_long().map(|l| format!("--{l}"));
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        if values.first().map(String::as_str) == Some("true") {
            out.push(flag.expect("a switch has a long name"));
        }
        return;
    }
    let from_env = arg.get_env().is_some();
    if !from_env && is_default(arg, &values) {
        return;
    }
    if values.is_empty() {
        return;
    }
    // A flag that takes several values at once (`--sweep a b c d`) is written once.
    let several = arg.get_num_args().is_some_and(|r| r.min_values() > 1);
    match (flag, arg.get_action()) {
        (None, _) => out.extend(values),
        (Some(f), ArgAction::Append) if !several => {
            for x in values {
                out.extend([f.clone(), x]);
            }
        }
        (Some(f), _) => {
            out.push(f);
            out.extend(values);
        }
    }
}

/// A value as clap reads it: an enum by its clap name.
fn scalar(arg: &clap::Arg, v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("`{}`: {other} is not a command-line value", arg.get_id()),
    };
    arg.get_possible_values()
        .iter()
        .find(|p| p.matches(&s, false))
        .map(|p| p.get_name().to_string())
        .unwrap_or(s)
}

fn is_default(arg: &clap::Arg, values: &[String]) -> bool {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    defaults.len() == values.len()
        && defaults.iter().zip(values).all(|(d, v)| {
            d == v
                || matches!((d.parse::<f64>(), v.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
                || arg
                    .get_possible_values()
                    .iter()
                    .any(|p| p.matches(d, false) && p.matches(v, false))
        })
}
