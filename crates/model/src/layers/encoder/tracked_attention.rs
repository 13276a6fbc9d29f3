//! Multi-head attention of a block of query rows on the CPU — scores, softmax, attention dropout
//! and the weighted sum of values — as one op of Burn's autodiff graph (recorded through
//! `crate::tracked_ops`, decision 0016), computed head by head over the compute pool.
//!
//! Burn's composition (`EncoderBlock::attention_rows` on other backends) slices and swaps the
//! projected tokens into `[batch, heads, tokens, head_dim]` copies, multiplies through burn-flex's
//! batched matmul, and takes the scale, softmax (through an f64 cast in half precision) and
//! dropout as separate single-threaded ops, each keeping its own `[batch, heads, rows, tokens]`
//! tensor for backward. The op reads queries, keys and values where the projection stored them,
//! keeps the projection's output and the softmax's probabilities (in the activation's dtype)
//! and nothing else: the dropout mask is redrawn from its seed in backward
//! (`dropout::DropMask`, the mask `dropout` would have drawn, element for element).
//! Products run in f32 (half-precision values widened per head). The per-element helpers are
//! inlined into the tasks' AVX-512 build (`cpu_kernels::vectorized`): as functions of their
//! own they ran as built for the baseline, the softmax and the dropout's draws 12 % of ViViT's
//! bf16 step.

use std::ops::Range;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16, f16};
use rayon::prelude::*;

use crate::cpu_kernels::{HostFloat, cast, filled, host_float, stored};
use crate::fast_math::exp;
use crate::gemm_bf16::{Matrix, Update};
use crate::gemm_f32::gemm;
use crate::layers::dropout::DropMask;
use crate::tracked_ops::{
    KeptTensor, flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// The sizes of one attention call: `qkv` is `[batch, tokens, 3·dim]` (queries, keys, values
/// side by side), the queries taken are `rows`, and each of `heads` heads reads `dim / heads`
/// columns of each.
#[derive(Clone, Debug)]
pub(super) struct Geometry {
    pub batch: usize,
    pub tokens: usize,
    pub dim: usize,
    pub heads: usize,
    pub rows: Range<usize>,
}

impl Geometry {
    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// `(batch, head)` pairs: the tasks.
    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// One pair's probabilities: `rows × tokens`.
    fn pair_values(&self) -> usize {
        self.rows.len() * self.tokens
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim() as f32).sqrt()
    }

    /// Pair `pair`'s (a batch and a head) query rows, keys and values, in f32.
    #[inline(always)]
    fn operands<T: HostFloat>(&self, qkv: &[T], pair: usize) -> [Vec<f32>; 3] {
        let (batch, head) = (pair / self.heads, pair % self.heads);
        [
            self.gather(qkv, [batch, 0, head], self.rows.clone()),
            self.gather(qkv, [batch, 1, head], 0..self.tokens),
            self.gather(qkv, [batch, 2, head], 0..self.tokens),
        ]
    }

    /// Rows `range` of batch `batch`'s `part` (0 queries, 1 keys, 2 values) for `head`:
    /// `range.len() × head_dim` in f32.
    #[inline(always)]
    fn gather<T: HostFloat>(
        &self,
        qkv: &[T],
        [batch, part, head]: [usize; 3],
        range: Range<usize>,
    ) -> Vec<f32> {
        let (width, head_dim) = (3 * self.dim, self.head_dim());
        let first = part * self.dim + head * head_dim;
        let mut values = Vec::with_capacity(range.len() * head_dim);
        for token in range {
            let start = (batch * self.tokens + token) * width + first;
            values.extend(qkv[start..start + head_dim].iter().map(|v| v.to_f32()));
        }
        values
    }
}

/// The attention context `[batch, rows, dim]` of `qkv` as one autodiff op on the host, when
/// `qkv` is a burn-flex tensor under autodiff of f32, bf16 or f16; otherwise `qkv` back (the
/// caller composes Burn's ops). `mask`: the attention dropout, already drawn.
pub(super) fn attention_tracked<B: Backend>(
    qkv: Tensor<B, 3>,
    geometry: Geometry,
    mask: Option<DropMask>,
) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    if !host_float(qkv.dtype()) {
        return Err(qkv);
    }
    let Some(tracked) = tracked_host(qkv.clone()) else {
        return Err(qkv);
    };
    let input = host::<3>(tracked.primitive.clone());
    // An untracked forward (a recomputed segment's) keeps nothing.
    let keep = !tracked.node.requirement.is_none();
    let (output, probabilities) = forward_on_host(input.clone(), &geometry, mask, keep);
    let output = record(AttentionOnHost, [&tracked], flex(output), || {
        AttentionState {
            qkv: KeptTensor::keep(flex(input)),
            probabilities: KeptTensor::keep(probabilities.expect("a tracked input keeps them")),
            geometry,
            mask,
        }
    });
    Ok(from_tracked_host(output))
}

