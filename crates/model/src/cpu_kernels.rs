//! Whether vidtrain's own CPU kernels replace compositions of Burn ops (`layers::conv_gemm`, ...).
//!
//! They run where the backend computes on the host (burn-flex) and read tensors as host slices;
//! on any other backend (CUDA) the Burn composition runs. `VIDTRAIN_CPU_KERNELS=reference` turns
//! them off for a whole process, so a run can be compared with the composition they replace
//! (the unit tests call both paths directly).

use burn::prelude::*;

/// Whether the fast CPU kernels serve tensors of backend `B` on `device`.
pub fn enabled<B: Backend>(device: &B::Device) -> bool {
    static REFERENCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let reference = *REFERENCE.get_or_init(|| {
        std::env::var("VIDTRAIN_CPU_KERNELS").is_ok_and(|value| value == "reference")
    });
    !reference && B::name(device) == "flex"
}
