//! Temporal convolutions of nine taps, stride 1 and padding 4 (ST-GCN's `unit_tcn`, a `9 × 1`
//! kernel over `[n, c, t, joints]`), by Winograd's minimal filtering nested on two axes, on the
//! CPU backend.
//!
//! Nine taps are three groups of three, `h[3a + b]`. A tile of nine consecutive output frames
//! `t₀ … t₀ + 8` of one joint reads the 17 input frames `t₀ − 4 … t₀ + 12`; laid out as the
//! 5 × 5 block `z[q][p] = x[t₀ − 4 + q + 3p]`, output frame `t₀ + i + 3j` is the 2-D
//! correlation `Σ_{a,b} h[3a + b] · z[i + b][j + a]` — F(3 × 3, 3 × 3), F(3, 3) on each axis.
//! In the transformed space the tile's nine outputs cost 25 multiply-adds per pair of channels
//! instead of 81 (3.2 times fewer); per point the products are `[c_out × c_in] · [c_in × tiles]`
//! on [`conv_winograd::point_products`], as on the 3-D route, with a row of tiles being one
//! clip's nine frames of every joint.
//!
//! F(3, 3)'s matrices, from Toom–Cook on the points 0, 1, −1, ½ and ∞ (`d` a tile's 5 inputs on
//! one axis, `g` its 3 taps, `m` its 5 points, `y` its 3 outputs):
//!
//! - inputs: `Bᵀd = [½d0 − d1 − ½d2 + d3, −½d1 + ½d2 + d3, ½d1 − 3⁄2·d2 + d3, d3 − d1,
//!   ½d1 − d2 − ½d3 + d4]`;
//! - weight: `Gg = [2g0, g0 + g1 + g2, (−g0 + g1 − g2)/3, −(8g0 + 4g1 + 2g2)/3, g2]`;
//! - outputs: `y = Aᵀm = [m0 + m1 + m2 + m3, m1 − m2 + ½m3, m1 + m2 + ¼m3 + m4]`.
//!
//! A one-axis F(9, 9) would need 17 points, whose transforms lose several digits in f32; two
//! axes of five points lose about as much as the 3-D route's F(2, 3) on three axes of four
//! (relative errors of 2·10⁻⁶ against f64 sums over 64 channels, ½ instead of 2 as the fourth
//! point: 1.7 against 2.7·10⁻⁶). The input gradient is the forward of the output gradient with
//! the weight transposed and reversed in time (padding `9 − 1 − 4 = 4`). The weight gradient is
//! the transforms' adjoint: per point, `Σ_tiles (A·dy·Aᵀ)[π] · (Bᵀ·z·B)[π]` — a product
//! `[c_out × tiles] · [tiles × c_in]` per point — taken back to the nine taps by `Gᵀ … G`
//! ([`WeightGradient`]). As on the 3-D route, both transforms are laid out channel by channel
//! with the tiles in a row, and gemm reads them through strides (decision 0024).

use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16, f16};
use rayon::prelude::*;

use super::conv_gemm::{ClipInputGradient, ConvGeometry};
use super::conv_winograd::{
    self, Lanes, PointWeights, point_products, runs_mut, transform_channels,
};
use crate::cpu_kernels::{HostFloat, filled, floats, stored};
use crate::gemm_bf16::COLUMNS;
use crate::gemm_f32::F32Path;

/// The kernel's taps along time.
const TAPS: usize = 9;

/// Output frames of a tile.
const OUTPUTS: usize = 9;

/// Input frames a tile reads: `OUTPUTS + TAPS − 1`.
const WINDOW: usize = OUTPUTS + TAPS - 1;

/// Transform points of a tile: 5 on each of the two axes, point `α · 5 + β` (α along the inner
/// offsets `q`, β along the outer `p`).
const POINTS: usize = 25;

/// Tiles per input channel below which the im2col route is faster.
const FEWEST_TILES_PER_CHANNEL: usize = 1;

