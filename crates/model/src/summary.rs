//! The model's layer-by-layer summary, computed from the configuration alone (no tensors): each
//! segment's parameters, output shape and kind, in the order the recompute chain runs them. It is
//! printed at the start of training (like Lightning's ModelSummary) and is what the memory plan
//! prices.

use serde::Serialize;

use crate::recompute::SegmentKind;
use crate::{
    ActionModelConfig, BackboneConfig, KeypointBackboneConfig, KeypointEncoderConfig,
    MambaBlockConfig, Resnet3dConfig, StgcnConfig,
};
use vidtrain_config::FusionMode;

/// The input of one micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct InputShape {
    /// Samples per micro-batch.
    pub batch: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Frame height and width.
    pub image: usize,
}

/// What a summary row is; decides how the memory plan prices it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LayerRole {
    /// A 3-D convolution (the backend's conv3d).
    Conv3d {
        /// Kernel taps (`kt · kh · kw`).
        taps: usize,
        /// Input channels.
        channels_in: usize,
        /// Whether its input is the data (no input gradient is made in backward).
        reads_data: bool,
    },
    /// BatchNorm + ReLU.
    BatchNormRelu,
    /// Spatial mean + positions (a cheap bridge).
    Pool,
    /// A linear embedding (keypoints per frame, ViViT tubelets), with its input size.
    Embedding {
        /// Elements of the embedding's input of one clip.
        input_elements_per_clip: usize,
    },
    /// A pre-norm encoder block.
    EncoderBlock {
        /// Tokens per clip.
        tokens: usize,
        /// Attention heads.
        heads: usize,
        /// Feed-forward width.
        ff_dim: usize,
    },
    /// A 3-D ResNet BasicBlock (two 3×3×3 convolutions with BatchNorm, a shortcut), run under
    /// autodiff.
    ResidualBlock {
        /// Whether its shortcut is a 1×1×1 convolution + BatchNorm.
        downsample: bool,
    },
    /// BatchNorm over a keypoint clip's joints × channels (ST-GCN's input), under autodiff.
    InputNorm,
    /// An ST-GCN block (graph convolution, temporal convolution, residual), under autodiff.
    GraphBlock {
        /// Adjacency partitions (the 1×1 convolution widens to this many times the output).
        partitions: usize,
        /// Whether its residual is a 1×1 temporal convolution + BatchNorm.
        residual_conv: bool,
    },
    /// A Mamba block (norm, in-projection, per direction a convolution, projections and the
    /// selective scan, gate, out-projection), under autodiff.
    MambaBlock {
        /// Tokens per clip (the scan's length).
        tokens: usize,
        /// Inner width E.
        inner: usize,
        /// State size N.
        state: usize,
        /// Scan directions (2 when bidirectional).
        directions: usize,
        /// Steps per scan chunk.
        chunk: usize,
    },
    /// Final LayerNorm + mean over tokens (or, after a pool, the pooled features as they are).
    #[default]
    Finish,
    /// View fusion and the classifier.
    Head,
}

/// One row of the summary.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LayerSummary {
    /// Dotted name, e.g. `rgb.stem.conv1`.
    pub name: String,
    /// What it is.
    pub role: LayerRole,
    /// Parameters (trainable values).
    pub params: usize,
    /// Output shape for one micro-batch (views folded into the first axis).
    pub output_shape: Vec<usize>,
    /// Recompute class of the segment (`None` for the parts never recomputed).
    #[serde(skip)]
    pub segment: Option<SegmentKind>,
    /// Activation elements the autodiff graph keeps for backward when this layer runs tracked.
    pub saved_elements: usize,
    /// Elements alive only while it runs forward (beyond what it saves and its output).
    pub forward_extra_elements: usize,
    /// Elements alive only while its backward runs (gradients and temporaries).
    pub backward_extra_elements: usize,
    /// Elements alive at the peak of its replay under activation recompute (for the whole
    /// micro-batch; a per-clip replay holds a `1/clips` share at a time).
    pub replay_peak_elements: usize,
    /// Elements alive while it runs without autodiff (validation, inference), beyond its input
    /// and output (whole batch; a per-clip layer runs one clip at a time).
    pub inference_extra_elements: usize,
    /// Differentiated by hand (a stem convolution or BatchNorm + ReLU, see
    /// `StemStep::gradients`): it keeps only its input, and its backward is
    /// `replay_peak_elements` of temporaries, whatever the recompute mode.
    pub by_hand: bool,
    /// Its saved values and temporaries are f32 whatever the compute dtype (a Mamba block's
    /// selective scan runs in f32); its output is in the compute dtype.
    pub f32_internals: bool,
}

