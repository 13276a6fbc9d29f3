//! A 3-D convolution's forward and its weight and input gradients as wide matrix products, for
//! the CPU backend.
//!
//! The backend's own route (what [`super::conv3d::VideoConv3d::gradients`] falls back to) takes
//! the weight gradient as a convolution of each clip with its output gradient used as the
//! kernel: a gemm whose output has as few columns as the kernel has taps (147 for the seed's
//! first convolution, 9 for its second) and whose inner dimension is the whole clip, and the
//! input gradient as a transposed convolution whose col2im runs on one thread. Here, for a few
//! output lines (rows of `w'` positions) of one clip at a time:
//!
//! - `columns [c_in·taps × lines·w']` is the im2col of the input (built in parallel, one row per
//!   input channel and tap), at most [`COLUMN_BYTES`] at a time, so that it is still in the
//!   caches when the gemm reads it;
//! - the forward is `weight [c_out × c_in·taps] · columns`;
//! - the weight gradient accumulates `upstream [c_out × lines·w'] · columnsᵀ`;
//! - the input gradient is `weightᵀ [c_in·taps × c_out] · upstream`, scattered back onto the
//!   input (col2im) in parallel over input channels, each of which owns its own volume.
//!
//! The gemms write into the kernel's own buffers: gemm's multi-threaded f32 kernels
//! ([`gemm_f32`]), or vidtrain's bf16 kernel ([`gemm_bf16`]) for bf16 operands on a CPU with the
//! instruction, which packs the columns straight from the clip and the weight once per call
//! ([`super::conv_columns`]). The columns of a group and its product are the only transient
//! buffers.

use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16};
use rayon::prelude::*;

use crate::cpu_kernels::{
    HostFloat, Stored, cast, convert_into, extend_filled, filled, floats, stored,
};
use crate::gemm_bf16::{Matrix, Path, Update};
use crate::gemm_f32::{F32Path, bf16_path, f32_path};
use crate::layers::conv_columns::{ClipColumns, ConvOperand};
use crate::layers::conv_direct::{self, DirectOperand};
use crate::layers::im2col::{ClipValues, ColumnMap, SlidingSums, col2im};
use crate::layers::norm_relu_host::{ChannelNorm, lane_sum};
use crate::layers::{conv_winograd, conv_winograd_temporal};
use crate::quantize::{HostCodes, HostInput};

/// The most bytes of im2col columns held at once: a group of output lines (one output frame's
/// row of `w'` positions each) of one clip, small enough to stay in the CPU's caches between
/// im2col writing it and the gemm reading it. A whole frame of the seed's first convolution
/// (22 MiB) went to memory and back; on the Zen 2 machine of stop 35 the seed model's fp32 b4
/// step ran at 1.10 samples/s with 8 MiB, 1.26 with 4 MiB, 1.16 with 2 MiB and 0.92 with
/// 960 KiB (below glibc's mmap threshold, the heap grew and shrank: 12–18 % of the step in the
/// kernel).
pub const COLUMN_BYTES: usize = 4 << 20;

/// Sizes of one convolution: input `[n, c_in, t, h, w]`, kernel, stride, padding, output.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeometry {
    pub input: [usize; 5],
    pub channels_out: usize,
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub output: [usize; 3],
}

impl ConvGeometry {
    pub(super) fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    fn rows(&self) -> usize {
        self.input[1] * self.taps()
    }

    /// The weight's (and its gradient's) shape, `[c_out, c_in, kt, kh, kw]`.
    fn weight_shape(&self) -> [usize; 5] {
        let [kt, kh, kw] = self.kernel;
        [self.channels_out, self.input[1], kt, kh, kw]
    }

    /// Output positions of a clip, `t'·h'·w'`.
    fn positions(&self) -> usize {
        self.output.iter().product()
    }

