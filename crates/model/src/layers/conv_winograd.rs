//! 3 × 3 × 3 convolutions of stride 1 and padding 1 (the 3-D ResNet's) by Winograd's minimal
//! filtering F(2 × 2 × 2, 3 × 3 × 3), on the CPU backend.
//!
//! Computed directly ([`super::conv_direct`]), each output position costs 27 multiply-adds per
//! pair of channels. Here the output is cut into tiles of 2 × 2 × 2 positions; a tile reads a
//! 4 × 4 × 4 block of the padded input, and in the transformed space (64 points per tile) the
//! convolution is an element-wise product: per point, `[tiles × c_in] · [c_in × c_out]`. A tile's
//! eight outputs cost 64 multiply-adds per pair of channels instead of 216: 3.4 times fewer. The
//! transforms (1-D transforms along each axis, additions only, and halves for the weight) are
//! linear passes over the clip; the products run on [`gemm_f32::strided_tile`], the f32 tiles of
//! the direct route.
//!
//! With F(2, 3)'s matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"),
//! `d` a tile's 4 inputs on one axis, `g` the kernel's 3 taps, `y` its 2 outputs:
//!
//! - inputs: `Bᵀd = [d0 − d2, d1 + d2, d2 − d1, d1 − d3]`;
//! - weight: `Gg = [g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2]`;
//! - outputs: `y = Aᵀm = [m0 + m1 + m2, m1 − m2 − m3]`;
//!
//! applied on each of the three axes. The input gradient is the forward of the output gradient
//! with the weight transposed and flipped on every axis (padding `3 − 1 − 1 = 1`), as on the
//! direct route. The weight gradient is the transforms' adjoint: per point a sum over tiles of
//! `(A·dy)[p] · (Bᵀd)[p]`, then `Gᵀ` on every axis ([`WeightGradient`], decision 0024). Its
//! products sum over tiles, so they do not run on the strided tiles (which would need the tiles
//! as their units: a transpose of 8 times the clip, measured slower than the direct route at
//! stop 57) but on gemm, which reads both transforms through strides.
//!
//! F(2, 3) is the most accurate of Winograd's tilings: its transforms add at most four values
//! and halve the weight, so the results differ from the direct sums by a few f32 roundings
//! (tested against the im2col route to 1e-5).

use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16, f16};
use rayon::prelude::*;

use super::conv_gemm::{ClipInputGradient, ConvGeometry};
use crate::cpu_kernels::{HostFloat, filled, floats, stored};
use crate::gemm_bf16::{COLUMNS, Matrix, ROWS, Strided, Tile, Update};
use crate::gemm_f32::{self, F32Path};

/// Transform points of a tile: 4 on each axis, in the order (frame, row, column).
const POINTS: usize = 64;

/// Bytes of transformed inputs a task of the forward holds (its block of tiles' 64 points of
/// every input channel), so that they and the block's products stay in the L2 and L3 caches
/// between the transforms and the products (r3d_18's first stage on the Zen 3: 1.26–1.44 times
/// the direct route's speed with 1 MiB, 0.87–0.93 with 4 MiB).
const BLOCK_BYTES: usize = 1 << 20;

/// The most of a block's tiles that may be padding: a block is a whole number of rows of tiles,
/// its products a whole number of [`COLUMNS`] tiles (r3d_18's first stage: 2 rows of 28 tiles,
/// 64 columns, 1 MiB of transformed inputs).
const MOST_WASTE: f64 = 0.15;

/// Tiles per input channel below which the direct route is faster: the weight's transforms
/// cost as many passes over `c_in · c_out` values whatever the clip.
const FEWEST_TILES_PER_CHANNEL: usize = 2;

/// Whether a convolution of `geometry` is computed here: a 3 × 3 × 3 kernel, stride 1 and
/// padding 1 on every axis (the output the input's size), unless `VIDTRAIN_CPU_KERNELS` says
/// `no-winograd` (the direct route then computes it: the A/B of the two in one binary).
///
/// The tiles counted are the whole call's (every clip): the forward transforms them together,
/// while the backward's input gradient runs clip by clip, so at micro-batch 4 a stage just above
/// the threshold would take this route with a quarter of the tiles per weight transform (none of
/// r3d_18's does: its third stage has 98 tiles a clip for 256 channels).
pub(crate) fn applies(geometry: &ConvGeometry) -> bool {
    let [n, c_in, t, h, w] = geometry.input;
    let tiles = n * Tiling::new([t, h, w]).rows() * w.div_ceil(2);
    geometry.kernel == [3; 3]
        && geometry.stride == [1; 3]
        && geometry.padding == [1; 3]
        && tiles >= FEWEST_TILES_PER_CHANNEL * c_in
        && !crate::cpu_kernels::winograd_refused()
}

/// A clip's sizes and its tiles.
#[derive(Debug, Clone, Copy)]
struct Tiling {
    /// Frames, rows and columns of the input (and of the output: stride 1, padding 1).
    dims: [usize; 3],
    /// Tiles on each axis: half the positions, rounded up.
    tiles: [usize; 3],
}

impl Tiling {
    fn new(dims: [usize; 3]) -> Self {
        Self {
            dims,
            tiles: dims.map(|dim| dim.div_ceil(2)),
        }
    }