/// Whether a convolution of `geometry` is computed here: `[n, c_in, t, 1, joints]` through a
/// `9 × 1 × 1` kernel of stride 1 and padding 4 along time only (the output the input's size),
/// with at least [`FEWEST_TILES_PER_CHANNEL`] tiles per input channel, unless
/// `VIDTRAIN_CPU_KERNELS` says `no-winograd`. The tiles counted are the whole call's, as on the
/// 3-D route; the backward's input gradient runs clip by clip (ST-GCN's 256-channel blocks at
/// micro-batch 4: 416 tiles a call, 104 a clip).
pub(crate) fn applies(geometry: &ConvGeometry) -> bool {
    let [n, c_in, t, h, w] = geometry.input;
    let tiles = n * t.div_ceil(OUTPUTS) * w;
    geometry.kernel == [TAPS, 1, 1]
        && geometry.stride == [1; 3]
        && geometry.padding == [TAPS / 2, 0, 0]
        && h == 1
        && tiles >= FEWEST_TILES_PER_CHANNEL * c_in
        && !crate::cpu_kernels::winograd_refused()
}

/// A clip's sizes and its tiles.
#[derive(Debug, Clone, Copy)]
struct Tiling {
    frames: usize,
    /// Values of a frame: the joints (one tile each in every row of tiles).
    joints: usize,
    /// Rows of tiles of a clip: nine frames each, the last cut by the clip's end.
    rows: usize,
}

impl Tiling {
    fn new(frames: usize, joints: usize) -> Self {
        Self {
            frames,
            joints,
            rows: frames.div_ceil(OUTPUTS),
        }
    }

    /// Values of one channel of a clip.
    fn volume(&self) -> usize {
        self.frames * self.joints
    }
}

/// Bᵀ of F(3, 3) along one axis: `out[α]` from the tile's five inputs `d` (each a run of values,
/// one per tile), all of one length.
#[inline(always)]
fn input_points(d: [&[f32]; 5], out: [&mut [f32]; 5]) {
    let [d0, d1, d2, d3, d4] = d;
    let [o0, o1, o2, o3, o4] = out;
    for i in 0..o0.len() {
        let (d0, d1, d2, d3, d4) = (d0[i], d1[i], d2[i], d3[i], d4[i]);
        o0[i] = 0.5 * (d0 - d2) - d1 + d3;
        o1[i] = 0.5 * (d2 - d1) + d3;
        o2[i] = 0.5 * d1 - 1.5 * d2 + d3;
        o3[i] = d3 - d1;
        o4[i] = 0.5 * (d1 - d3) - d2 + d4;
    }
}

/// Aᵀ of F(3, 3) along one axis: the tile's three outputs from its five points' runs.
#[inline(always)]
fn output_values(m: [&[f32]; 5], out: [&mut [f32]; 3]) {
    let [m0, m1, m2, m3, m4] = m;
    let [y0, y1, y2] = out;
    for i in 0..y0.len() {
        y0[i] = m0[i] + m1[i] + m2[i] + m3[i];
        y1[i] = m1[i] - m2[i] + 0.5 * m3[i];
        y2[i] = m1[i] + m2[i] + 0.25 * m3[i] + m4[i];
    }
}

/// A of F(3, 3) along one axis (the adjoint of [`output_values`]): a tile's five points of
/// the output gradient from its three output frames' runs.
#[inline(always)]
fn upstream_points(y: [&[f32]; 3], out: [&mut [f32]; 5]) {
    let [y0, y1, y2] = y;
    let [p0, p1, p2, p3, p4] = out;
    for i in 0..p0.len() {
        let (y0, y1, y2) = (y0[i], y1[i], y2[i]);
        p0[i] = y0;
        p1[i] = y0 + y1 + y2;
        p2[i] = y0 - y1 + y2;
        p3[i] = y0 + 0.5 * y1 + 0.25 * y2;
        p4[i] = y2;
    }
}

