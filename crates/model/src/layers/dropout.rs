//! Dropout whose mask is drawn in parallel on the CPU.
//!
//! Burn's `Dropout` draws a Bernoulli tensor through the backend's generator, which on burn-flex
//! is one ChaCha stream on one thread: 13 % of a ViViT training step on the CPU (perf, `bench-model
//! --backbone vivit --rows "fp32 b4" --frames 8 --image 112`), for masks over every attention
//! matrix and feed-forward activation. Here, where the tensors live on the host, the mask comes
//! from a counter-based generator (SplitMix64 of `seed + (index + 1)·γ`) in chunks over the compute
//! pool, with the `1 / (1 − p)` scale folded in, so dropout is one multiplication. The mask depends
//! on the seed and the element's index alone, not on how many threads drew it. The seed is drawn
//! from the backend's generator, so seeding the backend (the recompute engine replays a segment
//! that way) replays the same masks. In training the mask is applied by one autodiff op
//! (`tracked`) that redraws it in backward instead of keeping it. Other backends (CUDA) keep
//! Burn's `Dropout`.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, TensorData, bf16, f16};
use rayon::prelude::*;

mod tracked;

/// Elements drawn per task: large enough that a task outweighs its scheduling.
const MASK_CHUNK: usize = 1 << 15;

/// SplitMix64's increment (2⁶⁴ / φ).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// `module`'s dropout of `input`: identity outside training (no autodiff) or at probability 0.
pub fn dropout<B: Backend, const D: usize>(module: &Dropout, input: Tensor<B, D>) -> Tensor<B, D> {
    let device = input.device();
    if !B::ad_enabled(&device) || module.prob == 0.0 {
        return input;
    }
    let dtype = input.dtype();
    if !crate::cpu_kernels::host_tensors::<B>(&device) || !crate::cpu_kernels::host_float(dtype) {
        return module.forward(input);
    }
    let mask = DropMask::draw::<B>(module.prob, &device);
    match tracked::dropout_tracked(input, mask) {
        Ok(output) => output,
        Err(input) => times_mask(input, mask),
    }
}

/// [`dropout`] as the input times a mask tensor (the reference the op is tested against), its
/// seed drawn from the backend's generator.
#[cfg(test)]
fn dropout_composed<B: Backend, const D: usize>(
    module: &Dropout,
    input: Tensor<B, D>,
) -> Tensor<B, D> {
    let mask = DropMask::draw::<B>(module.prob, &input.device());
    times_mask(input, mask)
}

/// `input` times the tensor of `mask`'s factors.
fn times_mask<B: Backend, const D: usize>(input: Tensor<B, D>, mask: DropMask) -> Tensor<B, D> {
    let (device, dtype) = (input.device(), input.dtype());
    let factors = keep_mask(input.shape(), dtype, mask);
    input * Tensor::from_data(factors, (&device, dtype))
}

/// 64 bits from the backend's generator (two f32 draws, their bit patterns joined).
fn draw_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1>::random([2], Distribution::Default, device)
        .cast(burn::tensor::FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .expect("cast to f32 above");
    (u64::from(draws[0].to_bits()) << 32) | u64::from(draws[1].to_bits())
}

/// SplitMix64's output function.
#[inline(always)]
fn split_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which elements a dropout of probability `prob` drops, by index in a tensor's row-major
/// order, for the generator seed `seed`: what [`dropout`]'s mask holds, for kernels that apply
/// it as they compute (the CPU attention op) instead of multiplying by a mask tensor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropMask {
    seed: u64,
    /// An element is dropped when the top 32 bits of its draw fall below `prob · 2³²`.
    threshold: u64,
    /// `1 / (1 − prob)`, the factor of the elements kept.
    pub scale: f64,
}

impl DropMask {
    pub(crate) fn new(prob: f64, seed: u64) -> Self {
        Self {
            seed,
            threshold: (prob * 4_294_967_296.0).round() as u64,
            scale: 1.0 / (1.0 - prob),
        }
    }

    /// A mask with probability `prob` whose seed comes from the backend's generator, as
    /// [`dropout`] draws it.
    pub(crate) fn draw<B: Backend>(prob: f64, device: &B::Device) -> Self {
        Self::new(prob, draw_seed::<B>(device))
    }

    /// Whether the element at `index` is dropped.
    #[inline(always)]
    pub(crate) fn dropped(&self, index: usize) -> bool {
        split_mix(
            self.seed
                .wrapping_add((index as u64 + 1).wrapping_mul(GAMMA)),
        ) >> 32
            < self.threshold
    }
}

