//! Mixed precision inside one backend. Burn 0.21 has no autocast; on backends whose tensors carry
//! their dtype at run time (CUDA, burn-flex on the CPU), one `Autodiff<B>` model holds f32 master
//! weights, and each layer computes in its input's dtype: the model input is cast to the compute dtype (bf16
//! or f16) once, and every weight is cast to the activation's dtype where it is used. The cast is
//! an autodiff operation whose backward casts the gradient back, so gradients arrive in f32 on the
//! f32 masters and the optimizer state stays f32. Normalisation statistics, softmax, pooling means
//! and the loss run in f32 (their inputs are cast up and the results cast back down).
//!
//! Binary operations in Burn do not promote dtypes: a missing cast is an error, not a silent
//! promotion. The CPU backend (burn-flex) holds f32, f64, f16 and bf16 in one backend the same
//! way, so the same code trains in half precision on the CPU, and the plumbing is tested there
//! in f64 (tightly) and in f16/bf16 (within their rounding).

use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, FloatDType};

use crate::cpu_kernels::cast;

mod tracked_layer_norm;
mod tracked_linear;

pub(crate) use tracked_layer_norm::LAYER_NORM_EPSILON;

/// `x · W + b` with the weights cast to `x`'s dtype. In training on the CPU (burn-flex under
/// autodiff), one op whose products are vidtrain's kernels (`tracked_linear`): bf16 activations
/// multiply in bf16 where the CPU has the instruction.
pub(crate) fn linear<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let device = x.device();
    if B::ad_enabled(&device) && crate::cpu_kernels::host_tensors::<B>(&device) {
        let bias = layer.bias.as_ref().map(|bias| bias.val());
        if let Some(output) = tracked_linear::linear_tracked(x.clone(), layer.weight.val(), bias) {
            return output;
        }
    }
    linear_composed(layer, x)
}

/// `x · W` over the last axis of `x` (`W`: `[in, out]`, f32 masters or made from them): on the CPU
/// in training [`tracked_linear`]'s op (vidtrain's products, bf16 ones on the bf16 kernel, and
/// its input kept in `model.activation_bits` where that applies), elsewhere Burn's product with
/// `W` cast to `x`'s dtype. ST-GCN's graph aggregation.
pub(crate) fn product<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
) -> Tensor<B, D> {
    let device = x.device();
    if B::ad_enabled(&device)
        && crate::cpu_kernels::host_tensors::<B>(&device)
        && let Some(output) = tracked_linear::linear_tracked(x.clone(), weight.clone(), None)
    {
        return output;
    }
    let weight = like(weight, &x);
    burn::tensor::module::linear(x, weight, None)
}

/// [`linear`] as Burn's composition: the weights cast to `x`'s dtype, then `linear` (devices,
/// evaluation, `VIDTRAIN_CPU_KERNELS=reference`, and the reference the op is tested against).
pub(crate) fn linear_composed<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    burn::tensor::module::linear(
        x,
        layer.weight.val().cast(dtype),
        layer.bias.as_ref().map(|bias| bias.val().cast(dtype)),
    )
}

/// LayerNorm computed in f32, result in `x`'s dtype. On the CPU one pass over rows in parallel
/// (`tracked_layer_norm`), in training one autodiff op.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let device = x.device();
    if B::ad_enabled(&device) && crate::cpu_kernels::host_tensors::<B>(&device) {
        if let Some(output) = tracked_layer_norm::layer_norm_tracked(norm, x.clone()) {
            return output;
        }
    } else if crate::cpu_kernels::enabled::<B>(&device) {
        match tracked_layer_norm::layer_norm_on_host(norm, x) {
            Ok(output) => return output,
            Err(x) => return layer_norm_composed(norm, x),
        }
    }
    layer_norm_composed(norm, x)
}

/// [`layer_norm`] as Burn's composition: `x` cast to f32, Burn's LayerNorm, the result cast back
/// (devices, `VIDTRAIN_CPU_KERNELS=reference`, and the reference the op is tested against).
pub(crate) fn layer_norm_composed<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    cast(norm.forward(cast(x, FloatDType::F32)), dtype)
}

/// Softmax over `dim` computed in f32, result in `x`'s dtype.
pub(crate) fn softmax_f32<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let dtype = x.dtype();
    cast(softmax(cast(x, FloatDType::F32), dim), dtype)
}

/// Mean over `dim` (kept, size 1) accumulated in f32, result in `x`'s dtype. burn-flex already
/// accumulates a half-precision mean in f32 and rounds once, so on the CPU the mean is taken as
/// stored: casting a tracked tensor there goes through Burn's cast, an f64 copy of the whole
/// tensor on one thread, forward and again for its gradient (the seed model's bf16 step held
/// about 300 MiB of such copies for the mean over the stem's output at 224 px, batch 4).
pub(crate) fn mean_dim_f32<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    dim: usize,
) -> Tensor<B, D> {
    if dim == D - 1
        && let Some(means) = crate::layers::mean_pool::mean_last_axis(x.clone())
    {
        return means;
    }
    let dtype = x.dtype();
    if dtype == DType::F32 || crate::cpu_kernels::computes_on_host::<B>(&x.device()) {
        return x.mean_dim(dim);
    }
    cast(cast(x, FloatDType::F32).mean_dim(dim), dtype)
}

/// A parameter (or constant) in the dtype of the activation it meets.
pub(crate) fn like<B: Backend, const D: usize, const E: usize>(
    tensor: Tensor<B, D>,
    activation: &Tensor<B, E>,
) -> Tensor<B, D> {
    tensor.cast(activation.dtype())
}