    /// Rows of tiles (a frame and row of tiles: `tiles[2]` tiles) per clip.
    fn rows(&self) -> usize {
        self.tiles[0] * self.tiles[1]
    }

    /// Values of one channel of a clip.
    fn volume(&self) -> usize {
        self.dims.iter().product()
    }

    /// Rows of tiles per block of the forward ([`rows_per_block`]).
    fn rows_per_block(&self, channels_in: usize, total_rows: usize) -> usize {
        rows_per_block(POINTS, self.tiles[2], channels_in, total_rows)
    }
}

/// Rows of tiles per block of a forward whose tiles have `points` transform points, `row_tiles`
/// tiles a row and `channels_in` channels transformed: a block's tiles fill the products'
/// [`COLUMNS`]-tile columns but for at most [`MOST_WASTE`] of padding, within [`BLOCK_BYTES`]
/// (else the rows that waste least), and there are at least two blocks per thread where the
/// clips have that many rows.
pub(super) fn rows_per_block(
    points: usize,
    row_tiles: usize,
    channels_in: usize,
    total_rows: usize,
) -> usize {
    let bytes = |rows: usize| {
        points * channels_in * (rows * row_tiles).next_multiple_of(COLUMNS) * size_of::<f32>()
    };
    let waste = |rows: usize| {
        let tiles = rows * row_tiles;
        (tiles.next_multiple_of(COLUMNS) - tiles) as f64 / tiles as f64
    };
    let most = total_rows.div_ceil(2 * rayon::current_num_threads()).max(1);
    // The most rows within the budget and the padding allowed, else the least padding.
    let candidates = 1..=most.min(COLUMNS);
    candidates
        .clone()
        .filter(|&rows| bytes(rows) <= BLOCK_BYTES && waste(rows) <= MOST_WASTE)
        .max()
        .unwrap_or_else(|| {
            candidates
                .min_by(|&a, &b| waste(a).total_cmp(&waste(b)))
                .unwrap_or(1)
        })
}

/// Bᵀ of F(2, 3) along one axis: `out[p]` from the tile's four inputs `d` (each a run of
/// values, one per tile or position), all of one length.
#[inline(always)]
fn input_points(d: [&[f32]; 4], out: [&mut [f32]; 4]) {
    let [d0, d1, d2, d3] = d;
    let [o0, o1, o2, o3] = out;
    for i in 0..o0.len() {
        o0[i] = d0[i] - d2[i];
        o1[i] = d1[i] + d2[i];
        o2[i] = d2[i] - d1[i];
        o3[i] = d1[i] - d3[i];
    }
}

/// Aᵀ of F(2, 3) along one axis: the tile's two outputs from its four points' runs.
#[inline(always)]
fn output_values(m: [&[f32]; 4], out: [&mut [f32]; 2]) {
    let [m0, m1, m2, m3] = m;
    let [y0, y1] = out;
    for i in 0..y0.len() {
        y0[i] = m0[i] + m1[i] + m2[i];
        y1[i] = m1[i] - m2[i] - m3[i];
    }
}

/// G of F(2, 3) on one axis's three taps.
#[inline(always)]
fn weight_points([g0, g1, g2]: [f32; 3]) -> [f32; 4] {
    [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]
}

/// `values` (`[a][b][c]` of lanes, `IN` on each axis) through `transform` on each axis in turn,
/// into `out` (`[a'][b'][c']`, `OUT` on each axis), lane by lane: every lane of a line through
/// the same arithmetic, which the compiler turns into vector instructions across the lanes.
#[inline(always)]
fn separable<const IN: usize, const OUT: usize>(
    values: &[Lanes],
    transform: impl Fn([f32; IN]) -> [f32; OUT] + Copy,
    out: &mut [Lanes],
) {
    // Along the last axis, then the middle, then the first; `[f32; IN]` and `[f32; OUT]` lines
    // of lanes between scratch arrays.
    let mut last = [[0.0; COLUMNS]; 64];
    for line in 0..IN * IN {
        for lane in 0..COLUMNS {
            let result = transform(std::array::from_fn(|i| values[line * IN + i][lane]));
            for (o, value) in result.into_iter().enumerate() {
                last[line * OUT + o][lane] = value;
            }
        }
    }
    let mut middle = [[0.0; COLUMNS]; 64];
    for a in 0..IN {
        for c in 0..OUT {
            for lane in 0..COLUMNS {
                let result = transform(std::array::from_fn(|b| last[(a * IN + b) * OUT + c][lane]));
                for (b, value) in result.into_iter().enumerate() {
                    middle[(a * OUT + b) * OUT + c][lane] = value;
                }
            }
        }
    }
    for b in 0..OUT {
        for c in 0..OUT {
            for lane in 0..COLUMNS {
                let result = transform(std::array::from_fn(|a| {
                    middle[(a * OUT + b) * OUT + c][lane]
                }));
                for (a, value) in result.into_iter().enumerate() {
                    out[(a * OUT + b) * OUT + c][lane] = value;
                }
            }
        }
    }
}

/// [`COLUMNS`] values side by side: a panel's channels.
pub(super) type Lanes = [f32; COLUMNS];