/// Gᵀ of F(3, 3) (the adjoint of [`weight_points`]): three taps' gradients from five points'.
#[inline(always)]
fn tap_gradients([d0, d1, d2, d3, d4]: [f32; 5]) -> [f32; 3] {
    const THIRD: f32 = 1.0 / 3.0;
    [
        2.0 * d0 + d1 - THIRD * (d2 + 8.0 * d3),
        d1 + THIRD * (d2 - 4.0 * d3),
        d1 - THIRD * (d2 + 2.0 * d3) + d4,
    ]
}

/// G of F(3, 3) on one axis's three taps.
#[inline(always)]
fn weight_points([g0, g1, g2]: [f32; 3]) -> [f32; 5] {
    const THIRD: f32 = 1.0 / 3.0;
    [
        2.0 * g0,
        g0 + g1 + g2,
        THIRD * (g1 - g0 - g2),
        -THIRD * (8.0 * g0 + 4.0 * g1 + 2.0 * g2),
        g2,
    ]
}

/// A weight's nine taps (lanes of output channels side by side, tap `3a + b`) into its 25
/// points: G along `b` (into α), then along `a` (into β).
#[inline(always)]
fn weight_transform(taps: &[Lanes], points: &mut [Lanes]) {
    let mut inner = [[0.0; COLUMNS]; 15];
    for a in 0..3 {
        for lane in 0..COLUMNS {
            let result = weight_points(std::array::from_fn(|b| taps[3 * a + b][lane]));
            for (alpha, value) in result.into_iter().enumerate() {
                inner[a * 5 + alpha][lane] = value;
            }
        }
    }
    for alpha in 0..5 {
        for lane in 0..COLUMNS {
            let result = weight_points(std::array::from_fn(|a| inner[a * 5 + alpha][lane]));
            for (beta, value) in result.into_iter().enumerate() {
                points[alpha * 5 + beta][lane] = value;
            }
        }
    }
}

/// The weight `[c_out, c_in, 9, 1, 1]` transformed for the forward, or (`transposed`) for the
/// input gradient: input and output channels swapped and the taps reversed.
fn point_weights<T: HostFloat>(
    weight: &[T],
    [c_out, c_in]: [usize; 2],
    transposed: bool,
) -> PointWeights {
    let (dims, strides) = if transposed {
        ([c_in, c_out], [TAPS, c_in * TAPS])
    } else {
        ([c_out, c_in], [c_in * TAPS, TAPS])
    };
    PointWeights::transformed(
        weight,
        dims,
        strides,
        transposed,
        [TAPS, POINTS],
        weight_transform,
    )
}

/// Scratch buffers of the transform of one channel's row of tiles.
#[derive(Default)]
struct InputScratch {
    /// The frames the row reads in f32 (zero in the padding and past the clip): `[frame][joint]`.
    frames: Vec<f32>,
    /// After the inner axis: `[p][α][joint]` (inputs), `[j][α][joint]` (output gradients).
    inner: Vec<f32>,
}

/// The output gradient's transform (`A` on both axes) of every tile of row `row` of tiles of one
/// output channel (`plane`: its `[t, joints]` values), point `π`'s run of tiles into `points`
/// at `offset(π)`.
#[inline(always)]
fn transform_upstream_row<S: HostFloat>(
    plane: &[S],
    row: usize,
    tiling: &Tiling,
    scratch: &mut InputScratch,
    points: &mut [f32],
    offset: impl Fn(usize) -> usize,
) {
    let joints = tiling.joints;
    let InputScratch { frames, inner } = scratch;
    frames.resize(OUTPUTS * joints, 0.0);
    inner.resize(3 * 5 * joints, 0.0);
    // Output frames `9·row …`: frame `i + 3j` of the tile.
    for (s, line) in frames.chunks_exact_mut(joints).enumerate() {
        let frame = row * OUTPUTS + s;
        if frame < tiling.frames {
            let values = &plane[frame * joints..][..joints];
            for (target, value) in line.iter_mut().zip(values) {
                *target = value.to_f32();
            }
        } else {
            line.fill(0.0);
        }
    }
    // Frame `i + 3j` of the tile: along `i`, then along `j`.
    nested_points::<3>(frames, joints, inner, points, offset, upstream_points);
}

