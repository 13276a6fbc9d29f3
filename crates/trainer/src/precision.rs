//! Mixed-precision bookkeeping of the training loop: the compute dtype a precision setting means,
//! dynamic loss scaling for fp16 (as PyTorch's `GradScaler`), and gradient clipping by global norm
//! after unscaling.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use vidtrain_config::Precision;

/// The dtype activations are computed in for `precision` (weights and optimizer stay f32).
pub fn compute_dtype(precision: Precision) -> FloatDType {
    match precision {
        Precision::Full => FloatDType::F32,
        Precision::Half => FloatDType::F16,
        Precision::BHalf => FloatDType::BF16,
    }
}

/// The initial fp16 loss scale, 2^16.
pub const INITIAL_LOSS_SCALE: f64 = 65536.0;
/// Clean steps after which the scale doubles.
pub const GROWTH_INTERVAL: u32 = 2000;

/// Dynamic loss scaling: the loss is multiplied by `scale` before backward so that small fp16
/// gradients do not flush to zero; gradients are divided by it before clipping and the optimizer
/// step. A step with an inf/NaN gradient is skipped and the scale halved; after
/// [`GROWTH_INTERVAL`] clean steps it doubles. Disabled (scale 1, nothing checked) for f32 and
/// bf16, whose exponent range needs no scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Whether scaling is on (fp16).
    pub enabled: bool,
    /// The current scale.
    pub scale: f64,
    /// Clean steps since the last change of scale.
    pub clean_steps: u32,
    /// Optimizer steps skipped because of inf/NaN gradients, in the whole run.
    pub skipped_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new(Precision::Full)
    }
}

/// What to do with one accumulated group's gradients.
pub enum StepDecision {
    /// Step with these unscaled (and clipped) gradients.
    Step(GradientsParams),
    /// Skip the optimizer step: a gradient was inf or NaN at this scale.
    Skip {
        /// The scale that overflowed.
        scale: f64,
    },
}

impl LossScaler {
    /// The scaler for `precision`.
    pub fn new(precision: Precision) -> Self {
        let enabled = precision == Precision::Half;
        Self {
            enabled,
            scale: if enabled { INITIAL_LOSS_SCALE } else { 1.0 },
            clean_steps: 0,
            skipped_steps: 0,
        }
    }

    /// Checks, unscales and clips a group's gradients (summed over its micro-batches, each
    /// computed from `scale × weight × loss`), updating the scale.
    pub fn unscale<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        model: &M,
        mut grads: GradientsParams,
        clip_norm: f64,
    ) -> StepDecision {
        // The scale these gradients were computed with (growth below applies from the next step).
        let used = self.scale;
        if self.enabled {
            let total = sum_of_all_gradients::<B, M>(model, &grads);
            if !total.is_finite() {
                let scale = self.scale;
                self.scale = (self.scale / 2.0).max(1.0);
                self.clean_steps = 0;
                self.skipped_steps += 1;
                return StepDecision::Skip { scale };
            }
            self.clean_steps += 1;
            if self.clean_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        }
        let mut factor = 1.0 / used;
        if clip_norm > 0.0 {
            let norm = global_norm::<B, M>(model, &grads) * factor;
            if norm > clip_norm {
                factor *= clip_norm / norm;
            }
        }
        if factor != 1.0 {
            grads = scale_gradients::<B, M>(model, grads, factor);
        }
        StepDecision::Step(grads)
    }
}

/// Visits every float parameter's id and dimension.
struct ParamIds(Vec<(ParamId, usize)>);

impl<B: Backend> ModuleVisitor<B> for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

fn param_ids<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<(ParamId, usize)> {
    let mut ids = ParamIds(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// Runs `f` on each parameter's gradient as a flat tensor of the inner backend.
fn each_gradient<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
    mut f: impl FnMut(Tensor<B::InnerBackend, 1>),
) {
    for (id, dims) in param_ids::<B, M>(model) {
        let flat = match dims {
            1 => grads.get::<B::InnerBackend, 1>(id),
            2 => grads.get::<B::InnerBackend, 2>(id).map(|g| g.flatten(0, 1)),
            3 => grads.get::<B::InnerBackend, 3>(id).map(|g| g.flatten(0, 2)),
            4 => grads.get::<B::InnerBackend, 4>(id).map(|g| g.flatten(0, 3)),
            5 => grads.get::<B::InnerBackend, 5>(id).map(|g| g.flatten(0, 4)),
            _ => None,
        };
        if let Some(flat) = flat {
            f(flat);
        }
    }
}

/// Σ of every gradient value, read back once: finite iff no gradient holds inf or NaN.
fn sum_of_all_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut sums = Vec::new();
    each_gradient::<B, M>(model, grads, |g| sums.push(g.cast(FloatDType::F32).sum()));
    if sums.is_empty() {
        return 0.0;
    }
    Tensor::cat(sums, 0).sum().into_scalar().elem::<f64>()
}

