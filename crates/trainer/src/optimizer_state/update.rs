//! Adam, AdamW and SGD with momentum over compactly stored state: Burn's update rules (the f32
//! optimizers vidtrain runs with `train.optimizer_state = "f32"`), applied block by block. Each
//! block of [`BLOCK`] values is decoded into a stack buffer, updated together with its
//! parameters, and encoded again, in parallel over blocks: the step's temporaries are one block
//! per thread, on top of the parameter and gradient it is given.
//!
//! The parameter and gradient come to the host as f32 (for Burn's CPU backend without a copy
//! when the tensor is not shared); on a GPU backend this is a round trip per tensor.

use burn::optim::{AdamState, AdamWState, AdaptiveMomentumState, SimpleOptimizer};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;
use vidtrain_config::OptimizerStateFormat;

use super::{BLOCK, MomentState, StoredMoment};

/// Adam (L2 weight decay added to the gradient) or AdamW (decoupled decay), with Burn's
/// defaults and arithmetic: β 0.9/0.999, ε 1e-5 scaled by √(1 − β₂ᵗ).
#[derive(Debug, Clone)]
pub struct CompactAdam {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// AdamW: decay the parameters by `lr · weight_decay` instead of adding it to the gradient.
    pub decoupled: bool,
    pub format: OptimizerStateFormat,
}

impl CompactAdam {
    /// Adam (`decoupled = false`) or AdamW with Burn's defaults.
    pub fn new(format: OptimizerStateFormat, weight_decay: f32, decoupled: bool) -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay,
            decoupled,
            format,
        }
    }

    /// The constants of step `time` (1 for the first) at learning rate `lr`.
    fn at_step(&self, lr: f32, time: usize) -> AdamStep {
        let time = time as i32;
        let bias_correction_2 = (1.0 - self.beta_2.powi(time)).sqrt();
        let (decay_l2, keep) = match (self.decoupled, self.weight_decay > 0.0) {
            (_, false) => (0.0, 1.0),
            (false, true) => (self.weight_decay, 1.0),
            (true, true) => (0.0, 1.0 - lr * self.weight_decay),
        };
        AdamStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            combined: bias_correction_2 / (1.0 - self.beta_1.powi(time)),
            epsilon: self.epsilon * bias_correction_2,
            decay_l2,
            keep,
            lr,
        }
    }
}

/// SGD with momentum (dampening 0, optionally Nesterov), L2 weight decay added to the gradient,
/// as Burn's (and PyTorch's) SGD.
#[derive(Debug, Clone)]
pub struct CompactSgd {
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub format: OptimizerStateFormat,
}

/// A parameter update over host f32 slices and a [`MomentState`].
pub trait BlockwiseUpdate {
    /// Moments of the state, and whether each is signed.
    const MOMENTS: &'static [bool];
    /// The format new state is stored in.
    fn format(&self) -> OptimizerStateFormat;
    /// One step of `params` (updated in place) with `grads` and `state` (updated), at `lr`.
    fn update(&self, lr: f32, params: &mut [f32], grads: &[f32], state: &mut MomentState);
}

impl BlockwiseUpdate for CompactAdam {
    const MOMENTS: &'static [bool] = &[true, false];
    fn format(&self) -> OptimizerStateFormat {
        self.format
    }
    fn update(&self, lr: f32, params: &mut [f32], grads: &[f32], state: &mut MomentState) {
        state.time += 1;
        let step = self.at_step(lr, state.time);
        let [first, second] = &mut state.moments[..] else {
            panic!("Adam's state has two moments");
        };
        params
            .par_chunks_mut(BLOCK)
            .zip(grads.par_chunks(BLOCK))
            .zip(first.blocks_mut().into_par_iter())
            .zip(second.blocks_mut().into_par_iter())
            .for_each(|(((params, grads), mut first), mut second)| {
                vidtrain_model::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let mut m = [0f32; BLOCK];
                        let mut v = [0f32; BLOCK];
                        let (m, v) = (&mut m[..params.len()], &mut v[..params.len()]);
                        first.read(m);
                        second.read(v);
                        step.apply(params, grads, m, v);
                        first.write(m);
                        second.write(v);
                    },
                )
            });
    }
}

