//! Dropout in training on the CPU as one op of Burn's autodiff graph (recorded through
//! `crate::tracked_ops`, decision 0016): the mask is applied as the values are copied, in
//! parallel, and redrawn from its seed in backward instead of being kept.
//!
//! Multiplying by a mask tensor (the composition, `dropout_composed`) keeps that mask for
//! backward — a whole activation per use: in an encoder block two token-sized masks and one of
//! the feed-forward's hidden values, about a fifth of what the block keeps — and runs burn-flex's
//! multiplication on one thread.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata, bf16, f16};
use rayon::prelude::*;

use super::DropMask;
use crate::cpu_kernels::{HostFloat, filled, stored};
use crate::tracked_ops::{
    flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// Elements per task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 15;

/// `input` with `mask` applied, as one autodiff op, when `input` is a burn-flex tensor under
/// autodiff (of f32, bf16 or f16: the caller checks); otherwise `input` back.
pub(super) fn dropout_tracked<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    mask: DropMask,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let Some(tracked) = tracked_host(input.clone()) else {
        return Err(input);
    };
    let shape = tracked.primitive.shape();
    let values = host::<1>(Flex::float_reshape(
        tracked.primitive.clone(),
        Shape::new([shape.num_elements()]),
    ));
    let output = Flex::float_reshape(flex(masked(values, &mask)), shape);
    let output = record(DropoutOnHost, [&tracked], output, || mask);
    Ok(from_tracked_host(output))
}

/// `values` (flat) times the mask's factors, in their dtype.
fn masked(values: Tensor<Flex, 1>, mask: &DropMask) -> Tensor<Flex, 1> {
    match values.dtype() {
        DType::BF16 => masked_as::<bf16>(values, mask),
        DType::F16 => masked_as::<f16>(values, mask),
        _ => masked_as::<f32>(values, mask),
    }
}

/// Each value times 0 or `1 / (1 − p)` (rounded to `T`, as the mask tensor holds it) by its
/// index, the product rounded to `T`.
fn masked_as<T: HostFloat>(values: Tensor<Flex, 1>, mask: &DropMask) -> Tensor<Flex, 1> {
    let (shape, device) = (values.shape(), values.device());
    let values = stored::<T, _, 1>(values);
    let kept = T::from_f32(mask.scale as f32).to_f32();
    let mut output = filled(values.len(), T::from_f32(0.0));
    output
        .par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (output, values))| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    let first = chunk * CHUNK;
                    for (index, (output, &value)) in output.iter_mut().zip(values).enumerate() {
                        let factor = if mask.dropped(first + index) {
                            0.0
                        } else {
                            kept
                        };
                        *output = T::from_f32(value.to_f32() * factor);
                    }
                },
            )
        });
    Tensor::from_data(TensorData::new(output, shape), (&device, T::dtype()))
}

/// The op; its state is the mask (a seed and a threshold).
#[derive(Debug)]
struct DropoutOnHost;

impl Backward<Flex, 1> for DropoutOnHost {
    type State = DropMask;

    fn backward(self, ops: Ops<DropMask, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, ..] = parent_ids(&ops);
        if input_node.is_none() {
            return;
        }
        let shape = upstream.shape();
        let upstream = host::<1>(Flex::float_reshape(
            upstream,
            Shape::new([shape.num_elements()]),
        ));
        let gradient = masked(upstream, &ops.state);
        register(
            grads,
            input_node,
            Some(Flex::float_reshape(flex(gradient), shape)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::layers::dropout::dropout_composed;
    use burn::backend::Autodiff;
    use burn::nn::DropoutConfig;
    use burn::tensor::{Distribution, FloatDType};

    type B = Autodiff<TestBackend>;

    /// The op equals the composition (the input times the mask tensor drawn from the same seed)
    /// exactly, output and input gradient, in f32, bf16 and f16.
    #[test]
    fn equals_the_mask_tensor_composition() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let module = DropoutConfig::new(0.3).init();
        for dtype in [FloatDType::F32, FloatDType::BF16, FloatDType::F16] {
            let x = Tensor::<B, 3>::random([3, 70, 333], Distribution::Default, &device)
                .cast(dtype)
                .detach();
            let upstream =
                Tensor::<B, 3>::random([3, 70, 333], Distribution::Default, &device).cast(dtype);
            let run = |forward: &dyn Fn(Tensor<B, 3>) -> Tensor<B, 3>| {
                let x = x.clone().require_grad();
                TestBackend::seed(&device, 5);
                let output = forward(x.clone());
                assert_eq!(output.dtype(), DType::from(dtype));
                let grads = (output.clone() * upstream.clone()).sum().backward();
                let gradient = x.grad(&grads).expect("the input is tracked");
                (output.inner(), gradient)
            };
            let ours = run(&|x| {
                let mask = DropMask::draw::<B>(module.prob, &device);
                dropout_tracked(x, mask).expect("burn-flex under autodiff")
            });
            let composed = run(&|x| dropout_composed(&module, x));
            let as_f32 = |tensor: Tensor<TestBackend, 3>| tensor.cast(FloatDType::F32).into_data();
            as_f32(ours.0).assert_eq(&as_f32(composed.0), true);
            as_f32(ours.1).assert_eq(&as_f32(composed.1), true);
        }
    }
}