/// The most transform points of a tile of any Winograd route (this one's 64).
const MOST_POINTS: usize = 64;

/// A weight transformed for the products: per point, per input channel, every output channel
/// (zero up to a whole number of [`ROWS`]) — `[point][c_in][c_out rounded up]`, the rows of
/// the products' tiles.
pub(super) struct PointWeights {
    values: Vec<f32>,
    channels_in: usize,
    channels_out: usize,
    /// `c_out` rounded up to [`ROWS`].
    padded_out: usize,
    /// Transform points per tile.
    points: usize,
}

impl PointWeights {
    /// This route's: from a weight whose value of (output channel, input channel, tap) lies at
    /// `output · strides[0] + input · strides[1]` and then its 27 taps in a row (reversed when
    /// `flipped`: the input gradient's weight); `dims` are `[c_out, c_in]` of the transformed
    /// weight.
    fn new<T: HostFloat>(
        weight: &[T],
        dims: [usize; 2],
        strides: [usize; 2],
        flipped: bool,
    ) -> Self {
        Self::transformed(
            weight,
            dims,
            strides,
            flipped,
            [27, POINTS],
            |taps, points| separable::<3, 4>(taps, weight_points, points),
        )
    }

    /// Any route's: as [`Self::new`] with `taps` taps in a row, made into `points` points by
    /// `transform` ([`COLUMNS`] output channels side by side, one lane each).
    pub(super) fn transformed<T: HostFloat>(
        weight: &[T],
        [channels_out, channels_in]: [usize; 2],
        [output_stride, input_stride]: [usize; 2],
        flipped: bool,
        [taps, points]: [usize; 2],
        transform: impl Fn(&[Lanes], &mut [Lanes]) + Sync,
    ) -> Self {
        assert!(taps <= MOST_POINTS && points <= MOST_POINTS);
        let padded_out = channels_out.next_multiple_of(ROWS);
        // Each input channel's points (`[c_in][point][c_out]`, one task per channel), then
        // each point's input channels gathered (`[point][c_in][c_out]`).
        let mut by_input = filled(channels_in * points * padded_out, 0f32);
        by_input
            .par_chunks_mut(points * padded_out)
            .enumerate()
            .for_each(|(input, values)| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        // [`COLUMNS`] output channels' taps side by side (zero past the last
                        // channel), then their points.
                        let mut tap_lanes = [[0.0; COLUMNS]; MOST_POINTS];
                        let mut point_lanes = [[0.0; COLUMNS]; MOST_POINTS];
                        let (tap_lanes, point_lanes) =
                            (&mut tap_lanes[..taps], &mut point_lanes[..points]);
                        for first in (0..channels_out).step_by(COLUMNS) {
                            let outputs = COLUMNS.min(channels_out - first);
                            for column in 0..outputs {
                                let at = (first + column) * output_stride + input * input_stride;
                                for (tap, lanes) in tap_lanes.iter_mut().enumerate() {
                                    let tap = if flipped { taps - 1 - tap } else { tap };
                                    lanes[column] = weight[at + tap].to_f32();
                                }
                            }
                            for lanes in tap_lanes.iter_mut() {
                                lanes[outputs..].fill(0.0);
                            }
                            transform(tap_lanes, point_lanes);
                            for (point, lanes) in point_lanes.iter().enumerate() {
                                let at = point * padded_out + first;
                                values[at..][..outputs].copy_from_slice(&lanes[..outputs]);
                            }
                        }
                    },
                )
            });
        let mut values = filled(points * channels_in * padded_out, 0f32);
        values
            .par_chunks_mut(channels_in * padded_out)
            .enumerate()
            .for_each(|(point, values)| {
                for (input, target) in values.chunks_exact_mut(padded_out).enumerate() {
                    let at = (input * points + point) * padded_out;
                    target.copy_from_slice(&by_input[at..][..padded_out]);
                }
            });
        Self {
            values,
            channels_in,
            channels_out,
            padded_out,
            points,
        }
    }

    /// Where `point`'s values start.
    fn start(&self, point: usize) -> usize {
        point * self.channels_in * self.padded_out
    }

    pub(super) fn channels(&self) -> [usize; 2] {
        [self.channels_out, self.channels_in]
    }

    /// Output channels rounded up to [`ROWS`]: the rows of [`point_products`]' products.
    pub(super) fn padded_out(&self) -> usize {
        self.padded_out
    }
}

/// The products of a block of `tiles` tiles (a multiple of [`COLUMNS`]) in the transformed
/// space: for every point, `products[point][c_out rounded up][tile] = Σ_c_in weight[point][c_in]
/// [c_out] · inputs[point][c_in][tile]`, per panel of [`COLUMNS`] tiles (in L1) and [`ROWS`]
/// output channels on [`gemm_f32::strided_tile`].
#[inline(always)]
pub(super) fn point_products(
    weight: &PointWeights,
    inputs: &[f32],
    tiles: usize,
    products: &mut [f32],
    path: F32Path,
) {
    let (channels_in, padded_out) = (weight.channels_in, weight.padded_out);
    let operands = Strided {
        a: &weight.values,
        a_unit_stride: padded_out,
        b: inputs,
        b_unit_stride: tiles,
        units: channels_in,
    };
    for point in 0..weight.points {
        for first in (0..tiles).step_by(COLUMNS) {
            let b_start = point * channels_in * tiles + first;
            for group in (0..padded_out).step_by(ROWS) {
                let mut tile: Tile = [[0.0; COLUMNS]; ROWS];
                let a_start = weight.start(point) + group;
                gemm_f32::strided_tile(path, operands, &[(a_start, b_start)], &mut tile);
                for (row, values) in tile.iter().enumerate() {
                    let at = (point * padded_out + group + row) * tiles + first;
                    products[at..][..COLUMNS].copy_from_slice(values);
                }
            }
        }
    }
}

