//! A 3-D convolution's weight and input gradients as wide matrix products, for the CPU backend.
//!
//! The backend's own route (what [`super::conv3d::VideoConv3d::gradients`] falls back to) takes
//! the weight gradient as a convolution of each clip with its output gradient used as the
//! kernel: a gemm whose output has as few columns as the kernel has taps (147 for the seed's
//! first convolution, 9 for its second) and whose inner dimension is the whole clip, and the
//! input gradient as a transposed convolution whose col2im runs on one thread. Here, for a few
//! output frames of one clip at a time:
//!
//! - `columns [c_in·taps × frames·h'·w']` is the im2col of the input (built in parallel, one row per
//!   input channel and tap), at most [`COLUMN_BYTES`] at a time;
//! - the weight gradient accumulates `upstream [c_out × frames·h'·w'] · columnsᵀ`, a gemm with
//!   `c_out` rows, `c_in·taps` columns and a long inner dimension;
//! - the input gradient is `weightᵀ [c_in·taps × c_out] · upstream`, scattered back onto the
//!   input (col2im) in parallel over input channels, each of which owns its own plane.
//!
//! Both gemms are the backend's `matmul` (gemm's multi-threaded kernels on burn-flex). The
//! columns of a group are the only transient buffer.

use burn::prelude::*;
use burn::tensor::{FloatDType, TensorData};
use rayon::prelude::*;

use crate::cpu_kernels::{cast, floats};

/// The most bytes of im2col columns held at once (a group of output frames of one clip).
pub const COLUMN_BYTES: usize = 32 << 20;

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
    fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    fn rows(&self) -> usize {
        self.input[1] * self.taps()
    }

    fn frame_positions(&self) -> usize {
        self.output[1] * self.output[2]
    }

    /// Output frames per group, so that a group's columns stay within [`COLUMN_BYTES`].
    fn frames_per_group(&self) -> usize {
        let frame_bytes = self.rows() * self.frame_positions() * 4;
        (COLUMN_BYTES / frame_bytes.max(1)).clamp(1, self.output[0])
    }
}

/// A convolution's weight gradient and, when asked for, its input gradient.
pub(crate) type ConvGradients<B> = (Tensor<B, 5>, Option<Tensor<B, 5>>);

/// The weight gradient `[c_out, c_in, kt, kh, kw]` (f32) and, when `wants_input`, the input
/// gradient `[n, c_in, t, h, w]` (f32) of a convolution with `weight` for `upstream` (the
/// gradient of its output, `[n, c_out, t', h', w']`). The bias gradient is the caller's (a sum).
pub fn conv3d_gradients<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    upstream: Tensor<B, 5>,
    geometry: ConvGeometry,
    wants_input: bool,
) -> ConvGradients<B> {
    let group = geometry.frames_per_group();
    gradients_in_groups(input, weight, upstream, geometry, wants_input, group)
}

