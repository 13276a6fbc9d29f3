//! The seed's convolution stem: Conv3d(3→D/2, 3×7×7, stride 1×2×2) → BatchNorm → ReLU →
//! Conv3d(D/2→D, 1×3×3, stride 1×2×2) → BatchNorm → ReLU. It takes decoded clips frames-first,
//! `[n, t, c, h, w]`, and works channels-first, `[n, c, t, h, w]`: the layout of the backend's
//! conv3d, in which BatchNorm's channel axis is axis 1 without a copy.

use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;

use crate::layers::batch_norm::{
    NormReluBackward, ReluGate, batch_norm_relu_channels, norm_relu_untracked,
};
use crate::layers::conv_gemm::ConvInput;
use crate::layers::conv3d::{VideoConv3d, VideoConv3dConfig};
use crate::layers::norm_relu_host::ChannelNorm;
use crate::quantize::HostInput;

/// Configuration of a [`VideoStem`].
#[derive(Config, Debug)]
pub struct VideoStemConfig {
    /// Input channels (3 for RGB).
    pub channels_in: usize,
    /// Output channels D (the first stage has D/2).
    pub dim: usize,
}

impl VideoStemConfig {
    /// Builds the stem.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VideoStem<B> {
        let half = self.dim / 2;
        VideoStem {
            conv1: VideoConv3dConfig::new(self.channels_in, half, [3, 7, 7], [1, 2, 2], [1, 3, 3])
                .init(device),
            norm1: BatchNormConfig::new(half).init(device),
            conv2: VideoConv3dConfig::new(half, self.dim, [1, 3, 3], [1, 2, 2], [0, 1, 1])
                .init(device),
            norm2: BatchNormConfig::new(self.dim).init(device),
        }
    }
}

/// Two conv → BatchNorm → ReLU stages; spatial size ÷4, time kept.
#[derive(Module, Debug)]
pub struct VideoStem<B: Backend> {
    conv1: VideoConv3d<B>,
    norm1: BatchNorm<B>,
    conv2: VideoConv3d<B>,
    norm2: BatchNorm<B>,
}

impl<B: Backend> VideoStem<B> {
    /// # Shapes
    /// - input: `[n, t, c, h, w]`
    /// - output: `[n, dim, t, h/4, w/4]`
    pub fn forward(&self, input: Tensor<B, 5>) -> Tensor<B, 5> {
        let _span = tracing::trace_span!("stem").entered();
        (0..Self::STEPS).fold(input, |x, step| self.forward_step(step, x))
    }

    /// Steps of the stem, for activation recompute: convolution, BatchNorm + ReLU, twice.
    pub const STEPS: usize = 4;

    /// Runs step `index` alone: even steps are convolutions (each clip on its own), odd steps
    /// BatchNorm + ReLU (statistics over the whole micro-batch).
    ///
    /// # Shapes
    /// - input: `[n, t, c, h, w]` for step 0, `[n, c, t, h, w]` after it
    /// - output: `[n, c', t, h', w']` (a convolution halves `h` and `w`)
    pub fn forward_step(&self, index: usize, input: Tensor<B, 5>) -> Tensor<B, 5> {
        self.step(index, input).forward()
    }

    /// Step `index` bound to its input ([`StemLayer::bind`]).
    pub fn step(&self, index: usize, input: Tensor<B, 5>) -> StemStep<'_, B> {
        self.layer(index).bind(index, input)
    }

    /// Output size `[t, h, w]` for an input of size `[t, h, w]`.
    pub fn output_size(&self, input: [usize; 3]) -> [usize; 3] {
        self.conv2.output_size(self.conv1.output_size(input))
    }

    /// The layer of step `index`.
    pub fn layer(&self, index: usize) -> StemLayer<'_, B> {
        match index {
            0 => StemLayer::Convolution(&self.conv1),
            1 => StemLayer::NormRelu(&self.norm1),
            2 => StemLayer::Convolution(&self.conv2),
            _ => StemLayer::NormRelu(&self.norm2),
        }
    }
}

/// The layer of a stem step, not bound to an input.
pub enum StemLayer<'a, B: Backend> {
    Convolution(&'a VideoConv3d<B>),
    NormRelu(&'a BatchNorm<B>),
}

impl<'a, B: Backend> StemLayer<'a, B> {
    /// Step `index` of a chain with this layer, bound to its input as the step reads it: a
    /// convolution reads channels-first. A chain's step 0 reads data, frames-first: swapping the
    /// axes costs one copy of the clip, made inside the convolution, and no gradient is ever
    /// wanted for it.
    pub fn bind(self, index: usize, input: Tensor<B, 5>) -> StemStep<'a, B> {
        match self {
            // [n, t, c, h, w] → [n, c, t, h, w]
            StemLayer::Convolution(conv) if index == 0 => {
                StemStep::Convolution(conv, input.swap_dims(1, 2))
            }
            StemLayer::Convolution(conv) => StemStep::Convolution(conv, input),
            StemLayer::NormRelu(norm) => StemStep::NormRelu(norm, input),
        }
    }
}

