//! Stride-1 bf16 convolutions multiplied straight from the clip, without im2col columns.
//!
//! im2col copies each input value once per kernel tap (27 times for the 3-D ResNet's 3 × 3 × 3
//! kernels), and each copy is then used by as few multiply-adds as the convolution has output
//! channels: for r3d_18's first stage (64 channels) packing the columns took as long as the
//! multiply-adds, and its convolutions ran at a third of the bf16 kernel's speed. With stride 1,
//! every tap reads the same padded volume shifted (see [`Volume`]), so the clip is laid out once
//! per product in the bf16 kernel's pair layout and each tap's operand is read where it lies
//! ([`gemm_bf16::strided_tile`]):
//!
//! - the forward: for a tile of [`ROWS`] consecutive output positions and [`COLUMNS`] output
//!   channels, `Σ over taps and pairs of input channels` of the input's pair at the position
//!   shifted by the tap (broadcast, from planes of channel pairs) times the weight's 32 channels
//!   of that tap and pair;
//! - the input gradient: the forward of the output gradient with the weight transposed and
//!   flipped, padded by `kernel − 1 − padding` (no column gradient, no col2im);
//! - the weight gradient: per tap, `Σ over positions` of the output gradient's pairs of
//!   positions (broadcast, packed in panels of 12 channels) times the input's 32 channels at
//!   those positions shifted by the tap (packed in panels of 32 channels, one copy per parity
//!   of the shift).

use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16};
use rayon::prelude::*;

use super::conv_gemm::ConvGeometry;
use crate::cpu_kernels::{HostFloat, floats, stored};
use crate::gemm_bf16::{COLUMNS, Matrix, Path, ROWS, Strided, Tile, strided_tile};

/// Pairs of positions per block of the weight gradient's sums: the output gradient's block
/// (`c_out × 1 KiB`) and each tap's input block (`c_in × 1 KiB`) stay in the L2 cache while
/// every tap and panel passes over them.
const BLOCK_PAIRS: usize = 256;

/// The fewest kernel taps a convolution computed here has: im2col's columns are then at least
/// this many copies of the input. With fewer, the columns cost less than laying the clip out
/// here (measured on ST-GCN's bf16 step: its 9 × 1 × 1 temporal convolutions 1.1–1.4 times
/// slower backward, its 1 × 1 × 1 ones three times slower forward; r3d_18's 3 × 3 × 3 ones
/// 1.5–2.7 times faster).
pub(crate) const FEWEST_TAPS: usize = 27;

/// Whether a convolution of `geometry` is computed here (on a bf16 path): stride 1 on every
/// axis, padding smaller than the kernel (the input gradient is then a convolution padded by
/// `kernel − 1 − padding`) and at least [`FEWEST_TAPS`] taps.
pub(crate) fn applies(geometry: &ConvGeometry) -> bool {
    geometry.stride == [1; 3]
        && (0..3).all(|axis| geometry.padding[axis] < geometry.kernel[axis])
        && geometry.taps() >= FEWEST_TAPS
}

/// The input's frames padded on every side and flattened, `[tp, hp, wp]`. Output position
/// `(t', h', w')` is computed at flat index `o = (t'·hp + h')·wp + w'`, and its tap
/// `(kt, kh, kw)` reads the padded input at `o + (kt·hp + kh)·wp + kw`: for every tap, a run of
/// consecutive outputs reads a run of consecutive inputs. Flat indices with `h' ≥ h_out` or
/// `w' ≥ w_out` are computed and dropped (`hp·wp / (h_out·w_out) − 1` more work: 7 % at 56 × 56,
/// 15 % at 28 × 28).
#[derive(Debug, Clone, Copy)]
struct Volume {
    /// Frames, rows and columns of the unpadded input.
    input: [usize; 3],
    padding: [usize; 3],
    kernel: [usize; 3],
    output: [usize; 3],
}

