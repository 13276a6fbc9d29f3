//! What the recompute engine keeps of a segment's input for backward: the activation itself, or
//! at `model.activation_bits` bits ([`crate::quantize`]) when it is only read back by a by-hand
//! backward or a replay. Inputs of kept stretches stay whole: Burn's autodiff graph holds them.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::RecomputeMode;

use crate::chain::Activation;
use crate::cpu_kernels;
use crate::layers::conv_gemm::ConvInput;
use crate::layers::norm_relu_host::ChannelNorm;
pub(crate) use crate::quantize::HostInput;
use crate::quantize::{Quantized, gate_bits, gated_by};
use crate::tracked_ops::{from_tracked_host, tracked_host};

/// How a training step keeps what its backward needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptActivations {
    /// Which segments are recomputed instead of kept (`model.checkpoint`).
    pub recompute: RecomputeMode,
    /// Bits per value of the inputs kept for a by-hand backward or a replay
    /// (`model.activation_bits`: 32 keeps them as computed).
    pub bits: u32,
}

impl From<RecomputeMode> for KeptActivations {
    /// Recompute per `mode`, nothing compressed.
    fn from(recompute: RecomputeMode) -> Self {
        Self {
            recompute,
            bits: 32,
        }
    }
}

/// A segment's input as kept for its backward.
pub(super) enum KeptInput<B: AutodiffBackend> {
    Whole(Activation<B>),
    Quantized {
        values: Quantized<B::InnerBackend>,
        shape: ActivationShape,
    },
    /// Nothing: the input is the output of the BatchNorm + ReLU step before (a stem
    /// convolution's, on the CPU kernels), made again clip by clip in backward from that step's
    /// kept input with the map its forward applied. Keeping it would hold a second activation
    /// of the same size (the seed model at 224 px, batch 4: 196 MiB in f32).
    Normalized(ChannelNorm),
}

/// The kind and dims of a quantized activation, to rebuild it.
pub(super) enum ActivationShape {
    Clips([usize; 5]),
    Joints([usize; 4]),
    Tokens([usize; 3]),
}

impl<B: AutodiffBackend> KeptInput<B> {
    /// Keeps `input` at `bits` bits, its stochastic rounding drawn from `seed` (whole at 32).
    pub(super) fn new(input: Activation<B>, bits: u32, seed: u64) -> Self {
        if bits >= 32 {
            return KeptInput::Whole(input);
        }
        // The codes' own draws, apart from the segment's dropout stream.
        let seed = seed.rotate_left(23) ^ 0x6163_746e_6e5f_7172;
        let (flat, shape) = match input {
            Activation::Clips(tensor) => {
                let dims = tensor.dims();
                (flatten(tensor), ActivationShape::Clips(dims))
            }
            Activation::Joints(tensor) => {
                let dims = tensor.dims();
                (flatten(tensor), ActivationShape::Joints(dims))
            }
            Activation::Tokens(tensor) => {
                let dims = tensor.dims();
                (flatten(tensor), ActivationShape::Tokens(dims))
            }
        };
        KeptInput::Quantized {
            values: Quantized::new(flat, bits, seed),
            shape,
        }
    }

    /// The kept clips as a convolution's CPU kernel reads them clip by clip: the tensor when
    /// kept whole, the codes when kept compressed in host memory.
    pub(super) fn as_conv_input(&self) -> Option<ConvInput<'_, B::InnerBackend>> {
        match self {
            KeptInput::Whole(Activation::Clips(tensor)) => {
                Some(ConvInput::Tensor(tensor.clone().inner()))
            }
            _ => self.host_codes().map(ConvInput::Codes),
        }
    }

    /// Its codes (which know its dtype), when it is kept compressed in host memory, with its
    /// dims.
    pub(super) fn host_codes(&self) -> Option<HostInput<'_>> {
        match self {
            KeptInput::Quantized {
                values: Quantized::Host { codes, .. },
                shape: ActivationShape::Clips(dims),
            } => Some(HostInput { codes, dims: *dims }),
            _ => None,
        }
    }

    /// The input again (dequantized values as constants of the autodiff backend).
    pub(super) fn restore(self) -> Activation<B> {
        match self {
            KeptInput::Whole(activation) => activation,
            KeptInput::Normalized(_) => {
                unreachable!("an input made again from the step before is read by clips only")
            }
            KeptInput::Quantized { values, shape } => {
                let flat = values.restore();
                match shape {
                    ActivationShape::Clips(dims) => {
                        Activation::Clips(Tensor::from_inner(flat.reshape(dims)))
                    }
                    ActivationShape::Joints(dims) => {
                        Activation::Joints(Tensor::from_inner(flat.reshape(dims)))
                    }
                    ActivationShape::Tokens(dims) => {
                        Activation::Tokens(Tensor::from_inner(flat.reshape(dims)))
                    }
                }
            }
        }
    }
}