/// One Adam step's constants: Burn's arithmetic, whatever holds the moments.
#[derive(Debug, Clone, Copy)]
struct AdamStep {
    beta_1: f32,
    beta_2: f32,
    /// `√(1 − β₂ᵗ) / (1 − β₁ᵗ)`.
    combined: f32,
    /// ε scaled by `√(1 − β₂ᵗ)`.
    epsilon: f32,
    /// Adam's L2 decay, added to the gradient.
    decay_l2: f32,
    /// AdamW's decoupled decay, `1 − lr · weight_decay`.
    keep: f32,
    lr: f32,
}

impl AdamStep {
    /// Steps `params` with `grads`, updating the moments `m` and `v` (all four as long).
    #[inline(always)]
    fn apply(&self, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
        {
            let g = g + self.decay_l2 * *p;
            *m = self.beta_1 * *m + (1.0 - self.beta_1) * g;
            *v = self.beta_2 * *v + (1.0 - self.beta_2) * g * g;
            let delta = *m * self.combined / (v.sqrt() + self.epsilon);
            *p = *p * self.keep - self.lr * delta;
        }
    }
}

impl BlockwiseUpdate for CompactSgd {
    const MOMENTS: &'static [bool] = &[true];
    fn format(&self) -> OptimizerStateFormat {
        self.format
    }
    fn update(&self, lr: f32, params: &mut [f32], grads: &[f32], state: &mut MomentState) {
        state.time += 1;
        let [velocity] = &mut state.moments[..] else {
            panic!("SGD's state has one momentum buffer");
        };
        params
            .par_chunks_mut(BLOCK)
            .zip(grads.par_chunks(BLOCK))
            .zip(velocity.blocks_mut().into_par_iter())
            .for_each(|((params, grads), mut velocity)| {
                vidtrain_model::cpu_kernels::vectorized(
                    #[inline(always)]
                    || {
                        let mut buffer = [0f32; BLOCK];
                        let buffer = &mut buffer[..params.len()];
                        velocity.read(buffer);
                        for ((p, &g), b) in params.iter_mut().zip(grads).zip(buffer.iter_mut()) {
                            let g = g + self.weight_decay * *p;
                            // The first step's buffer is the gradient itself: momentum · 0 + g.
                            *b = self.momentum * *b + g;
                            let step = if self.nesterov {
                                self.momentum * *b + g
                            } else {
                                *b
                            };
                            *p -= lr * step;
                        }
                        velocity.write(buffer);
                    },
                )
            });
    }
}

/// Burn's optimizer step for any [`BlockwiseUpdate`]: the tensor and gradient as host f32, the
/// update in place, the tensor back on its device in its dtype.
fn step_tensor<B: Backend, const D: usize, U: BlockwiseUpdate>(
    update: &U,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<MomentState>,
) -> (Tensor<B, D>, Option<MomentState>) {
    let device = tensor.device();
    let dtype = tensor.dtype();
    let mut params = host_f32(tensor);
    let grads = host_f32(grad);
    let len = params.num_elements();
    let mut state = state.unwrap_or_else(|| MomentState {
        time: 0,
        moments: U::MOMENTS
            .iter()
            .map(|&signed| StoredMoment::zeros(update.format(), len, signed))
            .collect(),
    });
    let grad_values = grads.as_slice::<f32>().expect("gradients are f32 here");
    let param_values = params
        .as_mut_slice::<f32>()
        .expect("parameters are f32 here");
    update.update(lr as f32, param_values, grad_values, &mut state);
    (on_device(params, &device, dtype), Some(state))
}

