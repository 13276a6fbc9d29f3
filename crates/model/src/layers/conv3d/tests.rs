//! Tests of `conv3d`.

use super::*;
use crate::TestBackend;
use burn::backend::Autodiff;
use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3dConfig;
use burn::tensor::{DType, Distribution, FloatDType, Tolerance};

type B = Autodiff<TestBackend>;

/// The convolution equals Burn's `Conv3d` module with the same weights: outputs and the
/// gradients of weight, bias and input.
fn check(
    channels_in: usize,
    channels_out: usize,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) {
    let device = Default::default();
    let ours = VideoConv3dConfig::new(channels_in, channels_out, kernel, stride, padding)
        .init::<B>(&device);
    let mut theirs = Conv3dConfig::new([channels_in, channels_out], kernel)
        .with_stride(stride)
        .with_padding(PaddingConfig3d::Explicit(
            padding[0], padding[1], padding[2],
        ))
        .init::<B>(&device);
    theirs.weight = Param::from_tensor(ours.weight.val().detach());
    theirs.bias = Some(Param::from_tensor(
        ours.bias.as_ref().unwrap().val().detach(),
    ));

    let input = Tensor::<B, 5>::random([2, channels_in, 5, 11, 10], Distribution::Default, &device);
    let input_first = input.clone().detach().require_grad();
    let input_last = input.detach().require_grad();
    let expected = theirs.forward(input_first.clone());
    let got = ours.forward(input_last.clone());
    got.to_data()
        .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::rel_abs(1e-5, 1e-5));
    // The untracked forward off the CPU: patches times the weight, clip by clip.
    ours.forward_by_patches(input_last.clone().inner())
        .into_data()
        .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::rel_abs(1e-5, 1e-5));
    // The untracked forward on the CPU: the im2col kernel times the weight.
    ours.forward_untracked(input_last.clone().detach())
        .into_data()
        .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::rel_abs(1e-5, 1e-5));

    // A fixed random upstream gradient through both.
    let upstream = Tensor::<B, 5>::random(expected.dims(), Distribution::Default, &device).detach();
    let grads_theirs = (expected * upstream.clone()).sum().backward();
    let grads_ours = (got * upstream.clone()).sum().backward();
    let tolerance = Tolerance::rel_abs(1e-4, 1e-4);

    // The hand-written backward (used in training) gives Burn's gradients too, along each
    // path: the wide-gemm CPU kernel, patches and matrix products (off the CPU), and the
    // backend's convolution backward.
    for path in [ConvPath::CpuGemm, ConvPath::Patches, ConvPath::BackendOps] {
        let (by_hand, input_by_hand) =
            ours.gradients_by(input_last.clone().detach(), upstream.clone(), true, path);
        let expected_weight = theirs.weight.grad(&grads_theirs).unwrap().to_data();
        let expected_bias = theirs.bias.as_ref().unwrap().grad(&grads_theirs).unwrap();
        let expected_input = input_first.grad(&grads_theirs).unwrap().to_data();
        by_hand
            .get::<TestBackend, 5>(ours.weight.id)
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(&expected_weight, tolerance);
        by_hand
            .get::<TestBackend, 1>(ours.bias.as_ref().unwrap().id)
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(&expected_bias.to_data(), tolerance);
        input_by_hand
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(&expected_input, tolerance);
    }
    ours.weight
        .grad(&grads_ours)
        .unwrap()
        .to_data()
        .assert_approx_eq::<f32>(
            &theirs.weight.grad(&grads_theirs).unwrap().to_data(),
            tolerance,
        );
    ours.bias
        .as_ref()
        .unwrap()
        .grad(&grads_ours)
        .unwrap()
        .to_data()
        .assert_approx_eq::<f32>(
            &theirs
                .bias
                .as_ref()
                .unwrap()
                .grad(&grads_theirs)
                .unwrap()
                .to_data(),
            tolerance,
        );
    input_last
        .grad(&grads_ours)
        .unwrap()
        .to_data()
        .assert_approx_eq::<f32>(
            &input_first.grad(&grads_theirs).unwrap().to_data(),
            tolerance,
        );
}

