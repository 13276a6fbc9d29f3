//! BatchNorm with training statistics, with or without the ReLU after it, as one op of Burn's
//! autodiff graph on the CPU, forward and backward by the fused host passes of
//! `norm_relu_host` ([`ChannelNorm`]): for the BatchNorms Burn's autodiff differentiates (the
//! 3-D ResNet's blocks and shortcuts, ST-GCN's). Recorded through `crate::tracked_ops`.
//!
//! The composition of Burn ops (`batch_norm`) takes about ten element-wise passes each way, most
//! on one thread, and keeps `x − mean`, the normalised values and the ReLU's output for backward
//! in f32. The op keeps only its input, in its own dtype, and the per-channel map (a few
//! hundred values); its backward recomputes the normalised values (and the ReLU's gate) from
//! them as it reads.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata, bf16, f16};

use super::{ReluGate, training_on_host};
use crate::cpu_kernels::{HostFloat, cast, stored, values};
use crate::layers::norm_relu_host::ChannelNorm;
use crate::tracked_ops::{
    flex, from_tracked_host, host, parameter_gradient, parent_ids, record, register, tracked_host,
};

/// `norm` (then a ReLU when `relu`) with batch statistics over axis 1 of `x` (`[n, c, ...]`),
/// updating the running averages, as one autodiff op computed on the host, when `x` and the
/// parameters are burn-flex tensors under autodiff and `x` is f32, bf16 or f16; otherwise `None`
/// (the caller composes Burn's ops). The output in `x`'s dtype.
pub(super) fn norm_tracked<B: Backend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
    relu: bool,
) -> Option<Tensor<B, D>> {
    if !crate::cpu_kernels::host_float(x.dtype()) {
        return None;
    }
    let shape = x.dims();
    let dims = [shape[0], shape[1], shape[2..].iter().product()];
    let x = tracked_host(x)?;
    let gamma = tracked_host(norm.gamma.val())?;
    let beta = tracked_host(norm.beta.val())?;
    let input = host::<D>(x.primitive.clone()).reshape(dims);
    let (output, map) = training_on_host(norm, input.clone(), relu).ok()?;
    let output = flex(output.reshape(shape));
    let parameter_dtype = gamma.primitive.dtype();
    let output = record(NormOnHost, [&x, &gamma, &beta], output, || NormState {
        input: flex(input),
        map,
        dims,
        parameter_dtype,
    });
    Some(from_tracked_host(output))
}

/// What the backward reads: the input as the forward read it (`[n, c, l]`), the map it applied
/// (with the batch statistics), the sizes `[n, c, l]` and γ's and β's dtype.
#[derive(Clone, Debug)]
struct NormState {
    input: FlexTensor,
    map: ChannelNorm,
    dims: [usize; 3],
    parameter_dtype: DType,
}

/// The op; parents input, γ and β.
#[derive(Debug)]
struct NormOnHost;

impl Backward<Flex, 3> for NormOnHost {
    type State = NormState;

    fn backward(self, ops: Ops<NormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, gamma_node, beta_node] = parent_ids(&ops);
        let NormState {
            input,
            map,
            dims,
            parameter_dtype,
        } = ops.state;
        let shape = upstream.shape();
        let input = host::<3>(input);
        let upstream = host::<3>(Flex::float_reshape(upstream, Shape::new(dims)));
        let wants_input = input_node.is_some();
        let input_dtype = input.dtype();
        // In the stored half type when the input and the upstream gradient share it; else in f32.
        let (gamma_gradient, beta_gradient, input_gradient) = match (input_dtype, upstream.dtype())
        {
            (DType::BF16, DType::BF16) => backward_as::<bf16>(&map, input, upstream, wants_input),
            (DType::F16, DType::F16) => backward_as::<f16>(&map, input, upstream, wants_input),
            _ => backward_as::<f32>(
                &map,
                cast(input, DType::F32),
                cast(upstream, DType::F32),
                wants_input,
            ),
        };
        let gamma_gradient = parameter_gradient(gamma_gradient, parameter_dtype);
        register(grads, gamma_node, Some(gamma_gradient));
        let beta_gradient = parameter_gradient(beta_gradient, parameter_dtype);
        register(grads, beta_node, Some(beta_gradient));
        let input_gradient = input_gradient
            .map(|gradient| Flex::float_reshape(flex(cast(gradient, input_dtype)), shape));
        register(grads, input_node, input_gradient);
    }
}

/// γ's and β's gradients and, when `wants_input`, the input's (`[n, c, l]`, in `T`), for the
/// input `x` and the output's gradient `upstream`, both read as `T`.
fn backward_as<T: HostFloat>(
    map: &ChannelNorm,
    x: Tensor<Flex, 3>,
    upstream: Tensor<Flex, 3>,
    wants_input: bool,
) -> (Vec<f32>, Vec<f32>, Option<Tensor<Flex, 3>>) {
    let (dims, device) = (x.dims(), x.device());
    let x = stored::<T, _, 3>(x);
    let mut upstream = values::<T, _, 3>(upstream);
    let (gamma_gradient, beta_gradient) =
        map.backward::<T, [T]>(&x, &mut upstream, dims, wants_input, ReluGate::FromInput);
    let input_gradient = wants_input
        .then(|| Tensor::from_data(TensorData::new(upstream, dims), (&device, T::dtype())));
    (gamma_gradient, beta_gradient, input_gradient)
}
