//! The activation-cost rules the memory plan prices each summary row with, by layer role.

use super::{CompressedSaved, LayerRole, LayerSummary};

/// What one layer costs in activation memory, in elements for a whole micro-batch.
///
/// These are accounting rules for how Burn 0.21's autodiff runs our layers, counted op by op
/// from the sources (`burn-autodiff/src/ops`: which op keeps which operand for backward) and
/// checked against measured peaks (`cargo xtask bench plan`):
/// - a matmul keeps both operands; add/sub keep nothing; mul keeps the other operand; div keeps
///   both; `exp` and ReLU keep their output; `powi`/GELU keep their input; slicing, reshapes of
///   contiguous data and `mean_dim` keep only shapes; a reshape of a permuted tensor copies.
pub(super) struct ActivationCosts {
    pub(super) saved: usize,
    pub(super) forward_extra: usize,
    pub(super) backward_extra: usize,
    /// Replay: the forward again, then its backward; by default the larger of the two moments.
    pub(super) replay_peak: usize,
    /// Without autodiff nothing is kept: only the layer's own temporaries.
    pub(super) inference_extra: usize,
    /// What it keeps instead of `saved` when its tracked ops keep codes.
    pub(super) compressed_saved: Option<CompressedSaved>,
}

impl ActivationCosts {
    fn new(saved: usize, forward_extra: usize, backward_extra: usize) -> Self {
        Self {
            saved,
            forward_extra,
            backward_extra,
            replay_peak: saved + forward_extra.max(backward_extra),
            inference_extra: forward_extra,
            compressed_saved: None,
        }
    }

    fn inference(mut self, inference_extra: usize) -> Self {
        self.inference_extra = inference_extra;
        self
    }

