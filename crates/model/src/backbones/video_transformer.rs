//! The seed's video transformer: conv stem → spatial mean → sinusoidal positions over time →
//! pre-norm encoder blocks → LayerNorm → mean over time.

use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::chain::{Activation, BlockChain, ChainConfig, SegmentChain, SegmentKind, norm_and_mean};
use crate::layers::encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};
use crate::layers::stem::{StemLayer, VideoStem, VideoStemConfig};
use crate::precision::{layer_norm, like, mean_dim_f32};
use crate::pytorch_names::PytorchNames;
use crate::summary::{InputShape, LayerRole, LayerSummary, rows};

/// The names of the seed transformer in `bench/pytorch_reference.py`: stages of Conv3d +
/// BatchNorm3d, then the encoder blocks and norm of [`ENCODER_NAMES`].
pub(crate) const PYTORCH_NAMES: PytorchNames = PytorchNames {
    import: &[
        &[
            (r"^stage([12])\.0\.", "backbone.stem.conv$1."),
            (r"^stage([12])\.1\.", "backbone.stem.norm$1."),
        ],
        ENCODER_NAMES.import[0],
    ],
    export: &[
        &[
            (r"^backbone\.stem\.conv([12])\.", "stage$1.0."),
            (r"^backbone\.stem\.norm([12])\.", "stage$1.1."),
        ],
        ENCODER_NAMES.export[0],
    ],
};

/// The encoder blocks (`nn.TransformerEncoderLayer` with `norm_first`, wrapped as `.layer`),
/// final norm and classifier of the references in `bench/pytorch_reference.py` (the seed
/// transformer's and ViViT's).
pub(crate) const ENCODER_NAMES: PytorchNames = PytorchNames {
    import: &[&[
        (
            r"^blocks\.(\d+)\.layer\.self_attn\.in_proj_(weight|bias)$",
            "backbone.blocks.$1.qkv.$2",
        ),
        (
            r"^blocks\.(\d+)\.layer\.self_attn\.out_proj\.",
            "backbone.blocks.$1.projection.",
        ),
        (
            r"^blocks\.(\d+)\.layer\.norm1\.",
            "backbone.blocks.$1.norm_attention.",
        ),
        (
            r"^blocks\.(\d+)\.layer\.norm2\.",
            "backbone.blocks.$1.norm_feed_forward.",
        ),
        (
            r"^blocks\.(\d+)\.layer\.linear1\.",
            "backbone.blocks.$1.feed_forward_in.",
        ),
        (
            r"^blocks\.(\d+)\.layer\.linear2\.",
            "backbone.blocks.$1.feed_forward_out.",
        ),
        (r"^norm\.", "backbone.norm."),
        (r"^head\.", "head."),
    ]],
    export: &[&[
        (
            r"^backbone\.blocks\.(\d+)\.qkv\.(weight|bias)$",
            "blocks.$1.layer.self_attn.in_proj_$2",
        ),
        (
            r"^backbone\.blocks\.(\d+)\.projection\.",
            "blocks.$1.layer.self_attn.out_proj.",
        ),
        (
            r"^backbone\.blocks\.(\d+)\.norm_attention\.",
            "blocks.$1.layer.norm1.",
        ),
        (
            r"^backbone\.blocks\.(\d+)\.norm_feed_forward\.",
            "blocks.$1.layer.norm2.",
        ),
        (
            r"^backbone\.blocks\.(\d+)\.feed_forward_in\.",
            "blocks.$1.layer.linear1.",
        ),
        (
            r"^backbone\.blocks\.(\d+)\.feed_forward_out\.",
            "blocks.$1.layer.linear2.",
        ),
        (r"^backbone\.norm\.", "norm."),
    ]],
};

/// Configuration of a [`VideoTransformer`].
#[derive(Config, Debug)]
pub struct VideoTransformerConfig {
    /// Every encoder block's configuration (its `dim` is the token width D).
    pub block: EncoderBlockConfig,
    /// Encoder blocks.
    pub layers: usize,
}

impl VideoTransformerConfig {
    /// The seed transformer `model.transformer_*` describes.
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        Self::new(
            EncoderBlockConfig::from_vidtrain(model),
            model.transformer_layers,
        )
    }

    /// Builds the backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VideoTransformer<B> {
        let dim = self.block.dim;
        VideoTransformer {
            stem: VideoStemConfig::new(3, dim).init(device),
            blocks: (0..self.layers).map(|_| self.block.init(device)).collect(),
            norm: LayerNormConfig::new(dim)
                .with_epsilon(crate::precision::LAYER_NORM_EPSILON)
                .init(device),
        }
    }
}