/// The attention context of a plain burn-flex tensor (evaluation: no dropout), or `qkv` back
/// when its dtype has no host pass.
pub(super) fn attention_on_host<B: Backend>(
    qkv: Tensor<B, 3>,
    geometry: Geometry,
) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    if !host_float(qkv.dtype()) {
        return Err(qkv);
    }
    Ok(forward_on_host(qkv, &geometry, None, false).0)
}

/// The context in `qkv`'s dtype and, when `keep`, the probabilities (`[pairs · rows · tokens]`,
/// in that dtype).
fn forward_on_host<B: Backend>(
    qkv: Tensor<B, 3>,
    geometry: &Geometry,
    mask: Option<DropMask>,
    keep: bool,
) -> (Tensor<B, 3>, Option<FlexTensor>) {
    match qkv.dtype() {
        DType::BF16 => forward_as::<bf16, B>(qkv, geometry, mask, keep),
        DType::F16 => forward_as::<f16, B>(qkv, geometry, mask, keep),
        _ => forward_as::<f32, B>(qkv, geometry, mask, keep),
    }
}

fn forward_as<T: HostFloat, B: Backend>(
    qkv: Tensor<B, 3>,
    geometry: &Geometry,
    mask: Option<DropMask>,
    keep: bool,
) -> (Tensor<B, 3>, Option<FlexTensor>) {
    let device = qkv.device();
    let qkv = stored::<T, _, 3>(qkv);
    let (rows, tokens, head_dim) = (geometry.rows.len(), geometry.tokens, geometry.head_dim());
    let pair_values = geometry.pair_values();
    let mut probabilities = filled(
        if keep {
            geometry.pairs() * pair_values
        } else {
            0
        },
        T::from_f32(0.0),
    );
    let mut kept: Vec<&mut [T]> = if keep {
        probabilities.chunks_mut(pair_values.max(1)).collect()
    } else {
        (0..geometry.pairs()).map(|_| &mut [][..]).collect()
    };
    // One pair's context (`rows × head_dim`, f32) per task, placed into the output after.
    let contexts: Vec<Vec<f32>> = kept
        .par_iter_mut()
        .enumerate()
        .map(|(pair, kept)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    let [query, key, value] = geometry.operands(&qkv, pair);
                    let mut weights = vec![0f32; pair_values];
                    gemm(
                        Matrix::row_major(&query, rows, head_dim, head_dim),
                        Matrix::row_major(&key, tokens, head_dim, head_dim).transposed(),
                        &mut weights,
                        tokens,
                        Update::Overwrite,
                    );
                    for row in weights.chunks_mut(tokens.max(1)) {
                        softmax_row(row, geometry.scale());
                    }
                    if !kept.is_empty() {
                        kept.iter_mut()
                            .zip(&weights)
                            .for_each(|(kept, &value)| *kept = T::from_f32(value));
                    }
                    if let Some(mask) = &mask {
                        apply_factors(
                            &mut weights,
                            &mask_factors(mask, pair * pair_values, pair_values),
                        );
                    }
                    let mut context = vec![0f32; rows * head_dim];
                    gemm(
                        Matrix::row_major(&weights, rows, tokens, tokens),
                        Matrix::row_major(&value, tokens, head_dim, head_dim),
                        &mut context,
                        head_dim,
                        Update::Overwrite,
                    );
                    context
                },
            )
        })
        .collect();
    let dim = geometry.dim;
    let mut output = filled(geometry.batch * rows * dim, T::from_f32(0.0));
    output
        .par_chunks_mut((rows * dim).max(1))
        .enumerate()
        .for_each(|(batch, output)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    for head in 0..geometry.heads {
                        let context = &contexts[batch * geometry.heads + head];
                        for (row, values) in context.chunks(head_dim).enumerate() {
                            let start = row * dim + head * head_dim;
                            output[start..start + head_dim]
                                .iter_mut()
                                .zip(values)
                                .for_each(|(output, &value)| *output = T::from_f32(value));
                        }
                    }
                },
            )
        });
    let output = Tensor::from_data(
        TensorData::new(output, [geometry.batch, rows, dim]),
        (&device, T::dtype()),
    );
    let probabilities = keep.then(|| {
        let length = probabilities.len();
        flex(Tensor::<Flex, 1>::from_data(
            TensorData::new(probabilities, [length]),
            (&Default::default(), T::dtype()),
        ))
    });
    (output, probabilities)
}