/// [`conv3d_gradients`] with `group` output frames per im2col buffer.
fn gradients_in_groups<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    upstream: Tensor<B, 5>,
    geometry: ConvGeometry,
    wants_input: bool,
    group: usize,
) -> ConvGradients<B> {
    let device = input.device();
    let [n, c_in, t, h, w] = geometry.input;
    let c_out = geometry.channels_out;
    let t_out = geometry.output[0];
    let rows = geometry.rows();
    let frame_positions = geometry.frame_positions();

    let input = floats(input);
    let upstream = cast(upstream, FloatDType::F32).reshape([n, c_out, t_out * frame_positions]);
    let weight_matrix = weight.cast(FloatDType::F32).reshape([c_out, rows]);
    let weight_transposed = wants_input.then(|| weight_matrix.clone().transpose());

    let clip_len = c_in * t * h * w;
    let mut weight_gradient: Option<Tensor<B, 2>> = None;
    let mut input_gradient = wants_input.then(|| vec![0f32; n * clip_len]);
    for clip in 0..n {
        let clip_input = &input[clip * clip_len..(clip + 1) * clip_len];
        let mut first = 0;
        while first < t_out {
            let frames = group.min(t_out - first);
            let columns_len = rows * frames * frame_positions;
            let mut columns = vec![0f32; columns_len];
            im2col(clip_input, &geometry, first, frames, &mut columns);
            let columns = Tensor::<B, 2>::from_data(
                TensorData::new(columns, [rows, frames * frame_positions]),
                &device,
            );
            let upstream_group = upstream
                .clone()
                .slice([
                    clip..clip + 1,
                    0..c_out,
                    first * frame_positions..(first + frames) * frame_positions,
                ])
                .reshape([c_out, frames * frame_positions]);
            let partial = upstream_group.clone().matmul(columns.transpose());
            weight_gradient = Some(match weight_gradient {
                Some(sum) => sum + partial,
                None => partial,
            });
            if let (Some(gradient), Some(weight_transposed)) =
                (input_gradient.as_mut(), weight_transposed.as_ref())
            {
                let columns_gradient = weight_transposed.clone().matmul(upstream_group);
                let columns_gradient = columns_gradient
                    .into_data()
                    .into_vec::<f32>()
                    .expect("an f32 product");
                col2im(
                    &columns_gradient,
                    &geometry,
                    first,
                    frames,
                    &mut gradient[clip * clip_len..(clip + 1) * clip_len],
                );
            }
            first += frames;
        }
    }
    let [kt, kh, kw] = geometry.kernel;
    let weight_gradient = weight_gradient
        .expect("a convolution has at least one output frame")
        .reshape([c_out, c_in, kt, kh, kw]);
    let input_gradient = input_gradient
        .map(|values| Tensor::from_data(TensorData::new(values, [n, c_in, t, h, w]), &device));
    (weight_gradient, input_gradient)
}

/// The input position read by output index `out` at kernel offset `tap` along one axis, if it
/// is inside the input (not padding).
fn source(out: usize, tap: usize, stride: usize, padding: usize, size: usize) -> Option<usize> {
    (out * stride + tap)
        .checked_sub(padding)
        .filter(|&index| index < size)
}

/// Where one kernel tap reads, axis by axis, for output frames `first..first + frames`: the
/// input frame, row and column of each output one (`None` in the padding). Worked out once per
/// column row, not once per value.
struct TapSources {
    frames: Vec<Option<usize>>,
    rows: Vec<Option<usize>>,
    columns: Vec<Option<usize>>,
}

impl ConvGeometry {
    fn tap_sources(&self, tap: usize, first: usize, frames: usize) -> TapSources {
        let [_, _, t, h, w] = self.input;
        let [_, kh, kw] = self.kernel;
        let offsets = [tap / (kh * kw), (tap / kw) % kh, tap % kw];
        let axis = |index: usize, outputs: std::ops::Range<usize>, size: usize| {
            outputs
                .map(|out| {
                    source(
                        out,
                        offsets[index],
                        self.stride[index],
                        self.padding[index],
                        size,
                    )
                })
                .collect()
        };
        TapSources {
            frames: axis(0, first..first + frames, t),
            rows: axis(1, 0..self.output[1], h),
            columns: axis(2, 0..self.output[2], w),
        }
    }

    /// Values of one input frame, `h·w`.
    fn frame_len(&self) -> usize {
        self.input[3] * self.input[4]
    }

    /// Values of one column row for `frames` output frames, `frames·h'·w'`.
    fn row_len(&self, frames: usize) -> usize {
        frames * self.output[1] * self.output[2]
    }
}

