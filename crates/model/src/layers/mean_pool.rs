//! The mean over a tensor's last axis — global average pooling: the seed transformer's frames over
//! their positions, the 3-D ResNet's and ST-GCN's clips over time and space — on the CPU as one
//! pass split across the compute pool each way, and in training one op of Burn's autodiff graph
//! (recorded through `crate::tracked_ops`, decision 0016).
//!
//! Burn differentiates `mean_dim` by broadcasting the upstream gradient to the input's shape
//! through burn-flex's strided binary op, one element at a time on one thread: 8 % of the seed
//! model's bf16 step at 224 px (`perf`, stop 43), for a gradient that is one value per row
//! written `l` times. The op keeps nothing but the shape, as Burn's does.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorData, bf16, f16};
use rayon::prelude::*;

use crate::cpu_kernels::{HostFloat, cast, host_float, stored};
use crate::layers::norm_relu_host::lane_sum;
use crate::tracked_ops::{
    flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// Rows per task when rows are short: enough values that a task outweighs its scheduling.
const VALUES_PER_TASK: usize = 1 << 14;

/// `x.mean_dim(D - 1)` (the last axis kept, of size 1), summed in f32 and stored in `x`'s dtype,
/// on the CPU's host pass; `None` where that pass does not serve `x` (another backend, another
/// dtype, `VIDTRAIN_CPU_KERNELS=reference`, or a tracked tensor of a backend other than
/// burn-flex under autodiff) — the caller then takes Burn's `mean_dim`.
pub(crate) fn mean_last_axis<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<Tensor<B, D>> {
    let device = x.device();
    if !crate::cpu_kernels::host_tensors::<B>(&device) || !host_float(x.dtype()) {
        return None;
    }
    if !B::ad_enabled(&device) {
        return Some(forward_on_host(x));
    }
    let tracked = tracked_host(x)?;
    let input = host::<D>(tracked.primitive.clone());
    let (shape, dtype) = (input.shape(), input.dtype());
    let output = flex(forward_on_host(input));
    let output = record(MeanLastAxis, [&tracked], output, || (shape, dtype));
    Some(from_tracked_host(output))
}

/// The forward pass over a host tensor of f32, bf16 or f16, in its dtype.
fn forward_on_host<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::BF16 => means_as::<bf16, B, D>(x),
        DType::F16 => means_as::<f16, B, D>(x),
        _ => means_as::<f32, B, D>(x),
    }
}

/// Each row's mean (a row: the last axis), read and written as `T`.
fn means_as<T: HostFloat, B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let (mut dims, device) = (x.dims(), x.device());
    let length = dims[D - 1];
    dims[D - 1] = 1;
    let values = stored::<T, _, D>(x);
    let rows = values.len() / length.max(1);
    let mut means = vec![T::from_f32(0.0); rows];
    let rows_per_task = VALUES_PER_TASK.div_ceil(length.max(1));
    means
        .par_chunks_mut(rows_per_task)
        .zip(values.par_chunks(rows_per_task * length.max(1)))
        .for_each(|(means, values)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    for (mean, row) in means.iter_mut().zip(values.chunks_exact(length)) {
                        *mean = T::from_f32((lane_sum(row, |v| v) / length as f64) as f32);
                    }
                },
            )
        });
    Tensor::from_data(TensorData::new(means, dims), (&device, T::dtype()))
}

/// The op; its state is the input's shape and dtype.
#[derive(Debug)]
struct MeanLastAxis;

impl Backward<Flex, 1> for MeanLastAxis {
    type State = (Shape, DType);

    fn backward(self, ops: Ops<(Shape, DType), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, ..] = parent_ids(&ops);
        if input_node.is_none() {
            return;
        }
        let (shape, dtype) = ops.state;
        let length = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / length.max(1);
        let upstream = host::<1>(Flex::float_reshape(upstream, Shape::new([rows])));
        let upstream = cast(upstream, dtype);
        let gradient = match dtype {
            DType::BF16 => spread_as::<bf16>(upstream, length),
            DType::F16 => spread_as::<f16>(upstream, length),
            _ => spread_as::<f32>(upstream, length),
        };
        register(
            grads,
            input_node,
            Some(Flex::float_reshape(flex(gradient), shape)),
        );
    }
}

/// Each row's upstream gradient divided by the row's length, written over the row.
fn spread_as<T: HostFloat>(upstream: Tensor<Flex, 1>, length: usize) -> Tensor<Flex, 1> {
    let device = upstream.device();
    let upstream = stored::<T, _, 1>(upstream);
    let mut gradient = vec![T::from_f32(0.0); upstream.len() * length];
    let rows_per_task = VALUES_PER_TASK.div_ceil(length.max(1));
    gradient
        .par_chunks_mut(rows_per_task * length.max(1))
        .zip(upstream.par_chunks(rows_per_task))
        .for_each(|(gradient, upstream)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    for (row, &g) in gradient.chunks_exact_mut(length).zip(upstream) {
                        row.fill(T::from_f32(g.to_f32() / length as f32));
                    }
                },
            )
        });
    let count = gradient.len();
    Tensor::from_data(TensorData::new(gradient, [count]), (&device, T::dtype()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::tracked_ops::testing::assert_matches_burn;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, FloatDType, Tolerance};

    type B = Autodiff<TestBackend>;

    /// The op equals Burn's `mean_dim` over the last axis under autodiff — output and input
    /// gradient, f32 to 1e-6, bf16 and f16 to their resolution — for a contiguous input, a
    /// transposed one (read through a copy) and rows shorter and longer than a task; evaluation
    /// (no autodiff) gives the same values.
    #[test]
    fn equals_burns_mean_dim_forward_and_backward() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for (dtype, tolerance) in [
            (FloatDType::F32, Tolerance::rel_abs(1e-6, 1e-6)),
            (FloatDType::BF16, Tolerance::rel_abs(1e-2, 1e-2)),
            (FloatDType::F16, Tolerance::rel_abs(2e-3, 2e-3)),
        ] {
            for (dims, transposed) in [
                ([3, 5, 7, 40_000], false),
                ([2, 9, 4, 13], false),
                ([2, 9, 13, 4], true),
            ] {
                let x = Tensor::<B, 4>::random(dims, Distribution::Normal(0.5, 2.0), &device)
                    .cast(dtype)
                    .detach();
                let x = if transposed { x.swap_dims(2, 3) } else { x };
                let mut pooled = x.dims();
                pooled[3] = 1;
                let upstream =
                    Tensor::<B, 4>::random(pooled, Distribution::Default, &device).cast(dtype);
                assert_matches_burn(
                    x,
                    upstream,
                    |x| mean_last_axis(x).expect("burn-flex under autodiff"),
                    |x| x.mean_dim(3),
                    |x| mean_last_axis(x).expect("burn-flex"),
                    tolerance,
                );
            }
        }
    }
}