/// Clip → feature vector.
#[derive(Module, Debug)]
pub struct VideoTransformer<B: Backend> {
    stem: VideoStem<B>,
    blocks: Vec<EncoderBlock<B>>,
    norm: LayerNorm<B>,
}

impl<B: Backend> VideoTransformer<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values in 0..1
    /// - output: `[n, dim]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        self.forward_chain(Activation::Clips(video))
    }

    /// Frames, height and width of the tokens for an input clip of `[t, h, w]`.
    pub fn stem_output_size(&self, input: [usize; 3]) -> [usize; 3] {
        self.stem.output_size(input)
    }
}

/// Segments, in order: the four stem steps, the pooling bridge, one per encoder block.
impl<B: Backend> BlockChain<B> for VideoTransformer<B> {
    type Block = EncoderBlock<B>;
    const LEAD: usize = VideoStem::<B>::STEPS + 1;

    fn lead_kind(&self, index: usize) -> SegmentKind {
        match index {
            0 | 2 => SegmentKind::StemPerClip,
            1 | 3 => SegmentKind::StemBatch,
            _ => SegmentKind::Bridge,
        }
    }

    fn lead_stem_layer(&self, index: usize) -> Option<StemLayer<'_, B>> {
        (index < VideoStem::<B>::STEPS).then(|| self.stem.layer(index))
    }

    fn forward_lead(&self, index: usize, input: Activation<B>) -> Activation<B> {
        if index < VideoStem::<B>::STEPS {
            return Activation::Clips(self.stem.forward_step(index, input.into_clips()));
        }
        let x = input.into_clips(); // [n, dim, t, h/4, w/4]
        let [n, dim, t, h, w] = x.dims();
        let x = mean_dim_f32(x.reshape([n, dim, t, h * w]), 3) // [n, dim, t, 1]
            .reshape([n, dim, t])
            .swap_dims(1, 2); // [n, t, dim]
        let positions = like(sinusoidal_positions::<B>(t, dim, &x.device()), &x);
        Activation::Tokens(x + positions.unsqueeze::<3>())
    }

    fn blocks(&self) -> impl Iterator<Item = &EncoderBlock<B>> {
        self.blocks.iter()
    }

    /// Final LayerNorm and mean over time: `[n, t, dim]` → `[n, dim]`.
    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        norm_and_mean(tokens, |tokens| layer_norm(&self.norm, tokens))
    }
}

impl ChainConfig for VideoTransformerConfig {
    fn dim(&self) -> usize {
        self.block.dim
    }

    fn dropout(&self) -> f64 {
        self.block.dropout
    }

    fn pytorch_names(&self) -> PytorchNames {
        PYTORCH_NAMES
    }

    /// Two stem stages (a convolution and BatchNorm + ReLU each: 3×7×7 to D/2 channels at half
    /// the size, 1×3×3 to D at a quarter), the pool, the blocks, the final norm.
    fn summary_rows(&self, prefix: &str, clips: usize, input: InputShape) -> Vec<LayerSummary> {
        let [t, s] = [input.frames, input.image];
        let half = self.dim() / 2;
        let (s1, s2) = (s.div_ceil(2), s.div_ceil(2).div_ceil(2));
        let stem = [
            ("conv1", 3, half, [3, 7, 7], s1),
            ("conv2", half, self.dim(), [1, 3, 3], s2),
        ];
        let mut rows = Vec::new();
        for (number, (name, c_in, c_out, kernel, size)) in stem.into_iter().enumerate() {
            let taps: usize = kernel.iter().product();
            let output_shape = vec![clips, c_out, t, size, size];
            rows.push(LayerSummary {
                name: format!("{prefix}.stem.{name}"),
                role: LayerRole::Conv3d {
                    taps,
                    channels_in: c_in,
                    reads_data: number == 0,
                },
                params: taps * c_in * c_out + c_out,
                output_shape: output_shape.clone(),
                segment: Some(SegmentKind::StemPerClip),
                ..LayerSummary::default()
            });
            rows.push(LayerSummary {
                name: format!("{prefix}.stem.norm{}", number + 1),
                role: LayerRole::BatchNormRelu,
                params: rows::batch_norm_params(c_out),
                output_shape,
                segment: Some(SegmentKind::StemBatch),
                ..LayerSummary::default()
            });
        }
        rows.push(LayerSummary {
            name: format!("{prefix}.pool"),
            role: LayerRole::Pool,
            output_shape: vec![clips, t, self.dim()],
            segment: Some(SegmentKind::Bridge),
            ..LayerSummary::default()
        });
        rows.extend(rows::encoder_blocks(
            prefix,
            self.layers,
            &self.block,
            clips,
            t,
        ));
        rows
    }
}
