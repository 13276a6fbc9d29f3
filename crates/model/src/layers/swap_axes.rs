//! Axes 1 and 2 of a `[n, a, b, l]` tensor exchanged into a new contiguous tensor `[n, b, a, l]`,
//! on the CPU as one parallel copy of `l`-long runs each way, and in training one op of Burn's
//! autodiff graph (recorded through `crate::tracked_ops`, decision 0016).
//!
//! ST-GCN's graph convolution puts its partitions next to the joints before one product over
//! both (`layers::graph`). Burn's `swap_dims` is a view; the `reshape` after it made burn-flex
//! copy the view value by value through its strided iterator on one thread, forward and again
//! for the gradient: a quarter of ST-GCN's bf16 step (`perf`, stop 43). The op keeps nothing.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16, f16};
use rayon::prelude::*;

use crate::cpu_kernels::{HostFloat, host_float, stored};
use crate::tracked_ops::{
    flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// `x.swap_dims(1, 2)` for `x: [n, a, b, l]`, contiguous: on the CPU's host pass where it serves
/// `x` (burn-flex, plain or under autodiff, f32/bf16/f16), else Burn's view.
pub fn swap_middle_axes<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let device = x.device();
    if crate::cpu_kernels::host_tensors::<B>(&device) && host_float(x.dtype()) {
        if !B::ad_enabled(&device) {
            return swapped_on_host(x);
        }
        if let Some(tracked) = tracked_host(x.clone()) {
            let input = host::<4>(tracked.primitive.clone());
            let output = flex(swapped_on_host(input));
            return from_tracked_host(record(SwapMiddleAxes, [&tracked], output, || ()));
        }
    }
    x.swap_dims(1, 2)
}

/// The exchange over a host tensor of f32, bf16 or f16, in its dtype.
fn swapped_on_host<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    match x.dtype() {
        DType::BF16 => swapped_as::<bf16, B>(x),
        DType::F16 => swapped_as::<f16, B>(x),
        _ => swapped_as::<f32, B>(x),
    }
}

/// `[n, a, b, l]` read as `T` into `[n, b, a, l]`: each output block of `a` runs (one `n`, one
/// `b`) is filled by one task.
fn swapped_as<T: HostFloat, B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let ([n, a, b, l], device) = (x.dims(), x.device());
    let input = stored::<T, _, 4>(x);
    let mut output = vec![T::from_f32(0.0); input.len()];
    if l > 0 && a > 0 {
        output
            .par_chunks_mut(a * l)
            .enumerate()
            .for_each(|(block, output)| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let (item, column) = (block / b.max(1), block % b.max(1));
                        for (row, output) in output.chunks_exact_mut(l).enumerate() {
                            let start = ((item * a + row) * b + column) * l;
                            output.copy_from_slice(&input[start..start + l]);
                        }
                    },
                )
            });
    }
    Tensor::from_data(TensorData::new(output, [n, b, a, l]), (&device, T::dtype()))
}

/// The op: the gradient of the exchanged tensor, exchanged back.
#[derive(Debug)]
struct SwapMiddleAxes;

impl Backward<Flex, 1> for SwapMiddleAxes {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, ..] = parent_ids(&ops);
        if input_node.is_none() {
            return;
        }
        let gradient = swapped_on_host(host::<4>(upstream));
        register(grads, input_node, Some(flex(gradient)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::tracked_ops::testing::assert_matches_burn;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, FloatDType, Tolerance};

    type B = Autodiff<TestBackend>;

    /// The op equals Burn's `swap_dims(1, 2)` under autodiff, values and input gradient exactly,
    /// in f32, bf16 and f16, for an input that is itself a view (read through a copy); without
    /// autodiff it gives the same values.
    #[test]
    fn equals_burns_swap_dims_forward_and_backward() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for dtype in [FloatDType::F32, FloatDType::BF16, FloatDType::F16] {
            for transposed in [false, true] {
                let x = Tensor::<B, 4>::random([2, 3, 5, 7], Distribution::Default, &device)
                    .cast(dtype)
                    .detach();
                let x = if transposed { x.swap_dims(0, 3) } else { x };
                let [n, a, b, l] = x.dims();
                let upstream = Tensor::<B, 4>::random([n, b, a, l], Distribution::Default, &device)
                    .cast(dtype);
                assert_matches_burn(
                    x,
                    upstream,
                    swap_middle_axes,
                    |x| x.swap_dims(1, 2),
                    swap_middle_axes,
                    Tolerance::rel_abs(0.0, 0.0),
                );
            }
        }
    }
}
