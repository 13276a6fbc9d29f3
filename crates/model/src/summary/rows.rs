//! Row builders and parameter counts shared by the backbones' `ChainConfig::summary_rows`: the
//! layers several backbones are made of (encoder blocks, Mamba blocks, embeddings, a final pool).

use super::{LayerRole, LayerSummary};
use crate::EncoderBlockConfig;
use crate::chain::SegmentKind;
use crate::layers::mamba::MambaBlockConfig;

/// A linear layer's weight and bias.
pub(crate) fn linear_params(inputs: usize, outputs: usize) -> usize {
    inputs * outputs + outputs
}

/// BatchNorm's trainable values (running statistics are buffers).
pub(crate) fn batch_norm_params(channels: usize) -> usize {
    2 * channels
}

fn layer_norm_params(dim: usize) -> usize {
    2 * dim
}

/// Output size of a padded convolution along one axis.
pub(crate) fn conv_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

fn encoder_block_params(dim: usize, ff_dim: usize) -> usize {
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

/// A keypoint chain over frames: one token of width `dim` per frame from its flattened joints (a
/// bridge: never recomputed), then `blocks` (the rows of its blocks and finish).
pub(crate) fn frame_token_chain(
    prefix: &str,
    [clips, frames, dim]: [usize; 3],
    joints: usize,
    blocks: Vec<LayerSummary>,
) -> Vec<LayerSummary> {
    let embedding = LayerSummary {
        name: format!("{prefix}.embedding"),
        role: LayerRole::Embedding {
            input_elements_per_clip: frames * joints * 3,
        },
        params: linear_params(joints * 3, dim),
        output_shape: vec![clips, frames, dim],
        segment: Some(SegmentKind::Bridge),
        ..LayerSummary::default()
    };
    [embedding].into_iter().chain(blocks).collect()
}

/// A linear tubelet embedding of `tokens` tubelets of `tubelet_values` each, with
/// `position_params` learned positions (a per-clip stem segment).
pub(crate) fn tubelet_embedding(
    prefix: &str,
    clips: usize,
    tokens: usize,
    tubelet_values: usize,
    dim: usize,
    position_params: usize,
) -> LayerSummary {
    LayerSummary {
        name: format!("{prefix}.tubelet_embedding"),
        role: LayerRole::Embedding {
            input_elements_per_clip: tokens * tubelet_values,
        },
        params: linear_params(tubelet_values, dim) + position_params,
        output_shape: vec![clips, tokens, dim],
        segment: Some(SegmentKind::StemPerClip),
        ..LayerSummary::default()
    }
}

/// `count` pre-norm encoder blocks over `[clips, tokens, dim]`, then the final LayerNorm.
pub(crate) fn encoder_blocks(
    prefix: &str,
    count: usize,
    block: &EncoderBlockConfig,
    clips: usize,
    tokens: usize,
) -> Vec<LayerSummary> {
    let (dim, heads, ff_dim) = (block.dim, block.heads, block.ff_dim);
    let blocks = (0..count).map(|block| LayerSummary {
        name: format!("{prefix}.blocks.{block}"),
        role: LayerRole::EncoderBlock {
            tokens,
            heads,
            ff_dim,
        },
        params: encoder_block_params(dim, ff_dim),
        output_shape: vec![clips, tokens, dim],
        segment: Some(SegmentKind::Block),
        ..LayerSummary::default()
    });
    blocks
        .chain([finish(prefix, "norm", layer_norm_params(dim), clips, dim)])
        .collect()
}

/// `count` Mamba blocks over `[clips, tokens, dim]`, then the final RMSNorm.
pub(crate) fn mamba_blocks(
    prefix: &str,
    count: usize,
    config: &MambaBlockConfig,
    clips: usize,
    tokens: usize,
) -> Vec<LayerSummary> {
    let blocks = (0..count).map(|block| LayerSummary {
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
        segment: Some(SegmentKind::ScanBlock),
        f32_internals: true,
        ..LayerSummary::default()
    });
    blocks
        .chain([finish(prefix, "norm", config.dim, clips, config.dim)])
        .collect()
}

/// Global average pool to `[clips, 1, dim]`, then the feature vector as it is.
pub(crate) fn pool_and_features(prefix: &str, clips: usize, dim: usize) -> [LayerSummary; 2] {
    [
        LayerSummary {
            name: format!("{prefix}.pool"),
            role: LayerRole::Pool,
            output_shape: vec![clips, 1, dim],
            segment: Some(SegmentKind::Bridge),
            ..LayerSummary::default()
        },
        finish(prefix, "features", 0, clips, dim),
    ]
}

/// A chain's last row: its finish, `[clips, dim]`.
fn finish(prefix: &str, name: &str, params: usize, clips: usize, dim: usize) -> LayerSummary {
    LayerSummary {
        name: format!("{prefix}.{name}"),
        role: LayerRole::Finish,
        params,
        output_shape: vec![clips, dim],
        segment: None,
        ..LayerSummary::default()
    }
}
