//! BatchNorm over `[n, c, l]` written so that every broadcast hits the CPU backend's fast paths.
//!
//! Burn's `BatchNorm::forward` computes its statistics through `swap_dims(0, 1)` + reshape (a
//! strided copy of the whole activation, twice) and broadcasts `[1, c, 1]` statistics over the
//! batch, a pattern burn-flex's SIMD broadcast kernels do not cover, so it walks 51 M elements
//! (the seed stem at 224 px, batch 4) one strided index at a time; it also keeps `x − mean`
//! twice for backward. Here the statistics are reduced along the contiguous last axis first and
//! repeated to `[n, c, 1]` (a few hundred values) before they meet the activation, so each
//! broadcast is a per-row scalar over contiguous rows, and `x − mean` exists once. The module,
//! its record and its semantics (biased variance, running-average momentum) are Burn's.
//!
//! On the CPU backend the stem's training BatchNorm + ReLU, forward and backward, runs as fused
//! parallel passes over host slices instead (`norm_relu_host`); the composition here is the
//! reference it is tested against, and what runs on a device.

use burn::nn::BatchNorm;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, FloatDType, TensorData, bf16, f16};

use crate::cpu_kernels::{HostFloat, cast, floats, stored, values};
use crate::layers::norm_relu_host::{ChannelNorm, Rows};
use crate::quantize::{HostCodes, HostInput};

mod tracked;

/// `norm` applied to `x` as `BatchNorm::forward` would: batch statistics (updating the running
/// averages) when autodiff is on, running statistics otherwise.
///
/// # Shapes
/// - x: `[n, c, l]`
/// - output: `[n, c, l]`
pub(crate) fn batch_norm<B: Backend>(norm: &BatchNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [n, c, _] = x.dims();
    if B::ad_enabled(&x.device()) {
        let (centered, mean, var) = batch_statistics(x);
        update_running(norm, &mean, &var);
        normalize(norm, centered, var, n)
    } else {
        let device = x.device();
        let mean = norm
            .running_mean
            .value()
            .to_device(&device)
            .reshape([1, c, 1]);
        let var = norm
            .running_var
            .value()
            .to_device(&device)
            .reshape([1, c, 1]);
        normalize(norm, x - mean.repeat_dim(0, n), var, n)
    }
}

/// BatchNorm over axis 1 of a channels-first tensor of any rank (`[n, c, ...]`), computed in
/// f32 whatever the input's dtype (statistics and running averages are f32), result in the
/// input's dtype. On the CPU backend, fused host passes: in training one tracked op
/// (`tracked`), in evaluation one pass with the running statistics.
pub(crate) fn batch_norm_channels<B: Backend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    norm_channels(norm, x, false)
}

/// `relu(batch_norm_channels(norm, x))`, fused on the CPU backend (the ReLU's gate is
/// recomputed in backward from the kept input: nothing more is kept for it).
pub(crate) fn batch_norm_relu_channels<B: Backend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    norm_channels(norm, x, true)
}

/// BatchNorm, followed by a ReLU when `relu`: the host kernels where they serve, else the
/// composition of Burn ops ([`batch_norm_composed`]).
fn norm_channels<B: Backend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
    relu: bool,
) -> Tensor<B, D> {
    let device = x.device();
    if crate::cpu_kernels::enabled::<B>(&device) {
        let dims = x.dims();
        let flat = x.reshape([dims[0], dims[1], dims[2..].iter().product()]);
        return evaluated_on_host(norm, flat, relu).reshape(dims);
    }
    if B::ad_enabled(&device)
        && crate::cpu_kernels::host_tensors::<B>(&device)
        && let Some(output) = tracked::norm_tracked(norm, x.clone(), relu)
    {
        return output;
    }
    let output = batch_norm_composed(norm, x);
    if relu {
        burn::tensor::activation::relu(output)
    } else {
        output
    }
}

/// [`batch_norm_channels`] as a composition of Burn ops (devices, `VIDTRAIN_CPU_KERNELS=
/// reference`, and the reference the host kernels are tested against).
pub(crate) fn batch_norm_composed<B: Backend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let dtype = x.dtype();
    let rest = dims[2..].iter().product::<usize>();
    let normalized = batch_norm(
        norm,
        cast(x.reshape([dims[0], dims[1], rest]), FloatDType::F32),
    );
    cast(normalized, dtype).reshape(dims)
}