#[test]
fn matches_burn_conv3d_stem_first_stage() {
    let _rng = crate::rng_lock();
    check(3, 4, [3, 7, 7], [1, 2, 2], [1, 3, 3]);
}

#[test]
fn matches_burn_conv3d_stem_second_stage() {
    let _rng = crate::rng_lock();
    check(4, 6, [1, 3, 3], [1, 2, 2], [0, 1, 1]);
}

#[test]
fn matches_burn_conv3d_without_padding() {
    let _rng = crate::rng_lock();
    check(2, 3, [2, 2, 3], [2, 1, 3], [0, 0, 0]);
}

#[test]
fn matches_burn_conv3d_with_odd_sizes_and_large_strides() {
    let _rng = crate::rng_lock();
    check(2, 3, [1, 5, 4], [1, 3, 2], [0, 2, 1]);
    check(1, 2, [3, 3, 3], [1, 1, 1], [1, 1, 1]);
}

/// The forward and gradients of `conv` on `input` along `forward` (the tracked CPU op or Burn's
/// composition) for a fixed upstream gradient: output, weight gradient and, when the input is
/// tracked, its gradient.
fn tracked_run(
    conv: &VideoConv3d<B>,
    input: Tensor<B, 5>,
    upstream: &Tensor<B, 5>,
    forward: impl Fn(&VideoConv3d<B>, Tensor<B, 5>) -> Tensor<B, 5>,
) -> (
    Tensor<B, 5>,
    Tensor<TestBackend, 5>,
    Option<Tensor<TestBackend, 5>>,
) {
    let output = forward(conv, input.clone());
    let grads = (output.clone().cast(FloatDType::F32) * upstream.clone())
        .sum()
        .backward();
    let weight = conv.weight.grad(&grads).expect("the weight is a parameter");
    (output, weight, input.grad(&grads))
}

/// The tracked CPU op itself (what `forward` takes in training on the CPU).
fn tracked_forward(conv: &VideoConv3d<B>, input: Tensor<B, 5>) -> Tensor<B, 5> {
    let geometry = conv.geometry(input.dims());
    let bias = conv.bias.as_ref().map(|bias| bias.val());
    tracked::conv3d_tracked(input, conv.weight.val(), bias, geometry)
        .expect("tensors of burn-flex under autodiff")
}

/// Under mixed precision (bf16 activations, f32 weights) the tracked CPU convolution gives
/// Burn's composition (weights cast to bf16, `conv3d`, its autodiff): the output in bf16, the
/// weight gradient in f32 and the input's in bf16, equal to bf16's resolution.
#[test]
fn tracked_convolution_in_bf16_matches_burns_composition() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let conv = VideoConv3dConfig::new(3, 5, [3, 3, 3], [2, 2, 2], [1, 1, 1]).init::<B>(&device);
    let input = Tensor::<B, 5>::random([2, 3, 5, 9, 8], Distribution::Default, &device)
        .cast(FloatDType::BF16)
        .detach();
    let upstream = Tensor::<B, 5>::random([2, 5, 3, 5, 4], Distribution::Default, &device);
    let ours = tracked_run(
        &conv,
        input.clone().require_grad(),
        &upstream,
        tracked_forward,
    );
    let burns = tracked_run(&conv, input.require_grad(), &upstream, |conv, x| {
        conv.forward_by_backend(x)
    });
    assert_eq!(ours.0.dtype(), DType::BF16);
    assert_eq!(ours.1.dtype(), DType::F32);
    let input_gradient = ours.2.expect("the input is tracked");
    assert_eq!(input_gradient.dtype(), DType::BF16);
    let tolerance = Tolerance::rel_abs(2e-2, 2e-2);
    let f32_data = |tensor: Tensor<TestBackend, 5>| tensor.cast(FloatDType::F32).into_data();
    f32_data(ours.0.inner()).assert_approx_eq::<f32>(&f32_data(burns.0.inner()), tolerance);
    ours.1
        .into_data()
        .assert_approx_eq::<f32>(&burns.1.into_data(), tolerance);
    f32_data(input_gradient).assert_approx_eq::<f32>(&f32_data(burns.2.unwrap()), tolerance);
}