    /// Output lines (rows of `w'` positions) of a clip, `t'·h'`.
    fn lines(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// Output lines per group, so that a group's columns stay within [`COLUMN_BYTES`].
    fn lines_per_group(&self, value_bytes: usize) -> usize {
        let line_bytes = self.rows() * self.output[2] * value_bytes;
        (COLUMN_BYTES / line_bytes.max(1)).clamp(1, self.lines())
    }

    /// Groups of output lines of one clip: `(first line, lines)`.
    pub(super) fn groups(&self, group: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let lines = self.lines();
        (0..lines)
            .step_by(group)
            .map(move |first| (first, group.min(lines - first)))
    }
}

/// The convolution of `input` with `weight` (and `bias`) as `weight [c_out × c_in·taps] ·
/// columns` for a few output lines of one clip at a time, the columns built by [`im2col`] in
/// parallel and the product written into a reused buffer by [`gemm_f32`] (bf16 by
/// [`gemm_bf16`] where the CPU has the instruction); output `[n, c_out, t', h', w']` in the
/// input's dtype. burn-flex's own `conv3d` transposes the whole input to channels-last on one
/// thread and multiplies tiles of 512 positions.
pub fn conv3d_forward<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
) -> Tensor<B, 5> {
    let dtype = input.dtype();
    let path = bf16_path(&[dtype]);
    // Winograd's transforms for ST-GCN's temporal kernels and for 3 × 3 × 3 kernels of stride
    // 1, on every dtype multiplied in f32.
    if conv_winograd_temporal::applies(&geometry)
        && let Some(f32_path) = f32_path(&[dtype])
    {
        return conv_winograd_temporal::forward(input, weight, bias, geometry, f32_path);
    }
    if conv_winograd::applies(&geometry)
        && !path.is_some_and(conv_direct::multiplies_bf16_on)
        && let Some(f32_path) = f32_path(&[dtype])
    {
        return conv_winograd::forward(input, weight, bias, geometry, f32_path);
    }
    if conv_direct::applies(&geometry) {
        if let Some(path) = path
            && conv_direct::multiplies_bf16_on(path)
        {
            return conv_direct::forward::<B, bf16>(input, weight, bias, geometry, path);
        }
        // An f32 input, or a half one that no bf16 kernel multiplies (f16, or bf16 on a CPU
        // without the instruction): multiplied in f32, a half one widened clip by clip.
        if let Some(path) = f32_path(&[dtype]) {
            return conv_direct::forward::<B, f32>(input, weight, bias, geometry, path);
        }
    }
    let group = geometry.lines_per_group(if path.is_some() { 2 } else { 4 });
    // The f32 route computes in f32 and stores the input's dtype (a half input is widened as
    // its columns are written): no f32 copy of the input or of the output.
    cast(
        forward_in_groups(input, weight, bias, geometry, group, path),
        dtype,
    )
}

/// [`conv3d_forward`] with `group` output lines per im2col buffer, multiplying f32 columns by
/// [`gemm_f32`] or, given a `bf16` path, bf16 columns by [`gemm_bf16`]: each group's f32 product
/// is rounded into the output's dtype (the f32 route's whole f32 output, twice the bf16
/// activation, was a transient of the step's peak) and bf16 columns take half the bytes. The
/// weight is rounded to bf16 on the bf16 route, as PyTorch's autocast does.
fn forward_in_groups<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
    group: usize,
    bf16: Option<Path>,
) -> Tensor<B, 5> {
    match bf16 {
        Some(path) => forward_as::<B, bf16>(input, weight, bias, geometry, group, Some(path)),
        None => forward_as::<B, f32>(input, weight, bias, geometry, group, None),
    }
}

/// [`forward_in_groups`] with operands read and columns built as `T`, multiplied on `path`.
fn forward_as<B: Backend, T: ConvOperand>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
    group: usize,
    path: Option<Path>,
) -> Tensor<B, 5> {
    let (c_out, rows, w_out) = (geometry.channels_out, geometry.rows(), geometry.output[2]);
    let map = ColumnMap::new(geometry, group);
    let weight = stored::<T, _, 5>(weight);
    let weight = T::prepare(Matrix::row_major(&weight, c_out, rows, rows), path);
    let mut buffer = Vec::new();
    forward_by_groups::<B, T>(input, bias, &map, |clip, first, lines, product| {
        let columns = ClipColumns {
            clip,
            map: &map,
            first,
            lines,
        };
        product.resize(c_out * lines * w_out, 0f32);
        T::times_columns(
            path,
            &weight,
            columns,
            &mut buffer,
            product,
            Update::Overwrite,
        );
    })
}