impl Volume {
    fn padded(&self) -> [usize; 3] {
        std::array::from_fn(|axis| self.input[axis] + 2 * self.padding[axis])
    }

    /// `hp·wp`.
    fn plane(&self) -> usize {
        let [_, hp, wp] = self.padded();
        hp * wp
    }

    /// The flat indices computed: `t_out` padded planes.
    fn span(&self) -> usize {
        self.output[0] * self.plane()
    }

    /// The shift of each tap, in the weight's order (`kt`, `kh`, `kw`).
    fn tap_offsets(&self) -> Vec<usize> {
        let [_, hp, wp] = self.padded();
        let [kt, kh, kw] = self.kernel;
        (0..kt)
            .flat_map(|t| (0..kh).flat_map(move |h| (0..kw).map(move |w| (t * hp + h) * wp + w)))
            .collect()
    }

    fn largest_offset(&self) -> usize {
        let [_, hp, wp] = self.padded();
        let [kt, kh, kw] = self.kernel;
        ((kt - 1) * hp + kh - 1) * wp + kw - 1
    }

    /// For each row of values `[t, h, w]` (`dims`) placed at `origin` of the flat positions,
    /// `place(source, target)`: the row's first value's index in the values and its flat
    /// position.
    fn for_each_row(
        &self,
        dims: [usize; 3],
        origin: [usize; 3],
        mut place: impl FnMut(usize, usize),
    ) {
        let [t, h, w] = dims;
        let [pt, ph, pw] = origin;
        let (plane, wp) = (self.plane(), self.padded()[2]);
        for frame in 0..t {
            for line in 0..h {
                place(
                    (frame * h + line) * w,
                    (frame + pt) * plane + (line + ph) * wp + pw,
                );
            }
        }
    }
}

/// `clip` (`[channels, t, h, w]`) as planes of pairs of channels on the padded flat positions:
/// `[pairs][positions]`, channels `2i` and `2i + 1` (zero past the last) in pair `i`, zero in
/// the padding and past the volume (`positions` may exceed it, for the last tiles' reads), into
/// `packed`. A tile's rows (consecutive positions) of one pair are consecutive values.
fn channel_pair_planes(
    clip: &[bf16],
    channels: usize,
    volume: &Volume,
    positions: usize,
    packed: &mut Vec<u32>,
    path: Path,
) {
    let pairs = channels.div_ceil(2);
    let [t, h, w] = volume.input;
    let clip = Matrix::row_major(clip, channels, t * h * w, t * h * w);
    packed.clear();
    packed.resize(pairs * positions, 0);
    packed
        .par_chunks_mut(positions)
        .enumerate()
        .for_each(|(pair, packed)| {
            volume.for_each_row(volume.input, volume.padding, |source, target| {
                clip.pack_row_pair(2 * pair, source, &mut packed[target..][..w], path);
            })
        });
}

/// A weight packed for [`convolve_clip`]: per panel of [`COLUMNS`] output channels, per tap,
/// per pair of input channels, the panel's values (zero past the last channel).
struct TapPanels {
    values: Vec<u32>,
    panels: usize,
    taps: usize,
    pairs: usize,
}

impl TapPanels {
    /// From `weight(output channel, input channel, tap)`.
    fn new(
        [channels_out, channels_in, taps]: [usize; 3],
        weight: impl Fn(usize, usize, usize) -> bf16 + Sync,
    ) -> Self {
        let (panels, pairs) = (channels_out.div_ceil(COLUMNS), channels_in.div_ceil(2));
        let mut values = vec![0u32; panels * taps * pairs * COLUMNS];
        values
            .par_chunks_mut(COLUMNS)
            .enumerate()
            .for_each(|(index, values)| {
                let (panel, tap, pair) =
                    (index / (taps * pairs), index / pairs % taps, index % pairs);
                let bits = |output: usize, input: usize| {
                    if output < channels_out && input < channels_in {
                        u32::from(weight(output, input, tap).to_bits())
                    } else {
                        0
                    }
                };
                for (column, value) in values.iter_mut().enumerate() {
                    let output = panel * COLUMNS + column;
                    *value = bits(output, 2 * pair) | bits(output, 2 * pair + 1) << 16;
                }
            });
        Self {
            values,
            panels,
            taps,
            pairs,
        }
    }