impl<B: AutodiffBackend> StemLayer<'_, B> {
    /// The gradients of a convolution step whose input was not kept: the output of the
    /// BatchNorm + ReLU step before it, made again clip by clip from that step's kept input
    /// (`source`, whole or compressed) with the map its forward applied (`map`).
    pub(crate) fn gradients_of_normalized(
        self,
        source: ConvInput<'_, B::InnerBackend>,
        map: &ChannelNorm,
        upstream: Tensor<B, 5>,
        wants_input: bool,
    ) -> (GradientsParams, Option<Tensor<B, 5>>) {
        match self {
            StemLayer::Convolution(conv) => {
                let source = Box::new(source);
                let input = ConvInput::Normalized { source, map };
                conv.gradients_by_clips(input, upstream, wants_input)
            }
            StemLayer::NormRelu(_) => {
                unreachable!("only a convolution reads a BatchNorm + ReLU output made again")
            }
        }
    }

    /// [`StemStep::gradients`] of an input kept compressed in host memory (`model.activation_bits`,
    /// read as the step reads it: not a chain's first step, which rearranges its input), restored
    /// piece by piece by the CPU kernels: a clip at a time for a convolution, a row of a channel
    /// at a time for BatchNorm + ReLU.
    pub(crate) fn gradients_of_codes(
        self,
        input: HostInput<'_>,
        upstream: Tensor<B, 5>,
        wants_input: bool,
        gate: ReluGate,
    ) -> (GradientsParams, Option<Tensor<B, 5>>) {
        match self {
            StemLayer::Convolution(conv) => {
                conv.gradients_by_clips(ConvInput::Codes(input), upstream, wants_input)
            }
            StemLayer::NormRelu(norm) => NormReluBackward {
                norm,
                wants_input,
                gate,
            }
            .of_codes(input, upstream),
        }
    }
}

/// One step of the stem, bound to its input; in training its gradients are computed by hand
/// ([`StemStep::gradients`]) instead of through autodiff.
pub enum StemStep<'a, B: Backend> {
    Convolution(&'a VideoConv3d<B>, Tensor<B, 5>),
    NormRelu(&'a BatchNorm<B>, Tensor<B, 5>),
}

impl<B: Backend> StemStep<'_, B> {
    pub fn forward(self) -> Tensor<B, 5> {
        match self {
            StemStep::Convolution(conv, input) => conv.forward(input),
            StemStep::NormRelu(norm, input) => normalize(norm, input),
        }
    }
}

impl<B: AutodiffBackend> StemStep<'_, B> {
    /// [`StemStep::forward`] for a step run untracked in training (its gradients are taken by
    /// hand), on the paths those gradients take: [`VideoConv3d::forward_untracked`] and
    /// [`norm_relu_untracked`].
    ///
    /// A BatchNorm + ReLU step on the CPU kernels also returns the per-channel map it applied,
    /// with which its output can be made again from its input ([`StemLayer::gradients_of_normalized`]).
    pub(crate) fn forward_untracked(self) -> (Tensor<B, 5>, Option<ChannelNorm>) {
        match self {
            StemStep::NormRelu(norm, input) => {
                let [n, c, t, h, w] = input.dims();
                let (output, map) = norm_relu_untracked(norm, input.reshape([n, c, t * h * w]));
                (output.reshape([n, c, t, h, w]), map)
            }
            StemStep::Convolution(conv, input) => (conv.forward_untracked(input), None),
        }
    }

    /// The step's parameter gradients for `upstream`, the gradient of its output, and its
    /// input's when `wants_input` is set (as the step reads it: step 0 never wants it). A
    /// BatchNorm + ReLU step takes its ReLU's gate per `gate`.
    pub fn gradients(
        self,
        upstream: Tensor<B, 5>,
        wants_input: bool,
        gate: ReluGate,
    ) -> (GradientsParams, Option<Tensor<B, 5>>) {
        match self {
            StemStep::Convolution(conv, input) => conv.gradients(input, upstream, wants_input),
            StemStep::NormRelu(norm, input) => {
                let [n, c, t, h, w] = input.dims();
                let flat = |x: Tensor<B, 5>| x.reshape([n, c, t * h * w]);
                let backward = NormReluBackward {
                    norm,
                    wants_input,
                    gate,
                };
                let (gradients, input_gradient) = backward.gradients(flat(input), flat(upstream));
                (
                    gradients,
                    input_gradient.map(|gradient| gradient.reshape([n, c, t, h, w])),
                )
            }
        }
    }
}

/// BatchNorm + ReLU on `[n, c, t, h, w]`. Statistics (and the running averages, f32 buffers)
/// are computed in f32 whatever the compute dtype.
fn normalize<B: Backend>(norm: &BatchNorm<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    batch_norm_relu_channels(norm, x)
}
