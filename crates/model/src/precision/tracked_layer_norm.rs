//! LayerNorm over the last axis on the CPU: statistics in f32 from values read in their own dtype,
//! forward and backward each one pass over rows split across the compute pool; in training one
//! op of Burn's autodiff graph (recorded through `crate::tracked_ops`, decision 0016).
//!
//! Burn's composition (what `precision::layer_norm` ran before) casts a half-precision input to
//! f32 through an f64 copy on one thread, takes about eight element-wise ops forward (mean,
//! centring, square, mean, root, division, γ, β) and twice as many backward, each on one thread,
//! keeping the centred and normalised values in f32. The op keeps its input in its own dtype
//! and two f32 values per row (mean and `1 / σ`); backward recomputes the normalised values as
//! it reads.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::nn::LayerNorm;
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata, bf16, f16};
use rayon::prelude::*;

use crate::cpu_kernels::{HostFloat, cast, filled, floats, host_float, stored};
use crate::layers::norm_relu_host::lane_sum;
use crate::tracked_ops::{
    KeptTensor, TrackedHost, flex, from_tracked_host, host, parameter_gradient, parent_ids, record,
    register, tracked_host,
};

/// ε of every LayerNorm vidtrain builds (PyTorch's and Burn's default). Burn keeps a
/// LayerNorm's ε private, so the models name this one value and the host passes use it.
pub(crate) const LAYER_NORM_EPSILON: f64 = 1e-5;

/// Rows per task: enough values that a task outweighs its scheduling.
fn rows_per_task(width: usize) -> usize {
    ((1 << 14) / width.max(1)).max(1)
}

/// `norm(x)` over the last axis as one autodiff op on the host, when `x` and the parameters are
/// burn-flex tensors under autodiff and `x` is f32, bf16 or f16; otherwise `None` (the caller
/// composes Burn's ops). The output in `x`'s dtype.
pub(super) fn layer_norm_tracked<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    if !host_float(x.dtype()) {
        return None;
    }
    let x = tracked_host(x)?;
    let gamma = tracked_host(norm.gamma.val())?;
    let output = match &norm.beta {
        Some(beta) => {
            let beta = tracked_host(beta.val())?;
            finish(NormOnHost::<3>, [&x, &gamma, &beta])
        }
        None => finish(NormOnHost::<2>, [&x, &gamma]),
    };
    Some(from_tracked_host(output))
}

/// LayerNorm of a plain burn-flex tensor (evaluation), `None` when its dtype has no host pass.
pub(super) fn layer_norm_on_host<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let dtype = x.dtype();
    if !host_float(dtype) {
        return Err(x);
    }
    let shape = x.dims();
    let width = shape[D - 1];
    let gamma = floats(norm.gamma.val());
    let beta = norm.beta.as_ref().map(|beta| floats(beta.val()));
    let (output, _) = forward_on_host(x.reshape([-1, width as i32]), &gamma, beta.as_deref());
    Ok(output.reshape(shape))
}

/// Runs the forward of `parents` (input, γ and, when `N` is 3, β) and records the op.
fn finish<const N: usize>(op: NormOnHost<N>, parents: [&TrackedHost; N]) -> TrackedHost
where
    NormOnHost<N>: Backward<Flex, N, State = NormState>,
{
    let shape = parents[0].primitive.shape();
    let width = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / width.max(1);
    let x = host::<2>(Flex::float_reshape(
        parents[0].primitive.clone(),
        Shape::new([rows, width]),
    ));
    let gamma = floats(host::<1>(parents[1].primitive.clone()));
    let beta = parents
        .get(2)
        .map(|beta| floats(host::<1>(beta.primitive.clone())));
    let (output, statistics) = forward_on_host(x.clone(), &gamma, beta.as_deref());
    let output = Flex::float_reshape(flex(output), shape.clone());
    let parameter_dtype = parents[1].primitive.dtype();
    record(op, parents, output, || NormState {
        input: KeptTensor::keep(flex(x)),
        shape,
        gamma,
        statistics,
        parameter_dtype,
    })
}

