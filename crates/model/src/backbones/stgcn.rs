//! ST-GCN (Yan et al. 2018) on body keypoints, as mmaction2 lays it out (`STGCN` with
//! `data_bn_type='VC'`, `unit_gcn` with edge importance, `unit_tcn`): BatchNorm over joints ×
//! channels of the input, ten blocks (w×4, 2w×3, 4w×3 channels, w = 64 in mmaction2; temporal
//! stride 2 at blocks 5 and 8), each a spatial graph convolution (`crate::layers::graph`) then a
//! 9×1 temporal convolution + BatchNorm + dropout, plus a residual (none in the first block, a
//! 1×1 temporal convolution + BatchNorm where the shape changes), then ReLU; global average pool
//! over time and joints.
//!
//! Field names are mmaction2's (`data_bn`, `gcn.{i}.gcn.conv`, `gcn.{i}.tcn.bn`,
//! `gcn.{i}.residual.conv`, …), so its state dicts load with the `backbone.` prefix dropped.
//!
//! As a chain on `[n, c, t, joints]` activations: the input BatchNorm (a batch-statistics stem
//! step), one block segment per block, the pooling bridge to `[n, 1, 4w]` tokens.

use burn::module::{Initializer, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use crate::chain::{
    Activation, BlockChain, ChainBlock, ChainConfig, SegmentChain, SegmentKind, pooled_features,
};
use crate::layers::batch_norm::batch_norm_channels;
use crate::layers::conv_gemm::ConvGeometry;
use crate::layers::conv3d::convolve_on_cpu;
use crate::layers::dropout::dropout;
use crate::layers::graph::{GraphConv, GraphConvConfig, Skeleton};
use crate::layers::relu::relu_block_output;
use crate::precision::{like, mean_dim_f32};
use crate::pytorch_names::PytorchNames;
use crate::summary::{InputShape, LayerRole, LayerSummary, rows};

/// mmaction2's `RecognizerGCN` names: `backbone.` (STGCN) and `cls_head.fc_cls.`; `unit_gcn`'s
/// adjacency `A` and edge importance `PA`.
pub(crate) const PYTORCH_NAMES: PytorchNames = PytorchNames {
    import: &[&[
        (r"^backbone\.(data_bn|gcn)\.", "keypoint_gcn.$1."),
        (r"^cls_head\.fc_cls\.", "head."),
        (r"\.gcn\.A$", ".gcn.adjacency"),
        (r"\.gcn\.PA$", ".gcn.importance"),
    ]],
    export: &[&[
        (r"^keypoint_gcn\.(data_bn|gcn)\.", "backbone.$1."),
        (r"^head\.", "cls_head.fc_cls."),
        (r"\.gcn\.adjacency$", ".gcn.A"),
        (r"\.gcn\.importance$", ".gcn.PA"),
    ]],
};

/// Configuration of an [`Stgcn`].
#[derive(Config, Debug)]
pub struct StgcnConfig {
    /// Joints per frame (the skeleton's).
    pub joints: usize,
    /// The skeleton's spatial-partition adjacency `[3, joints, joints]`, row-major
    /// ([`Skeleton::spatial_adjacency`]).
    pub adjacency: Vec<f32>,
    /// Channels of the first four blocks (mmaction2: 64).
    pub width: usize,
    /// Dropout after each temporal convolution and before the classifier.
    pub dropout: f64,
}

impl StgcnConfig {
    /// ST-GCN of `model.stgcn_width` on the skeleton `model.skeleton` names.
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        Self::for_skeleton(
            &crate::skeleton(config),
            config.model.stgcn_width,
            config.model.transformer_dropout,
        )
    }

    /// The configuration for `skeleton`.
    pub fn for_skeleton(skeleton: &Skeleton, width: usize, dropout: f64) -> Self {
        Self::new(
            skeleton.joints,
            skeleton.spatial_adjacency(),
            width,
            dropout,
        )
    }

    /// Every block as `(channels in, channels out, temporal stride, residual)`, mmaction2's
    /// ten: 3→w without residual, then w×3, 2w×3 (stride 2 first), 4w×3 (stride 2 first).
    pub fn blocks(&self) -> Vec<(usize, usize, usize, bool)> {
        let w = self.width;
        let mut blocks = vec![(3, w, 1, false)];
        let mut channels = w;
        for number in 2..=10 {
            let inflate = number == 5 || number == 8;
            let out = if inflate { channels * 2 } else { channels };
            blocks.push((channels, out, if inflate { 2 } else { 1 }, true));
            channels = out;
        }
        blocks
    }

    /// Builds the backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Stgcn<B> {
        Stgcn {
            data_bn: BatchNormConfig::new(self.joints * 3).init(device),
            gcn: self
                .blocks()
                .into_iter()
                .map(|(channels_in, channels_out, stride, residual)| StgcnBlock {
                    gcn: GraphConvConfig::new(channels_in, channels_out, self.joints)
                        .init(&self.adjacency, device),
                    tcn: TemporalConv::new(
                        channels_out,
                        channels_out,
                        9,
                        stride,
                        self.dropout,
                        device,
                    ),
                    residual: (residual && (channels_in != channels_out || stride != 1)).then(
                        || TemporalConv::new(channels_in, channels_out, 1, stride, 0.0, device),
                    ),
                    identity_residual: residual && channels_in == channels_out && stride == 1,
                })
                .collect(),
        }
    }
}