/// The forward's loop, shared by both routes: for each clip and group of output lines,
/// `product` writes `weight · columns` (f32, `[c_out, lines·w']`) from the clip's values (as
/// stored, or as `T` where it is read as a clip: [`ClipReader::clip_values`]) and the group's
/// first line and line count, and each
/// value plus its channel's bias is stored in the input's dtype; output `[n, c_out, t', h', w']`
/// in that dtype (a half input of the f32 route stays half).
fn forward_by_groups<B: Backend, T: HostFloat>(
    input: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    map: &ColumnMap,
    product: impl FnMut(ClipValues<'_, T>, usize, usize, &mut Vec<f32>),
) -> Tensor<B, 5> {
    match input.dtype() {
        DType::F16 if T::dtype() != DType::F16 => {
            forward_stored_as::<B, T, burn::tensor::f16>(input, bias, map, product)
        }
        DType::BF16 if T::dtype() != DType::BF16 => {
            forward_stored_as::<B, T, bf16>(input, bias, map, product)
        }
        _ => forward_stored_as::<B, T, T>(input, bias, map, product),
    }
}

/// [`forward_by_groups`] reading the input's columns as `T` and storing the output as `O` (the
/// input's dtype).
fn forward_stored_as<B: Backend, T: HostFloat, O: HostFloat>(
    input: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    map: &ColumnMap,
    mut product: impl FnMut(ClipValues<'_, T>, usize, usize, &mut Vec<f32>),
) -> Tensor<B, 5> {
    let geometry = map.geometry;
    let device = input.device();
    let mut input = ClipReader::<T>::of(ConvInput::Tensor(input));
    let bias = bias.map(floats);
    let [n, c_in, t, h, w] = geometry.input;
    let c_out = geometry.channels_out;
    let [t_out, h_out, w_out] = geometry.output;
    let positions = geometry.positions();
    let mut output = filled(n * c_out * positions, O::from_f32(0.0));
    let mut values = Vec::new();
    let clip_len = c_in * t * h * w;
    for (clip, clip_output) in output.chunks_mut(c_out * positions).enumerate() {
        let clip_input = input.clip_values(clip, clip_len);
        for (first, lines) in map.groups() {
            let length = lines * w_out;
            product(clip_input, first, lines, &mut values);
            clip_output
                .par_chunks_mut(positions)
                .zip(values.par_chunks(length))
                .enumerate()
                .for_each(|(channel, (channel_output, values))| {
                    crate::cpu_kernels::vectorized(
                        #[inline(always)]
                        || {
                            let shift = bias.as_ref().map_or(0.0, |bias| bias[channel]);
                            let target = &mut channel_output[first * w_out..][..length];
                            for (target, value) in target.iter_mut().zip(values) {
                                *target = O::from_f32(value + shift);
                            }
                        },
                    )
                });
        }
    }
    Tensor::from_data(
        TensorData::new(output, [n, c_out, t_out, h_out, w_out]),
        (&device, O::dtype()),
    )
}

/// A convolution's weight gradient summed one clip at a time, on a kernel path `P` (the direct
/// route's, [`conv_direct::WeightGradient`]; Winograd's, [`conv_winograd::WeightGradient`],
/// [`conv_winograd_temporal::WeightGradient`]).
pub(super) trait ClipWeightGradient<P> {
    /// Adds one clip's input (`[c_in, t, h, w]`) and output gradient (`[c_out, t', h', w']`),
    /// both stored as `S`.
    fn add_clip<S: HostFloat>(&mut self, input: &[S], upstream: &[S], path: P);

    /// The sums as the weight's gradient, `[c_out, c_in, taps]` (f32).
    fn into_weight_gradient(self, path: P) -> Vec<f32>;
}

impl<T: DirectOperand> ClipWeightGradient<T::Path> for conv_direct::WeightGradient<T> {
    fn add_clip<S: HostFloat>(&mut self, input: &[S], upstream: &[S], path: T::Path) {
        conv_direct::WeightGradient::add_clip(self, input, upstream, path);
    }

    fn into_weight_gradient(self, path: T::Path) -> Vec<f32> {
        self.into_weight_order(path)
    }
}

impl ClipWeightGradient<F32Path> for conv_winograd::WeightGradient {
    fn add_clip<S: HostFloat>(&mut self, input: &[S], upstream: &[S], _: F32Path) {
        conv_winograd::WeightGradient::add_clip(self, input, upstream);
    }

    fn into_weight_gradient(self, _: F32Path) -> Vec<f32> {
        conv_winograd::WeightGradient::into_weight_gradient(self)
    }
}

impl ClipWeightGradient<F32Path> for conv_winograd_temporal::WeightGradient {
    fn add_clip<S: HostFloat>(&mut self, input: &[S], upstream: &[S], _: F32Path) {
        conv_winograd_temporal::WeightGradient::add_clip(self, input, upstream);
    }

    fn into_weight_gradient(self, _: F32Path) -> Vec<f32> {
        conv_winograd_temporal::WeightGradient::into_weight_gradient(self)
    }
}

/// A convolution's input gradient computed one clip at a time from its upstream, on a kernel
/// path `P` (the direct route's, [`conv_direct::InputGradient`]; Winograd's,
/// [`conv_winograd::InputGradient`], [`conv_winograd_temporal::InputGradient`]).
pub(super) trait ClipInputGradient<P> {
    /// Writes one clip's input gradient (`[c_in, t, h, w]`) from its output gradient (`[c_out,
    /// t', h', w']`), both stored as `S`.
    fn clip<S: HostFloat>(&mut self, upstream: &[S], gradient: &mut [S], path: P);
}

/// A convolution's weight gradient and, when asked for, its input gradient.
pub(crate) type ConvGradients<B> = (Tensor<B, 5>, Option<Tensor<B, 5>>);

/// A convolution's input as its gradients read it, one clip at a time: a tensor, a compressed
/// input (`model.activation_bits`) restored clip by clip, so that it never exists whole in its
/// dtype, or the output of a BatchNorm + ReLU made again clip by clip from that step's input,
/// so that it is never kept at all.
pub(crate) enum ConvInput<'a, B: Backend> {
    Tensor(Tensor<B, 5>),
    Codes(HostInput<'a>),
    Normalized {
        /// The BatchNorm + ReLU step's input: a tensor or codes.
        source: Box<ConvInput<'a, B>>,
        /// The map its forward applied.
        map: &'a ChannelNorm,
    },
}

impl<B: Backend> ConvInput<'_, B> {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            ConvInput::Tensor(tensor) => tensor.dtype(),
            ConvInput::Codes(input) => input.codes.dtype(),
            ConvInput::Normalized { source, .. } => source.dtype(),
        }
    }

    /// `[n, c, t, h, w]`.
    pub(crate) fn dims(&self) -> [usize; 5] {
        match self {
            ConvInput::Tensor(tensor) => tensor.dims(),
            ConvInput::Codes(input) => input.dims,
            ConvInput::Normalized { source, .. } => source.dims(),
        }
    }
}