/// Updated f32 host values as a tensor on `device` in `dtype` (the parameter's).
fn on_device<B: Backend, const D: usize>(
    values: TensorData,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    let tensor = Tensor::<B, D>::from_data(values, device);
    match dtype {
        DType::F32 => tensor,
        other => tensor.cast(other),
    }
}

/// The tensor's values on the host as f32 (Burn's CPU backend hands over its buffer when the
/// tensor is not shared).
fn host_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> TensorData {
    let tensor = match tensor.dtype() {
        DType::F32 => tensor,
        _ => tensor.cast(burn::tensor::FloatDType::F32),
    };
    tensor.into_data()
}

/// Burn's `SimpleOptimizer` for each [`BlockwiseUpdate`] (a blanket impl of Burn's trait is not
/// allowed here): each step goes through [`step_tensor`], and the state is host data that
/// stays where it is when the model moves.
macro_rules! simple_optimizer {
    ($($update:ty),+) => {$(
        impl<B: Backend> SimpleOptimizer<B> for $update {
            type State<const D: usize> = MomentState;

            fn step<const D: usize>(
                &self,
                lr: f64,
                tensor: Tensor<B, D>,
                grad: Tensor<B, D>,
                state: Option<Self::State<D>>,
            ) -> (Tensor<B, D>, Option<Self::State<D>>) {
                step_tensor(self, lr, tensor, grad, state)
            }

            fn to_device<const D: usize>(
                state: Self::State<D>,
                _device: &B::Device,
            ) -> Self::State<D> {
                state
            }
        }
    )+};
}

simple_optimizer!(CompactAdam, CompactSgd);

/// Adam or AdamW with f32 state on the host (`train.optimizer_state = "f32"` on the CPU
/// backend): [`CompactAdam`]'s arithmetic in one pass over each tensor, its parameters,
/// gradient and moments read and written where they lie, in parallel over blocks of
/// [`BLOCK`] values. Burn's Adam chains a dozen single-threaded whole-tensor ops per parameter
/// (3.5 % of r3d_18's bf16 step at micro-batch 1, the other core idle). The state is Burn's own
/// ([`AdamState`], [`AdamWState`]), so a checkpoint is the one Burn's optimizer writes and reads,
/// on any backend.
#[derive(Debug, Clone)]
pub struct HostAdam(pub CompactAdam);

/// One step of [`HostAdam`] on Burn's moments (`None` before the first step).
fn host_adam_step<B: Backend, const D: usize>(
    adam: &CompactAdam,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    momentum: Option<AdaptiveMomentumState<B, D>>,
) -> (Tensor<B, D>, AdaptiveMomentumState<B, D>) {
    let (device, dtype) = (tensor.device(), tensor.dtype());
    let mut params = host_f32(tensor);
    let grads = host_f32(grad);
    let (time, mut first, mut second) = match momentum {
        Some(state) => (
            state.time,
            host_f32(state.moment_1),
            host_f32(state.moment_2),
        ),
        None => {
            let zeros = || TensorData::zeros::<f32, _>(params.shape.clone());
            (0, zeros(), zeros())
        }
    };
    let time = time + 1;
    let step = adam.at_step(lr as f32, time);
    let (p, m, v) = (
        f32_slice(&mut params),
        f32_slice(&mut first),
        f32_slice(&mut second),
    );
    let g = grads.as_slice::<f32>().expect("gradients are f32 here");
    p.par_chunks_mut(BLOCK)
        .zip(g.par_chunks(BLOCK))
        .zip(m.par_chunks_mut(BLOCK))
        .zip(v.par_chunks_mut(BLOCK))
        .for_each(|(((p, g), m), v)| {
            vidtrain_model::cpu_kernels::vectorized(
                #[inline(always)]
                || step.apply(p, g, m, v),
            )
        });
    let tensor = on_device(params, &device, dtype);
    let moment = |data| Tensor::<B, D>::from_data(data, &device);
    let state = AdaptiveMomentumState::new(time, moment(first), moment(second));
    (tensor, state)
}