/// mmaction2's `unit_tcn`: a `k×1` convolution over time (stride `s×1`, zero padding `k/2`),
/// BatchNorm, dropout.
#[derive(Module, Debug)]
pub struct TemporalConv<B: Backend> {
    conv: TemporalConvWeights<B>,
    bn: BatchNorm<B>,
    drop: Dropout,
    #[module(skip)]
    stride: usize,
}

/// The convolution's weights in PyTorch's `Conv2d` shapes.
#[derive(Module, Debug)]
pub struct TemporalConvWeights<B: Backend> {
    /// `[out, in, k, 1]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> TemporalConv<B> {
    fn new(
        channels_in: usize,
        channels_out: usize,
        kernel: usize,
        stride: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let fan_in = channels_in * kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        Self {
            conv: TemporalConvWeights {
                weight: Initializer::KaimingUniform {
                    gain: 1.0 / 3f64.sqrt(),
                    fan_out_only: false,
                }
                .init_with(
                    [channels_out, channels_in, kernel, 1],
                    Some(fan_in),
                    None,
                    device,
                ),
                bias: Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init([channels_out], device),
            },
            bn: BatchNormConfig::new(channels_out).init(device),
            drop: DropoutConfig::new(dropout).init(),
            stride,
        }
    }

    /// # Shapes
    /// - input: `[n, c_in, t, v]`
    /// - output: `[n, c_out, ⌈t/stride⌉, v]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        dropout(&self.drop, batch_norm_channels(&self.bn, self.convolve(x)))
    }

    /// The `k×1` convolution. On the CPU it is vidtrain's convolution kernel over
    /// `[n, c, t, 1, v]` (a `k×1×1` kernel; joints as the contiguous axis): in training one op
    /// of the autodiff graph (`layers::conv3d`), in evaluation the plain kernel. Elsewhere
    /// Burn's `conv2d` ([`Self::convolve_composed`]).
    fn convolve(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c_in, t, v] = x.dims();
        let [c_out, _, kernel, _] = self.conv.weight.dims();
        let t_out = (t + 2 * (kernel / 2) - kernel) / self.stride + 1;
        let geometry = ConvGeometry {
            input: [n, c_in, t, 1, v],
            channels_out: c_out,
            kernel: [kernel, 1, 1],
            stride: [self.stride, 1, 1],
            padding: [kernel / 2, 0, 0],
            output: [t_out, 1, v],
        };
        let weight = self.conv.weight.val().reshape([c_out, c_in, kernel, 1, 1]);
        let bias = Some(self.conv.bias.val());
        let output = convolve_on_cpu(x.clone().reshape(geometry.input), weight, bias, geometry);
        match output {
            Some(output) => output.reshape([n, c_out, t_out, v]),
            None => self.convolve_composed(x),
        }
    }

    /// [`Self::convolve`] as Burn's `conv2d`, the weights cast to `x`'s dtype.
    fn convolve_composed(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = like(self.conv.weight.val(), &x);
        let kernel = weight.dims()[2];
        let bias = like(self.conv.bias.val(), &x);
        conv2d(
            x,
            weight,
            Some(bias),
            ConvOptions::new([self.stride, 1], [kernel / 2, 0], [1, 1], 1),
        )
    }
}