/// Batch statistics of `x` (`[n, c, l]`) per channel: `x − mean` (`[n, c, l]`), the mean and the
/// biased variance (`[1, c, 1]` each), reduced along the contiguous last axis first.
fn batch_statistics<B: Backend>(x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let n = x.dims()[0];
    let mean = x.clone().mean_dim(2).mean_dim(0);
    let centered = x - mean.clone().repeat_dim(0, n);
    let var = centered.clone().square().mean_dim(2).mean_dim(0);
    (centered, mean, var)
}

/// `(x − mean) · γ / √(var + ε) + β`, with the per-channel factors repeated over the batch.
fn normalize<B: Backend>(
    norm: &BatchNorm<B>,
    centered: Tensor<B, 3>,
    var: Tensor<B, 3>,
    n: usize,
) -> Tensor<B, 3> {
    let c = centered.dims()[1];
    let scale = norm.gamma.val().reshape([1, c, 1]) / var.add_scalar(norm.epsilon).sqrt();
    centered * scale.repeat_dim(0, n) + norm.beta.val().reshape([1, c, 1]).repeat_dim(0, n)
}

/// The backward of `relu(batch_norm(norm, x))` (training statistics): γ's and β's gradients
/// (f32, like the parameters) and `x`'s when `wants_input` is set, the ReLU's gate taken per
/// `gate`. Computed by hand on the inner backend from `x` alone, in f32 whatever `x`'s dtype:
/// autodiff would keep `x − mean`, the normalised values and the ReLU's output for backward, all
/// in f32 (the statistics are f32 under mixed precision), so a half-precision run would hold
/// four bytes per value; here only `x` is kept, in its own dtype, and the rest is recomputed —
/// one reduction pass — while its gradient is taken.
#[derive(Clone, Copy)]
pub(crate) struct NormReluBackward<'a, B: AutodiffBackend> {
    pub norm: &'a BatchNorm<B>,
    pub wants_input: bool,
    pub gate: ReluGate,
}

/// The parameter gradients of a backward, and its input's gradient when asked for.
pub(crate) type NormReluGradients<B, const D: usize> = (GradientsParams, Option<Tensor<B, D>>);

impl<B: AutodiffBackend> NormReluBackward<'_, B> {
    /// The gradients for `x` and `upstream`, the gradient of the output: on the CPU backend's
    /// host slices ([`Self::on_host`]), elsewhere the composition of Burn ops.
    ///
    /// # Shapes
    /// - x, upstream: `[n, c, l]`
    pub fn gradients(self, x: Tensor<B, 3>, upstream: Tensor<B, 3>) -> NormReluGradients<B, 3> {
        if crate::cpu_kernels::enabled::<B::InnerBackend>(&x.device()) {
            self.on_host(x, upstream)
        } else {
            self.composed(x, upstream)
        }
    }
}

/// Where the backward of BatchNorm + ReLU finds which values the ReLU passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReluGate {
    /// Recomputed from `x` (kept exactly: the same gate as the forward's).
    FromInput,
    /// Already applied to the upstream gradient: `x` was kept in fewer bits
    /// (`model.activation_bits`), and a gate recomputed from it would close where the forward's
    /// was open for the values within one step of the threshold (each such value dropping its
    /// whole gradient: 15 % of the gradient at 8 bits in the tests), so the forward's gate was
    /// kept beside it, one bit per value, as ActNN keeps ReLU masks.
    Applied,
}

