//! ReLU at the end of a block (the 3-D ResNet's and ST-GCN's), with the block's residual added
//! first. Burn's ReLU keeps its output for backward, which is also the next block's input: when
//! the next block's ops keep that input as codes (`model.activation_bits`), Burn's ReLU would
//! still hold the whole tensor. On the CPU the sum and the ReLU are one op of the autodiff graph
//! that keeps which values passed, one bit each, as ActNN keeps its ReLU masks; elsewhere they
//! are Burn's.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, Shape, TensorData, TensorMetadata, bf16, f16};
use rayon::prelude::*;

use crate::cpu_kernels::{HostFloat, filled, stored, unique};
use crate::quantize::{gate_byte, gated_by};
use crate::tracked_ops::{
    flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// `max(y + residual, 0)`, or `max(y, 0)` without a residual: a block's output; see the module's
/// comment for what it keeps. On the CPU it is one op, the sum and the ReLU in one pass over the
/// pool's threads and its gradient gated in another: as Burn's add and ReLU it was three passes on
/// one thread, forward and backward (2 % of r3d_18's bf16 step and of ST-GCN's, the other core
/// idle). It keeps one bit a value (which passed) rather than its output.
pub fn relu_block_output<B: Backend, const D: usize>(
    y: Tensor<B, D>,
    residual: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let device = y.device();
    let on_host = B::ad_enabled(&device)
        && crate::cpu_kernels::host_tensors::<B>(&device)
        && crate::cpu_kernels::host_float(y.dtype())
        && residual
            .as_ref()
            .is_none_or(|residual| residual.dtype() == y.dtype() && residual.dims() == y.dims());
    if !on_host {
        return relu(match residual {
            Some(residual) => y + residual,
            None => y,
        });
    }
    let mut y = tracked_host(y).expect("autodiff tensors on the host are burn-flex's");
    let shape = y.primitive.shape();
    let flat = |primitive: FlexTensor| {
        host::<1>(Flex::float_reshape(
            primitive,
            Shape::new([shape.num_elements()]),
        ))
    };
    let residual = residual.map(|residual| {
        tracked_host(residual).expect("autodiff tensors on the host are burn-flex's")
    });
    // The op needs only `y`'s node: its values go to the kernel, which writes over them when
    // nothing else holds them.
    let empty = Flex::float_zeros(Shape::new([0]), &Default::default(), FloatDType::F32);
    let y_values = flat(std::mem::replace(&mut y.primitive, empty));
    let residual_values = residual
        .as_ref()
        .map(|residual| flat(residual.primitive.clone()));
    let (output, gate) = relu_of_sum(y_values, residual_values);
    let output = Flex::float_reshape(flex(output), shape);
    let gate = || Arc::new(gate);
    let output = match &residual {
        Some(residual) => record(GatedRelu, [&y, residual], output, gate),
        None => record(GatedRelu, [&y], output, gate),
    };
    from_tracked_host(output)
}

/// `max(y + residual, 0)` over host tensors of one dtype (written over `y` when nothing else
/// holds it), a NaN passed on as Burn's ReLU does, and the gate: bit `i % 8` of byte `i / 8` set
/// where value `i` passed (is positive), as [`crate::quantize::gate_bits`] reads an output.
fn relu_of_sum(
    y: Tensor<Flex, 1>,
    residual: Option<Tensor<Flex, 1>>,
) -> (Tensor<Flex, 1>, Vec<u8>) {
    fn typed<T: HostFloat>(
        y: Tensor<Flex, 1>,
        residual: Option<Tensor<Flex, 1>>,
    ) -> (Tensor<Flex, 1>, Vec<u8>) {
        let device = y.device();
        let residual = residual.map(stored::<T, Flex, 1>);
        let residual = residual.as_deref();
        let relu = |value: f32| if value <= 0.0 { 0.0 } else { value };
        // Each task: a chunk of outputs from the same chunk of `y` (read where it is written)
        // and of the residual, and the chunk's gate bytes.
        let pass = |output: &mut [T], y: Option<&[T]>, gate: &mut [u8], first: usize| {
            let residual = residual.map(|residual| &residual[first..][..output.len()]);
            let sum = |y: T, residual: T| T::from_f32(relu(y.to_f32() + residual.to_f32()));
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    match (y, residual) {
                        (Some(y), Some(residual)) => {
                            for ((output, &y), &residual) in output.iter_mut().zip(y).zip(residual)
                            {
                                *output = sum(y, residual);
                            }
                        }
                        (None, Some(residual)) => {
                            for (output, &residual) in output.iter_mut().zip(residual) {
                                *output = sum(*output, residual);
                            }
                        }
                        (Some(y), None) => {
                            for (output, &y) in output.iter_mut().zip(y) {
                                *output = T::from_f32(relu(y.to_f32()));
                            }
                        }
                        (None, None) => {
                            for output in output.iter_mut() {
                                *output = T::from_f32(relu(output.to_f32()));
                            }
                        }
                    }
                    for (byte, outputs) in gate.iter_mut().zip(output.chunks(8)) {
                        *byte = gate_byte(outputs);
                    }
                },
            )
        };
        let len = y.shape().num_elements();
        let mut gate = filled(len.div_ceil(8), 0u8);
        let output = match unique::<T, Flex, 1>(y) {
            Ok(mut output) => {
                (output.values_mut().par_chunks_mut(CHUNK))
                    .zip(gate.par_chunks_mut(CHUNK / 8))
                    .enumerate()
                    .for_each(|(chunk, (output, gate))| pass(output, None, gate, chunk * CHUNK));
                output.into_tensor()
            }
            Err(y) => {
                let y = stored::<T, Flex, 1>(y);
                let mut output = filled(len, T::from_f32(0.0));
                (output.par_chunks_mut(CHUNK))
                    .zip(gate.par_chunks_mut(CHUNK / 8))
                    .enumerate()
                    .for_each(|(chunk, (output, gate))| {
                        let first = chunk * CHUNK;
                        pass(output, Some(&y[first..][..output.len()]), gate, first)
                    });
                Tensor::from_data(TensorData::new(output, [len]), (&device, T::dtype()))
            }
        };
        (output, gate)
    }
    match y.dtype() {
        DType::BF16 => typed::<bf16>(y, residual),
        DType::F16 => typed::<f16>(y, residual),
        _ => typed::<f32>(y, residual),
    }
}

