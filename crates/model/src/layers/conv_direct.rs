//! Stride-1 convolutions multiplied straight from the clip, without im2col columns: bf16 on
//! AVX512_BF16, f32 on AVX-512F or AVX2 + FMA.
//!
//! im2col copies each input value once per kernel tap (27 times for the 3-D ResNet's 3 × 3 × 3
//! kernels), and each copy is then used by as few multiply-adds as the convolution has output
//! channels: for r3d_18's first stage (64 channels) packing the columns took as long as the
//! multiply-adds, and its convolutions ran at a third of the bf16 kernel's speed (in f32,
//! gemm packed the columns a second time). With stride 1, every tap reads the same padded
//! volume shifted (see [`Volume`]), so the clip is laid out once per product in the kernel's
//! layout and each tap's operand is read where it lies ([`gemm_bf16::strided_tile`],
//! [`gemm_f32::strided_tile`]). The kernels take `k` in units ([`DirectOperand`]): pairs of
//! bf16 in a `u32`, or single f32 values.
//!
//! - the forward: for a tile of [`ROWS`] consecutive output positions and [`COLUMNS`] output
//!   channels, `Σ over taps and units of input channels` of the input's unit at the position
//!   shifted by the tap (broadcast, from planes of channel units) times the weight's 32 channels
//!   of that tap and unit;
//! - the input gradient: the forward of the output gradient with the weight transposed and
//!   flipped, padded by `kernel − 1 − padding` (no column gradient, no col2im);
//! - the weight gradient: per tap, `Σ over positions` of the output gradient's units of
//!   positions (broadcast, packed in panels of 12 channels) times the input's 32 channels at
//!   those positions shifted by the tap (packed in panels of 32 channels, one copy per parity
//!   of the shift for pairs).

use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16, f16};
use rayon::prelude::*;

use super::conv_gemm::{ClipInputGradient, ConvGeometry};
use crate::cpu_kernels::{HostFloat, extend_filled, filled, floats, same_dtype, stored};
use crate::gemm_bf16::{self, COLUMNS, Matrix, Path, ROWS, Strided, Tile};
use crate::gemm_f32::{self, F32Path};

/// The values a direct convolution multiplies, and the kernel that multiplies them.
pub(crate) trait DirectOperand: HostFloat {
    /// One unit of `k` in the kernel's operands: a pair of bf16, or one f32.
    type Unit: Copy + Default + Send + Sync;
    /// Values of `k` per unit.
    const PER_UNIT: usize;
    /// Which kernel multiplies: an instruction set's, or plain Rust.
    type Path: Copy + Send + Sync + std::fmt::Debug;

    /// The unit of `value(0)` (and `value(1)` for pairs).
    fn unit(value: impl Fn(usize) -> Self) -> Self::Unit;

    /// `tile += Σ` over `segments` and their units of `a`'s row times `b`'s row.
    fn strided_tile(
        path: Self::Path,
        operands: Strided<'_, Self::Unit>,
        segments: &[(usize, usize)],
        tile: &mut Tile,
    );

    /// `clip` (`[channels, t, h, w]`) as planes of units of channels on the padded flat
    /// positions: `[units][positions]`, zero in the padding, past the volume (`positions` may
    /// exceed it, for the last tiles' reads) and past the last channel, into `packed`. A
    /// tile's rows (consecutive positions) of one unit are consecutive values. The f32 kernel
    /// reads a clip of any dtype (half clips widened as they are laid out); the bf16 kernel reads
    /// bf16 clips only.
    fn channel_planes<S: HostFloat>(
        clip: &[S],
        channels: usize,
        volume: &Volume,
        positions: usize,
        packed: &mut Vec<Self::Unit>,
        path: Self::Path,
    );

    /// Flat planes (`[channels][len]`, [`flat_planes`]) as units of consecutive flat positions
    /// starting at `parity`, `units` of them, in panels of `panel` channels as the kernel reads
    /// an operand (`[panel][unit][panel's channels]`, channels past the last zero), appended to
    /// `packed`.
    fn position_units(
        planes: &[Self],
        channels: usize,
        panel: usize,
        parity: usize,
        units: usize,
        packed: &mut Vec<Self::Unit>,
        path: Self::Path,
    );
}

impl DirectOperand for bf16 {
    type Unit = u32;
    const PER_UNIT: usize = 2;
    type Path = Path;

    #[inline(always)]
    fn unit(value: impl Fn(usize) -> Self) -> u32 {
        u32::from(value(0).to_bits()) | u32::from(value(1).to_bits()) << 16
    }

    fn strided_tile(
        path: Path,
        operands: Strided<'_>,
        segments: &[(usize, usize)],
        tile: &mut Tile,
    ) {
        gemm_bf16::strided_tile(path, operands, segments, tile);
    }