/// √Σ g² over every gradient, read back once.
fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut squares = Vec::new();
    each_gradient::<B, M>(model, grads, |g| {
        squares.push(g.cast(FloatDType::F32).powi_scalar(2).sum())
    });
    if squares.is_empty() {
        return 0.0;
    }
    Tensor::cat(squares, 0)
        .sum()
        .into_scalar()
        .elem::<f64>()
        .sqrt()
}

/// Every gradient multiplied by `factor`.
fn scale_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    fn rescale<B: Backend, const D: usize>(grads: &mut GradientsParams, id: ParamId, factor: f64) {
        if let Some(g) = grads.remove::<B, D>(id) {
            grads.register::<B, D>(id, g * factor);
        }
    }
    for (id, dims) in param_ids::<B, M>(model) {
        match dims {
            1 => rescale::<B::InnerBackend, 1>(&mut grads, id, factor),
            2 => rescale::<B::InnerBackend, 2>(&mut grads, id, factor),
            3 => rescale::<B::InnerBackend, 3>(&mut grads, id, factor),
            4 => rescale::<B::InnerBackend, 4>(&mut grads, id, factor),
            5 => rescale::<B::InnerBackend, 5>(&mut grads, id, factor),
            _ => {}
        }
    }
    grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<Flex>;

    /// A linear layer and the gradients of `factor · sum(layer(x))` for x = 1.
    fn setup(factor: f32) -> (Linear<B>, GradientsParams) {
        let device = Default::default();
        let layer: Linear<B> = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<B, 2>::ones([1, 3], &device);
        let loss = layer.forward(x).sum() * factor;
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        (layer, grads)
    }

    /// The weight gradient the scaler lets through for a loss scaled by `factor`; panics when
    /// the step is skipped.
    fn stepped_weight_gradient(scaler: &mut LossScaler, factor: f32, clip: f64) -> Vec<f32> {
        let (layer, grads) = setup(factor);
        let StepDecision::Step(grads) = scaler.unscale::<B, _>(&layer, grads, clip) else {
            panic!("finite gradients were skipped");
        };
        weight_gradient(&layer, &grads)
    }

    fn weight_gradient(layer: &Linear<B>, grads: &GradientsParams) -> Vec<f32> {
        grads
            .get::<Flex, 2>(layer.weight.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap()
    }

    #[test]
    fn fp16_gradients_are_unscaled_before_the_step() {
        let mut scaler = LossScaler::new(Precision::Half);
        assert_eq!(scaler.scale, INITIAL_LOSS_SCALE);
        // d sum(W x + b) / dW = 1 for x = 1, once unscaled.
        let gradient = stepped_weight_gradient(&mut scaler, INITIAL_LOSS_SCALE as f32, 0.0);
        assert!(gradient.iter().all(|g| (g - 1.0).abs() < 1e-6));
        assert_eq!((scaler.clean_steps, scaler.skipped_steps), (1, 0));
    }

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale() {
        let mut scaler = LossScaler::new(Precision::Half);
        let (layer, grads) = setup(f32::INFINITY);
        let decision = scaler.unscale::<B, _>(&layer, grads, 0.0);
        assert!(matches!(decision, StepDecision::Skip { scale } if scale == INITIAL_LOSS_SCALE));
        assert_eq!(scaler.scale, INITIAL_LOSS_SCALE / 2.0);
        assert_eq!(scaler.skipped_steps, 1);
        let (layer, grads) = setup(f32::NAN);
        assert!(matches!(
            scaler.unscale::<B, _>(&layer, grads, 0.0),
            StepDecision::Skip { .. }
        ));
        assert_eq!(scaler.scale, INITIAL_LOSS_SCALE / 4.0);
    }

    /// The gradients of `scale · sum(layer(x))` for a batch of 4 rows of ones, with the layer
    /// computed in f16 as the model computes it (input and weights cast, f32 masters): the
    /// upstream gradient `scale` and the weight gradient `4 · scale` are f16 values in backward,
    /// so they overflow f16 (max 65504) for real once they pass it.
    fn f16_gradients(layer: &Linear<B>, scale: f64) -> GradientsParams {
        let device = Default::default();
        let x = Tensor::<B, 2>::ones([4, 3], &device).cast(FloatDType::F16);
        let y = burn::tensor::module::linear(
            x,
            layer.weight.val().cast(FloatDType::F16),
            layer
                .bias
                .as_ref()
                .map(|bias| bias.val().cast(FloatDType::F16)),
        );
        let loss = y.cast(FloatDType::F32).sum() * scale;
        GradientsParams::from_grads(loss.backward(), layer)
    }

    #[test]
    fn a_real_f16_overflow_skips_steps_until_the_scale_fits_and_the_scale_grows_back() {
        let device = Default::default();
        let layer: Linear<B> = LinearConfig::new(3, 2).init(&device);
        let mut scaler = LossScaler::new(Precision::Half);
        // 2^16 overflows the upstream gradient, 2^15 and 2^14 the weight gradient (4 · scale).
        for overflowing in [65536.0, 32768.0, 16384.0] {
            assert_eq!(scaler.scale, overflowing);
            let grads = f16_gradients(&layer, scaler.scale);
            let decision = scaler.unscale::<B, _>(&layer, grads, 0.0);
            assert!(
                matches!(decision, StepDecision::Skip { scale } if scale == overflowing),
                "scale {overflowing} should overflow f16"
            );
        }
        assert_eq!((scaler.scale, scaler.skipped_steps), (8192.0, 3));
        let grads = f16_gradients(&layer, scaler.scale);
        let StepDecision::Step(grads) = scaler.unscale::<B, _>(&layer, grads, 0.0) else {
            panic!("2^13 fits f16 and was skipped");
        };
        // d sum(W x + b) / dW = 4 (four rows of ones), once unscaled.
        assert!(weight_gradient(&layer, &grads).iter().all(|g| *g == 4.0));
        // After the growth interval of clean steps the scale doubles again.
        scaler.clean_steps = GROWTH_INTERVAL - 1;
        let grads = f16_gradients(&layer, scaler.scale);
        assert!(matches!(
            scaler.unscale::<B, _>(&layer, grads, 0.0),
            StepDecision::Step(_)
        ));
        assert_eq!(scaler.scale, 16384.0);
    }

    #[test]
    fn the_scale_doubles_after_the_growth_interval_of_clean_steps() {
        let mut scaler = LossScaler::new(Precision::Half);
        scaler.clean_steps = GROWTH_INTERVAL - 1;
        // These gradients were computed at the old scale and are unscaled by it.
        let gradient = stepped_weight_gradient(&mut scaler, INITIAL_LOSS_SCALE as f32, 0.0);
        assert!(gradient.iter().all(|g| (g - 1.0).abs() < 1e-6));
        assert_eq!(scaler.scale, 2.0 * INITIAL_LOSS_SCALE);
        assert_eq!(scaler.clean_steps, 0);
    }

    #[test]
    fn bf16_and_f32_neither_scale_nor_check() {
        for precision in [Precision::Full, Precision::BHalf] {
            let mut scaler = LossScaler::new(precision);
            assert_eq!(scaler.scale, 1.0);
            let gradient = stepped_weight_gradient(&mut scaler, 3.0, 0.0);
            assert!(
                gradient.iter().all(|g| (g - 3.0).abs() < 1e-6),
                "{precision:?}"
            );
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm_of_the_unscaled_gradients() {
        let mut scaler = LossScaler::new(Precision::Half);
        // Weight gradient 6 ones (×scale), bias gradient 2 ones: unscaled global norm √8.
        let (layer, grads) = setup(INITIAL_LOSS_SCALE as f32);
        let StepDecision::Step(grads) = scaler.unscale::<B, _>(&layer, grads, 1.0) else {
            panic!("skipped");
        };
        let norm = global_norm::<B, _>(&layer, &grads);
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert!(
            weight_gradient(&layer, &grads)
                .iter()
                .all(|g| (g - 1.0 / 8f32.sqrt()).abs() < 1e-6)
        );
    }
}