/// The transform (`Bᵀ` on both axes) of every tile of row `row` of tiles of one channel
/// (`plane`: the channel's `[t, joints]` values), point `π`'s run of tiles into `points` at
/// `offset(π)`.
#[inline(always)]
fn transform_input_row<S: HostFloat>(
    plane: &[S],
    row: usize,
    tiling: &Tiling,
    scratch: &mut InputScratch,
    points: &mut [f32],
    offset: impl Fn(usize) -> usize,
) {
    let joints = tiling.joints;
    let InputScratch { frames, inner } = scratch;
    frames.resize(WINDOW * joints, 0.0);
    inner.resize(POINTS * joints, 0.0);
    // Input frames `9·row − 4 …`.
    for (s, line) in frames.chunks_exact_mut(joints).enumerate() {
        let frame = (row * OUTPUTS + s)
            .checked_sub(TAPS / 2)
            .filter(|&frame| frame < tiling.frames);
        match frame {
            Some(frame) => {
                let values = &plane[frame * joints..][..joints];
                for (target, value) in line.iter_mut().zip(values) {
                    *target = value.to_f32();
                }
            }
            None => line.fill(0.0),
        }
    }
    // `z[q][p]`, frame `q + 3p` of the window: along `q`, then along `p`.
    nested_points::<5>(frames, joints, inner, points, offset, input_points);
}

/// The two axes of a row of tiles' transform, `frames` (`[frame][joint]`) read as the `N × N`
/// block `frame(k + 3m)`: `transform` along `k` for each `m` into `inner` (`[m][α][joint]`),
/// then along `m` for each α into point `α · 5 + β`'s run of `points` at `offset(α · 5 + β)`.
#[inline(always)]
fn nested_points<const N: usize>(
    frames: &[f32],
    joints: usize,
    inner: &mut [f32],
    points: &mut [f32],
    offset: impl Fn(usize) -> usize,
    transform: impl Fn([&[f32]; N], [&mut [f32]; 5]),
) {
    let alphas = std::array::from_fn(|alpha| alpha * joints);
    for (m, target) in inner.chunks_exact_mut(5 * joints).take(N).enumerate() {
        let d = std::array::from_fn(|k| &frames[(k + 3 * m) * joints..][..joints]);
        transform(d, runs_mut(target, alphas, joints));
    }
    for alpha in 0..5 {
        let d = std::array::from_fn(|m| &inner[(m * 5 + alpha) * joints..][..joints]);
        let starts = std::array::from_fn(|beta| offset(alpha * 5 + beta));
        transform(d, runs_mut(points, starts, joints));
    }
}

/// A block of rows of tiles: its rows' first, their count, and the output's lines it writes
/// (`[c_out][row][9 frames]`, `None` past the clip).
struct Block<'a, O> {
    first_row: usize,
    rows: usize,
    lines: Vec<Option<&'a mut [O]>>,
}

/// Scratch buffers of a block.
#[derive(Default)]
struct BlockScratch {
    input: InputScratch,
    /// The block's transformed inputs, `[point][c_in][tile]`: the products' columns.
    points: Vec<f32>,
    /// Their products with the weight, `[point][c_out rounded up][tile]`.
    products: Vec<f32>,
    /// After the inner axis of the output transform: `[β][i][joint]`.
    inner: Vec<f32>,
    /// One `i`'s three output frames: `[j][joint]`.
    values: Vec<f32>,
}

