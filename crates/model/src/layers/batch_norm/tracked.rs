//! BatchNorm with training statistics, with or without the ReLU after it, as one op of Burn's
//! autodiff graph on the CPU, forward and backward by the fused host passes of
//! `norm_relu_host` ([`ChannelNorm`]): for the BatchNorms Burn's autodiff differentiates (the
//! 3-D ResNet's blocks and shortcuts, ST-GCN's). Recorded through `crate::tracked_ops`.
//!
//! The composition of Burn ops (`batch_norm`) takes about ten element-wise passes each way, most
//! on one thread, and keeps `x − mean`, the normalised values and the ReLU's output for backward
//! in f32. The op keeps only its input, in its own dtype, and the per-channel map (a few
//! hundred values); its backward recomputes the normalised values (and the ReLU's gate) from
//! them as it reads. Inside a stretch that compresses what it keeps (`model.activation_bits`) it
//! keeps its input as block codes, restored a row at a time in backward, and with a ReLU the
//! forward's gate, a bit per value.

use std::sync::Arc;

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
use crate::quantize::{HostCodes, gate_bits, zero_where_closed};
use crate::tracked_ops::{
    KeptTensor, flex, from_tracked_host, host, parameter_gradient, parent_ids, record, register,
    tracked_host,
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
    let output = record(NormOnHost, [&x, &gamma, &beta], output.clone(), || {
        let input = KeptTensor::keep(flex(input));
        let gate =
            (relu && matches!(input, KeptTensor::Codes(_))).then(|| Arc::new(gate_of(output)));
        NormState {
            input,
            gate,
            map,
            dims,
            parameter_dtype,
        }
    });
    Some(from_tracked_host(output))
}

/// What the backward reads: the input as the forward read it (`[n, c, l]`, or its codes), the
/// ReLU's gate when the input is compressed, the map it applied (with the batch statistics), the
/// sizes `[n, c, l]` and γ's and β's dtype.
#[derive(Clone, Debug)]
struct NormState {
    input: KeptTensor,
    gate: Option<Arc<Vec<u8>>>,
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
            gate,
            map,
            dims,
            parameter_dtype,
        } = ops.state;
        let shape = upstream.shape();
        let upstream = host::<3>(Flex::float_reshape(upstream, Shape::new(dims)));
        let wants_input = input_node.is_some();
        let input_dtype = input.dtype();
        let x = match &input {
            KeptTensor::Whole(tensor) => KeptRows::Tensor(host::<3>(tensor.clone())),
            KeptTensor::Codes(kept) => {
                KeptRows::Codes(&kept.codes, gate.as_ref().map(|bits| bits.as_slice()))
            }
        };
        // In the stored half type when the input and the upstream gradient share it; else in f32.
        let (gamma_gradient, beta_gradient, input_gradient) = match (input_dtype, upstream.dtype())
        {
            (DType::BF16, DType::BF16) => backward_as::<bf16>(&map, x, upstream, wants_input),
            (DType::F16, DType::F16) => backward_as::<f16>(&map, x, upstream, wants_input),
            _ => backward_as::<f32>(&map, x, cast(upstream, DType::F32), wants_input),
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

/// The input as the backward reads it: the kept tensor, or its codes (with the ReLU's gate when
/// the op has a ReLU).
enum KeptRows<'a> {
    Tensor(Tensor<Flex, 3>),
    Codes(&'a HostCodes, Option<&'a [u8]>),
}

/// The ReLU's gate of the op's output, a bit per value.
fn gate_of(output: FlexTensor) -> Vec<u8> {
    let output = host::<1>(Flex::float_reshape(
        output.clone(),
        Shape::new([output.shape().num_elements()]),
    ));
    gate_bits(output)
}

/// γ's and β's gradients and, when `wants_input`, the input's (`[n, c, l]`, in `T`), for the
/// input `x` and the output's gradient `upstream`, both read as `T`.
fn backward_as<T: HostFloat>(
    map: &ChannelNorm,
    x: KeptRows<'_>,
    upstream: Tensor<Flex, 3>,
    wants_input: bool,
) -> (Vec<f32>, Vec<f32>, Option<Tensor<Flex, 3>>) {
    let (dims, device) = (upstream.dims(), upstream.device());
    let mut upstream = values::<T, _, 3>(upstream);
    let (gamma_gradient, beta_gradient) = match x {
        KeptRows::Tensor(x) => {
            let x = stored::<T, _, 3>(cast(x, T::dtype()));
            map.backward::<T, [T]>(&x, &mut upstream, dims, wants_input, ReluGate::FromInput)
        }
        KeptRows::Codes(codes, gate) => {
            let gate = match gate {
                Some(bits) => {
                    zero_where_closed(bits, &mut upstream);
                    ReluGate::Applied
                }
                None => ReluGate::FromInput,
            };
            map.backward::<T, HostCodes>(codes, &mut upstream, dims, wants_input, gate)
        }
    };
    let input_gradient = wants_input
        .then(|| Tensor::from_data(TensorData::new(upstream, dims), (&device, T::dtype())));
    (gamma_gradient, beta_gradient, input_gradient)
}