    fn channel_planes<S: HostFloat>(
        clip: &[S],
        channels: usize,
        volume: &Volume,
        positions: usize,
        packed: &mut Vec<u32>,
        path: Path,
    ) {
        let clip: &[bf16] =
            same_dtype(clip).expect("the bf16 route multiplies bf16 clips (`conv_gemm` routes)");
        let pairs = channels.div_ceil(2);
        let [t, h, w] = volume.input;
        let clip = Matrix::row_major(clip, channels, t * h * w, t * h * w);
        packed.clear();
        extend_filled(packed, pairs * positions, 0);
        packed
            .par_chunks_mut(positions)
            .enumerate()
            .for_each(|(pair, packed)| {
                volume.for_each_row(volume.input, volume.padding, |source, target| {
                    clip.pack_row_pair(2 * pair, source, &mut packed[target..][..w], path);
                })
            });
    }

    /// Pair `i` holds positions `2i + parity` and `2i + 1 + parity`: a tap shifted by an odd
    /// number of positions reads the odd copy of the input.
    fn position_units(
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
        // Each channel's run read once, transposed through registers.
        for_each_pack_block(packed, channels, panel, pairs, |index, block, packed| {
            let first_k = 2 * block * PACK_BLOCK + parity;
            let pairs = packed.len() / panel;
            planes.pack_columns(first_k, pairs, index * panel, packed, panel, path);
        });
    }
}

impl DirectOperand for f32 {
    type Unit = f32;
    const PER_UNIT: usize = 1;
    type Path = F32Path;

    #[inline(always)]
    fn unit(value: impl Fn(usize) -> Self) -> f32 {
        value(0)
    }

    fn strided_tile(
        path: F32Path,
        operands: Strided<'_, f32>,
        segments: &[(usize, usize)],
        tile: &mut Tile,
    ) {
        gemm_f32::strided_tile(path, operands, segments, tile);
    }

    fn channel_planes<S: HostFloat>(
        clip: &[S],
        channels: usize,
        volume: &Volume,
        positions: usize,
        packed: &mut Vec<f32>,
        _: F32Path,
    ) {
        let origin = volume.padding;
        flat_planes(
            clip,
            channels,
            volume.input,
            origin,
            volume,
            positions,
            packed,
        );
    }

    fn position_units(
        planes: &[f32],
        channels: usize,
        panel: usize,
        parity: usize,
        units: usize,
        packed: &mut Vec<f32>,
        _: F32Path,
    ) {
        let len = planes.len() / channels;
        // Each channel's run read in order, written `panel` apart within a block that stays in
        // the L1 cache.
        for_each_pack_block(packed, channels, panel, units, |index, block, packed| {
            let (first, units) = (block * PACK_BLOCK + parity, packed.len() / panel);
            let width = panel.min(channels - index * panel);
            for column in 0..width {
                let plane = &planes[(index * panel + column) * len..][..len];
                for (unit, &value) in plane[first..][..units].iter().enumerate() {
                    packed[unit * panel + column] = value;
                }
            }
        });
    }
}

/// Appends `channels.div_ceil(panel)` panels of `units × panel` zeroed values to `packed` and
/// fills them in parallel, [`PACK_BLOCK`] units at a time: `fill(panel index, block index,
/// the block's values)`.
fn for_each_pack_block<U: Copy + Default + Send + Sync>(
    packed: &mut Vec<U>,
    channels: usize,
    panel: usize,
    units: usize,
    fill: impl Fn(usize, usize, &mut [U]) + Sync,
) {
    let start = packed.len();
    extend_filled(
        packed,
        channels.div_ceil(panel) * units * panel,
        U::default(),
    );
    packed[start..]
        .par_chunks_mut(units * panel)
        .enumerate()
        .for_each(|(index, packed)| {
            packed
                .par_chunks_mut(PACK_BLOCK * panel)
                .enumerate()
                .for_each(|(block, packed)| fill(index, block, packed))
        });
}

/// Units of positions per block when laying out a clip for the weight gradient: a block of a
/// panel's units is read and written in the caches.
const PACK_BLOCK: usize = 256;

/// Units of positions per block of the weight gradient's sums: the output gradient's block
/// (`c_out × 1 KiB`) and each tap's input block (`c_in × 1 KiB`) stay in the L2 cache while
/// every tap and panel passes over them.
const BLOCK_UNITS: usize = 256;

/// The fewest kernel taps a convolution computed here has: im2col's columns are then at least
/// this many copies of the input. With fewer, the columns cost less than laying the clip out
/// here (measured on ST-GCN's bf16 step: its 9 × 1 × 1 temporal convolutions 1.1–1.4 times
/// slower backward, its 1 × 1 × 1 ones three times slower forward; r3d_18's 3 × 3 × 3 ones
/// 1.5–2.7 times faster; in f32, ST-GCN's step 4 % slower with its 9-tap ones here).
pub(crate) const FEWEST_TAPS: usize = 27;

/// Whether a convolution of `geometry` is computed here (on a bf16 or f32 path): stride 1 on
/// every axis, padding smaller than the kernel (the input gradient is then a convolution padded
/// by `kernel − 1 − padding`) and at least [`FEWEST_TAPS`] taps.
pub(crate) fn applies(geometry: &ConvGeometry) -> bool {
    geometry.stride == [1; 3]
        && (0..3).all(|axis| geometry.padding[axis] < geometry.kernel[axis])
        && geometry.taps() >= FEWEST_TAPS
}