    pub(super) fn of(layer: &LayerSummary, input: usize, clips: usize) -> Self {
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
                // Without autodiff burn-flex's kernel copies its input to channels-last once
                // (and a first layer's frames-first data to channels-first before that), tiles
                // the patches and writes the output: one copy of the input beside it, two for
                // data (measured layer by layer on the seed stem without autodiff, issue 26).
                Self::new(
                    input,
                    output,
                    output / clips.max(1) + weight_tiles + input_gradient,
                )
                .inference(if reads_data { 2 * input } else { input })
            }
            // BatchNorm + ReLU is differentiated by hand (`NormReluBackward`): it keeps only
            // its input (the ReLU's output is the next layer's input, kept there). Forward and
            // backward compute in f32 (the input's copy, x − mean, the normalised values, the
            // gradient), each freed as soon as the next exists: two at a time, measured on the
            // e2e plan test's 96 px stem. In evaluation it normalises with the running
            // statistics in place (measured: the step's peak is its input); a half-precision
            // input's f32 copy is priced by the plan, which knows the dtype.
            LayerRole::BatchNormRelu => Self::new(output, 2 * output, 2 * output).inference(0),
            LayerRole::Pool => Self::new(0, input, input),
            // A linear layer keeps its input (for ViViT, the tubelet-ordered copy of the video).
            LayerRole::Embedding {
                input_elements_per_clip,
            } => {
                let mut costs = Self::new(
                    input_elements_per_clip * clips,
                    input_elements_per_clip * clips,
                    2 * output,
                );
                costs.compressed_saved = Some(CompressedSaved {
                    codes: costs.saved,
                    ..CompressedSaved::default()
                });
                costs
            }
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
                // On the CPU each part is one op (`precision::tracked_layer_norm`,
                // `tracked_linear`, `encoder::tracked_attention`, `layers::gelu`): the block keeps
                // its input and the residual sum (each LayerNorm's input), both LayerNorms'
                // outputs (the next linear layers' inputs), the projected q/k/v (attention's
                // input), the softmax's probabilities, the context (the output projection's
                // input), the feed-forward hidden values (GELU's input) and GELU's output (the
                // second linear layer's input; with dropout, the dropped values instead: the
                // dropout op keeps no mask, `layers::dropout`). Forward, attention collects the
                // heads' contexts before placing them; backward, its heads' gradients of q/k/v
                // (f32) beside the gradient it writes.
                let (token_copies, hidden_copies) = (8, 2);
                let mut costs = Self::new(
                    token_copies * token_values + hidden_copies * hidden + scores,
                    hidden.max(2 * token_values),
                    7 * token_values + hidden,
                );
                // Every one of them is an op's state, kept as codes when they compress.
                costs.compressed_saved = Some(CompressedSaved {
                    codes: costs.saved,
                    ..CompressedSaved::default()
                });
                if tokens > crate::layers::encoder::QUERY_BLOCK_TOKENS {
                    // Replayed in stages that do not overlap (see `replay_encoder_block`): the
                    // block's second half from the untracked context, then attention one query
                    // block at a time. Each stage frees its graph as its backward runs; the
                    // factors are calibrated on ViViT at 224 px (`cargo xtask bench plan`).
                    let second_half = 5 * token_values + 2 * hidden;
                    let attention_block = 9 * token_values + block_scores;
                    costs.replay_peak = second_half.max(attention_block);
                }
                costs
            }
            // A BasicBlock under autodiff, its convolutions and BatchNorms each one op on the
            // CPU (`layers::conv3d::tracked`, `layers::batch_norm::tracked`): the first
            // convolution keeps the block's input (the previous block's output, counted there;
            // the shortcut's convolution keeps the same tensor), each BatchNorm its input, the
            // second convolution its input (the first BatchNorm + ReLU's output), the last ReLU
            // its output. Backward holds the output's and input's gradients and the kernels'
            // column buffers (a few MiB).
            // A replay frees the kept tensors as its backward passes them: it peaks at them and
            // one gradient (measured on r3d_18 at 112 px with every block replayed, stop 41: 1000
            // MiB of live tensors where the sum of both gradients priced 1075).
            LayerRole::ResidualBlock { downsample } => {
                let norms = if downsample { 3 } else { 2 };
                let mut costs = Self::new((norms + 2) * output, 2 * output, input + output)
                    .inference(2 * output);
                costs.replay_peak = (norms + 2) * output + input.max(output);
                // Keeping codes: every BatchNorm's input, the second convolution's, and the
                // block's input once per convolution that reads it (the next block's first
                // convolution keeps this one's output); the BatchNorm + ReLU's gate and the last
                // ReLU's instead of its output.
                costs.compressed_saved = Some(CompressedSaved {
                    codes: (norms + 1) * output + (1 + usize::from(downsample)) * input,
                    whole: 0,
                    gates: 2 * output,
                });
                costs
            }
            // The permuted copy of the keypoints and BatchNorm's centred values.
            LayerRole::InputNorm => Self::new(2 * input, 2 * input, 2 * input),
            // Op by op, a block keeps its input, the graph aggregation's `partitions`-wide
            // operand, BatchNorm's centred values and ReLU outputs, the
            // dropout mask and the residual's BatchNorm: about `partitions + 6` outputs. The
            // measured peaks are lower (`cargo xtask bench plan`, ST-GCN at 64 frames, batch 16:
            // about `partitions + 1` outputs per block, some of those operands being shared or
            // freed early; `partitions` since the residual sum and ReLU are one op written over
            // the block's branch, keeping a bit a value: 713 → 660 MiB at stop 47), and the rule
            // follows the measurement (dropout keeps no mask on the CPU: `layers::dropout`'s op
            // redraws it in backward). A
            // replayed block peaks at its input and about four outputs (measured at 64 frames,
            // batch 16, stop 41: 249 MiB of live tensors where three outputs made 236).
            LayerRole::GraphBlock {
                partitions,
                residual_conv,
            } => {
                let copies = partitions;
                let mut costs = Self::new(
                    input + copies * output,
                    2 * output,
                    input + (1 + usize::from(residual_conv)) * output,
                )
                .inference((partitions + 1) * output);
                costs.replay_peak = input + 4 * output;
                // Keeping codes: the convolutions' inputs (the block's input for the 1×1 and
                // the residual convolutions, the temporal convolution's), the graph
                // aggregation's `partitions`-wide operand (`precision::product`) and the
                // BatchNorms' inputs become codes, both ReLUs gates (at 8 bits, 64 frames, batch
                // 16, the peak measured 336 MiB against 713 at 32 bits).
                let residual = usize::from(residual_conv);
                costs.compressed_saved = Some(CompressedSaved {
                    codes: (2 + residual + partitions) * output + (1 + residual) * input,
                    whole: 0,
                    gates: 2 * output,
                });
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
            // (`replay_mamba_block`) holds only one chunk's scan graph at a time, beside the
            // stages' `[tokens, inner]` tensors and their gradients; it peaks either there or in
            // the first stage's backward, whose graph (the ten values per direction above), the
            // scan inputs' gradients and its own backward's temporaries make about
            // `14·directions + 4` `[tokens, inner]` values (measured on the keypoint Mamba at
            // 128–512 frames, `cargo xtask bench plan`).
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
                let chunk_stage =
                    input + (4 * directions + 4) * inner_values + (2 * rounds + 3) * chunk_states;
                let first_stage = input + (14 * directions + 4) * inner_values;
                costs.replay_peak = chunk_stage.max(first_stage);
                costs
            }
            // After a pool the features pass as they are (the input is already `[clips, dim]`);
            // otherwise LayerNorm (3 kept values) and the mean over tokens.
            LayerRole::Finish => Self::new(3 * input, input, 2 * input),
            LayerRole::Head => Self::new(2 * input + 2 * output, output, input),
        }
    }
}
