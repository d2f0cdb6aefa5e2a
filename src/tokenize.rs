//! Tokenization of pair sides with a response mask.
//!
//! Default: the whole text `prompt + response` is encoded once (with the tokenizer's special
//! tokens), and a token belongs to the response when it covers any byte after the prompt. This
//! is what the model saw in pretraining. [`Tokenization::Reference`] reproduces the reference's
//! separate encoding of prompt and response for preference runs (docs/reference.md §1.7).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest sequence in tokens every stage keeps by default (the reference's `max_ctx`).
pub const MAX_CTX: usize = 512;

/// How one side of a preference pair becomes token ids and a response mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tokenization {
    /// The transcript encoded once; response tokens are those covering a byte after the
    /// prompt; the last `max_ctx` tokens are kept. SFT divides by the scored tokens.
    #[default]
    Joint,
    /// The reference's quirks (docs/reference.md §1.7, §3.3): prompt and response encoded
    /// separately, each with the tokenizer's special tokens (so Llama/OPT/Mistral get a BOS in
    /// the middle, scored as a response token), truncated by hand keeping the right end; the
    /// SFT denominator also counts the first window token, which is never scored.
    Reference,
}

impl Tokenization {
    pub fn is_joint(&self) -> bool {
        *self == Tokenization::Joint
    }

    pub fn name(&self) -> &'static str {
        match self {
            Tokenization::Joint => "joint",
            Tokenization::Reference => "reference",
        }
    }
}

/// A Hugging Face `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    file: String,
}