/// The values of a half-precision tensor.
enum HalfValues {
    F16(Stored<burn::tensor::f16>),
    Bf16(Stored<bf16>),
}

impl HalfValues {
    /// The tensor's values when it is f16 or bf16, else the tensor back.
    fn of<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Self, Tensor<B, D>> {
        match tensor.dtype() {
            DType::F16 => Ok(HalfValues::F16(stored(tensor))),
            DType::BF16 => Ok(HalfValues::Bf16(stored(tensor))),
            _ => Err(tensor),
        }
    }

    /// `target` = the values from `start` on, converted to `T` on this thread (for callers that
    /// already split the work across the pool).
    fn convert_serially_into<T: HostFloat>(&self, start: usize, target: &mut [T]) {
        fn widen<S: HostFloat, T: HostFloat>(source: &[S], target: &mut [T]) {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    for (target, &value) in target.iter_mut().zip(source) {
                        *target = T::from_f32(value.to_f32());
                    }
                },
            )
        }
        let len = target.len();
        match self {
            HalfValues::F16(values) => widen(&values[start..][..len], target),
            HalfValues::Bf16(values) => widen(&values[start..][..len], target),
        }
    }

    /// `target` = the values from `start` on, converted to `T` (in parallel).
    fn convert_into<T: HostFloat>(&self, start: usize, target: &mut [T]) {
        let len = target.len();
        match self {
            HalfValues::F16(values) => {
                convert_into(&values[start..][..len], target, |v| T::from_f32(v.to_f32()))
            }
            HalfValues::Bf16(values) => {
                convert_into(&values[start..][..len], target, |v| T::from_f32(v.to_f32()))
            }
        }
    }
}

/// The clips of a [`ConvInput`] as `T`: slices of the stored tensor, restored one at a time into
/// one buffer, or normalised one at a time into one buffer.
enum ClipReader<'a, T> {
    Stored(Stored<T>),
    /// A half-precision tensor read by a route that computes in `T` (f32): its columns widen
    /// the values as they are written ([`Self::clip_values`]), a group of an upstream gradient
    /// is converted into a group-sized buffer ([`Self::group_rows`]); only a reader that needs
    /// the clip itself ([`Self::clip`]) has it converted, one clip at a time into the buffer.
    /// (fp16's convolutions, and bf16's on a CPU without the bf16 instruction, held whole f32
    /// copies of their inputs: the step's peak.)
    Half {
        values: HalfValues,
        buffer: Vec<T>,
        /// The clip the buffer holds: read again (once per group of lines), it is not
        /// converted again.
        converted: Option<usize>,
    },
    /// Codes of an input stored in the dtype, restored a clip at a time.
    Codes(&'a HostCodes, Vec<T>),
    Normalized {
        source: Box<ClipReader<'a, T>>,
        map: &'a ChannelNorm,
        buffer: Vec<T>,
    },
}

impl<'a, T: HostFloat> ClipReader<'a, T> {
    fn of<B: Backend>(input: ConvInput<'a, B>) -> Self {
        match input {
            ConvInput::Tensor(tensor) if tensor.dtype() == T::dtype() => {
                ClipReader::Stored(stored::<T, _, 5>(tensor))
            }
            ConvInput::Tensor(tensor) => match HalfValues::of(tensor) {
                Ok(values) => ClipReader::Half {
                    values,
                    buffer: Vec::new(),
                    converted: None,
                },
                Err(tensor) => ClipReader::Stored(stored::<T, _, 5>(tensor)),
            },
            ConvInput::Codes(input) => ClipReader::Codes(input.codes, Vec::new()),
            ConvInput::Normalized { source, map } => ClipReader::Normalized {
                source: Box::new(ClipReader::of(*source)),
                map,
                buffer: Vec::new(),
            },
        }
    }

    /// The sums of every channel of `[n, channels, positions]` values (a convolution's bias
    /// gradient, from its upstream).
    ///
    /// # Panics
    /// For a reader of codes or of a normalised input (an upstream is neither).
    fn channel_sums(&self, channels: usize, positions: usize) -> Vec<f32> {
        match self {
            ClipReader::Stored(values) => channel_sums(values, channels, positions),
            ClipReader::Half {
                values: HalfValues::F16(values),
                ..
            } => channel_sums(values, channels, positions),
            ClipReader::Half {
                values: HalfValues::Bf16(values),
                ..
            } => channel_sums(values, channels, positions),
            ClipReader::Codes(..) | ClipReader::Normalized { .. } => {
                unreachable!("an upstream gradient is read from a tensor")
            }
        }
    }