/// The 16 lines (4 frames × 4 rows) a row of tiles reads on one axis: the tile row's input
/// frames `2i − 1 … 2i + 2` and rows `2j − 1 … 2j + 2`, `None` in the padding or past the clip.
fn tile_row_lines(row: usize, tiling: &Tiling) -> [[Option<usize>; 4]; 2] {
    let [t, h, _] = tiling.dims;
    let (i, j) = (row / tiling.tiles[1], row % tiling.tiles[1]);
    let line = |start: usize, offset: usize, limit: usize| {
        (start * 2 + offset)
            .checked_sub(1)
            .filter(|&index| index < limit)
    };
    [
        std::array::from_fn(|a| line(i, a, t)),
        std::array::from_fn(|b| line(j, b, h)),
    ]
}

/// Scratch buffers of the input transform of one channel's row of tiles.
#[derive(Default)]
struct InputScratch {
    /// The padded line's values at even and at odd positions (`2m − 1` and `2m` of the line).
    even: Vec<f32>,
    odd: Vec<f32>,
    /// Each of the 16 lines' 4 column points of every tile: `[a][b][γ][tile]`.
    columns: Vec<f32>,
    /// After the row axis: `[a][β][γ][tile]`.
    rows: Vec<f32>,
}

/// The row and column transforms (`Bᵀ`) of every tile of one row of tiles of one channel
/// (`plane`: the channel's `[t, h, w]` values), into `scratch.rows` (`[a][β][γ][tile]`: the
/// frame axis is left to [`frame_points`], which writes where the caller keeps the points).
#[inline(always)]
fn transform_input_row<S: HostFloat>(
    plane: &[S],
    row: usize,
    tiling: &Tiling,
    scratch: &mut InputScratch,
) {
    let [_, h, w] = tiling.dims;
    let tiles = tiling.tiles[2];
    let [frames, lines] = tile_row_lines(row, tiling);
    let InputScratch {
        even,
        odd,
        columns,
        rows,
    } = scratch;
    even.resize(tiles + 1, 0.0);
    odd.resize(tiles + 1, 0.0);
    columns.resize(16 * 4 * tiles, 0.0);
    rows.resize(16 * 4 * tiles, 0.0);
    // Columns: tile k reads the padded line's positions 2k … 2k + 3 (the line's 2k − 1 … 2k + 2):
    // even[k], odd[k], even[k + 1], odd[k + 1].
    for a in 0..4 {
        for b in 0..4 {
            let out = &mut columns[(a * 4 + b) * 4 * tiles..][..4 * tiles];
            let (Some(frame), Some(line)) = (frames[a], lines[b]) else {
                out.fill(0.0);
                continue;
            };
            let values = &plane[(frame * h + line) * w..][..w];
            even[0] = 0.0;
            let (pairs, last) = values.as_chunks::<2>();
            for (m, pair) in pairs.iter().enumerate() {
                odd[m] = pair[0].to_f32();
                even[m + 1] = pair[1].to_f32();
            }
            match last.first() {
                Some(value) => {
                    odd[pairs.len()] = value.to_f32();
                    even[pairs.len() + 1..].fill(0.0);
                    odd[pairs.len() + 1..].fill(0.0);
                }
                None => odd[pairs.len()..].fill(0.0),
            }
            let [o0, o1, o2, o3] = split4(out, tiles);
            input_points(
                [&even[..tiles], &odd[..tiles], &even[1..], &odd[1..]],
                [o0, o1, o2, o3],
            );
        }
    }
    // Rows: runs of `4 · tiles` values (every column point of every tile).
    let run = 4 * tiles;
    for a in 0..4 {
        let source = &columns[a * 4 * run..][..4 * run];
        let target = &mut rows[a * 4 * run..][..4 * run];
        let d: [&[f32]; 4] = std::array::from_fn(|b| &source[b * run..][..run]);
        input_points(d, split4(target, run));
    }
}

/// The frame transform (`Bᵀ`) after [`transform_input_row`]: for each of the 16 (row, column)
/// points `line = β · 4 + γ`, the four frame points' runs of tiles into `targets[α]` at
/// `offset(line)` (each target holds the 16 points of one α).
#[inline(always)]
fn frame_points(
    scratch: &InputScratch,
    tiles: usize,
    targets: [&mut [f32]; 4],
    offset: impl Fn(usize) -> usize,
) {
    let run = 4 * tiles;
    let [t0, t1, t2, t3] = targets;
    for line in 0..16 {
        let (beta, gamma) = (line / 4, line % 4);
        let d: [&[f32]; 4] =
            std::array::from_fn(|a| &scratch.rows[(a * 4 + beta) * run + gamma * tiles..][..tiles]);
        let at = offset(line);
        input_points(
            d,
            [
                &mut t0[at..][..tiles],
                &mut t1[at..][..tiles],
                &mut t2[at..][..tiles],
                &mut t3[at..][..tiles],
            ],
        );
    }
}

