//! A tracked convolution on the CPU as one op of Burn's autodiff graph whose forward and backward
//! are vidtrain's im2col + gemm kernels (`layers::conv_gemm`), for the convolutions Burn's
//! autodiff differentiates: the residual blocks of the 3-D ResNet and ST-GCN's temporal
//! convolutions (the stems are differentiated by hand).
//!
//! Inside a stretch that compresses what it keeps (`model.activation_bits`), the op keeps its
//! input as block codes and its backward restores them one clip at a time.
//!
//! Burn's own `conv3d` under autodiff on burn-flex computes the input gradient as a transposed
//! convolution with a serial scatter and the weight gradient over axis-swapped copies of the
//! input and the output gradient, single-threaded: 7.7 % of an r3d_18 step in
//! `conv_transpose3d_f32` alone, and most of the rest in gemm calls on narrow tiles. The kernel
//! here keeps what Burn's op keeps (the input and the weight) and makes the same gradients.
//!
//! Recorded as one op of `Autodiff<Flex>` through `crate::tracked_ops`.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::DType;

use crate::cpu_kernels::cast;
use crate::layers::conv_gemm::{ConvBackward, ConvGeometry, ConvInput, conv3d_forward};
use crate::tracked_ops::{
    KeptTensor, TrackedHost, flex, from_tracked_host, host as inner, parent_ids, record, register,
    tracked_host,
};

/// The convolution of `input` with `weight` (and `bias`) of `geometry` as one autodiff op
/// computed by vidtrain's CPU kernel, when the three are burn-flex tensors under autodiff;
/// otherwise `None` (the caller takes Burn's convolution). The output has the input's dtype;
/// the weight's and the bias's gradients have theirs (f32 masters under mixed precision).
pub(crate) fn conv3d_tracked<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
) -> Option<Tensor<B, 5>> {
    let input = tracked_host(input)?;
    let weight = tracked_host(weight)?;
    let output = match bias {
        Some(bias) => finish(
            ConvOnHost::<3>,
            [&input, &weight, &tracked_host(bias)?],
            geometry,
        ),
        None => finish(ConvOnHost::<2>, [&input, &weight], geometry),
    };
    Some(from_tracked_host(output))
}

/// Runs the forward on the inner tensors of `parents` (input, weight and, when `N` is 3,
/// bias) and records the op, with its state when some parent wants a gradient.
fn finish<const N: usize>(
    op: ConvOnHost<N>,
    parents: [&TrackedHost; N],
    geometry: ConvGeometry,
) -> TrackedHost
where
    ConvOnHost<N>: Backward<Flex, N, State = ConvState>,
{
    let (input, weight) = (parents[0], parents[1]);
    let bias = parents
        .get(2)
        .map(|bias| inner::<1>(bias.primitive.clone()));
    let bias_dtype = bias.as_ref().map(Tensor::dtype);
    let output = conv3d_forward(
        inner(input.primitive.clone()),
        inner(weight.primitive.clone()),
        bias,
        geometry,
    );
    let output = flex(output);
    record(op, parents, output, || ConvState {
        input: KeptTensor::keep(input.primitive.clone()),
        weight: weight.primitive.clone(),
        bias_dtype,
        geometry,
    })
}

/// What the backward reads: the input (as the forward read it, the tensor Burn's own convolution
/// keeps, or its codes) and the weight, and the sizes.
#[derive(Clone, Debug)]
struct ConvState {
    input: KeptTensor,
    weight: FlexTensor,
    bias_dtype: Option<DType>,
    geometry: ConvGeometry,
}

/// The op with `N` parents: input, weight and, when `N` is 3, bias.
#[derive(Debug)]
struct ConvOnHost<const N: usize>;

impl<const N: usize> Backward<Flex, N> for ConvOnHost<N> {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = inner::<5>(grads.consume::<Flex>(&ops.node));
        let [input_node, weight_node, bias_node] = parent_ids(&ops);
        let ConvState {
            input,
            weight,
            bias_dtype,
            geometry,
        } = ops.state;
        let input_dtype = input.dtype();
        let input = match &input {
            KeptTensor::Whole(tensor) => ConvInput::Tensor(inner::<5>(tensor.clone())),
            KeptTensor::Codes(kept) => ConvInput::Codes(KeptTensor::host_input(kept)),
        };
        let weight = inner::<5>(weight);
        let weight_dtype = weight.dtype();
        let backward = ConvBackward {
            input,
            weight,
            upstream,
            geometry,
            wants: [input_node.is_some(), bias_node.is_some()],
        };
        let ((weight_gradient, input_gradient), bias_gradient) = backward.gradients();
        let input_gradient = input_gradient.map(|gradient| flex(cast(gradient, input_dtype)));
        register(grads, input_node, input_gradient);
        let weight_gradient = flex(cast(weight_gradient, weight_dtype));
        register(grads, weight_node, Some(weight_gradient));
        let bias_gradient = bias_gradient.zip(bias_dtype);
        let bias_gradient = bias_gradient.map(|(gradient, dtype)| flex(cast(gradient, dtype)));
        register(grads, bias_node, bias_gradient);
    }
}