impl LayerSummary {
    /// Elements of the output of one micro-batch.
    pub fn output_elements(&self) -> usize {
        self.output_shape.iter().product()
    }
}

/// The summary of a whole model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// Rows in execution order.
    pub layers: Vec<LayerSummary>,
    /// Clips per micro-batch (samples × views).
    pub clips: usize,
}

impl ModelSummary {
    /// Parameters in total.
    pub fn params(&self) -> usize {
        self.layers.iter().map(|layer| layer.params).sum()
    }

    /// A fixed-width table: index, name, parameters, output shape.
    pub fn table(&self) -> String {
        let width = self
            .layers
            .iter()
            .map(|layer| layer.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut text = format!("   | {:<width$} | {:>8} | output shape\n", "name", "params");
        for (index, layer) in self.layers.iter().enumerate() {
            text += &format!(
                "{index:>2} | {:<width$} | {:>8} | {:?}\n",
                layer.name,
                human_count(layer.params),
                layer.output_shape
            );
        }
        text += &format!(
            "{} parameters ({:.1} MiB as f32)",
            human_count(self.params()),
            (self.params() * 4) as f64 / 1048576.0
        );
        text
    }
}

/// `12.3 K`, `4.1 M`.
fn human_count(count: usize) -> String {
    match count {
        0..1_000 => count.to_string(),
        1_000..1_000_000 => format!("{:.1} K", count as f64 / 1e3),
        _ => format!("{:.1} M", count as f64 / 1e6),
    }
}

fn linear_params(inputs: usize, outputs: usize) -> usize {
    inputs * outputs + outputs
}

fn layer_norm_params(dim: usize) -> usize {
    2 * dim
}

fn block_params(dim: usize, ff_dim: usize) -> usize {
    2 * layer_norm_params(dim)
        + linear_params(dim, 3 * dim)
        + linear_params(dim, dim)
        + linear_params(dim, ff_dim)
        + linear_params(ff_dim, dim)
}

/// Parameters of one Mamba block: RMSNorm, in/out projections, and per direction the depthwise
/// convolution, x/Δ projections, A_log and D.
fn mamba_block_params(config: &MambaBlockConfig) -> usize {
    let (dim, inner, state) = (config.dim, config.inner(), config.state);
    let rank = config.dt_rank();
    let direction = inner * config.conv_kernel
        + inner
        + inner * (rank + 2 * state)
        + linear_params(rank, inner)
        + inner * state
        + inner;
    dim + 2 * dim * inner + inner * dim + config.directions() * direction
}

/// Mamba blocks over `[clips, tokens, dim]`, then the final RMSNorm.
fn push_mamba_blocks(
    layers: &mut Vec<LayerSummary>,
    prefix: &str,
    count: usize,
    config: &MambaBlockConfig,
    clips: usize,
    tokens: usize,
) {
    for block in 0..count {
        layers.push(LayerSummary {
            name: format!("{prefix}.blocks.{block}"),
            role: LayerRole::MambaBlock {
                tokens,
                inner: config.inner(),
                state: config.state,
                directions: config.directions(),
                chunk: config.chunk,
            },
            params: mamba_block_params(config),
            output_shape: vec![clips, tokens, config.dim],
            segment: Some(SegmentKind::Block),
            f32_internals: true,
            ..LayerSummary::default()
        });
    }
    layers.push(LayerSummary {
        name: format!("{prefix}.norm"),
        role: LayerRole::Finish,
        params: config.dim,
        output_shape: vec![clips, config.dim],
        segment: None,
        ..LayerSummary::default()
    });
}

fn push_blocks(
    layers: &mut Vec<LayerSummary>,
    prefix: &str,
    count: usize,
    shape: [usize; 3],
    heads: usize,
    ff_dim: usize,
) {
    let [clips, tokens, dim] = shape;
    for block in 0..count {
        layers.push(LayerSummary {
            name: format!("{prefix}.blocks.{block}"),
            role: LayerRole::EncoderBlock {
                tokens,
                heads,
                ff_dim,
            },
            params: block_params(dim, ff_dim),
            output_shape: vec![clips, tokens, dim],
            segment: Some(SegmentKind::Block),
            ..LayerSummary::default()
        });
    }
    layers.push(LayerSummary {
        name: format!("{prefix}.norm"),
        role: LayerRole::Finish,
        params: layer_norm_params(dim),
        output_shape: vec![clips, dim],
        segment: None,
        ..LayerSummary::default()
    });
}

impl ActionModelConfig {
    /// The summary for micro-batches of `input`, with `joints` keypoints per frame.
    pub fn summary(&self, input: InputShape) -> ModelSummary {
        let clips = input.batch * self.views;
        let [t, s] = [input.frames, input.image];
        let mut layers = Vec::new();
        match &self.backbone {
            Some(BackboneConfig::Transformer(config)) => {
                let half = config.dim / 2;
                let (s1, s2) = (s.div_ceil(2), s.div_ceil(2).div_ceil(2));
                let stem = [
                    ("conv1", 3, half, [3, 7, 7], s1),
                    ("conv2", half, config.dim, [1, 3, 3], s2),
                ];
                for (number, (name, c_in, c_out, kernel, size)) in stem.into_iter().enumerate() {
                    let taps: usize = kernel.iter().product();
                    layers.push(LayerSummary {
                        name: format!("rgb.stem.{name}"),
                        role: LayerRole::Conv3d {
                            taps,
                            channels_in: c_in,
                            reads_data: number == 0,
                        },
                        params: taps * c_in * c_out + c_out,
                        output_shape: vec![clips, c_out, t, size, size],
                        segment: Some(SegmentKind::StemPerClip),
                        ..LayerSummary::default()
                    });
                    layers.push(LayerSummary {
                        name: format!("rgb.stem.norm{}", number + 1),
                        role: LayerRole::BatchNormRelu,
                        // Running mean and variance are buffers, not parameters.
                        params: 2 * c_out,
                        output_shape: vec![clips, c_out, t, size, size],
                        segment: Some(SegmentKind::StemBatch),
                        ..LayerSummary::default()
                    });
                }
                layers.push(LayerSummary {
                    name: "rgb.pool".into(),
                    role: LayerRole::Pool,
                    params: 0,
                    output_shape: vec![clips, t, config.dim],
                    segment: Some(SegmentKind::Bridge),
                    ..LayerSummary::default()
                });
                push_blocks(
                    &mut layers,
                    "rgb",
                    config.layers,
                    [clips, t, config.dim],
                    config.heads,
                    config.ff_dim,
                );
            }
            Some(BackboneConfig::Vivit(config)) => {
                let tokens = config.tokens();
                layers.push(LayerSummary {
                    name: "rgb.tubelet_embedding".into(),
                    role: LayerRole::Embedding {
                        input_elements_per_clip: tokens * config.tubelet_values(),
                    },
                    params: linear_params(config.tubelet_values(), config.dim)
                        + tokens * config.dim,
                    output_shape: vec![clips, tokens, config.dim],
                    segment: Some(SegmentKind::StemPerClip),
                    ..LayerSummary::default()
                });
                push_blocks(
                    &mut layers,
                    "rgb",
                    config.layers,
                    [clips, tokens, config.dim],
                    config.heads,
                    config.ff_dim,
                );
            }
            Some(BackboneConfig::Resnet3d(config)) => {
                push_resnet3d(&mut layers, config, clips, t, s)
            }
            Some(BackboneConfig::Mamba(config)) => {
                let [frames, rows, columns] = config.token_grid();
                let tokens = frames * rows * columns;
                let tubelet_values = 3 * config.tubelet.iter().product::<usize>();
                layers.push(LayerSummary {
                    name: "rgb.tubelet_embedding".into(),
                    role: LayerRole::Embedding {
                        input_elements_per_clip: tokens * tubelet_values,
                    },
                    params: linear_params(tubelet_values, config.dim())
                        + (rows * columns + frames) * config.dim(),
                    output_shape: vec![clips, tokens, config.dim()],
                    segment: Some(SegmentKind::StemPerClip),
                    ..LayerSummary::default()
                });
                push_mamba_blocks(
                    &mut layers,
                    "rgb",
                    config.layers,
                    &config.block,
                    clips,
                    tokens,
                );
            }
            None => {}
        }
        match &self.keypoint_encoder {
            Some(KeypointBackboneConfig::Transformer(config)) => {
                push_keypoint_transformer(&mut layers, config, clips, t)
            }
            Some(KeypointBackboneConfig::Stgcn(config)) => {
                push_stgcn(&mut layers, config, clips, t)
            }
            Some(KeypointBackboneConfig::Mamba(config)) => {
                layers.push(LayerSummary {
                    name: "kpt.embedding".into(),
                    role: LayerRole::Embedding {
                        input_elements_per_clip: t * config.joints * 3,
                    },
                    params: linear_params(config.joints * 3, config.dim()),
                    output_shape: vec![clips, t, config.dim()],
                    segment: Some(SegmentKind::Bridge),
                    ..LayerSummary::default()
                });
                push_mamba_blocks(&mut layers, "kpt", config.layers, &config.block, clips, t);
            }
            None => {}
        }
        let features = match self.fusion {
            FusionMode::FeatureConcat => self.views * self.view_feature_dim(),
            _ => self.view_feature_dim(),
        };
        layers.push(LayerSummary {
            name: "head".into(),
            role: LayerRole::Head,
            params: linear_params(features, self.classes),
            output_shape: vec![input.batch, self.classes],
            segment: None,
            ..LayerSummary::default()
        });
        let dropout = self.dropout() > 0.0;
        let mut input_elements = clips * t * s * s * 3;
        let mut keypoint_chain_started = false;
        for layer in &mut layers {
            if layer.name.starts_with("kpt.") && !keypoint_chain_started {
                keypoint_chain_started = true;
                // The keypoint chain starts from the keypoints, not from the RGB chain's output.
                input_elements = clips * t * self.keypoint_joints() * 3;
            }
            let costs = ActivationCosts::of(layer, input_elements, clips, dropout);
            layer.saved_elements = costs.saved;
            layer.forward_extra_elements = costs.forward_extra;
            layer.backward_extra_elements = costs.backward_extra;
            layer.replay_peak_elements = costs.replay_peak;
            layer.inference_extra_elements = costs.inference_extra;
            layer.by_hand = matches!(
                layer.role,
                LayerRole::Conv3d { .. } | LayerRole::BatchNormRelu
            );
            if layer.by_hand {
                layer.replay_peak_elements = costs.backward_extra;
            }
            input_elements = layer.output_elements();
        }
        ModelSummary { layers, clips }
    }

