//! The Mamba block (Gu & Dao 2023), bidirectional as in Vision Mamba / VideoMamba ("v2": one
//! in-projection, a forward and a backward scan with their own convolution, projections, A and
//! D, summed before the gate), inside a pre-norm residual:
//!
//! ```text
//! x, z   = in_proj(RMSNorm(input))                      [b, l, 2E] split in two
//! per direction (the backward one on the flipped sequence):
//!   u    = SiLU(causal depthwise Conv1d(x))             kernel 4, left padding
//!   Δ,B,C = x_proj(u);  Δ = softplus(dt_proj(Δ))         low-rank Δ, per-channel bias
//!   y    = selective scan(u, Δ, A = −exp(A_log), B, C, D)
//! output = input + out_proj((y_forward + flip(y_backward)) · SiLU(z))
//! ```
//!
//! The block is also exposed in its three stages — [`MambaBlock::scan_inputs`], the scans,
//! [`MambaBlock::output`] — so that activation recompute can replay the scans one chunk at a time
//! (`crate::recompute`): only the stages' `[b, l, E]` tensors ever exist whole, never the scan's
//! `[b, l, E, N]` states.

use burn::module::{Initializer, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::{DType, FloatDType};

use crate::layers::selective_scan::{ScanInputs, ScanParameters, selective_scan};
use crate::precision::{like, linear};

/// Configuration of a [`MambaBlock`].
#[derive(Config, Debug)]
pub struct MambaBlockConfig {
    /// Token width D.
    pub dim: usize,
    /// State size N per channel.
    #[config(default = 16)]
    pub state: usize,
    /// Inner width E = expand · D.
    #[config(default = 2)]
    pub expand: usize,
    /// Kernel of the causal depthwise convolution.
    #[config(default = 4)]
    pub conv_kernel: usize,
    /// A backward scan beside the forward one (VideoMamba); off: causal Mamba.
    #[config(default = true)]
    pub bidirectional: bool,
    /// Steps per chunk of the selective scan.
    #[config(default = 16)]
    pub chunk: usize,
}

impl MambaBlockConfig {
    /// The config keys [`MambaBlockConfig::from_vidtrain`] reads that shape the weights
    /// (`model.mamba_chunk` only changes how the scan is computed).
    pub const ARCHITECTURE_KEYS: &[&str] = &[
        "model.mamba_dim",
        "model.mamba_layers",
        "model.mamba_state",
        "model.mamba_expand",
        "model.mamba_conv_kernel",
        "model.mamba_bidirectional",
    ];

    /// The block `model.mamba_*` describes.
    pub fn from_vidtrain(model: &vidtrain_config::ModelConfig) -> Self {
        Self::new(model.mamba_dim)
            .with_state(model.mamba_state)
            .with_expand(model.mamba_expand)
            .with_conv_kernel(model.mamba_conv_kernel)
            .with_bidirectional(model.mamba_bidirectional)
            .with_chunk(model.mamba_chunk)
    }

    /// Inner width E.
    pub fn inner(&self) -> usize {
        self.expand * self.dim
    }

    /// Rank of Δ's projection: ⌈D / 16⌉ (Mamba's "auto").
    pub fn dt_rank(&self) -> usize {
        self.dim.div_ceil(16)
    }

    /// Scan directions: 2 when bidirectional.
    pub fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Builds the block with Mamba's initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MambaBlock<B> {
        MambaBlock {
            norm: RmsNorm::new(self.dim, device),
            in_proj: LinearConfig::new(self.dim, 2 * self.inner())
                .with_bias(false)
                .init(device),
            directions: (0..self.directions())
                .map(|_| self.init_direction(device))
                .collect(),
            out_proj: LinearConfig::new(self.inner(), self.dim)
                .with_bias(false)
                .init(device),
            chunk: self.chunk,
        }
    }

    fn init_direction<B: Backend>(&self, device: &B::Device) -> MambaDirection<B> {
        let inner = self.inner();
        let rank = self.dt_rank();
        // PyTorch's default Conv1d initialisation: U(±1/√fan_in), fan_in = the kernel.
        let bound = 1.0 / (self.conv_kernel as f64).sqrt();
        let uniform = |bound: f64| Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let mut dt_proj = LinearConfig::new(rank, inner)
            .with_initializer(uniform(1.0 / (rank as f64).sqrt()))
            .init(device);
        // Δ's bias: softplus⁻¹ of Δ drawn log-uniformly in [0.001, 0.1], so that the initial
        // steps span slow and fast channels.
        let (low, high) = (0.001f64.ln(), 0.1f64.ln());
        let dt = (Tensor::<B, 1>::random(
            [inner],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            device,
        ) * (high - low)
            + low)
            .exp()
            .clamp_min(1e-4);
        let inverse_softplus = dt.clone() + (dt.neg().exp().neg() + 1.0).log();
        dt_proj.bias = Some(Param::from_tensor(inverse_softplus));
        // S4D-real: A = −(1, 2, …, N) in every channel.
        let a_log: Vec<f32> = (0..inner)
            .flat_map(|_| (1..=self.state).map(|n| (n as f32).ln()))
            .collect();
        MambaDirection {
            conv_weight: uniform(bound).init([inner, 1, self.conv_kernel], device),
            conv_bias: uniform(bound).init([inner], device),
            x_proj: LinearConfig::new(inner, rank + 2 * self.state)
                .with_bias(false)
                .init(device),
            dt_proj,
            a_log: Param::from_tensor(Tensor::from_data(
                TensorData::new(a_log, [inner, self.state]),
                device,
            )),
            d: Initializer::Ones.init([inner], device),
        }
    }
}