    fn panel(&self, panel: usize) -> &[u32] {
        let len = self.taps * self.pairs * COLUMNS;
        &self.values[panel * len..][..len]
    }
}

/// The stride-1 convolution of one clip (`[channels_in, t, h, w]`) with `weight` plus `bias`
/// into `output` (`[channels_out, t_out·h_out·w_out]`), every sum in f32 rounded once to bf16,
/// the clip laid out in `input` (kept by the caller for the next clip). Frames and panels of
/// output channels are computed in parallel, each tile's sums over every tap held in registers.
fn convolve_clip(
    clip: &[bf16],
    channels_in: usize,
    volume: &Volume,
    weight: &TapPanels,
    bias: Option<&[f32]>,
    (output, input): (&mut [bf16], &mut Vec<u32>),
    path: Path,
) {
    let [t_out, h_out, w_out] = volume.output;
    let frame_len = h_out * w_out;
    if output.is_empty() {
        return;
    }
    let pairs = channels_in.div_ceil(2);
    let offsets = volume.tap_offsets();
    // A frame's last tile starts before its last row's end and reads `ROWS` positions on.
    let reads = volume.span() + ROWS + volume.largest_offset();
    let positions = reads.max(volume.padded().iter().product());
    channel_pair_planes(clip, channels_in, volume, positions, input, path);
    let input = &input[..];
    let (plane, wp) = (volume.plane(), volume.padded()[2]);
    // One task per frame and panel of output channels (a frame's tiles run on from row to row:
    // cut into bands of rows, each band's last tile was mostly columns past `w_out`, and r3d_18's
    // last stage computed 3.4 times its outputs), each writing its channels' runs of its frame
    // in place.
    let mut tasks: Vec<(usize, usize, Vec<&mut [bf16]>)> = (0..t_out)
        .flat_map(|frame| (0..weight.panels).map(move |panel| (frame, panel, Vec::new())))
        .collect();
    for (index, run) in output.chunks_mut(frame_len).enumerate() {
        let (channel, frame) = (index / t_out, index % t_out);
        tasks[frame * weight.panels + channel / COLUMNS].2.push(run);
    }
    tasks.into_par_iter().for_each(|(frame, panel, mut runs)| {
        let mut segments = Vec::with_capacity(offsets.len());
        let operands = Strided {
            a: input,
            a_pair_stride: positions,
            b: weight.panel(panel),
            b_pair_stride: COLUMNS,
            pairs,
        };
        let start = frame * plane;
        for first in (start..start + h_out * wp).step_by(ROWS) {
            segments.clear();
            segments.extend(
                (offsets.iter().enumerate())
                    .map(|(tap, &offset)| (first + offset, tap * pairs * COLUMNS)),
            );
            let mut tile: Tile = [[0.0; COLUMNS]; ROWS];
            strided_tile(path, operands, &segments, &mut tile);
            for (row, sums) in tile.iter().enumerate() {
                let in_frame = first + row - start;
                let (line, column) = (in_frame / wp, in_frame % wp);
                if line >= h_out || column >= w_out {
                    continue;
                }
                let at = line * w_out + column;
                let channels = panel * COLUMNS..;
                for ((run, channel), &sum) in runs.iter_mut().zip(channels).zip(sums) {
                    let shift = bias.map_or(0.0, |bias| bias[channel]);
                    run[at] = HostFloat::from_f32(sum + shift);
                }
            }
        }
    });
}

