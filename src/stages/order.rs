//! The capability order of a grid's models, weakest first, that every figure and table follows.
//!
//! The paper reads its trends along model size (GPT-2-Base, -Medium, -Large, -XL, ...); sorting
//! by name would put `gpt2-large` before `gpt2-medium`. The order comes from the analysis
//! setting `model_order` (a pipeline fills it from its `[[model]]` list, weakest first); models
//! it does not name are placed after those it does, in the order the grid itself implies
//! (every weak model is weaker than its students: a topological sort of the weak → strong
//! pairs, ties by name).
//!
//! Analysis names carry decorations: `<model> · <scenario>` for preference scenarios,
//! `<weak> via <intermediate>` for bootstrapped students, `<weak> (confident ≥ T)` for
//! high-confidence ones and `<weak> (adaptive)` for adaptive weighting (both: `(confident ≥ T,
//! adaptive)`). A name sorts by scenario, then its (first) model's place, then the
//! intermediate's place (direct runs first), then plain labels before filtered or weighted ones.

use std::collections::{BTreeMap, BTreeSet};

/// How a high-confidence student's weak model name gives its threshold (`sql/views.sql`).
pub const CONFIDENT: &str = "confident ≥ ";
/// How an adaptive student's weak model name says so.
pub const ADAPTIVE: &str = "adaptive";

/// An analysis model name taken apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parts<'a> {
    pub model: &'a str,
    /// The intermediate of a bootstrapped student.
    pub via: Option<&'a str>,
    /// How the student used the labels: `confident ≥ T`, `adaptive`, or both.
    pub labels: Option<&'a str>,
    /// "" for reward modeling.
    pub scenario: &'a str,
}

/// The parts of an analysis model name.
pub fn parts(name: &str) -> Parts<'_> {
    let (rest, scenario) = name.rsplit_once(" · ").unwrap_or((name, ""));
    let labels = (rest.strip_suffix(')').and_then(|r| r.rsplit_once(" (")))
        .filter(|(_, l)| l.starts_with(CONFIDENT) || l.starts_with(ADAPTIVE));
    let (rest, labels) = match labels {
        Some((r, l)) => (r, Some(l)),
        None => (rest, None),
    };
    let (model, via) = match rest.split_once(" via ") {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    Parts {
        model,
        via,
        labels,
        scenario,
    }
}

/// A model location's short name: the last part of a path or hub id, without `run:`.
fn short(model: &str) -> &str {
    let model = model.strip_prefix("run:").unwrap_or(model);
    let model = model.trim_end_matches('/');
    model.rsplit('/').next().unwrap_or(model)
}

/// Models weakest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOrder {
    models: Vec<String>,
}

impl ModelOrder {
    /// The order of `explicit` (locations or short names, weakest first), then the models of
    /// `pairs` (weak, strong analysis names) it does not name, in the order the pairs imply.
    pub fn new(explicit: &[String], pairs: &[(String, String)]) -> ModelOrder {
        let mut models: Vec<String> = Vec::new();
        let named = |m: &str| explicit.iter().any(|e| e == m || short(e) == short(m));
        // Edges weaker -> stronger between bare models, from every pair and chain.
        let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
        let mut all: BTreeSet<String> = BTreeSet::new();
        for (w, s) in pairs {
            let (w, strong) = (parts(w), parts(s).model);
            let chain: Vec<&str> = (std::iter::once(w.model).chain(w.via))
                .chain([strong])
                .collect();
            for x in chain.windows(2) {
                edges.insert((x[0].to_string(), x[1].to_string()));
            }
            all.extend(chain.iter().map(|x| x.to_string()));
        }
        models.extend(explicit.iter().cloned());
        // Kahn's algorithm over the models the explicit order does not name, ties by name; a
        // cycle (a grid that contradicts itself) leaves the rest in name order.
        let mut left: BTreeSet<String> = all.into_iter().filter(|m| !named(m)).collect();
        while !left.is_empty() {
            let next = left
                .iter()
                .find(|m| !edges.iter().any(|(a, b)| b == *m && left.contains(a)))
                .or_else(|| left.iter().next())
                .cloned()
                .expect("not empty");
            left.remove(&next);
            models.push(next);
        }
        ModelOrder { models }
    }