/// `row ← softmax(row · scale)`, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32], scale: f32) {
    let largest = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * scale;
    let mut sum = 0f32;
    for value in row.iter_mut() {
        *value = exp(*value * scale - largest);
        sum += *value;
    }
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|value| *value *= inverse);
}

/// `mask`'s factors (0 or `1 / (1 − p)`) for the `count` elements from index `first` on.
#[inline(always)]
fn mask_factors(mask: &DropMask, first: usize, count: usize) -> Vec<f32> {
    let mut factors = vec![1.0; count];
    apply_mask(&mut factors, mask, first);
    factors
}

/// `values[i] ← values[i] · (0 or 1 / (1 − p))` by `mask` at index `first + i`.
#[inline(always)]
fn apply_mask(values: &mut [f32], mask: &DropMask, first: usize) {
    let scale = mask.scale as f32;
    for (index, value) in values.iter_mut().enumerate() {
        *value *= if mask.dropped(first + index) {
            0.0
        } else {
            scale
        };
    }
}

/// `values[i] ← values[i] · factors[i]`.
#[inline(always)]
fn apply_factors(values: &mut [f32], factors: &[f32]) {
    values
        .iter_mut()
        .zip(factors)
        .for_each(|(value, factor)| *value *= factor);
}

/// What the backward reads: the projected tokens, the softmax's probabilities, the sizes and
/// the dropout mask.
#[derive(Clone, Debug)]
struct AttentionState {
    qkv: KeptTensor,
    probabilities: KeptTensor,
    geometry: Geometry,
    mask: Option<DropMask>,
}

/// The op; its parent is the projected tokens `qkv`.
#[derive(Debug)]
struct AttentionOnHost;

impl Backward<Flex, 1> for AttentionOnHost {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [qkv_node, ..] = parent_ids(&ops);
        if qkv_node.is_none() {
            return;
        }
        let state = ops.state;
        let qkv = host::<3>(state.qkv.restore());
        let dtype = qkv.dtype();
        let upstream = cast(host::<3>(upstream), dtype);
        let probabilities = host::<1>(state.probabilities.restore());
        let (geometry, mask) = (&state.geometry, state.mask);
        let gradient = match dtype {
            DType::BF16 => gradient_as::<bf16>(qkv, probabilities, upstream, geometry, mask),
            DType::F16 => gradient_as::<f16>(qkv, probabilities, upstream, geometry, mask),
            _ => gradient_as::<f32>(qkv, probabilities, upstream, geometry, mask),
        };
        register(grads, qkv_node, Some(flex(gradient)));
    }
}