/// A host tensor's values, which [`host_f32`] made f32.
fn f32_slice(data: &mut TensorData) -> &mut [f32] {
    data.as_mut_slice::<f32>()
        .expect("parameters and moments are f32 here")
}

/// [`HostAdam`] for AdamW, with Burn's AdamW state.
#[derive(Debug, Clone)]
pub struct HostAdamW(pub CompactAdam);

/// Burn's `SimpleOptimizer` for [`HostAdam`] and [`HostAdamW`]: [`host_adam_step`] on the
/// moments of Burn's state type for the same optimizer.
macro_rules! host_adam {
    ($($host:ty => $state:ident, decoupled: $decoupled:literal);+) => {$(
        impl<B: Backend> SimpleOptimizer<B> for $host {
            type State<const D: usize> = $state<B, D>;

            fn step<const D: usize>(
                &self,
                lr: f64,
                tensor: Tensor<B, D>,
                grad: Tensor<B, D>,
                state: Option<Self::State<D>>,
            ) -> (Tensor<B, D>, Option<Self::State<D>>) {
                assert_eq!(
                    self.0.decoupled, $decoupled,
                    "HostAdam steps Adam, HostAdamW steps AdamW (decoupled weight decay)"
                );
                let (tensor, momentum) =
                    host_adam_step(&self.0, lr, tensor, grad, state.map(|s| s.momentum));
                (tensor, Some($state { momentum }))
            }

            fn to_device<const D: usize>(
                state: Self::State<D>,
                device: &B::Device,
            ) -> Self::State<D> {
                $state {
                    momentum: state.momentum.to_device(device),
                }
            }
        }
    )+};
}