/// Whether bf16 convolutions that [`applies`] to are computed here on `path`. Not on AMX: the
/// packed product's tiles there (`gemm_bf16`'s AMX path, 0.9 TFLOP/s on two cores) outrun the
/// strided tiles' `vdpbf16ps` (0.17 TFLOP/s on the same Xeon, below its f32 FMA's 0.3) by more
/// than the im2col columns cost.
pub(crate) fn multiplies_bf16_on(path: Path) -> bool {
    path != Path::Amx
}

/// The input's frames padded and flattened, `[tp, hp, wp]`. Output position `(t', h', w')` is
/// computed at flat index `o = (t'·hp + h')·wp + w'`, and its tap `(kt, kh, kw)` reads the
/// padded input at `o + (kt·hp + kh)·wp + kw`: for every tap, a run of consecutive outputs reads
/// a run of consecutive inputs. Flat indices with `h' ≥ h_out` or `w' ≥ w_out` are computed and
/// dropped. A row's `pw` zeros on the right are the next row's on the left (`wp = w + pw`, and
/// likewise `hp = h + ph`: one gap between rows and between frames, not two): a tap reads at most
/// `pw` past a row's end or before its start, and `pw < kw` keeps `w_out ≤ wp`. Padding both
/// sides, the dropped indices were 65 % more work at r3d_18's 7 × 7 frames and 31 % at 14 × 14;
/// shared, 31 % and 15 %. Frames are padded on both sides: the clip's first and last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Volume {
    /// Frames, rows and columns of the unpadded input.
    input: [usize; 3],
    padding: [usize; 3],
    kernel: [usize; 3],
    output: [usize; 3],
}

impl Volume {
    fn padded(&self) -> [usize; 3] {
        let [t, h, w] = self.input;
        let [pt, ph, pw] = self.padding;
        [t + 2 * pt, h + ph, w + pw]
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
    #[inline(always)]
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

/// Units of input channels [`TapPanels::new`] packs at a time.
const PANEL_BLOCK: usize = 8;

/// A weight packed for [`convolve_clip`]: per panel of [`COLUMNS`] output channels, per tap,
/// per unit of input channels, the panel's values (zero past the last channel).
struct TapPanels<U> {
    values: Vec<U>,
    panels: usize,
    taps: usize,
    units: usize,
}

/// Where [`TapPanels::new`] reads a weight's value of (output channel, input channel, tap):
/// at `output · strides[0] + input · strides[1]`, then each channel pair's taps in a row (in
/// reverse order when `flipped`).
struct WeightLayout {
    /// `[output channels, input channels, taps]` of the packed weight.
    dims: [usize; 3],
    strides: [usize; 2],
    flipped: bool,
}

impl<U: Copy + Default + Send + Sync> TapPanels<U> {
    /// Panel by panel and a block of [`PANEL_BLOCK`] units at a time: each unit's runs of taps
    /// (a pair's two channels' runs for bf16) read in order into a block of the panel's units
    /// (27 KiB at 27 taps, in L1), then each tap's run of the block copied to its place.
    /// Gathered value by value through a closure per pair of channels, packing was 4 % of
    /// r3d_18's bf16 step at micro-batch 1 (twice per clip: the forward's weight and the input
    /// gradient's); written straight to their places, a tap's units lie `units · COLUMNS`
    /// apart (32 KiB at 512 inputs: every tap's store in the same L1 set).
    fn new<T: DirectOperand<Unit = U>>(weight: &[T], layout: WeightLayout) -> Self {
        let WeightLayout {
            dims: [channels_out, channels_in, taps],
            strides: [output_stride, input_stride],
            flipped,
        } = layout;
        let (panels, units) = (
            channels_out.div_ceil(COLUMNS),
            channels_in.div_ceil(T::PER_UNIT),
        );
        let mut values = filled(panels * taps * units * COLUMNS, U::default());
        values
            .par_chunks_mut(taps * units * COLUMNS)
            .enumerate()
            .for_each(|(panel, values)| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let outputs = panel * COLUMNS..channels_out.min((panel + 1) * COLUMNS);
                        // One tap's units of the block: a run of the panel's values.
                        let run_len = PANEL_BLOCK * COLUMNS;
                        let mut block = vec![U::default(); taps * run_len];
                        for first_unit in (0..units).step_by(PANEL_BLOCK) {
                            let block_units = PANEL_BLOCK.min(units - first_unit);
                            for (column, output) in outputs.clone().enumerate() {
                                for unit in first_unit..first_unit + block_units {
                                    let first_input = unit * T::PER_UNIT;
                                    // The last unit's missing channel reads as zero.
                                    let inputs = T::PER_UNIT.min(channels_in - first_input);
                                    let at = output * output_stride + first_input * input_stride;
                                    let place = (unit - first_unit) * COLUMNS + column;
                                    for tap in 0..taps {
                                        let read = if flipped { taps - 1 - tap } else { tap };
                                        block[tap * run_len + place] = T::unit(|offset| {
                                            if offset < inputs {
                                                weight[at + offset * input_stride + read]
                                            } else {
                                                T::from_f32(0.0)
                                            }
                                        });
                                    }
                                }
                            }
                            let len = block_units * COLUMNS;
                            for (tap, run) in block.chunks_exact(run_len).enumerate() {
                                let at = (tap * units + first_unit) * COLUMNS;
                                values[at..][..len].copy_from_slice(&run[..len]);
                            }
                        }
                    },
                )
            });
        Self {
            values,
            panels,
            taps,
            units,
        }
    }

    fn panel(&self, panel: usize) -> &[U] {
        let len = self.taps * self.units * COLUMNS;
        &self.values[panel * len..][..len]
    }
}