/// `values` cut into four runs of `run`.
#[inline(always)]
fn split4(values: &mut [f32], run: usize) -> [&mut [f32]; 4] {
    runs_mut(values, [0, run, 2 * run, 3 * run], run)
}

/// `N` runs of `len` values of `values` starting at `starts` (ascending, not overlapping).
#[inline(always)]
pub(super) fn runs_mut<const N: usize>(
    values: &mut [f32],
    starts: [usize; N],
    len: usize,
) -> [&mut [f32]; N] {
    let mut rest = values;
    let mut taken = 0;
    starts.map(|start| {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - taken);
        let (run, tail) = tail.split_at_mut(len);
        rest = tail;
        taken = start + len;
        run
    })
}

/// A block of rows of tiles of the forward: its rows' first, their count, and the output's
/// lines it writes (`[c_out][row][2 frames][2 rows]`, `None` past the clip).
struct Block<'a, O> {
    first_row: usize,
    rows: usize,
    lines: Vec<Option<&'a mut [O]>>,
}

/// Scratch buffers of a block of the forward.
#[derive(Default)]
struct BlockScratch {
    input: InputScratch,
    /// The block's transformed inputs, `[point][c_in][tile]`: the products' columns.
    points: Vec<f32>,
    /// Their products with the weight, `[point][c_out rounded up to ROWS][tile]`.
    products: Vec<f32>,
    output: OutputScratch,
}

/// The convolution (3 × 3 × 3, stride 1, padding 1) of `clips` (`[n, channels_in, t, h, w]`
/// read as `S`) with `weight` plus `bias` into `output` (`[n, c_out, t, h, w]` stored as `O`),
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
    let (channels_in, channels_out) = (weight.channels_in, weight.channels_out);
    let n = clips.len() / (channels_in * tiling.volume());
    if n == 0 || output.is_empty() {
        return;
    }
    let [t, h, w] = tiling.dims;
    let clip_rows = tiling.rows();
    let total_rows = n * clip_rows;
    let rows_per_block = tiling.rows_per_block(channels_in, total_rows);
    let mut blocks: Vec<Block<'_, O>> = (0..total_rows.div_ceil(rows_per_block))
        .map(|index| {
            let first_row = index * rows_per_block;
            let rows = rows_per_block.min(total_rows - first_row);
            Block {
                first_row,
                rows,
                lines: (0..rows * channels_out * 4).map(|_| None).collect(),
            }
        })
        .collect();
    // Each output line to the block of its row of tiles.
    for (index, line) in output.chunks_mut(w).enumerate() {
        let (clip_channel, frame, row) = (index / (t * h), index / h % t, index % h);
        let (clip, channel) = (clip_channel / channels_out, clip_channel % channels_out);
        let tile_row = clip * clip_rows + (frame / 2) * tiling.tiles[1] + row / 2;
        let block = &mut blocks[tile_row / rows_per_block];
        let local = tile_row - block.first_row;
        let slot = ((channel * block.rows + local) * 2 + frame % 2) * 2 + row % 2;
        block.lines[slot] = Some(line);
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
    let (channels_in, channels_out) = (weight.channels_in, weight.channels_out);
    let (row_tiles, clip_rows, plane) = (tiling.tiles[2], tiling.rows(), tiling.volume());
    let tiles = (block.rows * row_tiles).next_multiple_of(COLUMNS);
    let padded_out = weight.padded_out;
    scratch.points.resize(POINTS * channels_in * tiles, 0.0);
    scratch.products.resize(POINTS * padded_out * tiles, 0.0);
    // Inputs: `[point][c_in][tile]`, each α's 16 points a quarter of the buffer.
    for local in 0..block.rows {
        let row = block.first_row + local;
        let (clip, clip_row) = (row / clip_rows, row % clip_rows);
        for channel in 0..channels_in {
            let values = &clips[(clip * channels_in + channel) * plane..][..plane];
            transform_input_row(values, clip_row, tiling, &mut scratch.input);
            let quarter = 16 * channels_in * tiles;
            let [q0, q1, q2, q3] = split4(&mut scratch.points, quarter);
            frame_points(&scratch.input, row_tiles, [q0, q1, q2, q3], |line| {
                (line * channels_in + channel) * tiles + local * row_tiles
            });
        }
    }
    point_products(weight, &scratch.points, tiles, &mut scratch.products, path);
    // Outputs: per output channel and row of tiles, the points back to 2 × 2 × 2 values.
    let (run, w) = (row_tiles, tiling.dims[2]);
    let OutputScratch {
        frames,
        lines,
        values,
    } = &mut scratch.output;
    frames.resize(2 * 16 * run, 0.0);
    lines.resize(4 * 4 * run, 0.0);
    values.resize(2 * run, 0.0);
    let products = &scratch.products;
    let mut targets = block.lines.chunks_exact_mut(block.rows * 4);
    for channel in 0..channels_out {
        let targets = targets.next().expect("every output channel's lines");
        let shift = bias.map_or(0.0, |bias| bias[channel]);
        for local in 0..block.rows {
            // Frames: `[α][β][γ]` → `[ot][β][γ]`, read where the products lie.
            let (y0, y1) = frames.split_at_mut(16 * run);
            for line in 0..16 {
                let m: [&[f32]; 4] = std::array::from_fn(|alpha| {
                    let at = ((alpha * 16 + line) * padded_out + channel) * tiles;
                    &products[at + local * row_tiles..][..run]
                });
                output_values(
                    m,
                    [&mut y0[line * run..][..run], &mut y1[line * run..][..run]],
                );
            }
            // Rows: `[ot][β][γ]` → `[ot][oh][γ]`.
            let span = 4 * run;
            for ot in 0..2 {
                let source = &frames[ot * 16 * run..][..16 * run];
                let m: [&[f32]; 4] = std::array::from_fn(|beta| &source[beta * span..][..span]);
                let (y0, y1) = lines[ot * 2 * span..][..2 * span].split_at_mut(span);
                output_values(m, [y0, y1]);
            }
            // Columns: each line's tiles' two values, interleaved into the output's line.
            for line in 0..4 {
                let source = &lines[line * 4 * run..][..4 * run];
                let m: [&[f32]; 4] = std::array::from_fn(|gamma| &source[gamma * run..][..run]);
                let (y0, y1) = values.split_at_mut(run);
                output_values(m, [y0, y1]);
                if let Some(target) = targets[local * 4 + line].as_deref_mut() {
                    let (pairs, last) = target[..w].as_chunks_mut::<2>();
                    for (k, pair) in pairs.iter_mut().enumerate() {
                        pair[0] = O::from_f32(y0[k] + shift);
                        pair[1] = O::from_f32(y1[k] + shift);
                    }
                    if let Some(value) = last.first_mut() {
                        *value = O::from_f32(y0[pairs.len()] + shift);
                    }
                }
            }
        }
    }
}