    /// A bare model's place (unknown models last).
    pub fn place(&self, model: &str) -> usize {
        (self.models.iter())
            .position(|e| e == model)
            .or_else(|| self.models.iter().position(|e| short(e) == short(model)))
            .unwrap_or(self.models.len())
    }

    /// The sort key of an analysis name.
    pub fn key<'a>(&self, name: &'a str) -> (&'a str, usize, usize, Option<&'a str>, &'a str) {
        let p = parts(name);
        let via_place = p.via.map_or(0, |v| 1 + self.place(v));
        let place = self.place(p.model);
        (p.scenario, place, via_place, p.labels, name)
    }

    /// Every name with its rank (0 = first) in this order.
    pub fn ranks<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, i64> {
        let mut v: Vec<&str> = names
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        v.sort_by_key(|n| self.key(n));
        v.into_iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i as i64))
            .collect()
    }
}

/// Rank of an objective on the page and in the tables: none, explicit, implicit, adaptive,
/// then the rest.
pub fn objective_rank(objective: &str) -> usize {
    ["none", "explicit", "implicit", "adaptive"]
        .iter()
        .position(|o| *o == objective)
        .unwrap_or(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_grid_implies_an_order_when_none_is_given() {
        let p = pairs(&[
            ("m/gpt2-medium", "m/gpt2-xl"),
            ("m/gpt2", "m/gpt2-large"),
            ("m/gpt2", "m/gpt2-medium"),
            ("m/gpt2-medium", "m/gpt2-large"),
            ("m/gpt2-large", "m/gpt2-xl"),
        ]);
        let o = ModelOrder::new(&[], &p);
        let mut names = vec!["m/gpt2-xl", "m/gpt2-large", "m/gpt2", "m/gpt2-medium"];
        names.sort_by_key(|n| o.key(n));
        assert_eq!(
            names,
            ["m/gpt2", "m/gpt2-medium", "m/gpt2-large", "m/gpt2-xl"]
        );
    }

    #[test]
    fn an_explicit_order_wins_and_decorations_sort_after_their_model() {
        let explicit = vec!["b".to_string(), "run:a".to_string()];
        let p = pairs(&[("run:a · simpo", "run:b · simpo"), ("c", "run:b")]);
        let o = ModelOrder::new(&explicit, &p);
        assert_eq!(o.place("run:b"), 0);
        assert_eq!(o.place("a"), 1, "short names match");
        assert_eq!(o.place("c"), 2, "unnamed models after the named ones");
        assert_eq!(o.place("zzz"), 3);
        let r = o.ranks(["run:a via run:b", "run:a", "run:b", "run:a · simpo", "c"]);
        let order: Vec<&str> = {
            let mut v: Vec<(&String, &i64)> = r.iter().collect();
            v.sort_by_key(|x| *x.1);
            v.into_iter().map(|x| x.0.as_str()).collect()
        };
        assert_eq!(
            order,
            ["run:b", "run:a", "run:a via run:b", "c", "run:a · simpo"]
        );
        let p = parts("x via y · dpo");
        assert_eq!(
            (p.model, p.via, p.labels, p.scenario),
            ("x", Some("y"), None, "dpo")
        );
        let p = parts("run:x (confident ≥ 0.75) · simpo");
        assert_eq!(
            (p.model, p.labels, p.scenario),
            ("run:x", Some("confident ≥ 0.75"), "simpo")
        );
        let p = parts("m/a (b) (confident ≥ 0.75, adaptive)");
        assert_eq!(
            (p.model, p.labels),
            ("m/a (b)", Some("confident ≥ 0.75, adaptive"))
        );
        assert_eq!(
            parts("m/a (b)").model,
            "m/a (b)",
            "other brackets are part of the name"
        );
        // High-confidence cells right after the all-data ones of the same model.
        let r = o.ranks(["run:a (confident ≥ 0.8)", "run:b", "run:a", "c"]);
        assert_eq!(r["run:a"] + 1, r["run:a (confident ≥ 0.8)"]);
    }
}
