//! The model's layer-by-layer summary, computed from the configuration alone (no tensors): each
//! segment's parameters, output shape and kind, in the order the recompute chain runs them. It is
//! printed at the start of training (like Lightning's ModelSummary) and is what the memory plan
//! prices.

use serde::Serialize;

use crate::chain::SegmentKind;
use crate::{ActionModelConfig, BackboneConfig, KeypointBackboneConfig};
use costs::ActivationCosts;
use vidtrain_config::FusionMode;

mod costs;
pub(crate) mod rows;
#[cfg(test)]
mod tests;

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
    /// What it keeps instead of `saved_elements` when its tracked ops keep codes
    /// (`model.activation_bits` below 32, on the CPU, not recomputed): `None` where nothing it
    /// keeps is compressed that way.
    pub compressed_saved: Option<CompressedSaved>,
    /// Its saved values and temporaries are f32 whatever the compute dtype (a Mamba block's
    /// selective scan runs in f32); its output is in the compute dtype.
    pub f32_internals: bool,
}

/// What a layer of tracked ops keeps when they keep codes (`crate::tracked_ops::KeptTensor`),
/// in elements for a whole micro-batch.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct CompressedSaved {
    /// Kept as block codes.
    pub codes: usize,
    /// Still kept as computed (by Burn's own ops).
    pub whole: usize,
    /// ReLU gates, a bit each.
    pub gates: usize,
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

impl ActionModelConfig {
    /// The summary for micro-batches of `input`, with `joints` keypoints per frame.
    pub fn summary(&self, input: InputShape) -> ModelSummary {
        let clips = input.batch * self.views;
        let mut layers = Vec::new();
        // Each chain's first layer reads its own input (the clips, or the keypoints), not the
        // previous chain's output.
        let mut chain_inputs = Vec::new();
        let chains = [
            ("rgb", self.backbone.as_ref().map(BackboneConfig::as_chain)),
            (
                "kpt",
                self.keypoint_encoder
                    .as_ref()
                    .map(KeypointBackboneConfig::as_chain),
            ),
        ];
        for (prefix, chain) in chains {
            let Some(chain) = chain else { continue };
            chain_inputs.push((layers.len(), clips * chain.input_elements_per_clip(input)));
            layers.extend(chain.summary_rows(prefix, clips, input));
        }
        let features = match self.fusion {
            FusionMode::FeatureConcat => self.views * self.view_feature_dim(),
            _ => self.view_feature_dim(),
        };
        layers.push(LayerSummary {
            name: "head".into(),
            role: LayerRole::Head,
            params: rows::linear_params(features, self.classes),
            output_shape: vec![input.batch, self.classes],
            segment: None,
            ..LayerSummary::default()
        });
        let mut input_elements = 0;
        for (index, layer) in layers.iter_mut().enumerate() {
            if let Some(&(_, chain_input)) = chain_inputs.iter().find(|(first, _)| *first == index)
            {
                input_elements = chain_input;
            }
            let costs = ActivationCosts::of(layer, input_elements, clips);
            layer.saved_elements = costs.saved;
            layer.compressed_saved = costs.compressed_saved;
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
}
