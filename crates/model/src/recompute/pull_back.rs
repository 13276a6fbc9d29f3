//! The scalar a recompute step differentiates to push a stretch's upstream gradient through its
//! graph, as one op of Burn's autodiff graph on the CPU (recorded through `crate::tracked_ops`).
//!
//! Differentiating `sum(output · upstream)` hands `upstream` to `output`'s node, but on burn-flex
//! it costs three passes of Burn's single-threaded ops over the output — the product, the sum
//! (in half precision through a scalar loop) and, in backward, the product of `upstream` with the
//! broadcast ones — while the other core waited: a tenth of ST-GCN's bf16 step with recompute.
//! The op's backward registers `upstream` itself (times the scalar's own gradient, 1 when it is
//! the root), so the gradients are bit for bit those of the product and sum.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;

use crate::tracked_ops::{
    flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// A scalar whose gradient with respect to `output` is `upstream`, when both are burn-flex
/// tensors under autodiff of one dtype and shape (`upstream` untracked): its value is 0, only
/// its gradient is meant to be used. Otherwise the two tensors back, for the caller's
/// `sum(output · upstream)`.
pub(super) fn pulled_back<B: Backend, const D: usize>(
    output: Tensor<B, D>,
    upstream: Tensor<B, D>,
) -> Result<Tensor<B, 1>, (Tensor<B, D>, Tensor<B, D>)> {
    if output.dtype() != upstream.dtype() || output.dims() != upstream.dims() {
        return Err((output, upstream));
    }
    let (Some(tracked), Some(gradient)) =
        (tracked_host(output.clone()), tracked_host(upstream.clone()))
    else {
        return Err((output, upstream));
    };
    let zero = flex(Tensor::<Flex, 1>::zeros([1], &Default::default()));
    let scalar = record(PullBack, [&tracked], zero, || gradient.primitive);
    Ok(from_tracked_host(scalar))
}

/// The op; its parent is the stretch's output, its state the upstream gradient.
#[derive(Debug)]
struct PullBack;

impl Backward<Flex, 1> for PullBack {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let scale = host::<1>(grads.consume::<Flex>(&ops.node))
            .into_scalar()
            .elem::<f32>();
        let [output_node, ..] = parent_ids(&ops);
        let gradient = if scale == 1.0 {
            ops.state
        } else {
            let upstream = host::<1>(ops.state);
            flex(upstream.mul_scalar(scale))
        };
        register(grads, output_node, Some(gradient));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, FloatDType};

    type B = Autodiff<TestBackend>;

    /// Differentiated, the op gives every tracked input the gradients `sum(output · upstream)`
    /// gives, bit for bit, in f32 and bf16, also under a scale on the scalar (the op's
    /// gradient is then the upstream times it).
    #[test]
    fn gives_the_gradients_of_the_product_and_sum() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let x = Tensor::<B, 3>::random([3, 4, 70], Distribution::Default, &device)
                .cast(dtype)
                .require_grad();
            let upstream =
                Tensor::<B, 3>::random([3, 4, 70], Distribution::Default, &device).cast(dtype);
            let output = || (x.clone() * 3.0).tanh();
            for scale in [1.0, 0.5] {
                let composed =
                    ((output() * upstream.clone()).sum().cast(FloatDType::F32) * scale).backward();
                let ours = (pulled_back(output(), upstream.clone())
                    .expect("burn-flex tensors under autodiff")
                    * scale)
                    .backward();
                let gradient = |grads| x.grad(&grads).expect("x is tracked").into_data();
                assert_eq!(
                    gradient(ours),
                    gradient(composed),
                    "{dtype:?}, scale {scale}"
                );
            }
        }
    }
}