/// The normalised rows of `x` (`[rows, width]`) scaled by `gamma` and shifted by `beta`, in
/// `x`'s dtype, and each row's statistics.
fn forward_on_host<B: Backend>(
    x: Tensor<B, 2>,
    gamma: &[f32],
    beta: Option<&[f32]>,
) -> (Tensor<B, 2>, RowStatistics) {
    match x.dtype() {
        DType::BF16 => forward_as::<bf16, B>(x, gamma, beta),
        DType::F16 => forward_as::<f16, B>(x, gamma, beta),
        _ => forward_as::<f32, B>(x, gamma, beta),
    }
}

/// Per row of a LayerNorm's input: the mean and `1 / √(var + ε)`.
#[derive(Clone, Debug)]
struct RowStatistics {
    mean: Vec<f32>,
    inverse_std: Vec<f32>,
}

fn forward_as<T: HostFloat, B: Backend>(
    x: Tensor<B, 2>,
    gamma: &[f32],
    beta: Option<&[f32]>,
) -> (Tensor<B, 2>, RowStatistics) {
    let ([rows, width], device) = (x.dims(), x.device());
    let x = stored::<T, _, 2>(x);
    let mut output = filled(rows * width, T::from_f32(0.0));
    let mut mean = vec![0f32; rows];
    let mut inverse_std = vec![0f32; rows];
    let task = rows_per_task(width);
    output
        .par_chunks_mut(task * width)
        .zip(x.par_chunks(task * width))
        .zip(
            mean.par_chunks_mut(task)
                .zip(inverse_std.par_chunks_mut(task)),
        )
        .for_each(|((output, x), (means, inverse_stds))| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || {
                    let rows = output.chunks_mut(width).zip(x.chunks(width));
                    for ((output, x), (mean, inverse_std)) in
                        rows.zip(means.iter_mut().zip(inverse_stds.iter_mut()))
                    {
                        let row_mean = (lane_sum(x, |value| value) / width as f64) as f32;
                        let var = lane_sum(x, |value| (value - row_mean) * (value - row_mean))
                            / width as f64;
                        let row_inverse_std = (1.0 / (var + LAYER_NORM_EPSILON).sqrt()) as f32;
                        for (index, (output, &value)) in output.iter_mut().zip(x).enumerate() {
                            let normalised = (value.to_f32() - row_mean) * row_inverse_std;
                            let shift = beta.map_or(0.0, |beta| beta[index]);
                            *output = T::from_f32(normalised * gamma[index] + shift);
                        }
                        (*mean, *inverse_std) = (row_mean, row_inverse_std);
                    }
                },
            )
        });
    let output = Tensor::from_data(
        TensorData::new(output, [rows, width]),
        (&device, T::dtype()),
    );
    (output, RowStatistics { mean, inverse_std })
}

/// What the backward reads: the input as the forward read it (`[rows, width]`), its own shape,
/// γ, the rows' statistics, and the parameters' dtype.
#[derive(Clone, Debug)]
struct NormState {
    input: KeptTensor,
    shape: Shape,
    gamma: Vec<f32>,
    statistics: RowStatistics,
    parameter_dtype: DType,
}

/// The op with `N` parents: input, γ and, when `N` is 3, β.
#[derive(Debug)]
struct NormOnHost<const N: usize>;

impl<const N: usize> Backward<Flex, N> for NormOnHost<N> {
    type State = NormState;

    fn backward(self, ops: Ops<NormState, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, gamma_node, beta_node] = parent_ids(&ops);
        let NormState {
            input,
            shape,
            gamma,
            statistics,
            parameter_dtype,
        } = ops.state;
        let input = host::<2>(input.restore());
        let dtype = input.dtype();
        let upstream = cast(
            host::<2>(Flex::float_reshape(upstream, Shape::new(input.dims()))),
            dtype,
        );
        let wants_input = input_node.is_some();
        let gradients = match dtype {
            DType::BF16 => backward_as::<bf16>(input, upstream, &gamma, &statistics, wants_input),
            DType::F16 => backward_as::<f16>(input, upstream, &gamma, &statistics, wants_input),
            _ => backward_as::<f32>(input, upstream, &gamma, &statistics, wants_input),
        };
        let NormGradients {
            input: input_gradient,
            gamma: gamma_gradient,
            beta: beta_gradient,
        } = gradients;
        let gamma_gradient = parameter_gradient(gamma_gradient, parameter_dtype);
        register(grads, gamma_node, Some(gamma_gradient));
        let beta_gradient = parameter_gradient(beta_gradient, parameter_dtype);
        register(grads, beta_node, Some(beta_gradient));
        let input_gradient =
            input_gradient.map(|gradient| Flex::float_reshape(flex(gradient), shape));
        register(grads, input_node, input_gradient);
    }
}