/// The stride-1 convolution of one clip (`[channels_in, t, h, w]`, read as `S`) with `weight`
/// plus `bias` into `output` (`[channels_out, t_out·h_out·w_out]`, stored as `O`), multiplied
/// in `T`, every sum in f32 rounded once to `O`, the clip laid out in `input` (kept by the
/// caller for the next clip). Frames and panels of output channels are computed in parallel,
/// each tile's sums over every tap held in registers.
fn convolve_clip<T: DirectOperand, S: HostFloat, O: HostFloat>(
    clip: &[S],
    channels_in: usize,
    volume: &Volume,
    weight: &TapPanels<T::Unit>,
    bias: Option<&[f32]>,
    (output, input): (&mut [O], &mut Vec<T::Unit>),
    path: T::Path,
) {
    let [t_out, h_out, w_out] = volume.output;
    let frame_len = h_out * w_out;
    if output.is_empty() {
        return;
    }
    let units = channels_in.div_ceil(T::PER_UNIT);
    let offsets = volume.tap_offsets();
    // A frame's last tile starts before its last row's end and reads `ROWS` positions on.
    let reads = volume.span() + ROWS + volume.largest_offset();
    let positions = reads.max(volume.padded().iter().product());
    T::channel_planes(clip, channels_in, volume, positions, input, path);
    let input = &input[..];
    let (plane, wp) = (volume.plane(), volume.padded()[2]);
    // One task per frame and panel of output channels (a frame's tiles run on from row to row:
    // cut into bands of rows, each band's last tile was mostly columns past `w_out`, and r3d_18's
    // last stage computed 3.4 times its outputs), each writing its channels' runs of its frame
    // in place.
    let mut tasks: Vec<(usize, usize, Vec<&mut [O]>)> = (0..t_out)
        .flat_map(|frame| (0..weight.panels).map(move |panel| (frame, panel, Vec::new())))
        .collect();
    for (index, run) in output.chunks_mut(frame_len).enumerate() {
        let (channel, frame) = (index / t_out, index % t_out);
        tasks[frame * weight.panels + channel / COLUMNS].2.push(run);
    }
    // Inside `vectorized`: the tile's transpose and its rounding to `O` in `store_tile` were
    // built for the baseline CPU in the task's own closure (3 % of r3d_18's bf16 step).
    tasks.into_par_iter().for_each(|(frame, panel, mut runs)| {
        crate::cpu_kernels::vectorized(
            #[inline(always)]
            || {
                let mut segments = Vec::with_capacity(offsets.len());
                let operands = Strided {
                    a: input,
                    a_unit_stride: positions,
                    b: weight.panel(panel),
                    b_unit_stride: COLUMNS,
                    units,
                };
                let start = frame * plane;
                for first in (start..start + h_out * wp).step_by(ROWS) {
                    segments.clear();
                    segments.extend(
                        (offsets.iter().enumerate())
                            .map(|(tap, &offset)| (first + offset, tap * units * COLUMNS)),
                    );
                    let mut tile: Tile = [[0.0; COLUMNS]; ROWS];
                    T::strided_tile(path, operands, &segments, &mut tile);
                    store_tile(
                        &tile,
                        first - start,
                        [h_out, w_out, wp],
                        &mut runs,
                        |index| bias.map_or(0.0, |bias| bias[panel * COLUMNS + index]),
                    );
                }
            },
        )
    });
}

