//! BatchNorm + ReLU with training statistics on host slices, for the CPU backend: the stem's
//! `relu(batch_norm(x))` forward and backward as a few fused passes split across the compute
//! pool. Burn's composition (`batch_norm.rs`, the reference) takes about ten element-wise passes
//! each way over the stem's largest activations, most of them on one thread.
//!
//! Layout `[n, c, l]`: a channel's values are `n` contiguous segments of `l`. Reductions run in
//! parallel over channels, with f32 lanes flushed into f64 every [`BLOCK`] values; element-wise
//! passes run in parallel over segments. Values are f32, bf16 or f16 ([`HostFloat`]): each is
//! widened to f32 as it is read and rounded once as it is written, so a half-precision
//! activation is never copied whole into f32.

use rayon::prelude::*;

use crate::cpu_kernels::{HostFloat, filled};
use crate::layers::batch_norm::ReluGate;
use crate::quantize::HostCodes;

/// Values a lane accumulates in f32 before its sum moves into an f64.
const BLOCK: usize = 4096;

/// Lanes of the reductions: two AVX2 registers of f32.
const LANES: usize = 16;

/// Per-channel statistics and the affine map BatchNorm + ReLU (or BatchNorm alone,
/// [`Self::without_relu`]) applies with them.
#[derive(Debug, Clone)]
pub(crate) struct ChannelNorm {
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// Biased batch variance per channel.
    pub var: Vec<f32>,
    /// `1 / √(var + ε)`.
    inverse_std: Vec<f32>,
    /// `γ / √(var + ε)`: the output is `relu(x · scale + shift)`.
    scale: Vec<f32>,
    /// `β − mean · scale`.
    shift: Vec<f32>,
    /// Whether a ReLU follows (the stems, a residual block's first BatchNorm); without it the
    /// output is `x · scale + shift` and the backward passes every gradient.
    relu: bool,
}

