//! Tokenization of pair sides with a response mask.
//!
//! Default: the whole text `prompt + response` is encoded once (with the tokenizer's special
//! tokens), and a token belongs to the response when it covers any byte after the prompt. This
//! is what the model saw in pretraining. The reference's separate encoding of prompt and
//! response (reference-spec §1.7) is a compatibility setting added with the preference scenario.

use std::path::Path;

use crate::error::{Error, Result};

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

    #[test]
    fn bad_tokenizer_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = Tokenizer::load(&p).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json: unreadable tokenizer"), "{e}");
    }
}