/// Scratch buffers of the output transform of one channel's row of tiles.
#[derive(Default)]
struct OutputScratch {
    /// After the frame axis, `[ot][β][γ][tile]`.
    frames: Vec<f32>,
    /// After the row axis, `[ot][oh][γ][tile]`.
    lines: Vec<f32>,
    /// One line's two values per tile, `[ow][tile]`.
    values: Vec<f32>,
}

/// The forward of a convolution that [`applies`]: output `[n, c_out, t, h, w]` in the input's
/// dtype, computed in f32 (a half input widened as it is transformed, the output rounded as it
/// is stored).
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
    let [n, c_in, t, h, w] = geometry.input;
    let c_out = geometry.channels_out;
    let weight = PointWeights::new(&weight, [c_out, c_in], [c_in * 27, 27], false);
    let tiling = Tiling::new([t, h, w]);
    let mut output = filled(n * c_out * t * h * w, S::from_f32(0.0));
    convolve(&input, &tiling, &weight, bias.as_deref(), &mut output, path);
    Tensor::from_data(
        TensorData::new(output, [n, c_out, t, h, w]),
        (&device, S::dtype()),
    )
}

/// The input gradient of a convolution that [`applies`], clip by clip: the convolution of the
/// output gradient with the weight transposed and flipped on every axis (padding 1).
pub(super) struct InputGradient {
    weight: PointWeights,
    tiling: Tiling,
}

impl InputGradient {
    /// From the weight `[c_out, c_in, 3, 3, 3]`.
    pub(super) fn new<T: HostFloat>(weight: &[T], geometry: &ConvGeometry) -> Self {
        let [_, c_in, t, h, w] = geometry.input;
        let c_out = geometry.channels_out;
        Self {
            // Transposed (the input channels are the products' rows) and flipped.
            weight: PointWeights::new(weight, [c_in, c_out], [27, c_in * 27], true),
            tiling: Tiling::new([t, h, w]),
        }
    }
}

impl ClipInputGradient<F32Path> for InputGradient {
    fn clip<S: HostFloat>(&mut self, upstream: &[S], gradient: &mut [S], path: F32Path) {
        convolve(upstream, &self.tiling, &self.weight, None, gradient, path);
    }
}

/// A of F(2, 3) along one axis (the adjoint of [`output_values`]): a tile's four points of the
/// output gradient from its two outputs' runs.
#[inline(always)]
fn upstream_points(y: [&[f32]; 2], out: [&mut [f32]; 4]) {
    let [y0, y1] = y;
    let [p0, p1, p2, p3] = out;
    for i in 0..p0.len() {
        let (y0, y1) = (y0[i], y1[i]);
        p0[i] = y0;
        p1[i] = y0 + y1;
        p2[i] = y0 - y1;
        p3[i] = -y1;
    }
}

/// Gᵀ of F(2, 3) (the adjoint of [`weight_points`]): three taps' gradients from four points'.
#[inline(always)]
fn tap_gradients([d0, d1, d2, d3]: [f32; 4]) -> [f32; 3] {
    [d0 + 0.5 * (d1 + d2), 0.5 * (d1 - d2), 0.5 * (d1 + d2) + d3]
}