/// The gradient of `qkv` for the context's gradient `upstream` (`[batch, rows, dim]`), all read
/// and written as `T`. Per head, with `P` the probabilities, `M` the dropout's factors and
/// `W = P ⊙ M`: `∂V = Wᵀ · ∂C`, `∂P = (∂C · Vᵀ) ⊙ M`, `∂S = P ⊙ (∂P − rowsum(∂P ⊙ P)) · scale`,
/// `∂Q = ∂S · K`, `∂K = ∂Sᵀ · Q`.
fn gradient_as<T: HostFloat>(
    qkv: Tensor<Flex, 3>,
    probabilities: Tensor<Flex, 1>,
    upstream: Tensor<Flex, 3>,
    geometry: &Geometry,
    mask: Option<DropMask>,
) -> Tensor<Flex, 3> {
    let device = qkv.device();
    let qkv = stored::<T, _, 3>(qkv);
    let probabilities = stored::<T, _, 1>(probabilities);
    let upstream = stored::<T, _, 3>(upstream);
    let (rows, tokens, head_dim, dim) = (
        geometry.rows.len(),
        geometry.tokens,
        geometry.head_dim(),
        geometry.dim,
    );
    let pair_values = geometry.pair_values();
    let scale = geometry.scale();
    // Per pair: the gradients of its queries (`rows × head_dim`), keys and values
    // (`tokens × head_dim` each), in f32, placed into the gradient after.
    let pieces: Vec<[Vec<f32>; 3]> = (0..geometry.pairs())
        .into_par_iter()
        .map(|pair| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    let (batch, head) = (pair / geometry.heads, pair % geometry.heads);
                    let [query, key, value] = geometry.operands(&qkv, pair);
                    let context_gradient = {
                        let mut values = Vec::with_capacity(rows * head_dim);
                        for row in 0..rows {
                            let start = (batch * rows + row) * dim + head * head_dim;
                            values.extend(
                                upstream[start..start + head_dim].iter().map(|v| v.to_f32()),
                            );
                        }
                        values
                    };
                    let kept = &probabilities[pair * pair_values..(pair + 1) * pair_values];
                    let probability: Vec<f32> = kept.iter().map(|v| v.to_f32()).collect();
                    // The dropout's factors, drawn once for both products that read them.
                    let factors = mask
                        .as_ref()
                        .map(|mask| mask_factors(mask, pair * pair_values, pair_values));
                    let mut weights = probability.clone();
                    if let Some(factors) = &factors {
                        apply_factors(&mut weights, factors);
                    }
                    let mut value_gradient = vec![0f32; tokens * head_dim];
                    gemm(
                        Matrix::row_major(&weights, rows, tokens, tokens).transposed(),
                        Matrix::row_major(&context_gradient, rows, head_dim, head_dim),
                        &mut value_gradient,
                        head_dim,
                        Update::Overwrite,
                    );
                    // ∂W, then ∂P, then ∂S in the same buffer.
                    let mut scores_gradient = weights;
                    gemm(
                        Matrix::row_major(&context_gradient, rows, head_dim, head_dim),
                        Matrix::row_major(&value, tokens, head_dim, head_dim).transposed(),
                        &mut scores_gradient,
                        tokens,
                        Update::Overwrite,
                    );
                    if let Some(factors) = &factors {
                        apply_factors(&mut scores_gradient, factors);
                    }
                    for (gradient, probability) in scores_gradient
                        .chunks_mut(tokens.max(1))
                        .zip(probability.chunks(tokens.max(1)))
                    {
                        let dot: f32 = gradient.iter().zip(probability).map(|(g, p)| g * p).sum();
                        gradient
                            .iter_mut()
                            .zip(probability)
                            .for_each(|(g, &p)| *g = p * (*g - dot) * scale);
                    }
                    let mut query_gradient = vec![0f32; rows * head_dim];
                    gemm(
                        Matrix::row_major(&scores_gradient, rows, tokens, tokens),
                        Matrix::row_major(&key, tokens, head_dim, head_dim),
                        &mut query_gradient,
                        head_dim,
                        Update::Overwrite,
                    );
                    let mut key_gradient = vec![0f32; tokens * head_dim];
                    gemm(
                        Matrix::row_major(&scores_gradient, rows, tokens, tokens).transposed(),
                        Matrix::row_major(&query, rows, head_dim, head_dim),
                        &mut key_gradient,
                        head_dim,
                        Update::Overwrite,
                    );
                    [query_gradient, key_gradient, value_gradient]
                },
            )
        })
        .collect();
    let width = 3 * dim;
    let mut gradient = filled(geometry.batch * tokens * width, T::from_f32(0.0));
    gradient
        .par_chunks_mut((tokens * width).max(1))
        .enumerate()
        .for_each(|(batch, gradient)| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    for head in 0..geometry.heads {
                        let [query, key, value] = &pieces[batch * geometry.heads + head];
                        let parts = [(query, geometry.rows.start, 0), (key, 0, 1), (value, 0, 2)];
                        for (values, first_token, part) in parts {
                            for (row, values) in values.chunks(head_dim).enumerate() {
                                let start =
                                    (first_token + row) * width + part * dim + head * head_dim;
                                gradient[start..start + head_dim]
                                    .iter_mut()
                                    .zip(values)
                                    .for_each(|(gradient, &value)| *gradient = T::from_f32(value));
                            }
                        }
                    }
                },
            )
        });
    Tensor::from_data(
        TensorData::new(gradient, [geometry.batch, tokens, width]),
        (&device, T::dtype()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::layers::encoder::EncoderBlockConfig;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, FloatDType, Tolerance};

    type B = Autodiff<TestBackend>;

    /// The op equals Burn's composition in f32 (`attention_rows_composed`) — context and the
    /// gradient of the projected tokens — for all queries and for a block of them, with
    /// attention dropout (the same mask, drawn after the same seed) and without: in f32 to 1e-5;
    /// from bf16 and f16 inputs no further from it than the composition in that dtype (which
    /// rounds scores and weights too: 2–4× further here); evaluation (no autodiff, no dropout)
    /// takes the same forward.
    #[test]
    fn equals_burns_composition() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let (batch, tokens, dim, heads) = (2, 23, 12, 3);
        for dtype in [FloatDType::F32, FloatDType::BF16, FloatDType::F16] {
            for (prob, rows) in [(0.0, 0..tokens), (0.3, 0..tokens), (0.3, 5..17)] {
                let block = EncoderBlockConfig::new(dim, heads, 8, prob).init::<B>(&device);
                let qkv = Tensor::<B, 3>::random(
                    [batch, tokens, 3 * dim],
                    Distribution::Normal(0.0, 2.0),
                    &device,
                )
                .cast(dtype)
                .detach();
                let upstream = Tensor::<B, 3>::random(
                    [batch, rows.len(), dim],
                    Distribution::Default,
                    &device,
                )
                .cast(dtype);
                let run = |qkv: Tensor<B, 3>, forward: &dyn Fn(Tensor<B, 3>) -> Tensor<B, 3>| {
                    let qkv = qkv.require_grad();
                    let output = forward(qkv.clone());
                    assert_eq!(output.dtype(), qkv.dtype());
                    assert_eq!(output.dims(), [batch, rows.len(), dim]);
                    let upstream = upstream.clone().cast(output.dtype());
                    let grads = (output.clone() * upstream).sum().backward();
                    let gradient = qkv.grad(&grads).expect("the projection is tracked");
                    assert_eq!(gradient.dtype(), qkv.dtype());
                    (output.inner(), gradient)
                };
                let ours = run(qkv.clone(), &|qkv| {
                    block.attention_rows(qkv, rows.clone(), Some(11))
                });
                let f32s = run(qkv.clone().cast(FloatDType::F32), &|qkv| {
                    block.attention_rows_composed(qkv, rows.clone(), Some(11))
                });
                let as_f32 =
                    |tensor: Tensor<TestBackend, 3>| tensor.cast(FloatDType::F32).into_data();
                if dtype == FloatDType::F32 {
                    let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
                    as_f32(ours.0.clone()).assert_approx_eq::<f32>(&f32s.0.into_data(), tolerance);
                    as_f32(ours.1).assert_approx_eq::<f32>(&f32s.1.into_data(), tolerance);
                } else {
                    let burns = run(qkv.clone(), &|qkv| {
                        block.attention_rows_composed(qkv, rows.clone(), Some(11))
                    });
                    let error = |a: &Tensor<TestBackend, 3>, b: &Tensor<TestBackend, 3>| {
                        (a.clone().cast(FloatDType::F32) - b.clone())
                            .abs()
                            .max()
                            .into_scalar()
                    };
                    for (name, ours, burns, exact) in [
                        ("context", &ours.0, &burns.0, &f32s.0),
                        ("gradient", &ours.1, &burns.1, &f32s.1),
                    ] {
                        let (ours, burns) = (error(ours, exact), error(burns, exact));
                        assert!(
                            ours <= burns,
                            "{dtype:?}, p {prob}, rows {rows:?}: the {name}'s error {ours} > the composition's {burns}"
                        );
                    }
                }
                if prob == 0.0 {
                    let evaluated = attention_on_host(
                        qkv.clone().inner(),
                        Geometry {
                            batch,
                            tokens,
                            dim,
                            heads,
                            rows: rows.clone(),
                        },
                    )
                    .expect("a host dtype");
                    as_f32(evaluated)
                        .assert_approx_eq::<f32>(&as_f32(ours.0), Tolerance::rel_abs(0.0, 0.0));
                }
            }
        }
    }
}