/// A LayerNorm's gradients: its input's (when wanted, in the input's dtype), γ's and β's (f32).
struct NormGradients {
    input: Option<Tensor<Flex, 2>>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// With `x̂ = (x − mean) / σ` and `g = ∂y · γ` per row: `∂x = (g − mean(g) − x̂ · mean(g · x̂)) / σ`,
/// `∂γ = Σ_rows ∂y · x̂`, `∂β = Σ_rows ∂y`; values read and the input's gradient written as `T`.
fn backward_as<T: HostFloat>(
    x: Tensor<Flex, 2>,
    upstream: Tensor<Flex, 2>,
    gamma: &[f32],
    statistics: &RowStatistics,
    wants_input: bool,
) -> NormGradients {
    let ([rows, width], device) = (x.dims(), x.device());
    let x = stored::<T, _, 2>(x);
    let upstream = stored::<T, _, 2>(upstream);
    let mut input_gradient = filled(if wants_input { rows * width } else { 0 }, T::from_f32(0.0));
    let task = rows_per_task(width);
    let mut gradient_chunks: Vec<&mut [T]> = if wants_input {
        input_gradient.chunks_mut(task * width).collect()
    } else {
        (0..rows.div_ceil(task)).map(|_| &mut [][..]).collect()
    };
    let zeros = || (vec![0f32; width], vec![0f32; width]);
    let (gamma_gradient, beta_gradient) = gradient_chunks
        .par_iter_mut()
        .zip(
            x.par_chunks(task * width)
                .zip(upstream.par_chunks(task * width)),
        )
        .zip(
            statistics
                .mean
                .par_chunks(task)
                .zip(statistics.inverse_std.par_chunks(task)),
        )
        .fold(
            zeros,
            |(mut gamma_sums, mut beta_sums),
             ((gradient, (x, upstream)), (means, inverse_stds))| {
                // In the AVX-512 build: the closure rayon folds with is built for the baseline
                // (this loop ran on SSE2, 3 % of ViViT's bf16 step at micro-batch 1).
                crate::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let rows = TaskRows {
                            x,
                            upstream,
                            means,
                            inverse_stds,
                        };
                        rows.add_gradients(gamma, gradient, &mut gamma_sums, &mut beta_sums)
                    },
                );
                (gamma_sums, beta_sums)
            },
        )
        .reduce(zeros, |(mut gamma_a, mut beta_a), (gamma_b, beta_b)| {
            gamma_a.iter_mut().zip(gamma_b).for_each(|(a, b)| *a += b);
            beta_a.iter_mut().zip(beta_b).for_each(|(a, b)| *a += b);
            (gamma_a, beta_a)
        });
    let input = wants_input.then(|| {
        Tensor::from_data(
            TensorData::new(input_gradient, [rows, width]),
            (&device, T::dtype()),
        )
    });
    NormGradients {
        input,
        gamma: gamma_gradient,
        beta: beta_gradient,
    }
}

/// One task's rows of a LayerNorm's backward: their input and upstream gradient (`width`
/// values a row) and their statistics.
struct TaskRows<'a, T> {
    x: &'a [T],
    upstream: &'a [T],
    means: &'a [f32],
    inverse_stds: &'a [f32],
}