/// mmaction2's `STGCNBlock`.
#[derive(Module, Debug)]
pub struct StgcnBlock<B: Backend> {
    gcn: GraphConv<B>,
    tcn: TemporalConv<B>,
    residual: Option<TemporalConv<B>>,
    #[module(skip)]
    identity_residual: bool,
}

impl<B: Backend> StgcnBlock<B> {
    /// # Shapes
    /// - input: `[n, c_in, t, v]`
    /// - output: `[n, c_out, ⌈t/stride⌉, v]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let residual = match (&self.residual, self.identity_residual) {
            (Some(conv), _) => Some(conv.forward(x.clone())),
            (None, true) => Some(x.clone()),
            (None, false) => None,
        };
        let y = self.tcn.forward(self.gcn.forward(x));
        relu_block_output(y, residual)
    }
}

/// Keypoint sequence → feature vector.
#[derive(Module, Debug)]
pub struct Stgcn<B: Backend> {
    data_bn: BatchNorm<B>,
    gcn: Vec<StgcnBlock<B>>,
}

impl<B: Backend> Stgcn<B> {
    /// # Shapes
    /// - input: `[n, t, joints, 3]`
    /// - output: `[n, 4·width]`
    pub fn forward(&self, keypoints: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_chain(Activation::Joints(keypoints))
    }
}

impl<B: Backend> ChainBlock<B> for StgcnBlock<B> {
    fn forward_block(&self, input: Activation<B>) -> Activation<B> {
        Activation::Joints(self.forward(input.into_joints()))
    }
}

/// Segments, in order: the input BatchNorm, one per block, the pooling bridge.
impl<B: Backend> BlockChain<B> for Stgcn<B> {
    type Block = StgcnBlock<B>;
    const LEAD: usize = 1;
    const TAIL: usize = 1;

    fn lead_kind(&self, _index: usize) -> SegmentKind {
        SegmentKind::StemBatch
    }

    /// `[n, t, v, c]` → `[n, v·c, t]` → BatchNorm over joints × channels → `[n, c, t, v]`.
    fn forward_lead(&self, _index: usize, input: Activation<B>) -> Activation<B> {
        let x = input.into_joints();
        let [n, t, v, c] = x.dims();
        let x = x.permute([0, 2, 3, 1]).reshape([n, v * c, t]);
        let x = batch_norm_channels(&self.data_bn, x).reshape([n, v, c, t]);
        Activation::Joints(x.permute([0, 2, 3, 1]))
    }

    fn blocks(&self) -> impl Iterator<Item = &StgcnBlock<B>> {
        self.gcn.iter()
    }

    /// Global average pool over time and joints: `[n, c, t, v]` → `[n, 1, c]`.
    fn forward_tail(&self, input: Activation<B>) -> Activation<B> {
        let x = input.into_joints();
        let [n, c, t, v] = x.dims();
        Activation::Tokens(mean_dim_f32(x.reshape([n, c, t * v]), 2).reshape([n, 1, c]))
    }

    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        pooled_features(tokens)
    }
}

