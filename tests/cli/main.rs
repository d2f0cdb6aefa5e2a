//! End-to-end tests of the `w2s` binary. One test binary (modules below) keeps link time low.

mod analyze;
mod bad_inputs;
mod bench;
mod common;
mod faults;
mod pipeline;
mod po;
mod precision;
mod pretrain;
mod remote;
mod report;
mod rm;
mod score;
mod split;
mod split_bad_input;
mod sql;