impl ChannelNorm {
    /// The batch statistics of `x: [n, c, l]` (two passes: the mean, then the squared
    /// deviations from it) and the map for `gamma`, `beta` and `epsilon`.
    pub fn of<T: HostFloat, R: Rows<T> + ?Sized>(
        x: &R,
        [n, c, l]: [usize; 3],
        gamma: &[f32],
        beta: &[f32],
        epsilon: f64,
    ) -> Self {
        let count = (n * l) as f64;
        let rows = |channel: usize| (0..n).map(move |i| i * c + channel);
        let (mean, var): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|channel| {
                let mean = rows(channel)
                    .map(|row| x.with_row(row, l, |segment| lane_sum(segment, |value| value)))
                    .sum::<f64>()
                    / count;
                let centre = mean as f32;
                let var = rows(channel)
                    .map(|row| {
                        x.with_row(row, l, |segment| {
                            lane_sum(segment, |value| (value - centre) * (value - centre))
                        })
                    })
                    .sum::<f64>()
                    / count;
                (mean as f32, var as f32)
            })
            .unzip();
        Self::with_statistics(mean, var, gamma, beta, epsilon)
    }

    /// The map for given statistics per channel (the running averages, in evaluation).
    pub fn with_statistics(
        mean: Vec<f32>,
        var: Vec<f32>,
        gamma: &[f32],
        beta: &[f32],
        epsilon: f64,
    ) -> Self {
        let inverse_std: Vec<f32> = var
            .iter()
            .map(|&var| (1.0 / (var as f64 + epsilon).sqrt()) as f32)
            .collect();
        let scale: Vec<f32> = gamma.iter().zip(&inverse_std).map(|(g, s)| g * s).collect();
        let shift = (0..mean.len())
            .map(|ch| beta[ch] - mean[ch] * scale[ch])
            .collect();
        Self {
            mean,
            var,
            inverse_std,
            scale,
            shift,
            relu: true,
        }
    }

    /// The same map without the ReLU: BatchNorm alone.
    pub fn without_relu(self) -> Self {
        Self {
            relu: false,
            ..self
        }
    }

    /// `relu(x · scale + shift)` (or `x · scale + shift`) over `x: [n, c, l]`, into a new buffer (the step's input is
    /// kept for its backward, so it is read where it is stored). NaN stays NaN, as through
    /// Burn's `relu`.
    pub fn forward<T: HostFloat>(&self, x: &[T], dims: [usize; 3]) -> Vec<T> {
        let mut output = filled(x.len(), T::from_f32(0.0));
        self.forward_into(x, &mut output, dims);
        output
    }

    /// [`Self::forward`] into `output`; with `dims` `[1, c, l]`, of one clip (a convolution's
    /// backward making this step's output again from its input, clip by clip: the same values,
    /// bit for bit).
    pub fn forward_into<T: HostFloat>(&self, x: &[T], output: &mut [T], [_, c, l]: [usize; 3]) {
        output
            .par_chunks_mut(l)
            .zip(x.par_chunks(l))
            .enumerate()
            .for_each(|(row, (output, x))| {
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let (scale, shift) = (self.scale[row % c], self.shift[row % c]);
                        if self.relu {
                            for (output, &value) in output.iter_mut().zip(x) {
                                *output = affine::<T, true>(value, scale, shift);
                            }
                        } else {
                            for (output, &value) in output.iter_mut().zip(x) {
                                *output = affine::<T, false>(value, scale, shift);
                            }
                        }
                    },
                )
            });
    }

    /// [`Self::forward`] written over `x` (whose values are then no longer needed: a step whose
    /// input is kept compressed, or a clip restored from its codes).
    pub fn forward_in_place<T: HostFloat>(&self, x: &mut [T], [_, c, l]: [usize; 3]) {
        x.par_chunks_mut(l).enumerate().for_each(|(row, values)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    let (scale, shift) = (self.scale[row % c], self.shift[row % c]);
                    if self.relu {
                        for value in values.iter_mut() {
                            *value = affine::<T, true>(*value, scale, shift);
                        }
                    } else {
                        for value in values.iter_mut() {
                            *value = affine::<T, false>(*value, scale, shift);
                        }
                    }
                },
            )
        });
    }

    /// The sizes of one clip of `len` values: `[1, c, len / c]`.
    pub fn clip_dims(&self, len: usize) -> [usize; 3] {
        let c = self.scale.len();
        [1, c, len / c]
    }

    /// The gradients of `relu(batch_norm(x))` for `upstream`, the gradient of its output
    /// (`[n, c, l]` both): returns γ's and β's, and when `wants_input` overwrites `upstream`
    /// with `x`'s, `γ / σ · (g − mean(g) − x̂ · mean(g · x̂))` (means over the batch and
    /// positions, `g` the upstream gradient where the ReLU passed it, 0 elsewhere; the gate is
    /// recomputed from `x` or already applied to `upstream`, per `gate`; without a ReLU, `g` is
    /// the upstream gradient everywhere).
    pub fn backward<T: HostFloat, R: Rows<T> + ?Sized>(
        &self,
        x: &R,
        upstream: &mut [T],
        [n, c, l]: [usize; 3],
        wants_input: bool,
        gate: ReluGate,
    ) -> (Vec<f32>, Vec<f32>) {
        let gated = self.relu && gate == ReluGate::FromInput;
        let upstream_ref: &[T] = upstream;
        // Per channel: Σ g (β's gradient) and Σ g · x̂ (γ's).
        let (beta_gradient, gamma_gradient): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, inverse_std) = (self.mean[ch], self.inverse_std[ch]);
                let (scale, shift) = (self.scale[ch], self.shift[ch]);
                let (mut sum, mut product) = (0f64, 0f64);
                for i in 0..n {
                    let row = i * c + ch;
                    let gs = &upstream_ref[row * l..][..l];
                    let (s, p) = x.with_row(row, l, |xs| {
                        lane_sum_pair(xs, gs, |x, g| {
                            let g = passed(gated, x, g, scale, shift);
                            (g, g * (x - mean) * inverse_std)
                        })
                    });
                    sum += s;
                    product += p;
                }
                (sum as f32, product as f32)
            })
            .unzip();
        if wants_input {
            let count = (n * l) as f32;
            upstream
                .par_chunks_mut(l)
                .enumerate()
                .for_each(|(row, gs)| {
                    crate::cpu_kernels::vectorized(
                        #[inline(always)]
                        || {
                            let ch = row % c;
                            let row_map = InputGradientRow {
                                mean: self.mean[ch],
                                inverse_std: self.inverse_std[ch],
                                scale: self.scale[ch],
                                shift: self.shift[ch],
                                mean_g: beta_gradient[ch] / count,
                                mean_gx: gamma_gradient[ch] / count,
                            };
                            // Inlined too: a closure is a function of its own, built for
                            // the baseline unless inlined into the AVX-512 build.
                            x.with_row(
                                row,
                                l,
                                #[inline(always)]
                                |xs| {
                                    if gated {
                                        row_map.write::<T, true>(gs, xs);
                                    } else {
                                        row_map.write::<T, false>(gs, xs);
                                    }
                                },
                            )
                        },
                    )
                });
        }
        (gamma_gradient, beta_gradient)
    }
}

/// The upstream gradient `g` where the ReLU passed it (`x · scale + shift > 0`, NaN closing the
/// gate), 0 elsewhere; `g` everywhere when the gradient is not `gated` here.
#[inline(always)]
fn passed(gated: bool, x: f32, g: f32, scale: f32, shift: f32) -> f32 {
    let opens = x * scale + shift > 0.0;
    if gated && !opens { 0.0 } else { g }
}

/// One row's input gradient, `scale · (g − mean(g) − x̂ · mean(g · x̂))`, with its channel's
/// numbers read once: indexed per value inside the loop, they kept the loop one value at a
/// time (a fifth of the seed model's bf16 step at stop 42).
struct InputGradientRow {
    mean: f32,
    inverse_std: f32,
    scale: f32,
    shift: f32,
    mean_g: f32,
    mean_gx: f32,
}

