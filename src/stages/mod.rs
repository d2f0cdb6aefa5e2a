//! Pipeline stages, one per file. Each is a function of its settings and its input artifacts
//! to outputs published through the artifact store with a manifest.

pub mod analyze;
pub mod common;
pub mod gt_train;
pub mod po_train;
pub mod pretrain;
pub mod report;
pub mod rm_train;
pub mod score;
pub mod split;
pub mod uncertainty;
pub mod w2s_train;
pub mod weak_label;

/// The training scenarios.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Reward modeling (paper §4).
    Rm,
    /// SFT then SimPO (paper §5; issue 7).
    Simpo,
    /// SFT then DPO (paper §5; issue 7).
    Dpo,
}

impl Scenario {
    /// Refuses the scenarios that are not built yet (the preference scenario, issue 7);
    /// `stage` names the command.
    pub fn require_rm(self, stage: &str) -> crate::error::Result<()> {
        match self {
            Scenario::Rm => Ok(()),
            Scenario::Simpo => Err(crate::error::Error::NotImplemented(format!(
                "{stage} --scenario simpo"
            ))),
            Scenario::Dpo => Err(crate::error::Error::NotImplemented(format!(
                "{stage} --scenario dpo"
            ))),
        }
    }
}
