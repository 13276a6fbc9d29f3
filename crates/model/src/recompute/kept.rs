//! What the recompute engine keeps of a segment's input for backward: the activation itself, or
//! at `model.activation_bits` bits ([`crate::quantize`]) when it is only read back by a by-hand
//! backward or a replay. Inputs of kept stretches stay whole: Burn's autodiff graph holds them.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::RecomputeMode;

use crate::chain::Activation;
use crate::quantize::Quantized;

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

    /// The input again (dequantized values as constants of the autodiff backend).
    pub(super) fn restore(self) -> Activation<B> {
        match self {
            KeptInput::Whole(activation) => activation,
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

/// The values of `tensor` in row-major order, on the inner backend.
fn flatten<B: AutodiffBackend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B::InnerBackend, 1> {
    let elements = tensor.shape().num_elements();
    tensor.inner().reshape([elements])
}