/// Values per task of [`relu_of_sum`].
const CHUNK: usize = 1 << 16;

/// The op (with one parent, or two: the block's branch and its residual, which get the same
/// gradient); its state is the gate.
#[derive(Debug)]
struct GatedRelu;

impl<const N: usize> Backward<Flex, N> for GatedRelu {
    type State = Arc<Vec<u8>>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [branch, residual, _] = parent_ids(&ops);
        let shape = upstream.shape();
        let flat = host::<1>(Flex::float_reshape(
            upstream,
            Shape::new([shape.num_elements()]),
        ));
        let gradient = Flex::float_reshape(flex(gated_by(&ops.state, flat)), shape);
        register(grads, residual, Some(gradient.clone()));
        register(grads, branch, Some(gradient));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::quantize::CompressedKeeping;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, FloatDType};

    type B = Autodiff<TestBackend>;

    /// The fused op gives Burn's add and ReLU and their gradients exactly, with and without a
    /// residual, inside a compressing stretch and outside one, written over its input or not,
    /// in f32 and in bf16 (values at
    /// exactly 0 included: neither passes a gradient there).
    #[test]
    fn the_gated_relu_of_a_sum_equals_burns() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let random = |dtype| {
            Tensor::<B, 4>::random([2, 3, 5, 7], Distribution::Default, &device)
                .sub_scalar(0.5)
                .mask_fill(
                    Tensor::<B, 4>::random([2, 3, 5, 7], Distribution::Default, &device)
                        .lower_elem(0.1),
                    0.0,
                )
                .cast(dtype)
                .detach()
        };
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let (y, residual) = (random(dtype), random(dtype));
            let upstream = Tensor::<B, 4>::random([2, 3, 5, 7], Distribution::Default, &device);
            for case in 0..8 {
                let (with_residual, compressing, in_place) =
                    (case & 1 == 1, case & 2 == 2, case & 4 == 4);
                let run = |fused: bool| {
                    let y = y.clone().require_grad();
                    let residual = residual.clone().require_grad();
                    let output = if fused {
                        let _scope = compressing.then(|| CompressedKeeping::begin(8, 1));
                        // A branch nothing else holds is written over.
                        let branch = if in_place {
                            y.clone().mul_scalar(1.0)
                        } else {
                            y.clone()
                        };
                        relu_block_output(branch, with_residual.then(|| residual.clone()))
                    } else if with_residual {
                        relu(y.clone() + residual.clone())
                    } else {
                        relu(y.clone())
                    };
                    let grads = (output.clone().cast(FloatDType::F32) * upstream.clone())
                        .sum()
                        .backward();
                    (
                        output.inner().into_data(),
                        y.grad(&grads).unwrap().into_data(),
                        residual.grad(&grads).map(|grad| grad.into_data()),
                    )
                };
                let (ours, theirs) = (run(true), run(false));
                let case =
                    format!("{dtype:?}, residual {with_residual}, compressing {compressing}");
                assert_eq!(ours.0, theirs.0, "{case}");
                assert_eq!(ours.1, theirs.1, "{case}");
                assert_eq!(ours.2, theirs.2, "{case}");
            }
        }
    }
}