impl InputGradientRow {
    /// Overwrites the upstream gradients `gs` with the input's, `xs` the row's input.
    #[inline(always)]
    fn write<T: HostFloat, const GATED: bool>(&self, gs: &mut [T], xs: &[T]) {
        for (gradient, &x) in gs.iter_mut().zip(xs) {
            let x = x.to_f32();
            let normalized = (x - self.mean) * self.inverse_std;
            let g = passed(GATED, x, gradient.to_f32(), self.scale, self.shift);
            *gradient = T::from_f32(self.scale * (g - self.mean_g - normalized * self.mean_gx));
        }
    }
}

/// The input of BatchNorm + ReLU, `[n, c, l]`, row by row (a row is one item's `l` values of
/// one channel) as the kernels read it: a slice, or a compressed input restored a row at a time.
pub(crate) trait Rows<T>: Sync {
    /// `f` of row `row`, `l` values long.
    fn with_row<V>(&self, row: usize, l: usize, f: impl FnOnce(&[T]) -> V) -> V;
}

// `with_row` is always inlined: the kernels call it inside [`crate::cpu_kernels::vectorized`],
// and a copy of its own (with the caller's closure inlined into it) was built for the baseline
// CPU — the bf16 input gradient's loop ran on SSE2, 4 % of the seed model's bf16 step.
impl<T: HostFloat> Rows<T> for [T] {
    #[inline(always)]
    fn with_row<V>(&self, row: usize, l: usize, f: impl FnOnce(&[T]) -> V) -> V {
        f(&self[row * l..][..l])
    }
}

impl<T: HostFloat> Rows<T> for HostCodes {
    /// Restored into a buffer of the thread's, reused row after row (a fresh one per row left
    /// glibc's per-thread heaps holding the freed rows resident).
    #[inline(always)]
    fn with_row<V>(&self, row: usize, l: usize, f: impl FnOnce(&[T]) -> V) -> V {
        thread_local! {
            static ROW: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        ROW.with_borrow_mut(|buffer| {
            let words = (l * std::mem::size_of::<T>()).div_ceil(4);
            buffer.resize(words, 0);
            let values: &mut [T] = &mut bytemuck::cast_slice_mut(buffer.as_mut_slice())[..l];
            self.restore_range(row * l, values);
            f(values)
        })
    }
}

/// `relu(x · scale + shift)` when `RELU`, else `x · scale + shift`, computed in f32 and stored
/// as `T` (NaN stays NaN).
#[inline(always)]
fn affine<T: HostFloat, const RELU: bool>(x: T, scale: f32, shift: f32) -> T {
    let y = x.to_f32() * scale + shift;
    T::from_f32(if RELU && y <= 0.0 { 0.0 } else { y })
}

/// `Σ f(v)` over `values`, in f32 lanes flushed into f64 every [`BLOCK`] values.
pub(crate) fn lane_sum<T: HostFloat>(values: &[T], f: impl Fn(f32) -> f32) -> f64 {
    crate::cpu_kernels::vectorized(
        #[inline(always)]
        || lane_sum_as_built(values, f),
    )
}

/// [`lane_sum`] as the compiler builds it for the caller's instructions. Plain loops: written
/// as `map(…).sum()`, the loop over a block went into a copy of `Iterator::fold` of its own,
/// built for the baseline CPU (BatchNorm's statistics on SSE2, 4 % of the seed model's bf16
/// step).
#[inline(always)]
fn lane_sum_as_built<T: HostFloat>(values: &[T], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in values.chunks(BLOCK) {
        let mut lanes = [0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        for &value in chunks.remainder() {
            total += f64::from(f(value.to_f32()));
        }
        for chunk in chunks {
            for (lane, &value) in lanes.iter_mut().zip(chunk) {
                *lane += f(value.to_f32());
            }
        }
        for lane in lanes {
            total += f64::from(lane);
        }
    }
    total
}

/// The two sums `Σ f(a, b).0` and `Σ f(a, b).1` over pairs of `a` and `b`, as [`lane_sum`].
fn lane_sum_pair<T: HostFloat>(a: &[T], b: &[T], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    crate::cpu_kernels::vectorized(
        #[inline(always)]
        || lane_sum_pair_as_built(a, b, f),
    )
}

/// [`lane_sum_pair`] as the compiler builds it for the caller's instructions.
#[inline(always)]
fn lane_sum_pair_as_built<T: HostFloat>(
    a: &[T],
    b: &[T],
    f: impl Fn(f32, f32) -> (f32, f32),
) -> (f64, f64) {
    let mut total = (0f64, 0f64);
    for (a, b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut first, mut second) = ([0f32; LANES], [0f32; LANES]);
        let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        for (&a, &b) in chunks_a.remainder().iter().zip(chunks_b.remainder()) {
            let (x, y) = f(a.to_f32(), b.to_f32());
            total.0 += x as f64;
            total.1 += y as f64;
        }
        for (a, b) in chunks_a.zip(chunks_b) {
            for lane in 0..LANES {
                let (x, y) = f(a[lane].to_f32(), b[lane].to_f32());
                first[lane] += x;
                second[lane] += y;
            }
        }
        for (first, second) in first.into_iter().zip(second) {
            total.0 += f64::from(first);
            total.1 += f64::from(second);
        }
    }
    total
}
