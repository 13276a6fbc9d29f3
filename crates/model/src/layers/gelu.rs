//! GELU (`x · Φ(x)`, the exact form with erf) on the CPU as one pass split across the compute
//! pool, forward and backward, and in training one op of Burn's autodiff graph (recorded through
//! `crate::tracked_ops`, decision 0016).
//!
//! burn-flex computes GELU one element at a time on one thread with libm's `erff`, and Burn's
//! autodiff differentiates it as a chain of element-wise ops (erf, exp, products): in a ViViT-S
//! step on the CPU (`bench-model --backbone vivit --image 112 --frames 8`) GELU was about a third
//! of the thread that runs element-wise work while the compute pool waited. Here erf and exp are
//! `crate::fast_math`'s branch-free polynomials (erf as PyTorch's vectorised CPU GELU computes
//! it), and the op keeps only its input, as Burn's does.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata, bf16, f16};
use rayon::prelude::*;

use crate::cpu_kernels::{HostFloat, cast, convert_into, filled, host_float, stored};
use crate::fast_math::{erf, exp};
use crate::tracked_ops::{
    KeptTensor, flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// Elements per task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 14;

/// `x · Φ(x)`. In training on the CPU one autodiff op ([`gelu_tracked`]); on the plain CPU
/// backend (evaluation) the same host pass; elsewhere Burn's `gelu`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if crate::cpu_kernels::host_tensors::<B>(&device) && host_float(x.dtype()) {
        if !B::ad_enabled(&device) {
            return forward_on_host(x);
        }
        if let Some(output) = gelu_tracked(x.clone()) {
            return output;
        }
    }
    burn::tensor::activation::gelu(x)
}

/// GELU as one autodiff op when `x` is a burn-flex tensor under autodiff, else `None`.
fn gelu_tracked<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<Tensor<B, D>> {
    let x = tracked_host(x)?;
    let input = host::<D>(x.primitive.clone());
    let output = flex(forward_on_host(input.clone()));
    let output = record(GeluOnHost, [&x], output, || KeptTensor::keep(flex(input)));
    Some(from_tracked_host(output))
}

/// The forward pass over a host tensor of f32, bf16 or f16, in its dtype.
fn forward_on_host<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::BF16 => map_as::<bf16, B, D>(x, gelu_value),
        DType::F16 => map_as::<f16, B, D>(x, gelu_value),
        _ => map_as::<f32, B, D>(x, gelu_value),
    }
}

/// `each` applied to every value of `x`, read and written as `T`, in parallel.
fn map_as<T: HostFloat, B: Backend, const D: usize>(
    x: Tensor<B, D>,
    each: impl Fn(f32) -> f32 + Sync,
) -> Tensor<B, D> {
    let (shape, device) = (x.shape(), x.device());
    let x = stored::<T, _, D>(x);
    let mut output = filled(x.len(), T::from_f32(0.0));
    convert_into(&x, &mut output, |x: T| T::from_f32(each(x.to_f32())));
    Tensor::from_data(TensorData::new(output, shape), (&device, T::dtype()))
}

/// The op; its state is the input.
#[derive(Debug)]
struct GeluOnHost;

impl Backward<Flex, 1> for GeluOnHost {
    type State = KeptTensor;

    fn backward(self, ops: Ops<KeptTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, ..] = parent_ids(&ops);
        if input_node.is_none() {
            return;
        }
        let shape = upstream.shape();
        let flat = |tensor: FlexTensor| {
            host::<1>(Flex::float_reshape(
                tensor,
                Shape::new([shape.num_elements()]),
            ))
        };
        let input = flat(ops.state.restore());
        let dtype = input.dtype();
        let upstream = cast(flat(upstream), dtype);
        let gradient = match dtype {
            DType::BF16 => gradient_as::<bf16>(input, upstream),
            DType::F16 => gradient_as::<f16>(input, upstream),
            _ => gradient_as::<f32>(input, upstream),
        };
        register(
            grads,
            input_node,
            Some(Flex::float_reshape(flex(gradient), shape)),
        );
    }
}

/// `∂y · GELU′(x)`, read and written as `T`.
fn gradient_as<T: HostFloat>(x: Tensor<Flex, 1>, upstream: Tensor<Flex, 1>) -> Tensor<Flex, 1> {
    let (shape, device) = (x.shape(), x.device());
    let x = stored::<T, _, 1>(x);
    let upstream = stored::<T, _, 1>(upstream);
    let mut gradient = filled(x.len(), T::from_f32(0.0));
    gradient
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(upstream.par_chunks(CHUNK)))
        .for_each(|(gradient, (x, upstream))| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    for ((gradient, &x), &upstream) in gradient.iter_mut().zip(x).zip(upstream) {
                        *gradient = T::from_f32(upstream.to_f32() * gelu_slope(x.to_f32()));
                    }
                },
            )
        });
    Tensor::from_data(TensorData::new(gradient, shape), (&device, T::dtype()))
}

/// `1 / √2`.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// `1 / √(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x · Φ(x) = x · (1 + erf(x / √2)) / 2`.
#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// GELU's derivative, `Φ(x) + x · φ(x)`.
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::tracked_ops::testing::assert_matches_burn;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, FloatDType, Tolerance};

    type B = Autodiff<TestBackend>;

    /// The op equals Burn's `gelu` under autodiff: output and input gradient, in f32 to 1e-6 and
    /// in bf16 and f16 to their resolution; evaluation (no autodiff) takes the same pass.
    #[test]
    fn equals_burns_gelu_forward_and_backward() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for (dtype, tolerance) in [
            (FloatDType::F32, Tolerance::rel_abs(1e-6, 1e-6)),
            (FloatDType::BF16, Tolerance::rel_abs(1e-2, 1e-2)),
            (FloatDType::F16, Tolerance::rel_abs(2e-3, 2e-3)),
        ] {
            let x = Tensor::<B, 3>::random([3, 70, 129], Distribution::Normal(0.0, 3.0), &device)
                .cast(dtype)
                .detach();
            let upstream =
                Tensor::<B, 3>::random([3, 70, 129], Distribution::Default, &device).cast(dtype);
            assert_matches_burn(
                x,
                upstream,
                |x| gelu_tracked(x).expect("burn-flex under autodiff"),
                burn::tensor::activation::gelu,
                gelu,
                tolerance,
            );
        }
    }
}