impl<T: HostFloat> TaskRows<'_, T> {
    /// Adds the rows' `∂y · x̂` and `∂y` to `gamma_sums` and `beta_sums`, and writes their input
    /// gradient into `gradient` unless it is empty ([`backward_as`]).
    #[inline(always)]
    fn add_gradients(
        &self,
        gamma: &[f32],
        gradient: &mut [T],
        gamma_sums: &mut [f32],
        beta_sums: &mut [f32],
    ) {
        let width = gamma.len();
        let mut normalised = vec![0f32; width];
        let mut scaled = vec![0f32; width];
        let statistics = self.means.iter().zip(self.inverse_stds);
        for (row, (&mean, &inverse_std)) in statistics.enumerate() {
            let span = row * width..(row + 1) * width;
            let (x, upstream) = (&self.x[span.clone()], &self.upstream[span.clone()]);
            let (mut scaled_sum, mut product_sum) = (0f32, 0f32);
            for index in 0..width {
                let dy = upstream[index].to_f32();
                let x_hat = (x[index].to_f32() - mean) * inverse_std;
                gamma_sums[index] += dy * x_hat;
                beta_sums[index] += dy;
                let g = dy * gamma[index];
                (normalised[index], scaled[index]) = (x_hat, g);
                scaled_sum += g;
                product_sum += g * x_hat;
            }
            if gradient.is_empty() {
                continue;
            }
            let (scaled_mean, product_mean) =
                (scaled_sum / width as f32, product_sum / width as f32);
            let row_gradient = &mut gradient[span];
            for index in 0..width {
                let value = scaled[index] - scaled_mean - normalised[index] * product_mean;
                row_gradient[index] = T::from_f32(value * inverse_std);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::precision::layer_norm_composed;
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Distribution, FloatDType, Tolerance};

    type B = Autodiff<TestBackend>;

    /// The op equals Burn's LayerNorm computed in f32 (what `precision::layer_norm` composed):
    /// output and the gradients of the input, γ and β, with and without β, on rows whose mean
    /// is far from zero; f32 to 1e-4, bf16 and f16 to their resolution. Evaluation (no
    /// autodiff) takes the same forward.
    #[test]
    fn equals_burns_layer_norm_forward_and_backward() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for (dtype, tolerance) in [
            (FloatDType::F32, Tolerance::rel_abs(1e-4, 1e-4)),
            (FloatDType::BF16, Tolerance::rel_abs(2e-2, 2e-2)),
            (FloatDType::F16, Tolerance::rel_abs(5e-3, 5e-3)),
        ] {
            for bias in [true, false] {
                let mut norm = LayerNormConfig::new(83).with_bias(bias).init::<B>(&device);
                norm.gamma = burn::module::Param::from_tensor(Tensor::random(
                    [83],
                    Distribution::Uniform(0.5, 1.5),
                    &device,
                ));
                let x =
                    Tensor::<B, 3>::random([4, 37, 83], Distribution::Normal(3.0, 2.0), &device)
                        .cast(dtype)
                        .detach();
                let upstream =
                    Tensor::<B, 3>::random([4, 37, 83], Distribution::Default, &device).cast(dtype);
                let run = |forward: &dyn Fn(Tensor<B, 3>) -> Tensor<B, 3>| {
                    let x = x.clone().require_grad();
                    let output = forward(x.clone());
                    assert_eq!(output.dtype(), DType::from(dtype));
                    let grads = (output.clone() * upstream.clone()).sum().backward();
                    let input_gradient = x.grad(&grads).expect("the input is tracked");
                    assert_eq!(input_gradient.dtype(), DType::from(dtype));
                    let gamma = norm.gamma.grad(&grads).expect("a parameter");
                    let beta = norm.beta.as_ref().map(|beta| beta.grad(&grads).unwrap());
                    (output.inner(), input_gradient, gamma, beta)
                };
                let ours =
                    run(&|x| layer_norm_tracked(&norm, x).expect("burn-flex under autodiff"));
                let burns = run(&|x| layer_norm_composed(&norm, x));
                let as_f32 =
                    |tensor: Tensor<TestBackend, 3>| tensor.cast(FloatDType::F32).into_data();
                as_f32(ours.0.clone()).assert_approx_eq::<f32>(&as_f32(burns.0), tolerance);
                as_f32(ours.1).assert_approx_eq::<f32>(&as_f32(burns.1), tolerance);
                ours.2
                    .into_data()
                    .assert_approx_eq::<f32>(&burns.2.into_data(), tolerance);
                match (ours.3, burns.3) {
                    (Some(a), Some(b)) => a
                        .into_data()
                        .assert_approx_eq::<f32>(&b.into_data(), tolerance),
                    (None, None) => {}
                    _ => panic!("a β gradient on one side only"),
                }
                let evaluated =
                    layer_norm_on_host(&norm.valid(), x.clone().inner()).expect("a host dtype");
                as_f32(evaluated)
                    .assert_approx_eq::<f32>(&as_f32(ours.0), Tolerance::rel_abs(0.0, 0.0));
            }
        }
    }
}
