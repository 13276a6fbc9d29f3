//! Benchmarks the CLI and `cargo xtask bench` run: one training step of a model at a given
//! shape (`model`), and the decode pipeline against ffmpeg alone (`pipeline`).

pub mod model;
pub mod pipeline;