/// The convolution (9 taps along time, stride 1, padding 4) of `clips` (`[n, c_in, t, joints]`
/// read as `S`) with `weight` plus `bias` into `output` (`[n, c_out, t, joints]` stored as `O`),
/// blocks of rows of tiles in parallel, each block transformed, multiplied and transformed back
/// by one thread.
fn convolve<S: HostFloat, O: HostFloat>(
    clips: &[S],
    tiling: &Tiling,
    weight: &PointWeights,
    bias: Option<&[f32]>,
    output: &mut [O],
    path: F32Path,
) {
    let [channels_out, channels_in] = weight.channels();
    let n = clips.len() / (channels_in * tiling.volume());
    if n == 0 || output.is_empty() {
        return;
    }
    let (frames, joints) = (tiling.frames, tiling.joints);
    let total_rows = n * tiling.rows;
    let rows_per_block = conv_winograd::rows_per_block(POINTS, joints, channels_in, total_rows);
    let mut blocks: Vec<Block<'_, O>> = (0..total_rows.div_ceil(rows_per_block))
        .map(|index| {
            let first_row = index * rows_per_block;
            let rows = rows_per_block.min(total_rows - first_row);
            Block {
                first_row,
                rows,
                lines: (0..rows * channels_out * OUTPUTS).map(|_| None).collect(),
            }
        })
        .collect();
    // Each output frame's line to the block of its row of tiles.
    for (index, line) in output.chunks_mut(joints).enumerate() {
        let (clip_channel, frame) = (index / frames, index % frames);
        let (clip, channel) = (clip_channel / channels_out, clip_channel % channels_out);
        let row = clip * tiling.rows + frame / OUTPUTS;
        let block = &mut blocks[row / rows_per_block];
        let local = row - block.first_row;
        block.lines[(channel * block.rows + local) * OUTPUTS + frame % OUTPUTS] = Some(line);
    }
    blocks
        .into_par_iter()
        .for_each_init(BlockScratch::default, |scratch, block| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || convolve_block(clips, tiling, weight, bias, block, scratch, path),
            )
        });
}

/// One block of [`convolve`].
#[inline(always)]
fn convolve_block<S: HostFloat, O: HostFloat>(
    clips: &[S],
    tiling: &Tiling,
    weight: &PointWeights,
    bias: Option<&[f32]>,
    mut block: Block<'_, O>,
    scratch: &mut BlockScratch,
    path: F32Path,
) {
    let [channels_out, channels_in] = weight.channels();
    let (joints, plane) = (tiling.joints, tiling.volume());
    let tiles = (block.rows * joints).next_multiple_of(COLUMNS);
    let padded_out = weight.padded_out();
    scratch.points.resize(POINTS * channels_in * tiles, 0.0);
    scratch.products.resize(POINTS * padded_out * tiles, 0.0);
    for local in 0..block.rows {
        let row = block.first_row + local;
        let (clip, clip_row) = (row / tiling.rows, row % tiling.rows);
        for channel in 0..channels_in {
            let values = &clips[(clip * channels_in + channel) * plane..][..plane];
            transform_input_row(
                values,
                clip_row,
                tiling,
                &mut scratch.input,
                &mut scratch.points,
                |point| (point * channels_in + channel) * tiles + local * joints,
            );
        }
    }
    point_products(weight, &scratch.points, tiles, &mut scratch.products, path);
    let BlockScratch {
        products,
        inner,
        values,
        ..
    } = scratch;
    inner.resize(5 * 3 * joints, 0.0);
    values.resize(3 * joints, 0.0);
    let mut targets = block.lines.chunks_exact_mut(block.rows * OUTPUTS);
    for channel in 0..channels_out {
        let targets = targets.next().expect("every output channel's lines");
        let shift = bias.map_or(0.0, |bias| bias[channel]);
        for local in 0..block.rows {
            // The inner axis: for each β, the five α into `i`.
            for (beta, target) in inner.chunks_exact_mut(3 * joints).enumerate() {
                let m = std::array::from_fn(|alpha| {
                    let at = ((alpha * 5 + beta) * padded_out + channel) * tiles;
                    &products[at + local * joints..][..joints]
                });
                output_values(m, runs_mut(target, [0, joints, 2 * joints], joints));
            }
            // The outer axis: for each `i`, the five β into `j`; frame `i + 3j` of the tile.
            for i in 0..3 {
                let m = std::array::from_fn(|beta| &inner[(beta * 3 + i) * joints..][..joints]);
                output_values(m, runs_mut(values, [0, joints, 2 * joints], joints));
                for (j, computed) in values.chunks_exact(joints).enumerate() {
                    if let Some(target) = targets[local * OUTPUTS + i + 3 * j].as_deref_mut() {
                        for (target, value) in target.iter_mut().zip(computed) {
                            *target = O::from_f32(value + shift);
                        }
                    }
                }
            }
        }
    }
}

