//! Hugging Face `config.json` for the supported families, with the defaults transformers uses
//! when a key is absent. Unknown architectures and unsupported options are errors that name
//! the key.

use serde::Deserialize;

use crate::error::{Error, Result};

fn d_true() -> bool {
    true
}
fn d_ln_eps() -> f64 {
    1e-5
}
fn d_rms_eps() -> f64 {
    1e-6
}
fn d_gelu_new() -> String {
    "gelu_new".into()
}
fn d_relu() -> String {
    "relu".into()
}
fn d_silu() -> String {
    "silu".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "d_ln_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_gelu_new")]
    pub activation_function: String,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "d_true")]
    pub do_layer_norm_before: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    #[serde(default = "d_relu")]
    pub activation_function: String,
    #[serde(default = "d_true")]
    pub enable_bias: bool,
    #[serde(default = "d_true")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
}

impl OptConfig {
    /// Width of token embeddings and of the backbone output (after `project_out`).
    pub fn proj_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }
}

/// Llama-3.1 style rope scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers < 5: `rope_scaling`; transformers 5: `rope_parameters` (holding theta too).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn rope_field(&self, key: &str) -> Option<&serde_json::Value> {
        self.rope_scaling
            .as_ref()
            .and_then(|v| v.get(key))
            .or_else(|| self.rope_parameters.as_ref().and_then(|v| v.get(key)))
    }
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_field("rope_theta").and_then(|v| v.as_f64()))
            .unwrap_or(10_000.0)
    }
    /// The llama3 scaling, `None` for plain rope; other rope types are errors.
    pub fn llama3_scaling(&self) -> Result<Option<Llama3Scaling>> {
        let kind = self
            .rope_field("rope_type")
            .or_else(|| self.rope_field("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        match kind {
            "default" => Ok(None),
            "llama3" => {
                let f = |k: &str| {
                    self.rope_field(k).and_then(|v| v.as_f64()).ok_or_else(|| {
                        Error::Config(format!("config.json: rope_scaling.{k} is missing"))
                    })
                };
                Ok(Some(Llama3Scaling {
                    factor: f("factor")?,
                    low_freq_factor: f("low_freq_factor")?,
                    high_freq_factor: f("high_freq_factor")?,
                    original_max_position_embeddings: f("original_max_position_embeddings")?,
                }))
            }
            other => Err(Error::Config(format!(
                "config.json: rope_type `{other}` is not supported (default, llama3)"
            ))),
        }
    }
}

/// A parsed config of one of the supported families.
#[derive(Debug, Clone, PartialEq)]
pub enum Config {
    Gpt2(Gpt2Config),
    Opt(OptConfig),
    /// Llama and Mistral share one implementation; `model_type` is kept for saving.
    Llama(LlamaConfig, String),
}

impl Config {
    /// Parses config.json text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config> {
        let err = |msg: String| Error::Model {
            file: file.to_string(),
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let model_type = v
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| err("missing field `model_type`".into()))?
            .to_string();
        let bad = |e: serde_json::Error| err(e.to_string());
        let config = match model_type.as_str() {
            "gpt2" => Config::Gpt2(serde_json::from_value(v).map_err(bad)?),
            "opt" => Config::Opt(serde_json::from_value(v).map_err(bad)?),
            "llama" | "mistral" => Config::Llama(serde_json::from_value(v).map_err(bad)?, model_type),
            other => {
                return Err(err(format!(
                    "unsupported architecture `{other}` in field `model_type` (supported: gpt2, opt, llama, mistral)"
                )))
            }
        };
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Config::Gpt2(c) => {
                if c.n_embd % c.n_head != 0 {
                    return Err("field `n_embd` must be a multiple of `n_head`".into());
                }
                if !matches!(
                    c.activation_function.as_str(),
                    "gelu_new" | "gelu_pytorch_tanh"
                ) {
                    return Err(format!(
                        "field `activation_function`: `{}` is not supported (gelu_new)",
                        c.activation_function
                    ));
                }
            }
            Config::Opt(c) => {
                if c.hidden_size % c.num_attention_heads != 0 {
                    return Err(
                        "field `hidden_size` must be a multiple of `num_attention_heads`".into(),
                    );
                }
                if c.activation_function != "relu" {
                    return Err(format!(
                        "field `activation_function`: `{}` is not supported (relu)",
                        c.activation_function
                    ));
                }
                if !c.enable_bias || !c.layer_norm_elementwise_affine {
                    return Err(
                        "fields `enable_bias` and `layer_norm_elementwise_affine` must be true"
                            .into(),
                    );
                }
            }
            Config::Llama(c, _) => {
                if c.num_attention_heads % c.kv_heads() != 0 {
                    return Err(
                        "field `num_attention_heads` must be a multiple of `num_key_value_heads`"
                            .into(),
                    );
                }
                if c.hidden_act != "silu" {
                    return Err(format!(
                        "field `hidden_act`: `{}` is not supported (silu)",
                        c.hidden_act
                    ));
                }
                if c.attention_bias || c.mlp_bias {
                    return Err("fields `attention_bias` and `mlp_bias` must be false".into());
                }
            }
        }
        Ok(())
    }

    pub fn model_type(&self) -> &str {
        match self {
            Config::Gpt2(_) => "gpt2",
            Config::Opt(_) => "opt",
            Config::Llama(_, t) => t,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Config::Gpt2(c) => c.vocab_size,
            Config::Opt(c) => c.vocab_size,
            Config::Llama(c, _) => c.vocab_size,
        }
    }

    /// Width of the backbone output that a reward head reads.
    pub fn hidden_width(&self) -> usize {
        match self {
            Config::Gpt2(c) => c.n_embd,
            Config::Opt(c) => c.proj_dim(),
            Config::Llama(c, _) => c.hidden_size,
        }
    }

    /// Longest sequence the model's positions allow.
    pub fn max_positions(&self) -> usize {
        match self {
            Config::Gpt2(c) => c.n_positions,
            Config::Opt(c) => c.max_position_embeddings,
            Config::Llama(c, _) => c.max_position_embeddings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_architecture_names_the_field() {
        let e = Config::parse("c.json", r#"{"model_type": "bert"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported architecture `bert` in field `model_type`"),
            "{e}"
        );
        let e = Config::parse("c.json", r#"{"model_type": "gpt2", "n_embd": 8}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.json: missing field"), "{e}");
    }

    #[test]
    fn rope_parameters_in_both_layouts() {
        let old = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32,
            "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let Config::Llama(c, _) = Config::parse("c", old).unwrap() else {
            panic!()
        };
        assert_eq!(c.rope_theta(), 500000.0);
        assert_eq!(c.llama3_scaling().unwrap().unwrap().factor, 8.0);
        let new = r#"{"model_type":"mistral","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32,
            "rope_parameters":{"rope_type":"default","rope_theta":10000.0}}"#;
        let Config::Llama(c, t) = Config::parse("c", new).unwrap() else {
            panic!()
        };
        assert_eq!(t, "mistral");
        assert_eq!(c.rope_theta(), 10000.0);
        assert!(c.llama3_scaling().unwrap().is_none());
    }
}
