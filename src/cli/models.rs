//! `w2s convert` and `w2s lora-merge`: checkpoints in, Hugging Face folders out.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::models::save::SaveExtras;
use crate::models::Model;

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct ConvertArgs {
    /// The model to read: a local folder, an s3:// or http(s):// prefix, or hf://owner/name.
    #[arg(long)]
    pub model: String,
    /// Folder to write (replaced atomically if it exists).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct LoraMergeArgs {
    /// The base model: a local folder, an s3:// or http(s):// prefix, or hf://owner/name.
    #[arg(long)]
    pub model: String,
    /// Adapter folder (adapter_config.json, adapter_model.safetensors), PEFT layout.
    #[arg(long)]
    pub adapter: std::path::PathBuf,
    /// Folder to write (replaced atomically if it exists).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// A model location as a local folder, and that folder's tokenizer.json if it has one.
async fn model_folder(location: &str) -> Result<(std::path::PathBuf, Option<std::path::PathBuf>)> {
    let dir = crate::models::source::materialize(location).await?;
    let tok = dir.join("tokenizer.json");
    Ok((dir, tok.exists().then_some(tok)))
}

pub async fn convert(a: ConvertArgs) -> Result<()> {
    let (dir, tok) = model_folder(&a.model).await?;
    let model = Model::load_frozen(&dir, &candle_core::Device::Cpu)?;
    let extras = SaveExtras {
        tokenizer: tok.as_deref(),
        reward_head: None,
        provenance: serde_json::json!({ "converted_from": a.model }),
    };
    model.save(&a.out, &extras)?;
    println!(
        "{} ({}, {} tensors) -> {}",
        a.model,
        model.config.model_type(),
        model.tensors().len(),
        a.out.display()
    );
    Ok(())
}

pub async fn lora_merge(a: LoraMergeArgs) -> Result<()> {
    let (dir, tok) = model_folder(&a.model).await?;
    let model = Model::load_with_adapter(&dir, &a.adapter, &candle_core::Device::Cpu)?;
    let extras = SaveExtras {
        tokenizer: tok.as_deref(),
        reward_head: None,
        provenance: serde_json::json!({
            "merged_from": { "base": a.model, "adapter": a.adapter.display().to_string() },
        }),
    };
    model.save_merged(&a.out, &extras)?;
    println!(
        "{} + adapter {} ({} adapter tensors) -> {}",
        a.model,
        a.adapter.display(),
        model.params().len(),
        a.out.display()
    );
    Ok(())
}