/// The forward of a convolution that [`applies`]: output `[n, c_out, t', h', w']` in bf16, the
/// weight rounded to bf16 as on the im2col route.
pub(crate) fn forward<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
    path: Path,
) -> Tensor<B, 5> {
    let device = input.device();
    let input = stored::<bf16, _, 5>(input);
    let weight = stored::<bf16, _, 5>(weight);
    let bias = bias.map(floats);
    let [n, c_in, t, h, w] = geometry.input;
    let c_out = geometry.channels_out;
    let taps = geometry.taps();
    let panels = TapPanels::new([c_out, c_in, taps], |output, input, tap| {
        weight[(output * c_in + input) * taps + tap]
    });
    let volume = Volume {
        input: [t, h, w],
        padding: geometry.padding,
        kernel: geometry.kernel,
        output: geometry.output,
    };
    let positions: usize = geometry.output.iter().product();
    let mut output = vec![bf16::ZERO; n * c_out * positions];
    let mut laid_out = Vec::new();
    for (clip, output) in input
        .chunks(c_in * t * h * w)
        .zip(output.chunks_mut(c_out * positions))
    {
        let buffers = (output, &mut laid_out);
        convolve_clip(clip, c_in, &volume, &panels, bias.as_deref(), buffers, path);
    }
    let [t_out, h_out, w_out] = geometry.output;
    Tensor::from_data(
        TensorData::new(output, [n, c_out, t_out, h_out, w_out]),
        (&device, DType::BF16),
    )
}

/// The input gradient of a convolution that [`applies`], clip by clip: the convolution of the
/// output gradient with the weight transposed and flipped on every axis, padded by
/// `kernel − 1 − padding` (its output is the input's size).
pub(super) struct InputGradient {
    weight: TapPanels,
    volume: Volume,
    channels_out: usize,
    /// The last clip's output gradient laid out, its buffer kept for the next clip's.
    laid_out: Vec<u32>,
}

impl InputGradient {
    /// From the weight `[c_out, c_in, taps]` in bf16.
    pub(super) fn new(weight: &[bf16], geometry: &ConvGeometry) -> Self {
        let [_, c_in, t, h, w] = geometry.input;
        let (c_out, taps) = (geometry.channels_out, geometry.taps());
        let weight = TapPanels::new([c_in, c_out, taps], |input, output, tap| {
            weight[(output * c_in + input) * taps + taps - 1 - tap]
        });
        let volume = Volume {
            input: geometry.output,
            padding: std::array::from_fn(|axis| geometry.kernel[axis] - 1 - geometry.padding[axis]),
            kernel: geometry.kernel,
            output: [t, h, w],
        };
        Self {
            weight,
            volume,
            channels_out: c_out,
            laid_out: Vec::new(),
        }
    }

    /// Writes one clip's input gradient (`[c_in, t, h, w]`) from its output gradient
    /// (`[c_out, t', h', w']`).
    pub(super) fn clip(&mut self, upstream: &[bf16], gradient: &mut [bf16], path: Path) {
        let (volume, channels) = (&self.volume, self.channels_out);
        let buffers = (gradient, &mut self.laid_out);
        convolve_clip(
            upstream,
            channels,
            volume,
            &self.weight,
            None,
            buffers,
            path,
        );
    }
}

/// The weight gradient of a convolution that [`applies`], summed clip by clip in f32:
/// `[taps][c_out rounded up to ROWS][c_in rounded up to COLUMNS]`.
pub(super) struct WeightGradient {
    volume: Volume,
    channels: [usize; 2],
    sums: Vec<f32>,
    /// Clips laid out and not yet summed: a small volume (r3d_18's last stage: 81 pairs of
    /// positions a clip) is summed several clips at a time, so that each tile's sum runs over
    /// a block of positions rather than a few dozen.
    pending: Pending,
    /// A clip's flat planes on their way into `pending`, the buffer kept for the next clip.
    planes: Vec<bf16>,
}