impl ChainConfig for StgcnConfig {
    fn architecture_keys(&self) -> Vec<&'static str> {
        vec!["model.stgcn_width", "model.skeleton"]
    }

    /// The last blocks' channels.
    fn dim(&self) -> usize {
        4 * self.width
    }

    fn dropout(&self) -> f64 {
        self.dropout
    }

    fn pytorch_names(&self) -> PytorchNames {
        PYTORCH_NAMES
    }

    fn keypoint_joints(&self) -> Option<usize> {
        Some(self.joints)
    }

    fn summary_rows(&self, prefix: &str, clips: usize, input: InputShape) -> Vec<LayerSummary> {
        let joints = self.joints;
        let mut summary = vec![LayerSummary {
            name: format!("{prefix}.data_bn"),
            role: LayerRole::InputNorm,
            params: rows::batch_norm_params(joints * 3),
            output_shape: vec![clips, 3, input.frames, joints],
            segment: Some(SegmentKind::StemBatch),
            ..LayerSummary::default()
        }];
        let mut t = input.frames;
        let partitions = 3;
        for (number, (channels_in, channels_out, stride, residual)) in
            self.blocks().into_iter().enumerate()
        {
            t = rows::conv_size(t, 9, stride, 4);
            let residual_conv = residual && (channels_in != channels_out || stride != 1);
            let graph = (channels_in + 1) * channels_out * partitions
                + partitions * joints * joints // edge importance
                + rows::batch_norm_params(channels_out);
            let temporal =
                (9 * channels_out + 1) * channels_out + rows::batch_norm_params(channels_out);
            let shortcut = if residual_conv {
                (channels_in + 1) * channels_out + rows::batch_norm_params(channels_out)
            } else {
                0
            };
            summary.push(LayerSummary {
                name: format!("{prefix}.gcn.{number}"),
                role: LayerRole::GraphBlock {
                    partitions,
                    residual_conv,
                },
                params: graph + temporal + shortcut,
                output_shape: vec![clips, channels_out, t, joints],
                segment: Some(SegmentKind::Block),
                ..LayerSummary::default()
            });
        }
        summary.extend(rows::pool_and_features(prefix, clips, self.dim()));
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<TestBackend>;

    /// The temporal convolution on vidtrain's kernel (training: the tracked op; evaluation: the
    /// plain kernel) equals Burn's `conv2d`: output and the gradients of input, weight and bias,
    /// with a stride and an odd number of frames.
    #[test]
    fn temporal_convolution_equals_burns_conv2d() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let layer = TemporalConv::<B>::new(4, 6, 9, 2, 0.0, &device);
        let x = Tensor::<B, 4>::random([2, 4, 11, 5], Distribution::Default, &device);
        let upstream = Tensor::<B, 4>::random([2, 6, 6, 5], Distribution::Default, &device);
        let run = |forward: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>| {
            let x = x.clone().detach().require_grad();
            let output = forward(x.clone());
            let grads = (output.clone() * upstream.clone()).sum().backward();
            let weight = layer.conv.weight.grad(&grads).unwrap().into_data();
            let bias = layer.conv.bias.grad(&grads).unwrap().into_data();
            (
                output.into_data(),
                x.grad(&grads).unwrap().into_data(),
                weight,
                bias,
            )
        };
        let ours = run(&|x| layer.convolve(x));
        let burns = run(&|x| layer.convolve_composed(x));
        let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
        ours.0.assert_approx_eq::<f32>(&burns.0, tolerance);
        ours.1.assert_approx_eq::<f32>(&burns.1, tolerance);
        ours.2.assert_approx_eq::<f32>(&burns.2, tolerance);
        ours.3.assert_approx_eq::<f32>(&burns.3, tolerance);

        let layer = layer.valid();
        let x = x.inner();
        layer
            .convolve(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&layer.convolve_composed(x).into_data(), tolerance);
    }
}