/// A pre-norm residual Mamba block: `[b, l, D]` → `[b, l, D]`.
#[derive(Module, Debug)]
pub struct MambaBlock<B: Backend> {
    norm: RmsNorm<B>,
    in_proj: Linear<B>,
    /// The forward scan, then (bidirectional) the backward one.
    directions: Vec<MambaDirection<B>>,
    out_proj: Linear<B>,
    #[module(skip)]
    chunk: usize,
}

impl<B: Backend> MambaBlock<B> {
    /// # Shapes
    /// - input: `[b, l, D]`
    /// - output: `[b, l, D]`
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, scans) = self.scan_inputs(input.clone());
        let outputs = self.scan(&scans);
        self.output(input, gate, outputs)
    }

    /// Steps per chunk of the scan.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The scan's parameters, one per direction, in the scans' dtype.
    pub fn scan_parameters(&self, dtype: DType) -> Vec<ScanParameters<B>> {
        self.directions
            .iter()
            .map(|direction| direction.scan_parameters(dtype))
            .collect()
    }

    /// The scan parameters of direction `number` alone (0 forward, 1 backward).
    pub fn direction_scan_parameters(&self, number: usize, dtype: DType) -> ScanParameters<B> {
        self.directions[number].scan_parameters(dtype)
    }

    /// Every direction's scan, whole: outputs `[length, batch, inner]` (time-major, the backward
    /// direction's in reversed order).
    pub fn scan(&self, scans: &[ScanInputs<B>]) -> Vec<Tensor<B, 3>> {
        let dtype = scans[0].x.dtype();
        scans
            .iter()
            .zip(self.scan_parameters(dtype))
            .map(|(inputs, parameters)| selective_scan(inputs, &parameters, self.chunk))
            .collect()
    }

    /// The first stage: the gate `z` `[b, l, E]` (in the input's dtype) and each direction's scan
    /// inputs (time-major, in f32, the backward direction's in reversed order).
    pub fn scan_inputs(&self, input: Tensor<B, 3>) -> (Tensor<B, 3>, Vec<ScanInputs<B>>) {
        let projected = linear(&self.in_proj, self.norm.forward(input));
        let inner = projected.dims()[2] / 2;
        let x = projected.clone().narrow(2, 0, inner);
        let gate = projected.narrow(2, inner, inner);
        let scans = self
            .directions
            .iter()
            .enumerate()
            .map(|(number, direction)| {
                let x = if number == 0 {
                    x.clone()
                } else {
                    x.clone().flip([1])
                };
                direction.scan_inputs(swap_batch_and_time(x))
            })
            .collect();
        (gate, scans)
    }

    /// The last stage: the directions' outputs summed (the backward one flipped back), gated by
    /// SiLU(z), projected out and added to the residual.
    pub fn output(
        &self,
        input: Tensor<B, 3>,
        gate: Tensor<B, 3>,
        outputs: Vec<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let summed = outputs
            .into_iter()
            .enumerate()
            .map(|(number, y)| if number == 0 { y } else { y.flip([0]) })
            .reduce(|sum, y| sum + y)
            .expect("a Mamba block scans in at least one direction");
        let gated = swap_batch_and_time(summed).cast(gate.dtype()) * silu(gate);
        input + linear(&self.out_proj, gated)
    }
}

/// One scan direction's own weights.
#[derive(Module, Debug)]
pub struct MambaDirection<B: Backend> {
    /// Depthwise kernel `[E, 1, k]` (PyTorch's Conv1d layout).
    conv_weight: Param<Tensor<B, 3>>,
    conv_bias: Param<Tensor<B, 1>>,
    /// u → (Δ of rank R, B, C).
    x_proj: Linear<B>,
    /// R → E, with Δ's bias.
    dt_proj: Linear<B>,
    /// `[E, N]`; A = −exp(A_log).
    a_log: Param<Tensor<B, 2>>,
    /// `[E]`.
    d: Param<Tensor<B, 1>>,
}