host_adam!(HostAdam => AdamState, decoupled: false; HostAdamW => AdamWState, decoupled: true);

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{AdamConfig, AdamWConfig, SgdConfig};
    use burn::tensor::Distribution;

    const LEN: usize = 3 * BLOCK + 100;

    fn random(seed: u64, scale: f32) -> Vec<f32> {
        let device = Default::default();
        Flex::seed(&device, seed);
        Tensor::<Flex, 1>::random([LEN], Distribution::Normal(0.0, 1.0), &device)
            .mul_scalar(scale)
            .into_data()
            .to_vec()
            .unwrap()
    }

    fn tensor(values: &[f32]) -> Tensor<Flex, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let scale = a.iter().fold(1e-12f32, |max, v| max.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0f32, |max, (x, y)| max.max((x - y).abs()))
            / scale
    }

    /// Five steps of a Burn optimizer and of ours (f32 state) from the same parameters and
    /// gradients give the same parameters: ours is Burn's rule, block by block.
    fn same_as_burn<O: SimpleOptimizer<Flex>, U: SimpleOptimizer<Flex>>(burn: O, ours: U) {
        let mut theirs = (random(1, 1.0), None);
        let mut mine = (theirs.0.clone(), None);
        for step in 0..5 {
            let grad = random(10 + step, 0.1);
            let lr = 0.01;
            let (updated, state) = burn.step(lr, tensor(&theirs.0), tensor(&grad), theirs.1);
            theirs = (updated.into_data().to_vec().unwrap(), state);
            let (updated, state) = ours.step(lr, tensor(&mine.0), tensor(&grad), mine.1);
            mine = (updated.into_data().to_vec().unwrap(), state);
            let error = relative_error(&theirs.0, &mine.0);
            assert!(error < 1e-6, "step {step}: {error}");
        }
    }

    #[test]
    fn with_f32_state_each_optimizer_is_burns() {
        let f32 = OptimizerStateFormat::F32;
        same_as_burn(
            AdamConfig::new()
                .with_weight_decay(Some(WeightDecayConfig::new(0.01)))
                .build(),
            CompactAdam::new(f32, 0.01, false),
        );
        same_as_burn(
            AdamWConfig::new().with_weight_decay(0.01).build(),
            CompactAdam::new(f32, 0.01, true),
        );
        // On Burn's own state, in one pass per tensor.
        same_as_burn(
            AdamConfig::new()
                .with_weight_decay(Some(WeightDecayConfig::new(0.01)))
                .build(),
            HostAdam(CompactAdam::new(f32, 0.01, false)),
        );
        same_as_burn(
            AdamWConfig::new().with_weight_decay(0.01).build(),
            HostAdamW(CompactAdam::new(f32, 0.01, true)),
        );
        for nesterov in [false, true] {
            let momentum = MomentumConfig {
                momentum: 0.9,
                dampening: 0.0,
                nesterov,
            };
            same_as_burn(
                SgdConfig::new()
                    .with_momentum(Some(momentum))
                    .with_weight_decay(Some(WeightDecayConfig::new(0.01)))
                    .build::<Flex>(),
                CompactSgd {
                    momentum: 0.9,
                    nesterov,
                    weight_decay: 0.01,
                    format: f32,
                },
            );
        }
    }

    /// The 8-bit step is the f32 step applied to the dequantized state: the same parameters
    /// after every step, and moments that encode the f32 step's moments.
    fn equals_f32_on_dequantized_state(
        update: impl Fn(OptimizerStateFormat) -> Box<dyn Fn(&mut [f32], &[f32], &mut MomentState)>,
        moments: &[bool],
    ) {
        let eight_bit = update(OptimizerStateFormat::Blockwise8);
        let full = update(OptimizerStateFormat::F32);
        let mut params = random(2, 1.0);
        let mut state = MomentState {
            time: 0,
            moments: moments
                .iter()
                .map(|&signed| StoredMoment::zeros(OptimizerStateFormat::Blockwise8, LEN, signed))
                .collect(),
        };
        for step in 0..6 {
            let grads = random(20 + step, 0.1);
            let mut reference_state = MomentState {
                time: state.time,
                moments: state
                    .moments
                    .iter()
                    .map(|m| StoredMoment::F32(m.to_f32()))
                    .collect(),
            };
            let mut reference = params.clone();
            full(&mut reference, &grads, &mut reference_state);
            eight_bit(&mut params, &grads, &mut state);
            assert_eq!(params, reference, "step {step}: parameters differ");
            assert_eq!(state.time, reference_state.time);
            // The stored moments are the f32 step's moments encoded: the same codes and scales.
            for (stored, exact) in state.moments.iter().zip(&reference_state.moments) {
                let StoredMoment::Blockwise8 { signed, .. } = stored else {
                    panic!("8-bit state");
                };
                let mut encoded =
                    StoredMoment::zeros(OptimizerStateFormat::Blockwise8, LEN, *signed);
                let exact = exact.to_f32();
                for (mut block, values) in encoded.blocks_mut().into_iter().zip(exact.chunks(BLOCK))
                {
                    block.write(values);
                }
                assert_eq!(stored, &encoded, "step {step}");
            }
        }
        assert_eq!(
            state.moments.iter().map(StoredMoment::bytes).sum::<usize>(),
            moments.len() * (LEN + 4 * LEN.div_ceil(BLOCK))
        );
    }

    #[test]
    fn eight_bit_adam_equals_f32_adam_on_the_dequantized_state_step_by_step() {
        for decoupled in [false, true] {
            equals_f32_on_dequantized_state(
                |format| {
                    let adam = CompactAdam::new(format, 0.01, decoupled);
                    Box::new(move |p, g, s| adam.update(1e-3, p, g, s))
                },
                &[true, false],
            );
        }
    }

    #[test]
    fn eight_bit_sgd_momentum_equals_f32_sgd_on_the_dequantized_buffer_step_by_step() {
        equals_f32_on_dequantized_state(
            |format| {
                let sgd = CompactSgd {
                    momentum: 0.9,
                    nesterov: true,
                    weight_decay: 0.01,
                    format,
                };
                Box::new(move |p, g, s| sgd.update(1e-2, p, g, s))
            },
            &[true],
        );
    }
}
