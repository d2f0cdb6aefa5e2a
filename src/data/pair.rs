//! A validated preference pair and its stable id.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{hh, Record, Shape};
use crate::error::{Error, Result};

/// A preference pair with the prompt separated from the responses.
///
/// The model input for a side is `prompt + response` (verbatim concatenation), so
/// `prompt + chosen` is the original chosen transcript. When the reference's independent split
/// of the rejected transcript gives a different prompt (a fake `"\n\nAssistant:"` inside the
/// rejected response, docs/reference.md §1.2), that prompt is kept in `rejected_prompt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub rejected_prompt: Option<String>,
}

impl Pair {
    /// The full chosen-side text (what a reward model reads).
    pub fn chosen_text(&self) -> String {
        format!("{}{}", self.prompt, self.chosen)
    }
    /// The full rejected-side text.
    pub fn rejected_text(&self) -> String {
        format!(
            "{}{}",
            self.rejected_prompt.as_deref().unwrap_or(&self.prompt),
            self.rejected
        )
    }
}

/// What to do with an HH row whose chosen and rejected transcripts give different prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PromptMismatch {
    /// Keep the row as the reference does; the rejected prompt goes to `rejected_prompt`.
    Keep,
    /// Leave the row out (counts are then filled from later rows).
    Drop,
    /// Stop with an error naming the row.
    Error,
}

/// How explicit-shape prompts and responses become model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// Use the columns as given: input = prompt + response.
    Verbatim,
    /// Wrap as a single HH turn: `"\n\nHuman: " + prompt + "\n\nAssistant:"` and `" " + response`.
    Hh,
}

/// Validation rules for turning records into pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRules {
    pub prompt_mismatch: PromptMismatch,
    pub template: Template,
}

impl Default for PairRules {
    fn default() -> Self {
        PairRules {
            prompt_mismatch: PromptMismatch::Keep,
            template: Template::Verbatim,
        }
    }
}

impl Pair {
    /// Validates a record. `Ok(None)` means the rules drop it.
    pub fn from_record(
        file: &str,
        r: &Record,
        shape: Shape,
        rules: PairRules,
    ) -> Result<Option<Pair>> {
        let pair = match shape {
            Shape::Explicit => {
                let prompt = r.prompt.clone().unwrap_or_default();
                let (prompt, chosen, rejected) = match rules.template {
                    Template::Verbatim => (prompt, r.chosen.clone(), r.rejected.clone()),
                    Template::Hh => {
                        let (p, c) = hh::wrap(&prompt, &r.chosen);
                        (p, c, hh::wrap(&prompt, &r.rejected).1)
                    }
                };
                Pair {
                    prompt,
                    chosen,
                    rejected,
                    rejected_prompt: None,
                }
            }
            Shape::Hh | Shape::Auto => {
                fn split<'t>(
                    file: &str,
                    r: &Record,
                    field: &str,
                    text: &'t str,
                ) -> Result<(&'t str, &'t str)> {
                    hh::split_transcript(text).ok_or_else(|| {
                        Error::data(
                            r.at(file, field),
                            "no \"\\n\\nAssistant:\" turn in the transcript",
                        )
                    })
                }
                let (pc, c) = split(file, r, "chosen", &r.chosen)?;
                let (pr, rj) = split(file, r, "rejected", &r.rejected)?;
                let rejected_prompt = if pc == pr {
                    None
                } else {
                    match rules.prompt_mismatch {
                        PromptMismatch::Keep => Some(pr.to_string()),
                        PromptMismatch::Drop => return Ok(None),
                        PromptMismatch::Error => {
                            return Err(Error::data(
                                r.at(file, "rejected"),
                                "its prompt (text up to the last \"\\n\\nAssistant:\") differs from the chosen one",
                            ))
                        }
                    }
                };
                Pair {
                    prompt: pc.to_string(),
                    chosen: c.to_string(),
                    rejected: rj.to_string(),
                    rejected_prompt,
                }
            }
        };
        for (field, resp) in [("chosen", &pair.chosen), ("rejected", &pair.rejected)] {
            if resp.is_empty() {
                return Err(Error::data(r.at(file, field), "empty response"));
            }
        }
        if pair.chosen_text() == pair.rejected_text() {
            return Err(Error::data(
                r.at(file, "rejected"),
                "identical to `chosen`: a pair needs two different answers",
            ));
        }
        Ok(Some(pair))
    }
}

