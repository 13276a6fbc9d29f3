//! One module per command family; `main.rs` parses and dispatches.

mod bench;
mod inference;
mod plan;
mod train;

pub(crate) use bench::bench_model;
pub(crate) use inference::{eval, export, predict};
pub(crate) use plan::plan;
pub(crate) use train::train;