impl<B: AutodiffBackend> Activation<B> {
    /// This leaf with the same autodiff node (its gradient is found as before) and, on the CPU,
    /// no values: a single element stands in for them. Elsewhere the leaf as it is.
    pub(super) fn without_values(self) -> Self {
        match self {
            Activation::Clips(tensor) => Activation::Clips(node_only(tensor)),
            Activation::Joints(tensor) => Activation::Joints(node_only(tensor)),
            Activation::Tokens(tensor) => Activation::Tokens(node_only(tensor)),
        }
    }
}

/// [`Activation::without_values`] of one tensor.
fn node_only<B: AutodiffBackend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    let Some(mut leaf) = tracked_host(tensor.clone()) else {
        return tensor;
    };
    let stand_in = Tensor::<Flex, 1>::zeros([1], (&Default::default(), leaf.primitive.dtype()));
    leaf.primitive = stand_in.into_primitive().tensor();
    from_tracked_host(leaf)
}

/// The values of `tensor` in row-major order, on the inner backend.
pub(super) fn flatten<B: AutodiffBackend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Tensor<B::InnerBackend, 1> {
    let elements = tensor.shape().num_elements();
    tensor.inner().reshape([elements])
}

/// Which values of a BatchNorm + ReLU step's output are positive, one bit each: the ReLU's gate
/// as the forward opened it, kept beside a compressed input ([`crate::layers::batch_norm::ReluGate`]).
pub(super) enum ReluMask<B: Backend> {
    /// Bit `i % 8` of byte `i / 8` (burn-flex).
    Host(Vec<u8>),
    /// A bool tensor (other backends).
    Tensor(Tensor<B, 1, Bool>),
}

impl<B: Backend> ReluMask<B> {
    /// The gate of `output`, the step's (flattened) output: read where it is stored, in its
    /// dtype, on the host.
    pub(super) fn of(output: Tensor<B, 1>) -> Self {
        let device = output.device();
        if !cpu_kernels::enabled::<B>(&device) {
            return ReluMask::Tensor(output.greater_elem(0.0));
        }
        ReluMask::Host(gate_bits(output))
    }

    /// `upstream` (flattened, as the output) with 0 where the gate was closed, written over its
    /// values in their dtype (no copy when nothing else holds them).
    pub(super) fn apply(self, upstream: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            ReluMask::Tensor(passed) => upstream.mask_fill(passed.bool_not(), 0.0),
            ReluMask::Host(bits) => gated_by(&bits, upstream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::{Distribution, FloatDType};

    /// The host mask, in f32 and bf16 and over a ragged last byte, gates like a bool tensor.
    #[test]
    fn the_host_gate_zeroes_what_a_bool_mask_zeroes() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let output = Tensor::<TestBackend, 1>::random([1003], Distribution::Default, &device)
                .sub_scalar(0.5)
                .cast(dtype);
            let upstream = Tensor::<TestBackend, 1>::random([1003], Distribution::Default, &device)
                .cast(dtype);
            let mask = ReluMask::of(output.clone());
            assert!(matches!(mask, ReluMask::Host(_)));
            let gated = mask.apply(upstream.clone());
            assert_eq!(gated.dtype(), upstream.dtype());
            let expected = ReluMask::Tensor(output.greater_elem(0.0)).apply(upstream);
            assert_eq!(gated.into_data(), expected.into_data(), "{dtype:?}");
        }
    }
}