/// The clips [`WeightGradient::add_clip`] laid out since the last sum, one after the other:
/// the output gradients' and the inputs' pairs of positions ([`position_pairs`]; the inputs'
/// of both parities).
#[derive(Default)]
struct Pending {
    upstream: Vec<u32>,
    input: [Vec<u32>; 2],
    clips: usize,
}

impl WeightGradient {
    pub(super) fn new(geometry: &ConvGeometry) -> Self {
        let [_, c_in, t, h, w] = geometry.input;
        let c_out = geometry.channels_out;
        let (rows, columns) = (c_out.next_multiple_of(ROWS), c_in.next_multiple_of(COLUMNS));
        Self {
            volume: Volume {
                input: [t, h, w],
                padding: geometry.padding,
                kernel: geometry.kernel,
                output: geometry.output,
            },
            channels: [c_in, c_out],
            sums: vec![0.0; geometry.taps() * rows * columns],
            pending: Pending::default(),
            planes: Vec::new(),
        }
    }

    /// `(rows, columns)` of each tap's sums: `c_out` and `c_in` rounded up to a tile's.
    fn tile_rows_and_columns(&self) -> (usize, usize) {
        let [c_in, c_out] = self.channels;
        (c_out.next_multiple_of(ROWS), c_in.next_multiple_of(COLUMNS))
    }

    /// Pairs of flat positions per clip: of the output gradient's rows, and of the input
    /// (which a tap reads up to `largest_offset` further on).
    fn pairs(&self) -> (usize, usize) {
        let row_pairs = self.volume.span().div_ceil(2);
        (row_pairs, row_pairs + self.volume.largest_offset() / 2 + 1)
    }

    /// Adds one clip's: `clip` `[c_in, t, h, w]`, `upstream` `[c_out, t', h', w']`.
    pub(super) fn add_clip(&mut self, clip: &[bf16], upstream: &[bf16], path: Path) {
        let (row_pairs, input_pairs) = self.pairs();
        let ([c_in, c_out], volume) = (self.channels, &self.volume);
        let (pending, planes) = (&mut self.pending, &mut self.planes);
        let dims = volume.output;
        flat_planes(upstream, c_out, dims, [0; 3], volume, 2 * row_pairs, planes);
        position_pairs(
            planes,
            c_out,
            ROWS,
            0,
            row_pairs,
            &mut pending.upstream,
            path,
        );
        let len = 2 * input_pairs + 2;
        flat_planes(
            clip,
            c_in,
            volume.input,
            volume.padding,
            volume,
            len,
            planes,
        );
        for (parity, input) in pending.input.iter_mut().enumerate() {
            position_pairs(planes, c_in, COLUMNS, parity, input_pairs, input, path);
        }
        pending.clips += 1;
        if pending.clips * row_pairs >= BLOCK_PAIRS {
            self.sum_pending(path);
        }
    }

    /// Adds the pending clips' products to the sums, block of positions by block, every tap in
    /// parallel.
    fn sum_pending(&mut self, path: Path) {
        let (rows, columns) = self.tile_rows_and_columns();
        let (row_pairs, input_pairs) = self.pairs();
        let offsets = self.volume.tap_offsets();
        let Pending {
            upstream,
            input,
            clips,
        } = &mut self.pending;
        let clips = std::mem::take(clips);
        for first in (0..row_pairs).step_by(BLOCK_PAIRS) {
            let pairs = BLOCK_PAIRS.min(row_pairs - first);
            self.sums
                .par_chunks_mut(rows * columns)
                .zip(&offsets)
                .for_each(|(sums, &offset)| {
                    let operands = Strided {
                        a: upstream,
                        a_pair_stride: ROWS,
                        b: &input[offset % 2],
                        b_pair_stride: COLUMNS,
                        pairs,
                    };
                    let mut segments = Vec::with_capacity(clips);
                    for first_row in (0..rows).step_by(ROWS) {
                        for first_column in (0..columns).step_by(COLUMNS) {
                            let at = |row: usize| (first_row + row) * columns + first_column;
                            let mut tile: Tile = std::array::from_fn(|row| {
                                sums[at(row)..][..COLUMNS].try_into().expect("a tile row")
                            });
                            segments.clear();
                            segments.extend((0..clips).map(|clip| {
                                let row_panel = clip * rows / ROWS + first_row / ROWS;
                                let column_panel =
                                    clip * columns / COLUMNS + first_column / COLUMNS;
                                (
                                    (row_panel * row_pairs + first) * ROWS,
                                    (column_panel * input_pairs + first + offset / 2) * COLUMNS,
                                )
                            }));
                            strided_tile(path, operands, &segments, &mut tile);
                            for (row, values) in tile.iter().enumerate() {
                                sums[at(row)..][..COLUMNS].copy_from_slice(values);
                            }
                        }
                    }
                });
        }
        // Emptied, not freed: the next clip's layouts fill the same buffers.
        upstream.clear();
        input.iter_mut().for_each(Vec::clear);
    }