/// Writes a tile of [`convolve_clip`] (its rows the frame's flat positions from `first`, its
/// columns a panel's channels) into the channels' runs of the frame's outputs, `shift(column)`
/// added: the tile transposed once, then each channel's stretches of consecutive outputs (at
/// most three: a tile crosses a row's end and its dropped positions) written in order. Written
/// position by position, each behind a test of its place, the stores were 3 % of r3d_18's bf16
/// step.
#[inline(always)]
fn store_tile<O: HostFloat>(
    tile: &Tile,
    first: usize,
    [h_out, w_out, wp]: [usize; 3],
    runs: &mut [&mut [O]],
    shift: impl Fn(usize) -> f32,
) {
    // (tile row, output place, length) of each stretch of kept positions.
    let mut stretches = [(0, 0, 0); ROWS];
    let mut count = 0;
    let mut row = 0;
    while row < ROWS {
        let (line, column) = ((first + row) / wp, (first + row) % wp);
        if line >= h_out {
            break;
        }
        let len = (ROWS - row).min(wp - column);
        if column < w_out {
            stretches[count] = (row, line * w_out + column, len.min(w_out - column));
            count += 1;
        }
        row += len;
    }
    // Shifted and rounded to `O` whole, the tile's fixed shape lets the compiler vectorise the
    // rounding; per stretch (a dozen values at most, of a length known only at run time) it
    // stayed scalar (3 % of r3d_18's bf16 step).
    let shifts: [f32; COLUMNS] = std::array::from_fn(|index| {
        if index < runs.len() {
            shift(index)
        } else {
            0.0
        }
    });
    let mut columns = [[O::from_f32(0.0); ROWS]; COLUMNS];
    for (row, sums) in tile.iter().enumerate() {
        for ((column, &sum), &shift) in columns.iter_mut().zip(sums).zip(&shifts) {
            column[row] = O::from_f32(sum + shift);
        }
    }
    for (run, column) in runs.iter_mut().zip(&columns) {
        for &(row, at, len) in &stretches[..count] {
            run[at..][..len].copy_from_slice(&column[row..][..len]);
        }
    }
}

/// The forward of a convolution that [`applies`], multiplied in `T`: output `[n, c_out, t', h',
/// w']` in the input's dtype, the weight rounded to `T` (bf16 as on the im2col route). A half
/// input multiplied in f32 (a CPU without the bf16 dot product, or f16) is widened clip by clip
/// as it is laid out, and its output rounded as it is stored: no f32 copy of either.
pub(crate) fn forward<B: Backend, T: DirectOperand>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
    path: T::Path,
) -> Tensor<B, 5> {
    match input.dtype() {
        DType::BF16 => forward_of::<B, T, bf16>(input, weight, bias, geometry, path),
        DType::F16 => forward_of::<B, T, f16>(input, weight, bias, geometry, path),
        _ => forward_of::<B, T, T>(input, weight, bias, geometry, path),
    }
}

/// [`forward`] of an input stored as `S`.
fn forward_of<B: Backend, T: DirectOperand, S: HostFloat>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
    path: T::Path,
) -> Tensor<B, 5> {
    let device = input.device();
    let input = stored::<S, _, 5>(input);
    let weight = stored::<T, _, 5>(weight);
    // Read as a slice once: a stored tensor's every index went through Burn's layout checks.
    let weight: &[T] = &weight;
    let bias = bias.map(floats);
    let [n, c_in, t, h, w] = geometry.input;
    let c_out = geometry.channels_out;
    let taps = geometry.taps();
    let panels = TapPanels::new(
        weight,
        WeightLayout {
            dims: [c_out, c_in, taps],
            strides: [c_in * taps, taps],
            flipped: false,
        },
    );
    let volume = Volume {
        input: [t, h, w],
        padding: geometry.padding,
        kernel: geometry.kernel,
        output: geometry.output,
    };
    let positions: usize = geometry.output.iter().product();
    let mut output = filled(n * c_out * positions, S::from_f32(0.0));
    let mut laid_out = Vec::new();
    for (clip, output) in input
        .chunks(c_in * t * h * w)
        .zip(output.chunks_mut(c_out * positions))
    {
        let buffers = (output, &mut laid_out);
        convolve_clip::<T, S, S>(clip, c_in, &volume, &panels, bias.as_deref(), buffers, path);
    }
    let [t_out, h_out, w_out] = geometry.output;
    Tensor::from_data(
        TensorData::new(output, [n, c_out, t_out, h_out, w_out]),
        (&device, S::dtype()),
    )
}

/// The input gradient of a convolution that [`applies`], clip by clip: the convolution of the
/// output gradient with the weight transposed and flipped on every axis, padded by
/// `kernel − 1 − padding` (its output is the input's size).
pub(super) struct InputGradient<T: DirectOperand> {
    weight: TapPanels<T::Unit>,
    volume: Volume,
    channels_out: usize,
    /// The last clip's output gradient laid out, its buffer kept for the next clip's.
    laid_out: Vec<T::Unit>,
}