/// The forward of a convolution that [`applies`]: output `[n, c_out, t, 1, joints]` in the
/// input's dtype, computed in f32 (a half input widened as it is transformed, the output
/// rounded as it is stored).
pub(crate) fn forward<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
    path: F32Path,
) -> Tensor<B, 5> {
    match input.dtype() {
        DType::BF16 => forward_of::<B, bf16>(input, weight, bias, geometry, path),
        DType::F16 => forward_of::<B, f16>(input, weight, bias, geometry, path),
        _ => forward_of::<B, f32>(input, weight, bias, geometry, path),
    }
}

fn forward_of<B: Backend, S: HostFloat>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
    path: F32Path,
) -> Tensor<B, 5> {
    let device = input.device();
    let input = stored::<S, _, 5>(input);
    let weight = stored::<f32, _, 5>(weight);
    let bias = bias.map(floats);
    let [n, c_in, t, _, joints] = geometry.input;
    let c_out = geometry.channels_out;
    let weight = point_weights(&weight, [c_out, c_in], false);
    let mut output = filled(n * c_out * t * joints, S::from_f32(0.0));
    let tiling = Tiling::new(t, joints);
    convolve(&input, &tiling, &weight, bias.as_deref(), &mut output, path);
    Tensor::from_data(
        TensorData::new(output, [n, c_out, t, 1, joints]),
        (&device, S::dtype()),
    )
}

/// The input gradient of a convolution that [`applies`], clip by clip: the convolution of the
/// output gradient with the weight transposed and reversed in time (padding 4).
pub(super) struct InputGradient {
    weight: PointWeights,
    tiling: Tiling,
}

impl InputGradient {
    /// From the weight `[c_out, c_in, 9, 1, 1]`.
    pub(super) fn new<T: HostFloat>(weight: &[T], geometry: &ConvGeometry) -> Self {
        let [_, c_in, t, _, joints] = geometry.input;
        Self {
            weight: point_weights(weight, [geometry.channels_out, c_in], true),
            tiling: Tiling::new(t, joints),
        }
    }
}

impl ClipInputGradient<F32Path> for InputGradient {
    fn clip<S: HostFloat>(&mut self, upstream: &[S], gradient: &mut [S], path: F32Path) {
        convolve(upstream, &self.tiling, &self.weight, None, gradient, path);
    }
}

/// Bytes of transformed inputs and output gradients a [`WeightGradient`] holds between its
/// products (whole clips: at least one).
const GRADIENT_CHUNK_BYTES: usize = 8 << 20;

/// The weight gradient of a convolution that [`applies`], clip by clip: each clip's input and
/// output gradient transformed (`[channel][point][tile]`, a chunk of clips' tiles in a row),
/// then per point `sums[π] += (A·dy·Aᵀ)[π] · (Bᵀ·z·B)[π]ᵀ` (`[c_out × c_in]`, one point per task
/// of the compute pool), and at the end the points taken back to the taps by `Gᵀ … G`.
pub(super) struct WeightGradient {
    tiling: Tiling,
    channels_in: usize,
    channels_out: usize,
    /// Clips a chunk holds, and how many it holds now.
    chunk_clips: usize,
    clips: usize,
    /// The chunk's transformed inputs, `[c_in][point][tile]`.
    inputs: Vec<f32>,
    /// Its transformed output gradients, `[c_out][point][tile]`.
    upstreams: Vec<f32>,
    /// Per point, the sums `[point][c_out][c_in]`.
    sums: Vec<f32>,
}