    /// The sums as the weight's gradient, `[c_out, c_in, taps]`.
    pub(super) fn into_weight_order(mut self, path: Path) -> Vec<f32> {
        self.sum_pending(path);
        let [c_in, c_out] = self.channels;
        let taps = self.volume.tap_offsets().len();
        let (rows, columns) = self.tile_rows_and_columns();
        let mut gradient = vec![0.0; c_out * c_in * taps];
        gradient
            .par_chunks_mut(c_in * taps)
            .enumerate()
            .for_each(|(output, gradient)| {
                for (index, value) in gradient.iter_mut().enumerate() {
                    let (input, tap) = (index / taps, index % taps);
                    *value = self.sums[(tap * rows + output) * columns + input];
                }
            });
        gradient
    }
}

/// Flat planes ([`flat_planes`]) as pairs of consecutive flat positions, in panels of `panel`
/// channels as the bf16 kernel packs an operand (`[panel][pair][panel's channels]`, channels
/// past the last zero), pair `i` holding positions `2i + parity` and `2i + 1 + parity`,
/// appended to `packed`. A tap shifted by an odd number of positions reads the odd copy of the
/// input.
fn position_pairs(
    planes: &[bf16],
    channels: usize,
    panel: usize,
    parity: usize,
    pairs: usize,
    packed: &mut Vec<u32>,
    path: Path,
) {
    let len = planes.len() / channels;
    let planes = Matrix::row_major(planes, channels, len, len).transposed();
    let start = packed.len();
    packed.resize(start + channels.div_ceil(panel) * pairs * panel, 0);
    // Blocks of pairs: each channel's run read once, transposed through registers.
    const BLOCK: usize = 256;
    packed[start..]
        .par_chunks_mut(pairs * panel)
        .enumerate()
        .for_each(|(index, packed)| {
            packed
                .par_chunks_mut(BLOCK * panel)
                .enumerate()
                .for_each(|(block, packed)| {
                    let first_k = 2 * block * BLOCK + parity;
                    let pairs = packed.len() / panel;
                    planes.pack_columns(first_k, pairs, index * panel, packed, panel, path);
                })
        });
}

/// `values` (`[channels, dims]`) placed at `origin` of each channel's flat positions of
/// `volume`, `len` of them (zero elsewhere), into `planes`: `[channels][len]`.
fn flat_planes(
    values: &[bf16],
    channels: usize,
    dims: [usize; 3],
    origin: [usize; 3],
    volume: &Volume,
    len: usize,
    planes: &mut Vec<bf16>,
) {
    let w = dims[2];
    planes.clear();
    planes.resize(channels * len, bf16::ZERO);
    planes
        .par_chunks_mut(len)
        .zip(values.par_chunks(dims.iter().product()))
        .for_each(|(plane, values)| {
            volume.for_each_row(dims, origin, |source, target| {
                plane[target..][..w].copy_from_slice(&values[source..][..w]);
            })
        });
}