impl<B: AutodiffBackend> NormReluBackward<'_, B> {
    /// [`Self::gradients`] as a composition of Burn ops (a device's path, and the reference).
    fn composed(self, x: Tensor<B, 3>, upstream: Tensor<B, 3>) -> NormReluGradients<B, 3> {
        let Self {
            norm,
            wants_input,
            gate,
        } = self;
        let dtype = x.dtype();
        let x = cast(x.inner(), FloatDType::F32);
        let [n, c, l] = x.dims();
        let count = (n * l) as f64;
        let gamma = norm.gamma.val().inner().reshape([1, c, 1]);
        let beta = norm.beta.val().inner().reshape([1, c, 1]);

        let (centered, _, var) = batch_statistics(x);
        let inverse_std = var.add_scalar(norm.epsilon).sqrt().recip(); // [1, c, 1]
        let normalized = centered * inverse_std.clone().repeat_dim(0, n);
        // The ReLU passes the gradient where its input, γ·x̂ + β, is positive.
        let upstream = cast(upstream.inner(), FloatDType::F32);
        let upstream = match gate {
            ReluGate::FromInput => {
                let blocked = (normalized.clone() * gamma.clone().repeat_dim(0, n)
                    + beta.repeat_dim(0, n))
                .lower_equal_elem(0.0);
                upstream.mask_fill(blocked, 0.0)
            }
            ReluGate::Applied => upstream,
        };

        let beta_gradient = upstream.clone().sum_dim(2).sum_dim(0); // [1, c, 1]
        let gamma_gradient = (upstream.clone() * normalized.clone())
            .sum_dim(2)
            .sum_dim(0);
        let input_gradient = wants_input.then(|| {
            // d x = γ / σ · (g − mean(g) − x̂ · mean(g · x̂)), means over the batch and positions.
            let scale = (gamma * inverse_std).repeat_dim(0, n);
            let shift = beta_gradient.clone().div_scalar(count).repeat_dim(0, n);
            let slope = gamma_gradient.clone().div_scalar(count).repeat_dim(0, n);
            Tensor::from_inner(cast((upstream - shift - normalized * slope) * scale, dtype))
        });
        let mut gradients = GradientsParams::new();
        gradients.register(norm.gamma.id, gamma_gradient.reshape([c]));
        gradients.register(norm.beta.id, beta_gradient.reshape([c]));
        (gradients, input_gradient)
    }
}

/// `relu(batch_norm(norm, x))` with training statistics for an untracked `x` (`[n, c, l]`, a
/// stem step whose gradients [`NormReluBackward`] takes by hand), updating the running
/// averages: on the CPU backend's host slices, elsewhere the composition in f32 through the
/// inner backend's parallel casts (on autodiff tensors only Burn's cast is safe, and on
/// burn-flex it converts through f64 on one thread). The output in `x`'s dtype and, on the
/// host, the per-channel map it applied ([`ChannelNorm`]), with which the output can be made
/// again from `x` exactly (the next convolution's backward then reads it clip by clip instead
/// of keeping it).
pub(crate) fn norm_relu_untracked<B: AutodiffBackend>(
    norm: &BatchNorm<B>,
    x: Tensor<B, 3>,
) -> (Tensor<B, 3>, Option<ChannelNorm>) {
    if crate::cpu_kernels::enabled::<B::InnerBackend>(&x.device()) {
        let (output, map) = match training_on_host(norm, x.inner(), true) {
            Ok((output, map)) => (output, Some(map)),
            Err(x) => {
                let dtype = x.dtype();
                let x = cast(x, FloatDType::F32);
                let (output, _) = training_as::<B, _, f32>(norm, x, true);
                (cast(output, dtype), None)
            }
        };
        return (Tensor::from_inner(output), map);
    }
    let dtype = x.dtype();
    let x = Tensor::from_inner(cast(x.inner(), FloatDType::F32));
    let output = burn::tensor::activation::relu(batch_norm(norm, x));
    (Tensor::from_inner(cast(output.inner(), dtype)), None)
}

/// `batch_norm(norm, x)` (then a ReLU when `relu`) with training statistics on the CPU backend's
/// host slices for `x` (`[n, c, l]`, of the plain backend `H`) in f32, bf16 or f16 (`x` back for
/// another dtype), updating the running averages: the output in `x`'s dtype and the map it
/// applied. The stem's untracked step and the tracked op (`tracked`) both train through it.
pub(super) fn training_on_host<B: Backend, H: Backend>(
    norm: &BatchNorm<B>,
    x: Tensor<H, 3>,
    relu: bool,
) -> Result<(Tensor<H, 3>, ChannelNorm), Tensor<H, 3>> {
    match x.dtype() {
        DType::BF16 => Ok(training_as::<B, H, bf16>(norm, x, relu)),
        DType::F16 => Ok(training_as::<B, H, f16>(norm, x, relu)),
        DType::F32 => Ok(training_as::<B, H, f32>(norm, x, relu)),
        _ => Err(x),
    }
}