    /// Clip `clip` of `clip_len` values as the columns read them: half values where they are
    /// stored (widened as the columns are written), anything else as [`Self::clip`] gives it.
    fn clip_values(&mut self, clip: usize, clip_len: usize) -> ClipValues<'_, T> {
        let range = clip * clip_len..(clip + 1) * clip_len;
        match self {
            ClipReader::Half {
                values: HalfValues::Bf16(values),
                ..
            } => ClipValues::Bf16(&values[range]),
            ClipReader::Half {
                values: HalfValues::F16(values),
                ..
            } => ClipValues::F16(&values[range]),
            reader => ClipValues::Same(reader.clip(clip, clip_len)),
        }
    }

    /// Values `start..start + length` of each of the `rows` rows (`row_len` values apart) of
    /// clip `clip` (`rows · row_len` values) as a row-major matrix: a view of stored values, or
    /// half values converted into `buffer` (a group's share of an upstream gradient, where a
    /// whole clip converted was as large as the activation at micro-batch 1).
    ///
    /// # Panics
    /// For a reader of codes or of a normalised input (an upstream is neither).
    fn group_rows<'b>(
        &'b self,
        clip: usize,
        [rows, row_len]: [usize; 2],
        (start, length): (usize, usize),
        buffer: &'b mut Vec<T>,
    ) -> Matrix<'b, T> {
        let clip_start = clip * rows * row_len;
        match self {
            ClipReader::Stored(values) => {
                Matrix::row_major(&values[clip_start + start..], rows, length, row_len)
            }
            ClipReader::Half { values, .. } => {
                buffer.resize(rows * length, T::from_f32(0.0));
                buffer
                    .par_chunks_mut(length)
                    .enumerate()
                    .for_each(|(row, target)| {
                        values.convert_serially_into(clip_start + row * row_len + start, target)
                    });
                Matrix::row_major(buffer, rows, length, length)
            }
            ClipReader::Codes(..) | ClipReader::Normalized { .. } => {
                unreachable!("an upstream gradient is read from a tensor")
            }
        }
    }

    /// Clip `clip` of `clip_len` values.
    fn clip(&mut self, clip: usize, clip_len: usize) -> &[T] {
        match self {
            ClipReader::Stored(values) => &values[clip * clip_len..(clip + 1) * clip_len],
            ClipReader::Half {
                values,
                buffer,
                converted,
            } => {
                if *converted != Some(clip) || buffer.len() != clip_len {
                    buffer.resize(clip_len, T::from_f32(0.0));
                    values.convert_into(clip * clip_len, buffer);
                    *converted = Some(clip);
                }
                buffer
            }
            ClipReader::Codes(codes, buffer) => {
                buffer.resize(clip_len, T::from_f32(0.0));
                codes.restore_as_stored(clip * clip_len, buffer);
                buffer
            }
            ClipReader::Normalized {
                source,
                map,
                buffer,
            } => match source.as_mut() {
                // Restored codes are normalised where they were restored: one clip buffer, as
                // for the codes alone.
                ClipReader::Codes(codes, restored) => {
                    restored.resize(clip_len, T::from_f32(0.0));
                    codes.restore_as_stored(clip * clip_len, restored);
                    map.forward_in_place(restored, map.clip_dims(clip_len));
                    restored
                }
                source => {
                    buffer.resize(clip_len, T::from_f32(0.0));
                    let dims = map.clip_dims(clip_len);
                    map.forward_into(source.clip(clip, clip_len), buffer, dims);
                    buffer
                }
            },
        }
    }
}

/// [`ConvGradients`] and, when asked for, the bias gradient (f32).
pub(crate) type ConvGradientsWithBias<B> = (ConvGradients<B>, Option<Tensor<B, 1>>);

/// The backward of a convolution with `weight` of `input`, for `upstream` (the gradient of its
/// output, `[n, c_out, t', h', w']`).
pub(crate) struct ConvBackward<'a, B: Backend> {
    pub input: ConvInput<'a, B>,
    pub weight: Tensor<B, 5>,
    pub upstream: Tensor<B, 5>,
    pub geometry: ConvGeometry,
    /// Whether the input's gradient and the bias's are wanted.
    pub wants: [bool; 2],
}