impl<T: DirectOperand> InputGradient<T> {
    /// From the weight `[c_out, c_in, taps]`.
    pub(super) fn new(weight: &[T], geometry: &ConvGeometry) -> Self {
        let [_, c_in, t, h, w] = geometry.input;
        let (c_out, taps) = (geometry.channels_out, geometry.taps());
        // Transposed (the input channels are the panels' columns) and flipped.
        let weight = TapPanels::new(
            weight,
            WeightLayout {
                dims: [c_in, c_out, taps],
                strides: [taps, c_in * taps],
                flipped: true,
            },
        );
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
}

impl<T: DirectOperand> ClipInputGradient<T::Path> for InputGradient<T> {
    fn clip<S: HostFloat>(&mut self, upstream: &[S], gradient: &mut [S], path: T::Path) {
        let (volume, channels) = (&self.volume, self.channels_out);
        let buffers = (gradient, &mut self.laid_out);
        convolve_clip::<T, S, S>(
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

/// The weight gradient of a convolution that [`applies`], summed clip by clip in f32.
pub(super) struct WeightGradient<T: DirectOperand> {
    volume: Volume,
    channels: [usize; 2],
    /// `[taps][c_out rounded up to ROWS][c_in rounded up to COLUMNS]`, made at the first sum:
    /// a gradient whose clips all stay pending is computed in its own order without them.
    sums: Vec<f32>,
    /// Whether `sums` holds nothing yet: the first block's tiles start from zero rather than
    /// reading never-written pages (which maps the kernel's zero page, then faults again to
    /// write).
    fresh: bool,
    /// Clips laid out and not yet summed: summed when they fill a block of positions and their
    /// layouts outgrow the sums. A small volume (r3d_18's last stage: 81 bf16 pairs of positions
    /// a clip) is summed several clips at a time, so that each tile's sum runs over a block of
    /// positions rather than a few dozen; a small volume of many channels (the same stage: 1 MiB
    /// of layouts a clip, 27 MiB of sums) is never summed but multiplied into the gradient's
    /// order at the end ([`Self::direct_weight_order`]).
    pending: Pending<T::Unit>,
    /// A clip's flat planes on their way into `pending`, the buffer kept for the next clip.
    planes: Vec<T>,
}

/// The clips [`WeightGradient::add_clip`] laid out since the last sum, one after the other:
/// the output gradients' and the inputs' units of positions ([`DirectOperand::position_units`];
/// the inputs' of every parity of a unit).
struct Pending<U> {
    upstream: Vec<U>,
    input: Vec<Vec<U>>,
    clips: usize,
}

impl<T: DirectOperand> WeightGradient<T> {
    pub(super) fn new(geometry: &ConvGeometry) -> Self {
        let [_, c_in, t, h, w] = geometry.input;
        let c_out = geometry.channels_out;
        Self {
            volume: Volume {
                input: [t, h, w],
                padding: geometry.padding,
                kernel: geometry.kernel,
                output: geometry.output,
            },
            channels: [c_in, c_out],
            sums: Vec::new(),
            fresh: true,
            pending: Pending {
                upstream: Vec::new(),
                input: vec![Vec::new(); T::PER_UNIT],
                clips: 0,
            },
            planes: Vec::new(),
        }
    }

    /// `(rows, columns)` of each tap's sums: `c_out` and `c_in` rounded up to a tile's.
    fn tile_rows_and_columns(&self) -> (usize, usize) {
        let [c_in, c_out] = self.channels;
        (c_out.next_multiple_of(ROWS), c_in.next_multiple_of(COLUMNS))
    }

    /// Units of flat positions per clip: of the output gradient's rows, and of the input
    /// (which a tap reads up to `largest_offset` further on).
    fn units(&self) -> (usize, usize) {
        let row_units = self.volume.span().div_ceil(T::PER_UNIT);
        let input_units = row_units + self.volume.largest_offset() / T::PER_UNIT + 1;
        (row_units, input_units)
    }

    /// Adds one clip's: `clip` `[c_in, t, h, w]`, `upstream` `[c_out, t', h', w']`, both stored
    /// as `S` (widened to `T` as they are laid out).
    pub(super) fn add_clip<S: HostFloat>(&mut self, clip: &[S], upstream: &[S], path: T::Path) {
        let (row_units, input_units) = self.units();
        let ([c_in, c_out], volume) = (self.channels, &self.volume);
        let (pending, planes) = (&mut self.pending, &mut self.planes);
        let (dims, per_unit) = (volume.output, T::PER_UNIT);
        flat_planes(
            upstream,
            c_out,
            dims,
            [0; 3],
            volume,
            per_unit * row_units,
            planes,
        );
        T::position_units(
            planes,
            c_out,
            ROWS,
            0,
            row_units,
            &mut pending.upstream,
            path,
        );
        let len = per_unit * (input_units + 1);
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
            T::position_units(planes, c_in, COLUMNS, parity, input_units, input, path);
        }
        pending.clips += 1;
        if pending.clips * row_units >= BLOCK_UNITS && self.pending_bytes() >= self.sums_bytes() {
            self.sum_pending(path);
        }
    }

    /// Bytes of the pending clips' layouts.
    fn pending_bytes(&self) -> usize {
        let units =
            self.pending.upstream.len() + self.pending.input.iter().map(Vec::len).sum::<usize>();
        units * size_of::<T::Unit>()
    }

    /// Values of the sums, every tap's.
    fn sums_len(&self) -> usize {
        let (rows, columns) = self.tile_rows_and_columns();
        self.volume.tap_offsets().len() * rows * columns
    }

    /// Bytes of the sums.
    fn sums_bytes(&self) -> usize {
        self.sums_len() * size_of::<f32>()
    }

    /// The pending clips' layouts as [`PendingProducts::add_to`] reads them.
    fn products(&self) -> PendingProducts<'_, T::Unit> {
        let (rows, columns) = self.tile_rows_and_columns();
        let (row_units, input_units) = self.units();
        PendingProducts {
            upstream: &self.pending.upstream,
            input: &self.pending.input,
            clips: self.pending.clips,
            rows,
            columns,
            row_units,
            input_units,
        }
    }

    /// Adds the pending clips' products to the sums, block of positions by block, every tap in
    /// parallel. With none pending it does nothing: `into_weight_order` asks after the last
    /// clip, which a large volume has summed already, and a pass over the sums then loaded and
    /// stored every tile of every block for no product (105 blocks of 500 KiB at r3d_18's first
    /// stage, per clip).
    fn sum_pending(&mut self, path: T::Path) {
        if self.pending.clips == 0 {
            return;
        }
        let (rows, columns) = self.tile_rows_and_columns();
        if self.sums.is_empty() {
            self.sums = filled(self.sums_len(), 0.0);
        }
        let offsets = self.volume.tap_offsets();
        let row_units = self.units().0;
        let mut sums = std::mem::take(&mut self.sums);
        let mut fresh = std::mem::replace(&mut self.fresh, false);
        let products = self.products();
        for first in (0..row_units).step_by(BLOCK_UNITS) {
            let units = BLOCK_UNITS.min(row_units - first);
            let fresh = std::mem::replace(&mut fresh, false);
            sums.par_chunks_mut(rows * columns)
                .zip(&offsets)
                // Inside `vectorized`: the tiles' copies from and into the sums were built for
                // the baseline CPU in the closure (3 % of r3d_18's bf16 step at micro-batch 1).
                .for_each(|(sums, &offset)| {
                    crate::cpu_kernels::vectorized(
                        #[inline(always)]
                        || {
                            let mut segments = Vec::with_capacity(products.clips);
                            for first_row in (0..rows).step_by(ROWS) {
                                for first_column in (0..columns).step_by(COLUMNS) {
                                    let at =
                                        |row: usize| (first_row + row) * columns + first_column;
                                    let mut tile: Tile = [[0.0; COLUMNS]; ROWS];
                                    if !fresh {
                                        for (row, values) in tile.iter_mut().enumerate() {
                                            values.copy_from_slice(&sums[at(row)..][..COLUMNS]);
                                        }
                                    }
                                    products.add_to::<T>(
                                        [first_row, first_column],
                                        offset,
                                        (first, units),
                                        (&mut segments, &mut tile),
                                        path,
                                    );
                                    for (row, values) in tile.iter().enumerate() {
                                        sums[at(row)..][..COLUMNS].copy_from_slice(values);
                                    }
                                }
                            }
                        },
                    )
                });
        }
        self.sums = sums;
        // Emptied, not freed: the next clip's layouts fill the same buffers.
        let pending = &mut self.pending;
        pending.upstream.clear();
        pending.input.iter_mut().for_each(Vec::clear);
        pending.clips = 0;
    }

    /// The weight's gradient `[c_out, c_in, taps]` straight from the pending clips (none summed
    /// yet): per panel of [`ROWS`] output channels in parallel, per panel of [`COLUMNS`] input
    /// channels, every tap's tile over all positions of every clip, then the tiles written in the
    /// gradient's order. Through the sums, r3d_18's last stage (7 MiB of weights, 98 positions a
    /// clip) wrote and reread 27 MiB of sums per clip and ran at a quarter of the forward's
    /// speed.
    fn direct_weight_order(self, path: T::Path) -> Vec<f32> {
        let [c_in, c_out] = self.channels;
        let offsets = self.volume.tap_offsets();
        let taps = offsets.len();
        let row_units = self.units().0;
        let products = self.products();
        let mut gradient = filled(c_out * c_in * taps, 0.0);
        gradient
            .par_chunks_mut(ROWS * c_in * taps)
            .enumerate()
            .for_each(|(panel, gradient)| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let first_row = panel * ROWS;
                        let outputs = ROWS.min(c_out - first_row);
                        let mut segments = Vec::with_capacity(products.clips);
                        let mut tiles: Vec<Tile> = vec![[[0.0; COLUMNS]; ROWS]; taps];
                        for first_column in (0..products.columns).step_by(COLUMNS) {
                            for (tile, &offset) in tiles.iter_mut().zip(&offsets) {
                                *tile = [[0.0; COLUMNS]; ROWS];
                                products.add_to::<T>(
                                    [first_row, first_column],
                                    offset,
                                    (0, row_units),
                                    (&mut segments, tile),
                                    path,
                                );
                            }
                            let inputs = COLUMNS.min(c_in - first_column);
                            for row in 0..outputs {
                                for column in 0..inputs {
                                    let at = (row * c_in + first_column + column) * taps;
                                    for (value, tile) in
                                        gradient[at..][..taps].iter_mut().zip(&tiles)
                                    {
                                        *value = tile[row][column];
                                    }
                                }
                            }
                        }
                    },
                )
            });
        gradient
    }

    /// The sums as the weight's gradient, `[c_out, c_in, taps]`.
    pub(super) fn into_weight_order(mut self, path: T::Path) -> Vec<f32> {
        if self.fresh {
            return self.direct_weight_order(path);
        }
        self.sum_pending(path);
        // The layouts' buffers are freed before the gradient is allocated beside the sums.
        self.pending = Pending {
            upstream: Vec::new(),
            input: Vec::new(),
            clips: 0,
        };
        self.planes = Vec::new();
        let [c_in, c_out] = self.channels;
        let taps = self.volume.tap_offsets().len();
        let (rows, columns) = self.tile_rows_and_columns();
        let mut gradient = filled(c_out * c_in * taps, 0.0);
        // Per block of input channels, each tap's run of sums read in order and written `taps`
        // apart within the block's gradient (in L1: the output channel's whole row, 55 KiB at
        // 512 inputs, was not, and this order was 2 % of r3d_18's bf16 step at micro-batch 1).
        gradient
            .par_chunks_mut(c_in * taps)
            .enumerate()
            .for_each(|(output, gradient)| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        for first in (0..c_in).step_by(TRANSPOSE_BLOCK) {
                            let inputs = TRANSPOSE_BLOCK.min(c_in - first);
                            let block = &mut gradient[first * taps..][..inputs * taps];
                            for tap in 0..taps {
                                let at = (tap * rows + output) * columns + first;
                                let sums = &self.sums[at..][..inputs];
                                for (input, &sum) in sums.iter().enumerate() {
                                    block[input * taps + tap] = sum;
                                }
                            }
                        }
                    },
                )
            });
        gradient
    }
}

