//! The training scenarios: what a sample is, how a model reads it and what the loss is.
//! Stages (`crate::stages`) wire them to artifacts; the shared optimizer loop is `crate::train`.

pub mod po;
pub mod rm;