/// Scratch buffers of the output gradient's transform of one channel's row of tiles.
#[derive(Default)]
struct UpstreamScratch {
    /// A line's values at even and at odd positions (a tile's two columns).
    even: Vec<f32>,
    odd: Vec<f32>,
    /// After the column axis: `[ot][oh][γ][tile]`.
    columns: Vec<f32>,
    /// After the row axis: `[ot][β][γ][tile]`.
    rows: Vec<f32>,
}

/// The output gradient's transform (`A` on every axis) of every tile of row `row` of tiles of
/// one output channel (`plane`: its `[t, h, w]` values): for each of the 16 (row, column) points
/// `line = β · 4 + γ`, the four frame points' runs of tiles into `targets[α]` at `offset(line)`.
#[inline(always)]
fn transform_upstream_row<S: HostFloat>(
    plane: &[S],
    row: usize,
    tiling: &Tiling,
    scratch: &mut UpstreamScratch,
    targets: [&mut [f32]; 4],
    offset: impl Fn(usize) -> usize,
) {
    let [t, h, w] = tiling.dims;
    let tiles = tiling.tiles[2];
    let (i, j) = (row / tiling.tiles[1], row % tiling.tiles[1]);
    let UpstreamScratch {
        even,
        odd,
        columns,
        rows,
    } = scratch;
    even.resize(tiles, 0.0);
    odd.resize(tiles, 0.0);
    columns.resize(4 * 4 * tiles, 0.0);
    rows.resize(2 * 16 * tiles, 0.0);
    // Columns: tile k's outputs are the line's 2k and 2k + 1 (none past an odd line's end).
    for ot in 0..2 {
        for oh in 0..2 {
            let out = &mut columns[(ot * 2 + oh) * 4 * tiles..][..4 * tiles];
            let (frame, line) = (2 * i + ot, 2 * j + oh);
            if frame >= t || line >= h {
                out.fill(0.0);
                continue;
            }
            let values = &plane[(frame * h + line) * w..][..w];
            let (pairs, last) = values.as_chunks::<2>();
            for (k, pair) in pairs.iter().enumerate() {
                even[k] = pair[0].to_f32();
                odd[k] = pair[1].to_f32();
            }
            if let Some(value) = last.first() {
                even[pairs.len()] = value.to_f32();
                odd[pairs.len()] = 0.0;
            }
            upstream_points([&even[..], &odd[..]], split4(out, tiles));
        }
    }
    // Rows: runs of `4 · tiles` values (every column point of every tile).
    let run = 4 * tiles;
    for ot in 0..2 {
        let source = &columns[ot * 2 * run..][..2 * run];
        let (y0, y1) = source.split_at(run);
        upstream_points([y0, y1], split4(&mut rows[ot * 4 * run..][..4 * run], run));
    }
    // Frames.
    let [t0, t1, t2, t3] = targets;
    for line in 0..16 {
        let y = [
            &rows[line * tiles..][..tiles],
            &rows[(16 + line) * tiles..][..tiles],
        ];
        let at = offset(line);
        upstream_points(
            y,
            [
                &mut t0[at..][..tiles],
                &mut t1[at..][..tiles],
                &mut t2[at..][..tiles],
                &mut t3[at..][..tiles],
            ],
        );
    }
}

/// Per point, `sums[π] += upstreams[π] · inputs[π]ᵀ` (`[c_out × c_in]`, `sums` laid out
/// `[point][c_out][c_in]`) over `tiles` tiles, the transforms laid out `[channel][point][chunk
/// tiles]` and read through strides; one point per task of the compute pool.
pub(super) fn add_point_products(
    sums: &mut [f32],
    [upstreams, inputs]: [&[f32]; 2],
    [channels_out, channels_in]: [usize; 2],
    points: usize,
    [tiles, chunk_tiles]: [usize; 2],
) {
    if tiles == 0 || channels_in == 0 || channels_out == 0 {
        return;
    }
    sums.par_chunks_mut(channels_out * channels_in)
        .take(points)
        .enumerate()
        .for_each(|(point, sums)| {
            let upstream = Matrix {
                values: &upstreams[point * chunk_tiles..],
                rows: channels_out,
                columns: tiles,
                row_stride: points * chunk_tiles,
                column_stride: 1,
            };
            let input = Matrix {
                values: &inputs[point * chunk_tiles..],
                rows: tiles,
                columns: channels_in,
                row_stride: 1,
                column_stride: points * chunk_tiles,
            };
            gemm_f32::gemm_on_this_thread(upstream, input, sums, channels_in, Update::Add);
        });
}

/// Each channel of `values` (`plane` values each) transformed by `channel(values, scratch,
/// target)` into its run of `targets` (`run` values each: `[channel][point][tile]`), one task per
/// channel with its own scratch `X`, on the CPU's vector instructions.
#[inline(always)]
pub(super) fn transform_channels<S: HostFloat, X: Default>(
    targets: &mut [f32],
    run: usize,
    values: &[S],
    plane: usize,
    channel: impl Fn(&[S], &mut X, &mut [f32]) + Sync + Send,
) {
    targets
        .par_chunks_mut(run)
        .zip(values.par_chunks(plane))
        .for_each_init(X::default, |scratch, (target, values)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || channel(values, scratch, target),
            )
        });
}