/// The pending clips' layouts of a [`WeightGradient`], and the sizes that place a tile's
/// operands in them.
struct PendingProducts<'a, U> {
    upstream: &'a [U],
    input: &'a [Vec<U>],
    clips: usize,
    rows: usize,
    columns: usize,
    row_units: usize,
    input_units: usize,
}

impl<U: Copy + Default + Send + Sync> PendingProducts<'_, U> {
    /// Adds to `tile` the products of output channels from `first_row` and input channels from
    /// `first_column`, the input shifted by one tap's `offset`, over `units` units of positions
    /// from `first` of every clip (`segments`: a buffer for the clips' operands).
    #[inline(always)]
    fn add_to<T: DirectOperand<Unit = U>>(
        &self,
        [first_row, first_column]: [usize; 2],
        offset: usize,
        (first, units): (usize, usize),
        (segments, tile): (&mut Vec<(usize, usize)>, &mut Tile),
        path: T::Path,
    ) {
        let operands = Strided {
            a: self.upstream,
            a_unit_stride: ROWS,
            b: &self.input[offset % T::PER_UNIT],
            b_unit_stride: COLUMNS,
            units,
        };
        let shift = offset / T::PER_UNIT;
        segments.clear();
        segments.extend((0..self.clips).map(|clip| {
            let row_panel = clip * self.rows / ROWS + first_row / ROWS;
            let column_panel = clip * self.columns / COLUMNS + first_column / COLUMNS;
            (
                (row_panel * self.row_units + first) * ROWS,
                (column_panel * self.input_units + first + shift) * COLUMNS,
            )
        }));
        T::strided_tile(path, operands, segments, tile);
    }
}