impl<B: Backend> ConvBackward<'_, B> {
    /// The weight gradient `[c_out, c_in, kt, kh, kw]` (f32), when wanted the input gradient
    /// `[n, c_in, t, h, w]` (f32, or bf16 on the bf16 route) and the bias gradient `[c_out]`
    /// (f32, the sums of `upstream` per output channel). Groups of lines are sized by the
    /// columns' values (bf16 groups twice as long as f32's: sized as f32, the 3-D ResNet's bf16
    /// weight gradients took `k` in blocks of 560 positions and were 8 % slower).
    pub(crate) fn gradients(self) -> ConvGradientsWithBias<B> {
        let geometry = self.geometry;
        let dtypes = [self.input.dtype(), self.upstream.dtype()];
        let direct = conv_direct::applies(&geometry);
        match (bf16_path(&dtypes), f32_path(&dtypes)) {
            (Some(path), _) if direct && conv_direct::multiplies_bf16_on(path) => {
                self.direct::<bf16>(path)
            }
            (None, Some(path)) if conv_winograd::applies(&geometry) => self.winograd(path),
            (None, Some(path)) if conv_winograd_temporal::applies(&geometry) => {
                self.temporal_winograd(path)
            }
            (Some(path), _) => self.products::<bf16, bf16>(geometry.lines_per_group(2), Some(path)),
            (None, Some(path)) if direct => self.direct::<f32>(path),
            (None, _) => self.f32_products(),
        }
    }

    /// [`Self::products`] in f32, the input gradient stored in the input's dtype (a half one
    /// rounded line by line as the sliding window moves on).
    fn f32_products(self) -> ConvGradientsWithBias<B> {
        let group = self.geometry.lines_per_group(4);
        match self.input.dtype() {
            DType::F16 => self.products::<f32, burn::tensor::f16>(group, None),
            DType::BF16 => self.products::<f32, bf16>(group, None),
            _ => self.products::<f32, f32>(group, None),
        }
    }

    /// [`Self::gradients`] of a convolution that [`conv_winograd_temporal::applies`] to,
    /// computed in f32 by its transforms clip by clip: the input gradient on `path`, the weight
    /// gradient by per-point products over tiles ([`conv_winograd_temporal::WeightGradient`]).
    fn temporal_winograd(self, path: F32Path) -> ConvGradientsWithBias<B> {
        let weight_gradient = conv_winograd_temporal::WeightGradient::new(&self.geometry);
        self.in_f32_clip_by_clip(
            path,
            |weight, geometry| {
                conv_winograd_temporal::InputGradient::new(&stored::<f32, _, 5>(weight), geometry)
            },
            weight_gradient,
        )
    }

    /// [`Self::gradients`] of a convolution that [`conv_direct::applies`] to, multiplied in `T`
    /// on `path`: the weight gradient summed in f32 clip by clip, the input gradient computed
    /// clip by clip in f32 and stored in the upstream's dtype, the weight rounded to `T` (bf16
    /// as on the im2col route). Half operands multiplied in f32 are widened clip by clip as
    /// they are laid out: no f32 copy of a whole one.
    fn direct<T: DirectOperand>(self, path: T::Path) -> ConvGradientsWithBias<B> {
        match self.upstream.dtype() {
            DType::BF16 => self.direct_of::<T, bf16>(path),
            DType::F16 => self.direct_of::<T, burn::tensor::f16>(path),
            _ => self.direct_of::<T, T>(path),
        }
    }

    /// [`Self::direct`] of operands stored as `S`.
    fn direct_of<T: DirectOperand, S: HostFloat>(self, path: T::Path) -> ConvGradientsWithBias<B> {
        let weight_gradient = conv_direct::WeightGradient::<T>::new(&self.geometry);
        self.clip_by_clip::<T, S, _, _>(
            path,
            |weight, geometry| {
                conv_direct::InputGradient::<T>::new(&stored::<T, _, 5>(weight), geometry)
            },
            weight_gradient,
        )
    }

    /// [`Self::gradients`] of a convolution that [`conv_winograd::applies`] to, computed in f32
    /// by Winograd's transforms clip by clip: the input gradient on `path`, the weight gradient
    /// by per-point products over tiles ([`conv_winograd::WeightGradient`]); half operands
    /// widened as they are read.
    fn winograd(self, path: F32Path) -> ConvGradientsWithBias<B> {
        let input_gradient = |weight, geometry: &ConvGeometry| {
            conv_winograd::InputGradient::new(&stored::<f32, _, 5>(weight), geometry)
        };
        let weight_gradient = conv_winograd::WeightGradient::new(&self.geometry);
        self.in_f32_clip_by_clip(path, input_gradient, weight_gradient)
    }

    /// [`Self::clip_by_clip`] multiplied in f32 on `path`, operands stored in the upstream's
    /// dtype (half ones widened as they are read).
    fn in_f32_clip_by_clip<G: ClipInputGradient<F32Path>, W: ClipWeightGradient<F32Path>>(
        self,
        path: F32Path,
        input_gradient: impl FnOnce(Tensor<B, 5>, &ConvGeometry) -> G,
        weight_gradient: W,
    ) -> ConvGradientsWithBias<B> {
        match self.upstream.dtype() {
            DType::BF16 => {
                self.clip_by_clip::<f32, bf16, _, _>(path, input_gradient, weight_gradient)
            }
            DType::F16 => self.clip_by_clip::<f32, burn::tensor::f16, _, _>(
                path,
                input_gradient,
                weight_gradient,
            ),
            _ => self.clip_by_clip::<f32, f32, _, _>(path, input_gradient, weight_gradient),
        }
    }

    /// The gradients clip by clip, operands stored as `S`: the weight gradient summed in f32 by
    /// `weight_gradient` (the direct route's multiplied in `T`, or Winograd's), the input
    /// gradient by what `input_gradient` makes of the weight, stored in the upstream's dtype.
    fn clip_by_clip<
        T: DirectOperand,
        S: HostFloat,
        G: ClipInputGradient<T::Path>,
        W: ClipWeightGradient<T::Path>,
    >(
        self,
        path: T::Path,
        input_gradient: impl FnOnce(Tensor<B, 5>, &ConvGeometry) -> G,
        mut weight_gradient: W,
    ) -> ConvGradientsWithBias<B> {
        let (geometry, [wants_input, wants_bias]) = (self.geometry, self.wants);
        let device = self.upstream.device();
        let [n, c_in, t, h, w] = geometry.input;
        let (c_out, positions) = (geometry.channels_out, geometry.positions());
        let upstream = stored::<S, _, 5>(self.upstream);
        let bias_gradient = wants_bias.then(|| {
            let sums = channel_sums(&upstream, geometry.channels_out, geometry.positions());
            bias_gradient(sums, &device)
        });
        let mut input_gradient = wants_input.then(|| input_gradient(self.weight, &geometry));
        let clip_len = c_in * t * h * w;
        let mut input = ClipReader::<S>::of(self.input);
        let mut gradient = input_gradient
            .as_ref()
            .map(|_| filled(n * clip_len, S::from_f32(0.0)));
        for (clip, upstream) in upstream.chunks(c_out * positions).enumerate() {
            weight_gradient.add_clip(input.clip(clip, clip_len), upstream, path);
            if let (Some(computed), Some(gradient)) = (&mut input_gradient, gradient.as_mut()) {
                computed.clip(upstream, &mut gradient[clip * clip_len..][..clip_len], path);
            }
        }
        // The input gradient's packed weight and the clip buffers are given back before the
        // weight gradient is reordered into a buffer of its own (at r3d_18's last stage each
        // is as large as the weight).
        drop((input_gradient, input));
        let weight_gradient = weight_gradient.into_weight_gradient(path);
        let gradients = gradient_tensors(&geometry, weight_gradient, gradient, &device);
        (gradients, bias_gradient)
    }

    /// [`Self::gradients`] with `group` output lines per im2col buffer and operands read as `T`
    /// (f32, or bf16 multiplied by `path`): the weight gradient is accumulated in f32 group
    /// after group; the input gradient is summed in f32 (in place for f32, in a sliding window of
    /// input lines for half, [`SlidingSums`]) and stored as `O`. The weight is rounded to bf16 for the bf16 input gradient,
    /// as in the forward.
    fn products<T: ConvOperand, O: HostFloat>(
        self,
        group: usize,
        path: Option<Path>,
    ) -> ConvGradientsWithBias<B> {
        let (geometry, [wants_input, wants_bias]) = (self.geometry, self.wants);
        let (input, weight, upstream) = (self.input, self.weight, self.upstream);
        let device = upstream.device();
        let c_out = geometry.channels_out;
        let (rows, positions, w_out) = (geometry.rows(), geometry.positions(), geometry.output[2]);
        // Read a group of output lines at a time (a half upstream of the f32 route converted
        // group by group: `group_rows`).
        let upstream = ClipReader::<T>::of(ConvInput::Tensor(upstream));
        let bias_gradient =
            wants_bias.then(|| bias_gradient(upstream.channel_sums(c_out, positions), &device));
        let weight = stored::<T, _, 5>(weight);
        let weight_transposed = wants_input.then(|| {
            T::prepare(
                Matrix::row_major(&weight, c_out, rows, rows).transposed(),
                path,
            )
        });
        let map = ColumnMap::new(geometry, group);
        let mut weight_gradient = filled(c_out * rows, 0f32);
        // The first group's product is written over the fresh sums, later ones added: added
        // to pages never written, it read the kernel's shared zero page first and then took a
        // second fault (a copy and a TLB shootdown) per page to write (all of the seed model's
        // page faults in a steady fp32 step).
        let mut update = Update::Overwrite;
        let (mut buffer, mut upstream_buffer) = (Vec::new(), Vec::new());
        let input_gradient = gradients_by_groups::<T, O>(
            ClipReader::<T>::of(input),
            &map,
            wants_input,
            |clip_input, clip, first, lines, columns_gradient| {
                let length = lines * w_out;
                let upstream_group = upstream.group_rows(
                    clip,
                    [c_out, positions],
                    (first * w_out, length),
                    &mut upstream_buffer,
                );
                let columns = ClipColumns {
                    clip: clip_input,
                    map: &map,
                    first,
                    lines,
                };
                T::times_columns_transposed(
                    path,
                    upstream_group,
                    columns,
                    &mut buffer,
                    &mut weight_gradient,
                    std::mem::replace(&mut update, Update::Add),
                );
                if let (Some(columns_gradient), Some(weight)) =
                    (columns_gradient, &weight_transposed)
                {
                    // Overwritten by the product: grown by the pool's threads, never cleared.
                    let more = (rows * length).saturating_sub(columns_gradient.len());
                    extend_filled(columns_gradient, more, 0f32);
                    columns_gradient.truncate(rows * length);
                    T::prepared_times(
                        path,
                        weight,
                        upstream_group,
                        columns_gradient,
                        Update::Overwrite,
                    );
                }
            },
        );
        let gradients = gradient_tensors(&geometry, weight_gradient, input_gradient, &device);
        (gradients, bias_gradient)
    }
}

