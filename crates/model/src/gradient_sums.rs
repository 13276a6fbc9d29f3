//! Parameter gradients summed over several backward passes: the micro-batches of an
//! accumulation group (the trainer), the stretches and per-clip replays of a recompute step
//! ([`crate::recompute`]).

use std::marker::PhantomData;

use crate::cpu_kernels::add_assign;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// Burn's `GradientsAccumulator` with each parameter's sum added in place on the compute pool
/// (`cpu_kernels::add_assign`) where the gradients are host tensors: Burn's adds each gradient
/// on one thread.
#[derive(Default)]
pub struct GradientsAccumulator {
    sums: GradientsParams,
}

impl GradientsAccumulator {
    /// Adds `grads` (of `module`'s parameters) to the sums.
    pub fn accumulate<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        grads: GradientsParams,
    ) {
        module.visit(&mut Summing::<B> {
            sums: &mut self.sums,
            added: grads,
            backend: PhantomData,
        });
    }

    /// The sums, leaving none behind.
    pub fn grads(&mut self) -> GradientsParams {
        std::mem::take(&mut self.sums)
    }
}

/// Visits the parameters, moving each one's gradient from `added` into `sums`.
struct Summing<'a, B> {
    sums: &'a mut GradientsParams,
    added: GradientsParams,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Summing<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let added = self.added.remove::<B::InnerBackend, D>(param.id);
        let sum = match (self.sums.remove::<B::InnerBackend, D>(param.id), added) {
            (Some(sum), Some(added)) => add_assign(sum, added),
            (Some(gradient), None) | (None, Some(gradient)) => gradient,
            (None, None) => return,
        };
        self.sums.register::<B::InnerBackend, D>(param.id, sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsAccumulator as BurnsAccumulator;
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<crate::TestBackend>;

    /// Three micro-batches' gradients summed here equal Burn's accumulator's sums, parameter by
    /// parameter (the in-place parallel add on host tensors, over a million values so that the
    /// add splits across the pool), and the sums are taken out whole.
    #[test]
    fn sums_equal_burns_accumulator() {
        let device = Default::default();
        let layer: Linear<B> = LinearConfig::new(1024, 1100).init(&device);
        let mut ours = GradientsAccumulator::default();
        let mut burns = BurnsAccumulator::<Linear<B>>::new();
        let gradients = |x: &Tensor<B, 2>| {
            let loss = layer.forward(x.clone()).powi_scalar(2).sum();
            GradientsParams::from_grads(loss.backward(), &layer)
        };
        for _ in 0..3 {
            let x = Tensor::<B, 2>::random([4, 1024], Distribution::Default, &device);
            ours.accumulate(&layer, gradients(&x));
            burns.accumulate(&layer, gradients(&x));
        }
        let (mut ours, mut burns) = (ours.grads(), burns.grads());
        assert_eq!(ours.len(), 2);
        let weight = |grads: &mut GradientsParams| {
            grads
                .remove::<Flex, 2>(layer.weight.id)
                .expect("the weight has a gradient")
                .into_data()
        };
        weight(&mut ours).assert_approx_eq::<f32>(&weight(&mut burns), Tolerance::absolute(0.0));
        let bias_id = layer.bias.as_ref().expect("a bias").id;
        let bias = |grads: &mut GradientsParams| {
            grads
                .remove::<Flex, 1>(bias_id)
                .expect("the bias has a gradient")
                .into_data()
        };
        bias(&mut ours).assert_approx_eq::<f32>(&bias(&mut burns), Tolerance::absolute(0.0));
    }
}