impl WeightGradient {
    pub(super) fn new(geometry: &ConvGeometry) -> Self {
        let [n, channels_in, t, _, joints] = geometry.input;
        let channels_out = geometry.channels_out;
        let tiling = Tiling::new(t, joints);
        let clip_bytes =
            POINTS * (channels_in + channels_out) * tiling.rows * joints * size_of::<f32>();
        let chunk_clips = (GRADIENT_CHUNK_BYTES / clip_bytes.max(1)).clamp(1, n.max(1));
        let chunk_tiles = chunk_clips * tiling.rows * joints;
        Self {
            tiling,
            channels_in,
            channels_out,
            chunk_clips,
            clips: 0,
            inputs: filled(channels_in * POINTS * chunk_tiles, 0f32),
            upstreams: filled(channels_out * POINTS * chunk_tiles, 0f32),
            sums: filled(POINTS * channels_out * channels_in, 0f32),
        }
    }

    /// Tiles of a chunk (a run of them per channel and point).
    fn chunk_tiles(&self) -> usize {
        self.chunk_clips * self.tiling.rows * self.tiling.joints
    }

    /// Adds one clip: its input `[c_in, t, joints]` and output gradient `[c_out, t, joints]`.
    pub(super) fn add_clip<S: HostFloat>(&mut self, input: &[S], upstream: &[S]) {
        let (tiling, chunk_tiles) = (self.tiling, self.chunk_tiles());
        let slot = self.clips * tiling.rows * tiling.joints;
        let plane = tiling.volume();
        let offset =
            move |point: usize, row: usize| point * chunk_tiles + slot + row * tiling.joints;
        let run = POINTS * chunk_tiles;
        rayon::join(
            || {
                transform_channels(
                    &mut self.inputs,
                    run,
                    input,
                    plane,
                    #[inline(always)]
                    |plane, scratch: &mut InputScratch, target| {
                        for row in 0..tiling.rows {
                            let offset = |point| offset(point, row);
                            transform_input_row(plane, row, &tiling, scratch, target, offset);
                        }
                    },
                )
            },
            || {
                transform_channels(
                    &mut self.upstreams,
                    run,
                    upstream,
                    plane,
                    #[inline(always)]
                    |plane, scratch: &mut InputScratch, target| {
                        for row in 0..tiling.rows {
                            let offset = |point| offset(point, row);
                            transform_upstream_row(plane, row, &tiling, scratch, target, offset);
                        }
                    },
                )
            },
        );
        self.clips += 1;
        if self.clips == self.chunk_clips {
            self.multiply();
        }
    }

    /// The chunk's products added to the sums, point by point in parallel.
    fn multiply(&mut self) {
        let tiles = self.clips * self.tiling.rows * self.tiling.joints;
        self.clips = 0;
        let (channels_in, channels_out) = (self.channels_in, self.channels_out);
        let chunk_tiles = self.chunk_tiles();
        conv_winograd::add_point_products(
            &mut self.sums,
            [&self.upstreams, &self.inputs],
            [channels_out, channels_in],
            POINTS,
            [tiles, chunk_tiles],
        );
    }

    /// The gradient `[c_out, c_in, 9]` (f32): the last chunk's products, then each pair of
    /// channels' 25 sums back to its nine taps.
    pub(super) fn into_weight_gradient(mut self) -> Vec<f32> {
        self.multiply();
        let (channels_in, channels_out) = (self.channels_in, self.channels_out);
        let sums = std::mem::take(&mut self.sums);
        drop(self);
        let mut gradient = filled(channels_out * channels_in * TAPS, 0f32);
        gradient
            .par_chunks_mut(channels_in * TAPS)
            .enumerate()
            .for_each(|(output, gradient)| {
                for (input, taps) in gradient.chunks_exact_mut(TAPS).enumerate() {
                    let sum =
                        |point: usize| sums[(point * channels_out + output) * channels_in + input];
                    // Along α (into `b`) for each β, then along β (into `a`): tap `3a + b`.
                    let inner: [[f32; 3]; 5] = std::array::from_fn(|beta| {
                        tap_gradients(std::array::from_fn(|alpha| sum(alpha * 5 + beta)))
                    });
                    for b in 0..3 {
                        let outer = tap_gradients(std::array::from_fn(|beta| inner[beta][b]));
                        for (a, value) in outer.into_iter().enumerate() {
                            taps[3 * a + b] = value;
                        }
                    }
                }
            });
        gradient
    }
}