/// A convolution's bias gradient `[c_out]` (f32) from its upstream's sums per output channel
/// ([`channel_sums`], [`ClipReader::channel_sums`]).
fn bias_gradient<B: Backend>(sums: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let c_out = sums.len();
    Tensor::from_data(TensorData::new(sums, [c_out]), device)
}

/// The weight gradient (f32, `[c_out, c_in, taps]` values) and, when made, the input gradient
/// (`T`) as tensors.
fn gradient_tensors<B: Backend, T: HostFloat>(
    geometry: &ConvGeometry,
    weight_gradient: Vec<f32>,
    input_gradient: Option<Vec<T>>,
    device: &B::Device,
) -> ConvGradients<B> {
    let weight_gradient = TensorData::new(weight_gradient, geometry.weight_shape());
    let input_gradient = input_gradient.map(|values| {
        let values = TensorData::new(values, geometry.input);
        Tensor::from_data(values, (device, T::dtype()))
    });
    (Tensor::from_data(weight_gradient, device), input_gradient)
}

/// The sums per channel of `values` (`[n, channels, positions]`), in f32 lanes flushed to f64,
/// in parallel over channels: a convolution's bias gradient, read from the values as they are
/// stored (a bf16 gradient was copied whole into f32 to be summed).
fn channel_sums<T: HostFloat>(values: &[T], channels: usize, positions: usize) -> Vec<f32> {
    (0..channels)
        .into_par_iter()
        .map(|channel| {
            values
                .chunks(positions)
                .skip(channel)
                .step_by(channels)
                .map(|row| lane_sum(row, |value| value))
                .sum::<f64>() as f32
        })
        .collect()
}