/// Token ids and the response mask of one side of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub response_mask: Vec<u32>,
    /// Tokens dropped from the left to fit `max_ctx`.
    pub truncated: usize,
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let file = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Model {
            file: file.clone(),
            msg: format!("unreadable tokenizer: {e}"),
        })?;
        Ok(Tokenizer { inner, file })
    }

    /// Plain encoding with special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encoding(text)?.get_ids().to_vec())
    }

    /// Encodes a whole text and keeps its last `max_ctx` tokens (left truncation, as the
    /// reference's reward models); also returns how many were dropped.
    pub fn encode_last(&self, text: &str, max_ctx: usize) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.encode(text)?;
        let dropped = ids.len().saturating_sub(max_ctx);
        ids.drain(..dropped);
        Ok((ids, dropped))
    }

    fn encoding(&self, text: &str) -> Result<tokenizers::Encoding> {
        self.inner.encode(text, true).map_err(|e| Error::Model {
            file: self.file.clone(),
            msg: format!("cannot encode text: {e}"),
        })
    }

    /// Encodes `prompt + response` once and marks response tokens; keeps the last `max_ctx`
    /// tokens (left truncation, as the reference).
    pub fn encode_side(&self, prompt: &str, response: &str, max_ctx: usize) -> Result<Encoded> {
        let text = format!("{prompt}{response}");
        let enc = self.encoding(&text)?;
        let boundary = prompt.len();
        let mut ids = enc.get_ids().to_vec();
        let mut mask: Vec<u32> = enc
            .get_offsets()
            .iter()
            .zip(enc.get_special_tokens_mask())
            .map(|(&(_, end), &special)| u32::from(special == 0 && end > boundary))
            .collect();
        let truncated = ids.len().saturating_sub(max_ctx);
        if truncated > 0 {
            ids.drain(..truncated);
            mask.drain(..truncated);
        }
        Ok(Encoded {
            ids,
            response_mask: mask,
            truncated,
        })
    }

    /// One side of a preference pair in the given mode.
    pub fn encode_pair_side(
        &self,
        prompt: &str,
        response: &str,
        max_ctx: usize,
        mode: Tokenization,
    ) -> Result<Encoded> {
        match mode {
            Tokenization::Joint => self.encode_side(prompt, response, max_ctx),
            Tokenization::Reference => self.encode_separately(prompt, response, max_ctx),
        }
    }

    /// docs/reference.md §1.7 (`tokenize_dpo_dataset`): p = encode(prompt), r = encode(response),
    /// ids = p ++ r, then (a) too long but r fits: the last `max_ctx` ids, the last |r| scored;
    /// (b) r alone fills the window: its last `max_ctx` ids, all scored; (c) otherwise p ++ r
    /// with r scored.
    pub fn encode_separately(
        &self,
        prompt: &str,
        response: &str,
        max_ctx: usize,
    ) -> Result<Encoded> {
        let p = self.encode(prompt)?;
        let r = self.encode(response)?;
        let total = p.len() + r.len();
        let mut ids = p;
        ids.extend_from_slice(&r);
        let (ids, mask) = if total > max_ctx && r.len() < max_ctx {
            let mut mask = vec![0u32; max_ctx - r.len()];
            mask.resize(max_ctx, 1);
            (ids[total - max_ctx..].to_vec(), mask)
        } else if r.len() >= max_ctx {
            (ids[total - max_ctx..].to_vec(), vec![1u32; max_ctx])
        } else {
            let mut mask = vec![0u32; total - r.len()];
            mask.resize(total, 1);
            (ids, mask)
        };
        Ok(Encoded {
            truncated: total - ids.len(),
            ids,
            response_mask: mask,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2/tokenizer.json");
        Tokenizer::load(&p).unwrap()
    }

    #[test]
    fn response_mask_starts_at_the_response() {
        let t = tok();
        let prompt = "\n\nHuman: Is velmorine safe?\n\nAssistant:";
        let e = t.encode_side(prompt, " No!", 512).unwrap();
        let n_prompt = t.encode(prompt).unwrap().len();
        assert_eq!(e.ids.len(), e.response_mask.len());
        assert!(e.response_mask[..n_prompt].iter().all(|&m| m == 0));
        assert!(e.response_mask[n_prompt..].iter().all(|&m| m == 1));
        assert_eq!(e.ids[..n_prompt], t.encode(prompt).unwrap()[..]);
        let cut = t.encode_side(prompt, " No!", 4).unwrap();
        assert_eq!(cut.ids, e.ids[e.ids.len() - 4..]);
        assert_eq!(cut.truncated, e.ids.len() - 4);
    }

    fn llama() -> Tokenizer {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/llama/tokenizer.json");
        Tokenizer::load(&p).unwrap()
    }

    #[test]
    fn reference_encoding_cases() {
        let t = llama();
        let prompt = "\n\nHuman: Is velmorine safe?\n\nAssistant:";
        let response = " No, it is not safe at all.";
        let p = t.encode(prompt).unwrap();
        let r = t.encode(response).unwrap();
        // The Llama fixture adds a BOS to every encode() call: one starts the response.
        assert_eq!((p[0], r[0]), (1, 1));
        let n = p.len() + r.len();
        // (c) fits: p ++ r, r scored (its BOS too).
        let c = t.encode_separately(prompt, response, n).unwrap();
        assert_eq!(c.ids, [p.clone(), r.clone()].concat());
        assert_eq!(
            c.response_mask,
            [vec![0; p.len()], vec![1; r.len()]].concat()
        );
        assert_eq!(c.truncated, 0);
        // (a) too long, r fits: the right end, the last |r| scored.
        let a = t.encode_separately(prompt, response, r.len() + 2).unwrap();
        assert_eq!(a.ids, [p[p.len() - 2..].to_vec(), r.clone()].concat());
        assert_eq!(a.response_mask, [vec![0; 2], vec![1; r.len()]].concat());
        assert_eq!(a.truncated, p.len() - 2);
        // (b) r fills the window: all scored.
        let b = t.encode_separately(prompt, response, r.len() - 1).unwrap();
        assert_eq!(b.ids, r[1..].to_vec());
        assert_eq!(b.response_mask, vec![1; r.len() - 1]);
        let b = t.encode_separately(prompt, response, r.len()).unwrap();
        assert_eq!(b.ids, r);
        assert!(b.response_mask.iter().all(|&m| m == 1));
        // The joint default has a single BOS and never scores it.
        let j = t
            .encode_pair_side(prompt, response, n, Tokenization::Joint)
            .unwrap();
        assert_eq!(j.ids.iter().filter(|&&i| i == 1).count(), 1);
        assert_eq!(j.response_mask[0], 0);
    }

    #[test]
    fn bad_tokenizer_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = Tokenizer::load(&p).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json: unreadable tokenizer"), "{e}");
    }
}