/// The stable id of a pair's content: the first 128 bits (hex) of
/// sha256(`"w2s-pair-v1\0"` ++ for each of prompt, chosen, rejected prompt, rejected:
/// its UTF-8 length as u64 little-endian ++ its bytes ++ (occurrence > 0: occurrence as u64 LE)).
/// `occurrence` numbers repeats of identical content within one `pairs` table (0 for the first),
/// so ids stay unique. The same content gives the same id on every run and machine.
pub fn pair_id(p: &Pair, occurrence: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"w2s-pair-v1\0");
    let rp = p.rejected_prompt.as_deref().unwrap_or(&p.prompt);
    for s in [
        p.prompt.as_str(),
        p.chosen.as_str(),
        rp,
        p.rejected.as_str(),
    ] {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    if occurrence > 0 {
        h.update(occurrence.to_le_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(chosen: &str, rejected: &str) -> Record {
        Record {
            row: 4,
            line: Some(5),
            prompt: None,
            chosen: chosen.into(),
            rejected: rejected.into(),
        }
    }

    fn hh_pair(chosen: &str, rejected: &str, rules: PairRules) -> Result<Option<Pair>> {
        Pair::from_record("f.jsonl", &rec(chosen, rejected), Shape::Hh, rules)
    }

    #[test]
    fn hh_pair_keeps_transcripts_verbatim() {
        let p = hh_pair(
            "\n\nHuman: q\n\nAssistant: no",
            "\n\nHuman: q\n\nAssistant: yes, here is how",
            PairRules::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.prompt, "\n\nHuman: q\n\nAssistant:");
        assert_eq!(p.chosen, " no");
        assert_eq!(p.rejected_prompt, None);
        assert_eq!(p.chosen_text(), "\n\nHuman: q\n\nAssistant: no");
    }

    #[test]
    fn mismatched_prompts_follow_the_rule() {
        let c = "\n\nHuman: q\n\nAssistant: no";
        let r = "\n\nHuman: q\n\nAssistant: a\n\nAssistant: b";
        let keep = hh_pair(c, r, PairRules::default()).unwrap().unwrap();
        assert_eq!(
            keep.rejected_prompt.as_deref(),
            Some("\n\nHuman: q\n\nAssistant: a\n\nAssistant:")
        );
        assert_eq!(keep.rejected_text(), r);
        let drop = PairRules {
            prompt_mismatch: PromptMismatch::Drop,
            ..Default::default()
        };
        assert_eq!(hh_pair(c, r, drop).unwrap(), None);
        let error = PairRules {
            prompt_mismatch: PromptMismatch::Error,
            ..Default::default()
        };
        let e = hh_pair(c, r, error).unwrap_err().to_string();
        assert!(
            e.starts_with("f.jsonl, line 5, row 4, field `rejected`: its prompt"),
            "{e}"
        );
    }

    #[test]
    fn bad_pairs_are_errors() {
        let d = PairRules::default();
        let e = hh_pair(
            "\n\nHuman: q\n\nAssistant:",
            "\n\nHuman: q\n\nAssistant: x",
            d,
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "f.jsonl, line 5, row 4, field `chosen`: empty response"
        );
        let same = "\n\nHuman: q\n\nAssistant: x";
        let e = hh_pair(same, same, d).unwrap_err().to_string();
        assert!(e.contains("field `rejected`: identical to `chosen`"), "{e}");
        let e = hh_pair("just text", same, d).unwrap_err().to_string();
        assert!(
            e.contains("field `chosen`: no \"\\n\\nAssistant:\" turn"),
            "{e}"
        );
    }

    #[test]
    fn explicit_template_hh_wraps() {
        let r = Record {
            prompt: Some("q".into()),
            ..rec("no", "yes")
        };
        let rules = PairRules {
            template: Template::Hh,
            ..Default::default()
        };
        let p = Pair::from_record("f", &r, Shape::Explicit, rules)
            .unwrap()
            .unwrap();
        assert_eq!(p.chosen_text(), "\n\nHuman: q\n\nAssistant: no");
        assert_eq!(p.rejected_text(), "\n\nHuman: q\n\nAssistant: yes");
    }

    #[test]
    fn pair_id_matches_python_hashlib() {
        // Expected values computed independently with Python's hashlib
        // (docs/artifacts.md shows the snippet).
        let p = Pair {
            prompt: "\n\nHuman: q\n\nAssistant:".into(),
            chosen: " no".into(),
            rejected: " yes".into(),
            rejected_prompt: None,
        };
        assert_eq!(pair_id(&p, 0), PY_ID_0);
        assert_eq!(pair_id(&p, 1), PY_ID_1);
    }

    const PY_ID_0: &str = "b25c84f0a8c3c2e14a076a177e52b9b9";
    const PY_ID_1: &str = "98853c7fc8191e2e953f119c330442e0";
}