/// The gradients' loop, shared by both routes. For each clip and group of output lines,
/// `products(clip_input, clip, first, lines, columns_gradient)` adds the group's weight gradient
/// to its own sum and, when the input gradient is wanted, writes the group's column gradients
/// (f32, `[c_in·taps, lines·w']`), which this loop scatters back onto the clip's input gradient
/// (col2im adds up to `taps` contributions per value, in f32). Returns the input gradient
/// `[n, c_in, t, h, w]` as `O`: summed in place when `O` is f32, otherwise in f32 over a window
/// of input lines that slides with the groups ([`SlidingSums`]), each value rounded once (a
/// whole f32 input gradient was the largest buffer of the seed model's bf16 step, then a whole
/// clip of f32 sums at micro-batch 1).
fn gradients_by_groups<T: HostFloat, O: HostFloat>(
    mut input: ClipReader<'_, T>,
    map: &ColumnMap,
    wants_input: bool,
    mut products: impl FnMut(ClipValues<'_, T>, usize, usize, usize, Option<&mut Vec<f32>>),
) -> Option<Vec<O>> {
    let geometry = map.geometry;
    let [n, c_in, t, h, w] = geometry.input;
    let clip_len = c_in * t * h * w;
    let mut input_gradient = wants_input.then(|| filled(n * clip_len, O::from_f32(0.0)));
    let mut columns_gradient = Vec::new();
    // Made for the first clip whose gradient is half (its map is the same for every clip).
    let mut sliding: Option<SlidingSums> = None;
    for clip in 0..n {
        let clip_input = input.clip_values(clip, clip_len);
        let Some(gradient) = input_gradient.as_mut() else {
            for (first, lines) in map.groups() {
                products(clip_input, clip, first, lines, None);
            }
            continue;
        };
        let target = &mut gradient[clip * clip_len..][..clip_len];
        if let Some(sums) = O::as_f32_mut(target) {
            for (first, lines) in map.groups() {
                products(clip_input, clip, first, lines, Some(&mut columns_gradient));
                col2im(&columns_gradient, map, (first, lines), sums, (0, t * h));
            }
            continue;
        }
        let sliding = sliding.get_or_insert_with(|| SlidingSums::new(map));
        for index in 0..sliding.group_count() {
            let (first, lines) = sliding.group(index);
            products(clip_input, clip, first, lines, Some(&mut columns_gradient));
            sliding.add(index, &columns_gradient, map, target);
        }
        sliding.finish(map, target);
    }
    input_gradient
}

#[cfg(test)]
mod tests;
