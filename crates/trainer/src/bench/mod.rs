//! Benchmarks the CLI and `cargo xtask bench` run: one training step of a model at a given
//! shape (`model`), the decode pipeline against ffmpeg alone (`pipeline`), and this CPU's
//! matrix-product peak (`gemm`).

pub mod gemm;
pub mod model;
pub mod pipeline;