/// Bytes of transformed inputs and output gradients a [`WeightGradient`] holds between its
/// products (whole rows of tiles: at least one).
const GRADIENT_CHUNK_BYTES: usize = 8 << 20;

/// The weight gradient of a convolution that [`applies`], clip by clip: chunks of rows of tiles
/// of the input and the output gradient transformed (`[channel][point][tile]`, one task per
/// channel), then per point `sums[π] += (A·dy)[π] · (Bᵀ·d)[π]ᵀ` ([`add_point_products`]), and at
/// the end the points taken back to the taps by `Gᵀ` on every axis: 64 multiply-adds per tile of
/// 8 outputs and pair of channels instead of the direct route's 216.
pub(super) struct WeightGradient {
    tiling: Tiling,
    channels_in: usize,
    channels_out: usize,
    /// Rows of tiles a chunk holds.
    chunk_rows: usize,
    /// A chunk's transformed inputs, `[c_in][point][tile]`.
    inputs: Vec<f32>,
    /// Its transformed output gradients, `[c_out][point][tile]`.
    upstreams: Vec<f32>,
    /// Per point, the sums `[point][c_out][c_in]`.
    sums: Vec<f32>,
}

impl WeightGradient {
    pub(super) fn new(geometry: &ConvGeometry) -> Self {
        let [_, channels_in, t, h, w] = geometry.input;
        let channels_out = geometry.channels_out;
        let tiling = Tiling::new([t, h, w]);
        let row_bytes = POINTS * (channels_in + channels_out) * tiling.tiles[2] * size_of::<f32>();
        let chunk_rows = (GRADIENT_CHUNK_BYTES / row_bytes.max(1)).clamp(1, tiling.rows().max(1));
        let chunk_tiles = chunk_rows * tiling.tiles[2];
        Self {
            tiling,
            channels_in,
            channels_out,
            chunk_rows,
            inputs: filled(channels_in * POINTS * chunk_tiles, 0f32),
            upstreams: filled(channels_out * POINTS * chunk_tiles, 0f32),
            sums: filled(POINTS * channels_out * channels_in, 0f32),
        }
    }

    /// Adds one clip: its input `[c_in, t, h, w]` and output gradient `[c_out, t, h, w]`.
    pub(super) fn add_clip<S: HostFloat>(&mut self, input: &[S], upstream: &[S]) {
        let tiling = self.tiling;
        let (row_tiles, plane) = (tiling.tiles[2], tiling.volume());
        let chunk_tiles = self.chunk_rows * row_tiles;
        let total_rows = tiling.rows();
        for first in (0..total_rows).step_by(self.chunk_rows) {
            let rows = self.chunk_rows.min(total_rows - first);
            let offset = move |line: usize, local: usize| line * chunk_tiles + local * row_tiles;
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
                            for local in 0..rows {
                                transform_input_row(plane, first + local, &tiling, scratch);
                                let targets = split4(target, 16 * chunk_tiles);
                                frame_points(scratch, row_tiles, targets, |line| {
                                    offset(line, local)
                                });
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
                        |plane, scratch: &mut UpstreamScratch, target| {
                            for local in 0..rows {
                                let targets = split4(target, 16 * chunk_tiles);
                                transform_upstream_row(
                                    plane,
                                    first + local,
                                    &tiling,
                                    scratch,
                                    targets,
                                    |line| offset(line, local),
                                );
                            }
                        },
                    )
                },
            );
            add_point_products(
                &mut self.sums,
                [&self.upstreams, &self.inputs],
                [self.channels_out, self.channels_in],
                POINTS,
                [rows * row_tiles, chunk_tiles],
            );
        }
    }

    /// The gradient `[c_out, c_in, 27]` (f32): each pair of channels' 64 sums back to its taps,
    /// [`COLUMNS`] input channels side by side.
    pub(super) fn into_weight_gradient(mut self) -> Vec<f32> {
        let (channels_in, channels_out) = (self.channels_in, self.channels_out);
        let sums = std::mem::take(&mut self.sums);
        drop(self);
        let mut gradient = filled(channels_out * channels_in * 27, 0f32);
        gradient
            .par_chunks_mut(channels_in * 27)
            .enumerate()
            .for_each(|(output, gradient)| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let mut points = [[0.0; COLUMNS]; POINTS];
                        let mut taps = [[0.0; COLUMNS]; 27];
                        for first in (0..channels_in).step_by(COLUMNS) {
                            let inputs = COLUMNS.min(channels_in - first);
                            for (point, lanes) in points.iter_mut().enumerate() {
                                let at = (point * channels_out + output) * channels_in + first;
                                lanes[..inputs].copy_from_slice(&sums[at..][..inputs]);
                            }
                            separable::<4, 3>(&points, tap_gradients, &mut taps);
                            for (tap, lanes) in taps.iter().enumerate() {
                                for (input, value) in lanes[..inputs].iter().enumerate() {
                                    gradient[(first + input) * 27 + tap] = *value;
                                }
                            }
                        }
                    },
                )
            });
        gradient
    }
}
