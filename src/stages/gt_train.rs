//! `w2s gt-train`: a ceiling model trained on the ground-truth split (reference-spec §2:
//! `train_reward_model.py` without `--weak_model_size`). Its labels on the w2s split
//! (`w2s weak-label`) make it a teacher; its scores on the test split are its ceiling.

use super::rm_train::{self, RmTrainSettings, TrainReport};
use super::Scenario;
use crate::error::Result;
use crate::scenarios::rm::Objective;
use crate::store::ArtifactStore;

/// Trains the ceiling model; `s.teacher` must be `None` and the objective `none`.
pub async fn run(
    store: &ArtifactStore,
    scenario: Scenario,
    s: &RmTrainSettings,
    force: bool,
) -> Result<TrainReport> {
    scenario.require_rm("gt-train")?;
    debug_assert!(s.teacher.is_none() && s.objective == Objective::None);
    rm_train::run(store, s, force).await
}