/// Without a bias and with an input that is data (not tracked), the tracked CPU convolution
/// makes the weight gradient alone, equal to Burn's.
#[test]
fn tracked_convolution_without_bias_or_input_gradient_matches_burns() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let conv = VideoConv3dConfig::new(4, 3, [1, 1, 1], [1, 2, 2], [0, 0, 0])
        .with_bias(false)
        .init::<B>(&device);
    let input = Tensor::<B, 5>::random([3, 4, 2, 7, 6], Distribution::Default, &device);
    let upstream = Tensor::<B, 5>::random([3, 3, 2, 4, 3], Distribution::Default, &device);
    let ours = tracked_run(&conv, input.clone(), &upstream, tracked_forward);
    let burns = tracked_run(&conv, input, &upstream, |conv, x| {
        conv.forward_by_backend(x)
    });
    assert!(ours.2.is_none(), "data has no gradient");
    let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
    ours.0
        .into_data()
        .assert_approx_eq::<f32>(&burns.0.into_data(), tolerance);
    ours.1
        .into_data()
        .assert_approx_eq::<f32>(&burns.1.into_data(), tolerance);
}

/// Inside a stretch that compresses what it keeps (`model.activation_bits`), the tracked
/// convolution keeps its input as codes: its output is the exact one, its input gradient does
/// not read the input, and its weight gradient is the one of the input its codes restore.
#[test]
fn tracked_convolution_keeping_codes_differentiates_the_restored_input() {
    use crate::quantize::{CompressedKeeping, Quantized, next_kept_codes};
    let _rng = crate::rng_lock();
    let device = Default::default();
    let conv = VideoConv3dConfig::new(3, 4, [3, 3, 3], [1, 2, 2], [1, 1, 1]).init::<B>(&device);
    let dims: [usize; 5] = [2, 3, 4, 9, 8];
    let input = Tensor::<B, 5>::random(dims, Distribution::Default, &device).require_grad();
    let upstream = Tensor::<B, 5>::random([2, 4, 4, 5, 4], Distribution::Default, &device);
    let (bits, seed) = {
        let _scope = CompressedKeeping::begin(8, 5);
        next_kept_codes().expect("inside the scope")
    };
    let kept = {
        let _scope = CompressedKeeping::begin(8, 5);
        tracked_run(&conv, input.clone(), &upstream, tracked_forward)
    };
    let exact = tracked_run(&conv, input.clone(), &upstream, tracked_forward);
    let elements: usize = dims.iter().product();
    let restored =
        Quantized::<TestBackend>::new(input.clone().inner().reshape([elements]), bits, seed)
            .restore()
            .reshape(dims);
    let of_restored = tracked_run(
        &conv,
        Tensor::from_inner(restored).require_grad(),
        &upstream,
        tracked_forward,
    );
    let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
    kept.0
        .into_data()
        .assert_approx_eq::<f32>(&exact.0.into_data(), tolerance);
    kept.2
        .unwrap()
        .into_data()
        .assert_approx_eq::<f32>(&exact.2.unwrap().into_data(), tolerance);
    kept.1
        .clone()
        .into_data()
        .assert_approx_eq::<f32>(&of_restored.1.into_data(), tolerance);
    let gap = (kept.1 - exact.1).abs().max().into_scalar();
    assert!(gap > 0.0, "the weight gradient read the exact input");
}