/// [`training_on_host`] for an `x` stored as `T`: the same output and running averages as the
/// composition, in three parallel passes, read and written as stored.
fn training_as<B: Backend, H: Backend, T: HostFloat>(
    norm: &BatchNorm<B>,
    x: Tensor<H, 3>,
    relu: bool,
) -> (Tensor<H, 3>, ChannelNorm) {
    let (dims, device) = (x.dims(), x.device());
    let with_relu = |map: ChannelNorm| if relu { map } else { map.without_relu() };
    // An input nothing else holds (kept compressed for backward) takes the output in place.
    let (statistics, output) = match crate::cpu_kernels::unique::<T, _, 3>(x) {
        Ok(mut x) => {
            let statistics = with_relu(channel_norm::<B, T, [T]>(norm, x.values(), dims));
            statistics.forward_in_place(x.values_mut(), dims);
            (statistics, x.into_tensor())
        }
        Err(x) => {
            let x = stored::<T, _, 3>(x);
            let statistics = with_relu(channel_norm::<B, T, [T]>(norm, &x, dims));
            let values = statistics.forward(&x, dims);
            let output = TensorData::new(values, dims);
            (statistics, Tensor::from_data(output, (&device, T::dtype())))
        }
    };
    let norm_device = norm.gamma.device();
    let per_channel = |values: &[f32]| {
        let values = TensorData::new(values.to_vec(), [1, dims[1], 1]);
        Tensor::<B, 3>::from_data(values, &norm_device)
    };
    update_running(
        norm,
        &per_channel(&statistics.mean),
        &per_channel(&statistics.var),
    );
    (output, statistics)
}

/// `batch_norm(norm, x)`, then a ReLU when `relu`, with the running statistics (evaluation:
/// validation, eval, predict) on the CPU backend's host slices (`x`: `[n, c, l]` of the plain
/// backend): one parallel pass in `x`'s dtype, over `x` itself when nothing else holds it. The
/// composition made f32 copies of the whole activation (the seed model's validation peak in
/// bf16).
fn evaluated_on_host<B: Backend>(norm: &BatchNorm<B>, x: Tensor<B, 3>, relu: bool) -> Tensor<B, 3> {
    match x.dtype() {
        DType::BF16 => evaluated_as::<B, bf16>(norm, x, relu),
        DType::F16 => evaluated_as::<B, f16>(norm, x, relu),
        DType::F32 => evaluated_as::<B, f32>(norm, x, relu),
        _ => {
            let output = batch_norm_composed(norm, x);
            if relu {
                burn::tensor::activation::relu(output)
            } else {
                output
            }
        }
    }
}

fn evaluated_as<B: Backend, T: HostFloat>(
    norm: &BatchNorm<B>,
    x: Tensor<B, 3>,
    relu: bool,
) -> Tensor<B, 3> {
    let (dims, device) = (x.dims(), x.device());
    let map = ChannelNorm::with_statistics(
        floats(norm.running_mean.value()),
        floats(norm.running_var.value()),
        &floats(norm.gamma.val()),
        &floats(norm.beta.val()),
        norm.epsilon,
    );
    let map = if relu { map } else { map.without_relu() };
    match crate::cpu_kernels::unique::<T, _, 3>(x) {
        Ok(mut x) => {
            map.forward_in_place(x.values_mut(), dims);
            x.into_tensor()
        }
        Err(x) => {
            let values = map.forward(&stored::<T, _, 3>(x), dims);
            Tensor::from_data(TensorData::new(values, dims), (&device, T::dtype()))
        }
    }
}

/// The input of BatchNorm + ReLU's host backward: a tensor, or codes read a row at a time.
enum HostNormInput<'a, B: Backend> {
    Tensor(Tensor<B, 3>),
    Codes(&'a HostCodes),
}