/// The factors of `mask` over `shape` in `dtype`: 0 where it drops, else `1 / (1 − prob)`.
fn keep_mask(shape: burn::tensor::Shape, dtype: DType, mask: DropMask) -> TensorData {
    let count = shape.num_elements();
    let scale = mask.scale;
    let dropped = move |index: usize| mask.dropped(index);
    match dtype {
        DType::BF16 => draw(count, shape, bf16::from_f64(scale), bf16::ZERO, dropped),
        DType::F16 => draw(count, shape, f16::from_f64(scale), f16::ZERO, dropped),
        _ => draw(count, shape, scale as f32, 0.0, dropped),
    }
}

fn draw<E>(
    count: usize,
    shape: burn::tensor::Shape,
    kept: E,
    zero: E,
    dropped: impl Fn(usize) -> bool + Sync,
) -> TensorData
where
    E: burn::tensor::Element + Copy + Send + Sync,
{
    let values: Vec<E> = (0..count)
        .into_par_iter()
        .with_min_len(MASK_CHUNK)
        .map(|index| if dropped(index) { zero } else { kept })
        .collect();
    TensorData::new(values, shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::nn::DropoutConfig;
    use burn::tensor::FloatDType;

    type B = Autodiff<TestBackend>;

    fn values(tensor: Tensor<B, 2>) -> Vec<f32> {
        tensor
            .cast(FloatDType::F32)
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    }

    /// A fraction `p` of the elements is zeroed and the rest scaled by `1 / (1 − p)`, in every
    /// dtype the activations use; each row of 1024 keeps about its share (no stretch of the
    /// stream is all kept or all dropped).
    #[test]
    fn drops_a_fraction_p_and_scales_the_rest() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let module = DropoutConfig::new(0.25).init();
        for dtype in [FloatDType::F32, FloatDType::BF16, FloatDType::F16] {
            let ones = Tensor::<B, 2>::ones([256, 1024], &device).cast(dtype);
            let output = dropout(&module, ones);
            assert_eq!(output.dtype(), DType::from(dtype));
            let output = values(output);
            let zeros = output.iter().filter(|&&value| value == 0.0).count();
            let fraction = zeros as f64 / output.len() as f64;
            assert!(
                (fraction - 0.25).abs() < 0.005,
                "{dtype:?}: dropped {fraction}"
            );
            assert!(
                output
                    .iter()
                    .all(|&value| value == 0.0 || (value - 4.0 / 3.0).abs() < 1e-2),
                "{dtype:?}: kept values are scaled by 1/(1-p)"
            );
            for row in output.chunks(1024) {
                let dropped = row.iter().filter(|&&value| value == 0.0).count();
                assert!(
                    (180..340).contains(&dropped),
                    "a row dropped {dropped} of 1024"
                );
            }
        }
    }

    /// Seeding the backend replays the same mask (what activation recompute relies on); without
    /// a new seed the next call draws a different one; the number of threads changes nothing.
    #[test]
    fn the_backend_seed_replays_the_mask_whatever_the_thread_count() {
        // Other tests draw from the same backend generator: hold it between seed and draw.
        let _rng = crate::rng_lock();
        let device = Default::default();
        let module = DropoutConfig::new(0.5).init();
        let ones = || Tensor::<B, 2>::ones([64, 4096], &device);
        TestBackend::seed(&device, 7);
        let first = values(dropout(&module, ones()));
        let next = values(dropout(&module, ones()));
        TestBackend::seed(&device, 7);
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| values(dropout(&module, ones())));
        assert_eq!(first, one_thread);
        assert_ne!(first, next);
    }

    /// The gradient is the mask: zero where the output was dropped, the upstream gradient times
    /// `1 / (1 − p)` elsewhere.
    #[test]
    fn the_gradient_is_the_mask() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let module = DropoutConfig::new(0.3).init();
        let input = Tensor::<B, 2>::random([32, 1000], Distribution::Default, &device)
            .add_scalar(0.5)
            .require_grad();
        let upstream = Tensor::<B, 2>::random([32, 1000], Distribution::Default, &device);
        let output = dropout(&module, input.clone());
        let gradients = (output.clone() * upstream.clone()).sum().backward();
        let gradient = input.grad(&gradients).unwrap();
        let mask = output.inner().div(input.inner()); // 0 or 1/(1-p): inputs are ≥ 0.5
        gradient
            .into_data()
            .assert_approx_eq::<f32>(&(mask * upstream.inner()).into_data(), Default::default());
    }

    /// Without autodiff (evaluation) dropout is the identity, as Burn's.
    #[test]
    fn is_the_identity_in_evaluation() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let module = DropoutConfig::new(0.5).init();
        let input = Tensor::<TestBackend, 2>::random([8, 100], Distribution::Default, &device);
        dropout(&module, input.clone())
            .into_data()
            .assert_eq(&input.into_data(), true);
    }
}