    fn keypoint_joints(&self) -> usize {
        self.keypoint_encoder
            .as_ref()
            .map_or(0, KeypointBackboneConfig::joints)
    }
}

fn push_keypoint_transformer(
    layers: &mut Vec<LayerSummary>,
    config: &KeypointEncoderConfig,
    clips: usize,
    t: usize,
) {
    let KeypointEncoderConfig {
        joints,
        dim,
        layers: count,
        heads,
        ff_dim,
        ..
    } = *config;
    layers.push(LayerSummary {
        name: "kpt.embedding".into(),
        role: LayerRole::Embedding {
            input_elements_per_clip: t * joints * 3,
        },
        params: linear_params(joints * 3, dim),
        output_shape: vec![clips, t, dim],
        segment: Some(SegmentKind::Bridge),
        ..LayerSummary::default()
    });
    push_blocks(layers, "kpt", count, [clips, t, dim], heads, ff_dim);
}

/// Output size of a padded convolution along one axis.
fn conv_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

/// BatchNorm's trainable values (running statistics are buffers).
fn batch_norm_params(channels: usize) -> usize {
    2 * channels
}

fn push_resnet3d(
    layers: &mut Vec<LayerSummary>,
    config: &Resnet3dConfig,
    clips: usize,
    frames: usize,
    image: usize,
) {
    let width = config.width;
    let stem_size = conv_size(image, 7, 2, 3);
    let mut size = [frames, stem_size, stem_size];
    let shape = |channels: usize, [t, h, w]: [usize; 3]| vec![clips, channels, t, h, w];
    layers.push(LayerSummary {
        name: "rgb.stem_conv".into(),
        role: LayerRole::Conv3d {
            taps: 3 * 7 * 7,
            channels_in: 3,
            reads_data: true,
        },
        params: 3 * 7 * 7 * 3 * width,
        output_shape: shape(width, size),
        segment: Some(SegmentKind::StemPerClip),
        ..LayerSummary::default()
    });
    layers.push(LayerSummary {
        name: "rgb.stem_norm".into(),
        role: LayerRole::BatchNormRelu,
        params: batch_norm_params(width),
        output_shape: shape(width, size),
        segment: Some(SegmentKind::StemBatch),
        ..LayerSummary::default()
    });
    for (stage, index, channels_in, channels_out, stride) in config.blocks() {
        size = size.map(|axis| conv_size(axis, 3, stride, 1));
        let downsample = stride != 1 || channels_in != channels_out;
        let shortcut = if downsample {
            channels_in * channels_out + batch_norm_params(channels_out)
        } else {
            0
        };
        layers.push(LayerSummary {
            name: format!("rgb.layer{}.{index}", stage + 1),
            role: LayerRole::ResidualBlock { downsample },
            params: 27 * channels_in * channels_out
                + 27 * channels_out * channels_out
                + 2 * batch_norm_params(channels_out)
                + shortcut,
            output_shape: shape(channels_out, size),
            segment: Some(SegmentKind::Block),
            ..LayerSummary::default()
        });
    }
    push_pool_and_features(layers, "rgb", clips, config.dim());
}

fn push_stgcn(layers: &mut Vec<LayerSummary>, config: &StgcnConfig, clips: usize, frames: usize) {
    let joints = config.joints;
    layers.push(LayerSummary {
        name: "kpt.data_bn".into(),
        role: LayerRole::InputNorm,
        params: batch_norm_params(joints * 3),
        output_shape: vec![clips, 3, frames, joints],
        segment: Some(SegmentKind::StemBatch),
        ..LayerSummary::default()
    });
    let mut t = frames;
    let partitions = 3;
    for (number, (channels_in, channels_out, stride, residual)) in
        config.blocks().into_iter().enumerate()
    {
        t = conv_size(t, 9, stride, 4);
        let residual_conv = residual && (channels_in != channels_out || stride != 1);
        let graph = (channels_in + 1) * channels_out * partitions
            + partitions * joints * joints // edge importance
            + batch_norm_params(channels_out);
        let temporal = (9 * channels_out + 1) * channels_out + batch_norm_params(channels_out);
        let shortcut = if residual_conv {
            (channels_in + 1) * channels_out + batch_norm_params(channels_out)
        } else {
            0
        };
        layers.push(LayerSummary {
            name: format!("kpt.gcn.{number}"),
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
    push_pool_and_features(layers, "kpt", clips, config.dim());
}

/// Global average pool to `[clips, 1, dim]`, then the feature vector as it is.
fn push_pool_and_features(layers: &mut Vec<LayerSummary>, prefix: &str, clips: usize, dim: usize) {
    layers.push(LayerSummary {
        name: format!("{prefix}.pool"),
        role: LayerRole::Pool,
        params: 0,
        output_shape: vec![clips, 1, dim],
        segment: Some(SegmentKind::Bridge),
        ..LayerSummary::default()
    });
    layers.push(LayerSummary {
        name: format!("{prefix}.features"),
        role: LayerRole::Finish,
        params: 0,
        output_shape: vec![clips, dim],
        segment: None,
        ..LayerSummary::default()
    });
}

/// What one layer costs in activation memory, in elements for a whole micro-batch.
///
/// These are accounting rules for how Burn 0.21's autodiff runs our layers, counted op by op
/// from the sources (`burn-autodiff/src/ops`: which op keeps which operand for backward) and
/// checked against measured peaks (`cargo xtask bench plan`):
/// - a matmul keeps both operands; add/sub keep nothing; mul keeps the other operand; div keeps
///   both; `exp` and ReLU keep their output; `powi`/GELU keep their input; slicing, reshapes of
///   contiguous data and `mean_dim` keep only shapes; a reshape of a permuted tensor copies.
struct ActivationCosts {
    saved: usize,
    forward_extra: usize,
    backward_extra: usize,
    /// Replay: the forward again, then its backward; by default the larger of the two moments.
    replay_peak: usize,
    /// Without autodiff nothing is kept: only the layer's own temporaries.
    inference_extra: usize,
}

impl ActivationCosts {
    fn new(saved: usize, forward_extra: usize, backward_extra: usize) -> Self {
        Self {
            saved,
            forward_extra,
            backward_extra,
            replay_peak: saved + forward_extra.max(backward_extra),
            inference_extra: forward_extra,
        }
    }

    fn inference(mut self, inference_extra: usize) -> Self {
        self.inference_extra = inference_extra;
        self
    }

    fn of(layer: &LayerSummary, input: usize, clips: usize, dropout: bool) -> Self {
        let output = layer.output_elements();
        match layer.role {
            // A convolution keeps its input (for the weight gradient) and is differentiated by
            // hand (`VideoConv3d::gradients`). Forward, the CPU kernel's patch tiles are small
            // next to its output (re-measured on burn-flex with the e2e plan test). Backward, one
            // clip at a time, the weight gradient is a convolution of the clip with its output
            // gradient whose patch tiles are `taps` rows of the clip's positions for each of up
            // to two input channels at a time; a later layer's input gradient is a transposed
            // convolution with a column buffer of one clip (`taps · c_in` rows over the clip's
            // output positions).
            LayerRole::Conv3d {
                taps,
                channels_in,
                reads_data,
            } => {
                let positions = output / layer.output_shape[1].max(1);
                let clip_positions = positions / clips.max(1);
                let weight_tiles = taps * clip_positions * channels_in.min(2);
                let input_gradient = if reads_data {
                    0
                } else {
                    taps * channels_in * clip_positions + input
                };
                Self::new(
                    input,
                    output,
                    output / clips.max(1) + weight_tiles + input_gradient,
                )
                .inference(2 * input)
            }
            // BatchNorm + ReLU is differentiated by hand (`norm_relu_gradients`): it keeps only
            // its input (the ReLU's output is the next layer's input, kept there). Forward and
            // backward compute in f32 (the input's copy, x − mean, the normalised values, the
            // gradient), each freed as soon as the next exists: two at a time, measured on the
            // e2e plan test's 96 px stem. In evaluation it normalises with the running
            // statistics: one temporary besides input and output.
            LayerRole::BatchNormRelu => Self::new(output, 2 * output, 2 * output).inference(output),
            LayerRole::Pool => Self::new(0, input, input),
            // A linear layer keeps its input (for ViViT, the tubelet-ordered copy of the video).
            LayerRole::Embedding {
                input_elements_per_clip,
            } => Self::new(
                input_elements_per_clip * clips,
                input_elements_per_clip * clips,
                2 * output,
            ),
            LayerRole::EncoderBlock {
                tokens,
                heads,
                ff_dim,
            } => {
                let token_values = output; // clips · tokens · dim
                let hidden = clips * tokens * ff_dim;
                let scores = clips * heads * tokens * tokens;
                let block_rows = tokens.min(crate::layers::encoder::QUERY_BLOCK_TOKENS);
                let block_scores = clips * heads * block_rows * tokens;
                // Two LayerNorms (3 each + output), q/k/v copies, context copy, residual inputs;
                // GELU input and output; softmax keeps exp and its result; dropout adds a mask
                // per use (attention weights, after attention, hidden, after feed-forward).
                let (token_copies, hidden_copies, score_copies) =
                    if dropout { (15, 3, 4) } else { (13, 2, 2) };
                let mut costs = Self::new(
                    token_copies * token_values + hidden_copies * hidden + score_copies * scores,
                    2 * block_scores + hidden,
                    3 * token_values + 2 * hidden + 3 * block_scores,
                );
                if tokens > crate::layers::encoder::QUERY_BLOCK_TOKENS {
                    // Replayed in stages that do not overlap (see `replay_encoder_block`): the
                    // block's second half from the untracked context, then attention one query
                    // block at a time. Each stage frees its graph as its backward runs; the
                    // factors are calibrated on ViViT at 224 px (`cargo xtask bench plan`).
                    let second_half = 5 * token_values + 2 * hidden;
                    let attention_block = 5 * token_values + 2 * block_scores;
                    costs.replay_peak = second_half.max(attention_block);
                }
                costs
            }
            // A BasicBlock under autodiff: each convolution keeps its input (the block's input
            // serves the first and the shortcut), each BatchNorm its centred values, each ReLU its
            // output; convolution backward makes an input gradient and a weight-gradient buffer
            // the size of its input.
            LayerRole::ResidualBlock { downsample } => {
                let norms = if downsample { 3 } else { 2 };
                Self::new(
                    input + (norms + 2) * output,
                    2 * output,
                    2 * input + 3 * output,
                )
                .inference(2 * output)
            }
            // The permuted copy of the keypoints and BatchNorm's centred values.
            LayerRole::InputNorm => Self::new(2 * input, 2 * input, 2 * input),
            // Op by op, a block keeps its input, the 1×1 convolution's `partitions`-wide output
            // (the graph matmul's operand), BatchNorm's centred values and ReLU outputs, the
            // dropout mask and the residual's BatchNorm: about `partitions + 6` outputs. The
            // measured peaks are lower (`cargo xtask bench plan`, ST-GCN at 64 frames, batch 16:
            // about `partitions + 1` outputs per block, some of those operands being shared or
            // freed early), and the rule follows the measurement, a dropout mask on top. A
            // replayed block peaks at its input and about three outputs.
            LayerRole::GraphBlock {
                partitions,
                residual_conv,
            } => {
                let copies = partitions + 1 + usize::from(dropout);
                let mut costs = Self::new(
                    input + copies * output,
                    2 * output,
                    input + (1 + usize::from(residual_conv)) * output,
                )
                .inference((partitions + 1) * output);
                costs.replay_peak = input + 3 * output;
                costs
            }
            // Op by op (the rules above): RMSNorm keeps about three copies of the block's input,
            // the in-projection its normalised input; per direction, the padded convolution
            // input, its output and sigmoid, Δ's softplus (four values) and the products with Δ
            // make about ten `[tokens, inner]` values, and the scan keeps per chunk its decays
            // `exp(Δ·A)`, then two `[chunk, inner, state]` values per Hillis–Steele round and the
            // final states and decays: `(2·rounds + 3)` state-sized values over the sequence. The
            // gate and out-projection keep four more `[tokens, inner]` values. Backward holds the
            // gradients of about three state-sized values of one direction. A replay
            // (`replay_mamba_block`) holds the stages' `[tokens, inner]` tensors and their
            // gradients whole but only one chunk's scan graph at a time.
            LayerRole::MambaBlock {
                tokens,
                inner,
                state,
                directions,
                chunk,
            } => {
                let chunk = chunk.clamp(1, tokens.max(1));
                let rounds = chunk.next_power_of_two().trailing_zeros() as usize;
                let states = clips * tokens * inner * state;
                let chunk_states = clips * chunk * inner * state;
                let inner_values = clips * tokens * inner;
                let mut costs = Self::new(
                    3 * input
                        + input
                        + directions * ((2 * rounds + 3) * states + 10 * inner_values)
                        + 4 * inner_values,
                    2 * chunk_states,
                    3 * states + 2 * inner_values,
                )
                .inference((3 * directions + 3) * inner_values + 4 * chunk_states);
                costs.replay_peak =
                    input + (4 * directions + 4) * inner_values + (2 * rounds + 3) * chunk_states;
                costs
            }
            // After a pool the features pass as they are (the input is already `[clips, dim]`);
            // otherwise LayerNorm (3 kept values) and the mean over tokens.
            LayerRole::Finish => Self::new(3 * input, input, 2 * input),
            LayerRole::Head => Self::new(2 * input + 2 * output, output, input),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recompute::Activation;
    use crate::{KeypointMambaConfig, Resnet3dConfig, StgcnConfig, VideoMambaConfig};
    use crate::{TestBackend, VideoTransformerConfig, VivitConfig};
    use burn::prelude::*;
    use burn::tensor::Distribution;
    use vidtrain_config::ModalityFusion;

    fn config(
        backbone: BackboneConfig,
        keypoint_encoder: KeypointBackboneConfig,
        fusion: FusionMode,
    ) -> ActionModelConfig {
        ActionModelConfig {
            backbone: Some(backbone),
            keypoint_encoder: Some(keypoint_encoder),
            views: 2,
            classes: 7,
            fusion,
            modality_fusion: ModalityFusion::Concat,
            compute_dtype: burn::tensor::FloatDType::F32,
        }
    }

    /// Parameter counts equal Burn's, and every output shape equals the shape a real forward
    /// produces, segment by segment.
    #[test]
    fn summary_matches_the_built_model() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let input = InputShape {
            batch: 3,
            frames: 4,
            image: 32,
        };
        let transformer: KeypointBackboneConfig =
            KeypointEncoderConfig::new(5, 12, 1, 2, 20, 0.0).into();
        let star = crate::Skeleton {
            joints: 5,
            edges: vec![[0, 1], [0, 2], [0, 3], [0, 4]],
            center: 0,
        };
        let stgcn: KeypointBackboneConfig = StgcnConfig::for_skeleton(&star, 4, 0.0).into();
        for (backbone, keypoint_encoder, fusion) in [
            (
                BackboneConfig::Transformer(VideoTransformerConfig::new(16, 2, 2, 24, 0.0)),
                transformer.clone(),
                FusionMode::FeatureConcat,
            ),
            (
                BackboneConfig::Vivit(VivitConfig::new(16, 2, 2, 24, 0.0, [2, 8, 8], [4, 32, 32])),
                transformer.clone(),
                FusionMode::LogitMean,
            ),
            (
                BackboneConfig::Resnet3d(Resnet3dConfig::new(10, 4, 0.0)),
                stgcn.clone(),
                FusionMode::FeatureConcat,
            ),
            (
                BackboneConfig::Resnet3d(Resnet3dConfig::new(34, 2, 0.0)),
                transformer.clone(),
                FusionMode::ProbMean,
            ),
            (
                BackboneConfig::Mamba(VideoMambaConfig::new(
                    MambaBlockConfig::new(16).with_state(4),
                    2,
                    [2, 8, 8],
                    [4, 32, 32],
                )),
                KeypointMambaConfig::new(5, MambaBlockConfig::new(12).with_bidirectional(false), 1)
                    .into(),
                FusionMode::FeatureConcat,
            ),
        ] {
            let config = config(backbone, keypoint_encoder, fusion);
            let summary = config.summary(input);
            let model = config.init::<TestBackend>(&device);
            // Burn counts BatchNorm's running mean and variance, and ST-GCN's fixed adjacency.
            let running_statistics = |channels: usize| 2 * channels;
            let rgb_buffers = match &config.backbone {
                Some(BackboneConfig::Transformer(c)) => 2 * (c.dim / 2) + 2 * c.dim,
                Some(BackboneConfig::Resnet3d(c)) => {
                    running_statistics(c.width)
                        + c.blocks()
                            .iter()
                            .map(|&(_, _, c_in, c_out, stride)| {
                                let norms = if c_in != c_out || stride != 1 { 3 } else { 2 };
                                norms * running_statistics(c_out)
                            })
                            .sum::<usize>()
                }
                _ => 0,
            };
            let keypoint_buffers = match &config.keypoint_encoder {
                Some(KeypointBackboneConfig::Stgcn(c)) => {
                    running_statistics(3 * c.joints)
                        + c.blocks()
                            .iter()
                            .map(|&(c_in, c_out, stride, residual)| {
                                let residual_conv = residual && (c_in != c_out || stride != 1);
                                (2 + usize::from(residual_conv)) * running_statistics(c_out)
                                    + 3 * c.joints * c.joints
                            })
                            .sum::<usize>()
                }
                _ => 0,
            };
            assert_eq!(
                summary.params() + rgb_buffers + keypoint_buffers,
                model.num_params()
            );

            let video = Tensor::<TestBackend, 6>::random(
                [3, 2, 4, 32, 32, 3],
                Distribution::Default,
                &device,
            );
            let keypoints =
                Tensor::<TestBackend, 5>::random([3, 2, 4, 5, 3], Distribution::Default, &device);
            let (inputs, _, _) = model.chain_inputs(Some(video.clone()), Some(keypoints.clone()));
            let mut shapes = Vec::new();
            for (chain, input) in inputs {
                let mut x = input;
                for index in 0..model.segment_count(chain) {
                    x = model.forward_segment(chain, index, x);
                    shapes.push(match &x {
                        Activation::Clips(t) => t.dims().to_vec(),
                        Activation::Joints(t) => t.dims().to_vec(),
                        Activation::Tokens(t) => t.dims().to_vec(),
                    });
                }
                shapes.push(model.finish(chain, x.into_tokens()).dims().to_vec());
            }
            shapes.push(model.forward(Some(video), Some(keypoints)).dims().to_vec());
            let expected: Vec<Vec<usize>> = summary
                .layers
                .iter()
                .map(|layer| layer.output_shape.clone())
                .collect();
            assert_eq!(shapes, expected);
        }
    }
}