/// Writes the im2col columns of output frames `first..first + frames` of one clip
/// (`clip: [c_in, t, h, w]`) into `columns: [c_in·taps, frames·h'·w']`; padding reads 0.
fn im2col(clip: &[f32], geometry: &ConvGeometry, first: usize, frames: usize, columns: &mut [f32]) {
    let (t, taps, frame_len) = (geometry.input[2], geometry.taps(), geometry.frame_len());
    let (w, out_frame_len) = (geometry.input[4], geometry.row_len(1));
    columns
        .par_chunks_mut(geometry.row_len(frames))
        .enumerate()
        .for_each(|(row, out)| {
            let (channel, tap) = (row / taps, row % taps);
            let sources = geometry.tap_sources(tap, first, frames);
            for (out, frame) in out.chunks_mut(out_frame_len).zip(&sources.frames) {
                let Some(frame) = frame else {
                    out.fill(0.0);
                    continue;
                };
                let plane = &clip[(channel * t + frame) * frame_len..][..frame_len];
                for (out, row) in out.chunks_mut(geometry.output[2]).zip(&sources.rows) {
                    match row {
                        Some(row) => {
                            let line = &plane[row * w..][..w];
                            for (value, column) in out.iter_mut().zip(&sources.columns) {
                                *value = column.map_or(0.0, |column| line[column]);
                            }
                        }
                        None => out.fill(0.0),
                    }
                }
            }
        });
}

/// Adds the column gradients `columns: [c_in·taps, frames·h'·w']` of output frames
/// `first..first + frames` back onto the input positions they were read from
/// (`clip: [c_in, t, h, w]`), in parallel over input channels.
fn col2im(columns: &[f32], geometry: &ConvGeometry, first: usize, frames: usize, clip: &mut [f32]) {
    let (t, taps, frame_len) = (geometry.input[2], geometry.taps(), geometry.frame_len());
    let (w, row_len) = (geometry.input[4], geometry.row_len(frames));
    let sources: Vec<TapSources> = (0..taps)
        .map(|tap| geometry.tap_sources(tap, first, frames))
        .collect();
    clip.par_chunks_mut(t * frame_len)
        .enumerate()
        .for_each(|(channel, volume)| {
            for (tap, sources) in sources.iter().enumerate() {
                let row = &columns[(channel * taps + tap) * row_len..][..row_len];
                for (values, frame) in row.chunks(geometry.row_len(1)).zip(&sources.frames) {
                    let Some(frame) = frame else { continue };
                    let plane = &mut volume[frame * frame_len..][..frame_len];
                    for (values, row) in values.chunks(geometry.output[2]).zip(&sources.rows) {
                        let Some(row) = row else { continue };
                        let line = &mut plane[row * w..][..w];
                        for (value, column) in values.iter().zip(&sources.columns) {
                            if let Some(column) = column {
                                line[*column] += value;
                            }
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::{Distribution, Tolerance};

    /// Output frames taken one at a time, two at a time or all together give the same gradients
    /// (a temporal kernel of 3 with padding reads input frames shared between groups). The
    /// gradients themselves are checked against Burn's `Conv3d` in `conv3d`'s tests.
    #[test]
    fn frame_groups_do_not_change_the_gradients() {
        let device = Default::default();
        let geometry = ConvGeometry {
            input: [2, 3, 5, 9, 8],
            channels_out: 4,
            kernel: [3, 3, 2],
            stride: [1, 2, 2],
            padding: [1, 1, 0],
            output: [5, 5, 4],
        };
        let input =
            Tensor::<TestBackend, 5>::random([2, 3, 5, 9, 8], Distribution::Default, &device);
        let weight =
            Tensor::<TestBackend, 5>::random([4, 3, 3, 3, 2], Distribution::Default, &device);
        let upstream =
            Tensor::<TestBackend, 5>::random([2, 4, 5, 5, 4], Distribution::Default, &device);
        let run = |group| {
            gradients_in_groups(
                input.clone(),
                weight.clone(),
                upstream.clone(),
                geometry,
                true,
                group,
            )
        };
        let (weight_all, input_all) = run(5);
        for group in [1, 2] {
            let (weight_grouped, input_grouped) = run(group);
            let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
            weight_grouped
                .to_data()
                .assert_approx_eq::<f32>(&weight_all.to_data(), tolerance);
            input_grouped
                .unwrap()
                .to_data()
                .assert_approx_eq::<f32>(&input_all.clone().unwrap().to_data(), tolerance);
        }
    }
}