impl<B: AutodiffBackend> NormReluBackward<'_, B> {
    /// [`Self::gradients`] on the CPU backend's host slices ([`ChannelNorm::backward`]), the
    /// input gradient in the input's dtype.
    fn on_host(self, x: Tensor<B, 3>, upstream: Tensor<B, 3>) -> NormReluGradients<B, 3> {
        let (dims, dtype) = (x.dims(), x.dtype());
        let x = HostNormInput::Tensor(x.inner());
        let (gradients, input_gradient) = self.host(x, dtype, dims, upstream.inner());
        (gradients, input_gradient.map(Tensor::from_inner))
    }

    /// [`Self::gradients`] of an input kept compressed in host memory
    /// (`model.activation_bits`, `[n, c, t, h, w]`): the host kernels restore it a row at a
    /// time, so that it never exists whole in its dtype. The input gradient in the input's
    /// dtype.
    pub fn of_codes(self, input: HostInput<'_>, upstream: Tensor<B, 5>) -> NormReluGradients<B, 5> {
        let [n, c, t, h, w] = input.dims;
        let dims = [n, c, t * h * w];
        let x = HostNormInput::Codes(input.codes);
        let upstream = upstream.inner().reshape(dims);
        let (gradients, input_gradient) = self.host(x, input.codes.dtype(), dims, upstream);
        let input_gradient =
            input_gradient.map(|gradient| Tensor::from_inner(gradient.reshape(input.dims)));
        (gradients, input_gradient)
    }

    /// The host backward for `x` of `dtype` and `dims`: in the stored half type when `x` and
    /// `upstream` share it, otherwise in f32 with the input gradient cast back to `x`'s dtype.
    fn host(
        self,
        x: HostNormInput<'_, B::InnerBackend>,
        dtype: DType,
        dims: [usize; 3],
        upstream: Tensor<B::InnerBackend, 3>,
    ) -> NormReluGradients<B::InnerBackend, 3> {
        let same = dtype == upstream.dtype();
        match dtype {
            DType::BF16 if same => self.read_as::<bf16>(x, dims, upstream),
            DType::F16 if same => self.read_as::<f16>(x, dims, upstream),
            dtype => {
                let upstream = cast(upstream, FloatDType::F32);
                let (gradients, input_gradient) = self.read_as::<f32>(x, dims, upstream);
                (
                    gradients,
                    input_gradient.map(|gradient| cast(gradient, dtype)),
                )
            }
        }
    }

    /// [`Self::host`] with `x` read as `T`.
    fn read_as<T: HostFloat>(
        self,
        x: HostNormInput<'_, B::InnerBackend>,
        dims: [usize; 3],
        upstream: Tensor<B::InnerBackend, 3>,
    ) -> NormReluGradients<B::InnerBackend, 3> {
        match x {
            HostNormInput::Tensor(x) => {
                let x = stored::<T, _, 3>(x);
                self.of_rows::<T, [T]>(&x, dims, upstream)
            }
            HostNormInput::Codes(codes) => self.of_rows::<T, _>(codes, dims, upstream),
        }
    }

    /// The gradients for `x` read row by row ([`Rows`]) and `upstream`, stored as `T`: γ's and
    /// β's, and `x`'s written over the upstream gradient.
    fn of_rows<T: HostFloat, R: Rows<T> + ?Sized>(
        self,
        x: &R,
        dims: [usize; 3],
        upstream: Tensor<B::InnerBackend, 3>,
    ) -> NormReluGradients<B::InnerBackend, 3> {
        let Self {
            norm,
            wants_input,
            gate,
        } = self;
        let device = upstream.device();
        let mut upstream = values::<T, _, 3>(upstream);
        let (gamma_gradient, beta_gradient) =
            channel_norm(norm, x, dims).backward(x, &mut upstream, dims, wants_input, gate);
        let vector = |values: Vec<f32>| {
            let length = values.len();
            Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(values, [length]), &device)
        };
        let mut gradients = GradientsParams::new();
        gradients.register(norm.gamma.id, vector(gamma_gradient));
        gradients.register(norm.beta.id, vector(beta_gradient));
        let input_gradient = wants_input
            .then(|| Tensor::from_data(TensorData::new(upstream, dims), (&device, T::dtype())));
        (gradients, input_gradient)
    }
}

/// The batch statistics of `x` (`[n, c, l]`) with `norm`'s γ, β and ε.
fn channel_norm<B: Backend, T: HostFloat, R: Rows<T> + ?Sized>(
    norm: &BatchNorm<B>,
    x: &R,
    dims: [usize; 3],
) -> ChannelNorm {
    ChannelNorm::of(
        x,
        dims,
        &floats(norm.gamma.val()),
        &floats(norm.beta.val()),
        norm.epsilon,
    )
}

/// Running averages as Burn's BatchNorm keeps them: `(1 − momentum) · old + momentum · batch`.
fn update_running<B: Backend>(norm: &BatchNorm<B>, mean: &Tensor<B, 3>, var: &Tensor<B, 3>) {
    let device = mean.device();
    let c = mean.dims()[1];
    let blend = |old: Tensor<B, 1>, batch: &Tensor<B, 3>| {
        old.to_device(&device).mul_scalar(1.0 - norm.momentum)
            + batch
                .clone()
                .detach()
                .mul_scalar(norm.momentum)
                .reshape([c])
    };
    norm.running_mean
        .update(blend(norm.running_mean.value_sync(), mean).detach());
    norm.running_var
        .update(blend(norm.running_var.value_sync(), var).detach());
}

#[cfg(test)]
mod tests;