/// Input channels [`WeightGradient::into_weight_order`] writes at a time.
const TRANSPOSE_BLOCK: usize = 64;

/// `values` (`[channels, dims]`, stored as `S`) placed at `origin` of each channel's flat
/// positions of `volume`, `len` of them (zero elsewhere), into `planes`: `[channels][len]` of
/// `T` (half values widened as they are placed).
fn flat_planes<S: HostFloat, T: HostFloat>(
    values: &[S],
    channels: usize,
    dims: [usize; 3],
    origin: [usize; 3],
    volume: &Volume,
    len: usize,
    planes: &mut Vec<T>,
) {
    let w = dims[2];
    planes.clear();
    extend_filled(planes, channels * len, T::from_f32(0.0));
    let clip_len = dims.iter().product();
    if let Some(values) = same_dtype::<S, T>(values) {
        planes
            .par_chunks_mut(len)
            .zip(values.par_chunks(clip_len))
            .for_each(|(plane, values)| {
                volume.for_each_row(dims, origin, |source, target| {
                    plane[target..][..w].copy_from_slice(&values[source..][..w]);
                })
            });
        return;
    }
    planes
        .par_chunks_mut(len)
        .zip(values.par_chunks(clip_len))
        .for_each(|(plane, values)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    volume.for_each_row(dims, origin, |source, target| {
                        let (plane, values) = (&mut plane[target..][..w], &values[source..][..w]);
                        for (planed, &value) in plane.iter_mut().zip(values) {
                            *planed = T::from_f32(value.to_f32());
                        }
                    })
                },
            )
        });
}
