//! `w2s w2s-train`: a strong student trained on a teacher's soft labels of the w2s split,
//! with no conflict or one of the conflicting objectives (reference-spec §2.3, paper App. P):
//! `explicit` (alpha-weighted pull toward the ground-truth-rejected side while the student is
//! right), `implicit` (helpful pairs mixed in) and `adaptive` (|2 M_teacher - 1| weights).

use super::rm_train::{self, RmTrainSettings, TrainReport};
use super::Scenario;
use crate::error::{Error, Result};
use crate::store::ArtifactStore;

/// Trains the student; `s.teacher` names the labelling run.
pub async fn run(
    store: &ArtifactStore,
    scenario: Scenario,
    s: &RmTrainSettings,
    force: bool,
) -> Result<TrainReport> {
    scenario.require_rm("w2s-train")?;
    if s.teacher.is_none() {
        return Err(Error::Config("w2s-train needs --teacher RUN_ID".into()));
    }
    rm_train::run(store, s, force).await
}