impl<B: Backend> MambaDirection<B> {
    /// Convolution, SiLU and projections of `x` `[l, b, E]` (time-major); the results in the
    /// scan's dtype.
    fn scan_inputs(&self, x: Tensor<B, 3>) -> ScanInputs<B> {
        let u = silu(self.causal_conv(x));
        let projected = linear(&self.x_proj, u.clone());
        let rank = self.dt_proj.weight.dims()[0];
        let state = self.a_log.dims()[1];
        let dt = linear(&self.dt_proj, projected.clone().narrow(2, 0, rank));
        let dtype = accumulation_dtype(u.dtype());
        ScanInputs {
            x: u.cast(dtype),
            delta: softplus(dt.cast(dtype)),
            b: projected.clone().narrow(2, rank, state).cast(dtype),
            c: projected.narrow(2, rank + state, state).cast(dtype),
        }
    }

    fn scan_parameters(&self, dtype: DType) -> ScanParameters<B> {
        let dtype = accumulation_dtype(dtype);
        ScanParameters {
            a: self.a_log.val().cast(dtype).exp().neg(),
            d: self.d.val().cast(dtype),
        }
    }

    /// Depthwise Conv1d over time with `k − 1` zeros of left padding, so step t sees steps
    /// t − k + 1 … t only: `[l, b, E]` → `[l, b, E]` (time-major, so each tap's shifted input is
    /// a contiguous slice).
    fn causal_conv(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [length, batch, inner] = x.dims();
        let kernel = self.conv_weight.dims()[2];
        let weight = like(self.conv_weight.val(), &x)
            .reshape([inner, kernel])
            .transpose(); // [k, E]
        let padding =
            Tensor::<B, 3>::zeros([kernel - 1, batch, inner], &x.device()).cast(x.dtype());
        let padded = Tensor::cat(vec![padding, x], 0);
        let mut output = like(self.conv_bias.val(), &padded)
            .reshape([1, inner])
            .repeat_dim(0, length * batch);
        for tap in 0..kernel {
            output = output
                + padded
                    .clone()
                    .narrow(0, tap, length)
                    .reshape([length * batch, inner])
                    * weight.clone().narrow(0, tap, 1);
        }
        output.reshape([length, batch, inner])
    }
}

/// `[b, l, w]` ↔ `[l, b, w]`, copied into a contiguous tensor (the reshape of the swapped view
/// copies once; every later op then runs on contiguous data).
fn swap_batch_and_time<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [first, second, width] = x.dims();
    x.swap_dims(0, 1)
        .reshape([second * first * width])
        .reshape([second, first, width])
}

/// Where a Mamba block accumulates (its scan, RMSNorm): f32, or f64 when the model computes in f64.
fn accumulation_dtype(dtype: DType) -> FloatDType {
    if dtype == DType::F64 {
        FloatDType::F64
    } else {
        FloatDType::F32
    }
}

/// `log(1 + eˣ)` without overflow for large x (Burn's `softplus` forms eˣ).
fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// RMSNorm (Zhang & Sennrich 2019), as VideoMamba normalises: `x / rms(x) · weight`, computed in
/// f32 (f64 for an f64 model), result in `x`'s dtype.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
}

impl<B: Backend> RmsNorm<B> {
    const EPSILON: f64 = 1e-5;

    /// A norm of width `dim` with unit weights.
    pub fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Ones.init([dim], device),
        }
    }

    /// Normalises the last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(accumulation_dtype(dtype));
        let mean_square = x.clone().powi_scalar(2).mean_dim(D - 1);
        let mut shape = [1; D];
        shape[D - 1] = self.weight.dims()[0];
        let weight = like(self.weight.val(), &x).reshape(shape);
        (x / (mean_square + Self::EPSILON).sqrt() * weight).cast(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::Distribution;

    #[test]
    fn causal_convolution_sees_no_later_step() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let block: MambaBlock<TestBackend> = MambaBlockConfig::new(8).init(&device);
        let direction = &block.directions[0];
        let x = Tensor::<TestBackend, 3>::random([10, 2, 16], Distribution::Default, &device);
        let changed = x
            .clone()
            .slice_assign([6..7, 0..2, 0..16], Tensor::ones([1, 2, 16], &device) * 5.0);
        let before = direction.causal_conv(x).narrow(0, 0, 6);
        let after = direction.causal_conv(changed).narrow(0, 0, 6);
        before.into_data().assert_eq(&after.into_data(), true);
    }

    #[test]
    fn initialisation_follows_mamba() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let block: MambaBlock<TestBackend> = MambaBlockConfig::new(32).init(&device);
        assert_eq!(block.directions.len(), 2);
        let direction = &block.directions[0];
        let a = direction
            .scan_parameters(DType::F32)
            .a
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // A = −(1 … 16) in each of the 64 channels.
        assert_eq!(a.len(), 64 * 16);
        assert!((a[0] + 1.0).abs() < 1e-6 && (a[15] + 16.0).abs() < 1e-5);
        // Δ at rest (dt_proj of zeros) lies in [0.001, 0.1].
        let bias = direction.dt_proj.bias.as_ref().unwrap().val();
        let delta = softplus(bias).into_data().to_vec::<f32>().unwrap();
        assert!(
            delta.iter().all(|d| (0.000_99..=0.100_1).contains(d)),
            "{delta:?}"
        );
    }
}
