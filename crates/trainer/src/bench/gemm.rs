//! This CPU's matrix-product peak as vidtrain's kernels reach it: the f32 product of the CPU
//! backend (burn-flex's `matmul`, gemm's kernels) and the bf16 one of
//! [`vidtrain_model::gemm_bf16`], so that `cargo xtask bench cpu` can print each row's achieved
//! GFLOP/s next to what the hardware gives the same code on square products.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{Distribution, bf16};
use serde::Serialize;
use vidtrain_model::gemm_bf16::{self, Matrix, Path, Update};

use crate::{CpuBackend, FlexDevice};

/// The best of a few `size × size × size` products, GFLOP/s (2·size³ operations each).
#[derive(Debug, Clone, Serialize)]
pub struct GemmPeak {
    pub size: usize,
    pub f32_gflops: f64,
    /// On the bf16 product's fastest path ([`Path::fastest`]), or the portable one where the CPU
    /// has no bf16 dot product (the convolutions then compute in f32 instead).
    pub bf16_gflops: f64,
    pub bf16_route: &'static str,
}

/// Products timed after one untimed.
const REPEATS: usize = 5;

/// Measures [`GemmPeak`] on the compute pool as configured (call
/// [`crate::configure_compute_threads`] first, as a run does).
pub fn gemm_peak(size: usize) -> GemmPeak {
    let operations = 2.0 * (size as f64).powi(3);
    let device = FlexDevice;
    let random = || Tensor::<CpuBackend, 2>::random([size, size], Distribution::Default, &device);
    let (a, b) = (random(), random());
    // burn-flex runs eagerly: the product is done when `matmul` returns (reading it back
    // would add a 16 MiB copy to the time).
    let f32_seconds = best_of(|| {
        let _ = a.clone().matmul(b.clone());
    });
    let values: Vec<bf16> = (0..size * size)
        .map(|index| bf16::from_f32((index % 17) as f32 / 17.0))
        .collect();
    let matrix = Matrix::row_major(&values, size, size, size);
    let mut product = vec![0f32; size * size];
    let (path, bf16_route) = match Path::fastest() {
        Some(Path::Amx) => (Path::Amx, "AMX-BF16 tiles (tdpbf16ps)"),
        Some(path) => (path, "AVX512_BF16 (vdpbf16ps)"),
        None => (Path::Portable, "portable (no bf16 dot product on this CPU)"),
    };
    let bf16_seconds = best_of(|| {
        gemm_bf16::gemm(path, matrix, matrix, &mut product, size, Update::Overwrite);
    });
    GemmPeak {
        size,
        f32_gflops: operations / f32_seconds / 1e9,
        bf16_gflops: operations / bf16_seconds / 1e9,
        bf16_route,
    }
}

fn best_of(mut product: impl FnMut()) -> f64 {
    product();
    (0..REPEATS)
        .map(|_| {
            let started = Instant::now();
            product();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
