//! Tests of `batch_norm`.

use super::*;
use crate::TestBackend;
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Param};
use burn::nn::BatchNormConfig;
use burn::tensor::{DType, Distribution, FloatDType, Tolerance};

type B = Autodiff<TestBackend>;

/// Outputs, gradients (input, γ, β) and running statistics equal Burn's `BatchNorm`, in
/// training and in evaluation.
#[test]
fn equals_burn_batch_norm() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    // Two modules with separate running statistics and the same γ, β.
    let gamma = Tensor::<B, 1>::random([5], Distribution::Default, &device);
    let beta = Tensor::<B, 1>::random([5], Distribution::Default, &device);
    let module = || BatchNorm {
        gamma: Param::from_tensor(gamma.clone()),
        beta: Param::from_tensor(beta.clone()),
        ..BatchNormConfig::new(5).init::<B>(&device)
    };
    let (ours, theirs) = (module(), module());
    let x = Tensor::<B, 3>::random([3, 5, 17], Distribution::Normal(2.0, 3.0), &device);
    let x_ours = x.clone().detach().require_grad();
    let x_theirs = x.detach().require_grad();
    let got = batch_norm(&ours, x_ours.clone());
    let expected = theirs.forward(x_theirs.clone());
    let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
    got.to_data()
        .assert_approx_eq::<f32>(&expected.to_data(), tolerance);

    let upstream = Tensor::<B, 3>::random([3, 5, 17], Distribution::Default, &device);
    let grads_ours = (got * upstream.clone()).sum().backward();
    let grads_theirs = (expected * upstream).sum().backward();
    let gradient = |tensor: &Tensor<B, 3>, grads| tensor.grad(grads).unwrap().to_data();
    gradient(&x_ours, &grads_ours)
        .assert_approx_eq::<f32>(&gradient(&x_theirs, &grads_theirs), tolerance);
    for (a, b) in [(&ours.gamma, &theirs.gamma), (&ours.beta, &theirs.beta)] {
        a.grad(&grads_ours)
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(&b.grad(&grads_theirs).unwrap().to_data(), tolerance);
    }
    assert_same_running_statistics(&ours, &theirs, tolerance);

    // Evaluation: running statistics, no autodiff.
    let inner = |norm: &BatchNorm<B>| norm.clone().valid();
    let x = Tensor::<TestBackend, 3>::random([2, 5, 9], Distribution::Default, &device);
    batch_norm(&inner(&ours), x.clone())
        .to_data()
        .assert_approx_eq::<f32>(&inner(&theirs).forward(x).to_data(), tolerance);
}

/// The running mean and variance of `a` equal `b`'s.
fn assert_same_running_statistics(a: &BatchNorm<B>, b: &BatchNorm<B>, tolerance: Tolerance<f32>) {
    for (a, b) in [
        (&a.running_mean, &b.running_mean),
        (&a.running_var, &b.running_var),
    ] {
        a.value()
            .to_data()
            .assert_approx_eq::<f32>(&b.value().to_data(), tolerance);
    }
}

fn backward(norm: &BatchNorm<B>, wants_input: bool, gate: ReluGate) -> NormReluBackward<'_, B> {
    NormReluBackward {
        norm,
        wants_input,
        gate,
    }
}

/// A BatchNorm of `channels` with random γ and β in −0.5..0.5, so that a following ReLU
/// blocks some values of every channel.
fn random_affine_norm(channels: usize) -> BatchNorm<B> {
    let device = Default::default();
    let mut norm = BatchNormConfig::new(channels).init::<B>(&device);
    norm.gamma = Param::from_tensor(Tensor::random([channels], Distribution::Default, &device));
    norm.beta = Param::from_tensor(Tensor::random(
        [channels],
        Distribution::Uniform(-0.5, 0.5),
        &device,
    ));
    norm
}

/// The hand-written gradients of BatchNorm + ReLU equal autodiff's through Burn's
/// `BatchNorm` and `relu`, with the ReLU blocking about half of the values, its gate
/// recomputed or applied beforehand.
#[test]
fn norm_relu_gradients_equal_autodiff() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let norm = random_affine_norm(4);
    let x = Tensor::<B, 3>::random([3, 4, 13], Distribution::Normal(1.0, 2.0), &device);
    let upstream = Tensor::<B, 3>::random([3, 4, 13], Distribution::Default, &device);
    let tracked = x.clone().detach().require_grad();
    let output = burn::tensor::activation::relu(norm.forward(tracked.clone()));
    let passed = output.clone().inner().greater_elem(0.0).float();
    let grads = (output * upstream.clone()).sum().backward();
    let tolerance = Tolerance::rel_abs(1e-4, 1e-5);
    // The forward's gate applied to the upstream gradient beforehand, as for a compressed
    // input (`ReluGate::Applied`), gives the same gradients.
    let gated = Tensor::from_inner(upstream.clone().inner() * passed);
    let cases = [
        (ReluGate::FromInput, upstream.clone()),
        (ReluGate::Applied, gated),
    ];
    // The host kernels and the composition of Burn ops (what a device runs).
    for (by_hand, input_gradient) in cases.into_iter().flat_map(|(gate, upstream)| {
        [
            backward(&norm, true, gate).on_host(x.clone(), upstream.clone()),
            backward(&norm, true, gate).composed(x.clone(), upstream),
        ]
    }) {
        input_gradient
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(&tracked.grad(&grads).unwrap().to_data(), tolerance);
        for param in [&norm.gamma, &norm.beta] {
            by_hand
                .get::<TestBackend, 1>(param.id)
                .unwrap()
                .to_data()
                .assert_approx_eq::<f32>(&param.grad(&grads).unwrap().to_data(), tolerance);
        }
    }
    // Without the input's gradient, the same parameter gradients.
    let (by_hand, none) = backward(&norm, false, ReluGate::FromInput).on_host(x, upstream);
    assert!(none.is_none());
    by_hand
        .get::<TestBackend, 1>(norm.gamma.id)
        .unwrap()
        .to_data()
        .assert_approx_eq::<f32>(&norm.gamma.grad(&grads).unwrap().to_data(), tolerance);
}

/// The host forward equals `relu(batch_norm(..))` of the composition, output and running
/// averages, in f32 and in bf16 (the stem's half-precision input), over segments longer
/// than a lane block and with a ragged end.
#[test]
fn host_norm_relu_equals_the_composition() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let norm = random_affine_norm(3);
    let reference = norm.clone();
    let x = Tensor::<TestBackend, 3>::random([2, 3, 5000], Distribution::Normal(3.0, 2.0), &device);
    for (dtype, tolerance) in [
        (FloatDType::F32, Tolerance::rel_abs(1e-5, 1e-5)),
        (FloatDType::BF16, Tolerance::rel_abs(2e-2, 2e-2)),
    ] {
        let input = x.clone().cast(dtype);
        let (got, map) = norm_relu_untracked(&norm, Tensor::<B, 3>::from_inner(input.clone()));
        let got = got.inner();
        assert_eq!(got.dtype(), input.dtype());
        // The map it returns makes the same output again, clip by clip, bit for bit (what a
        // following convolution's backward reads instead of a kept copy).
        let map = map.expect("the host kernels return their map");
        match dtype {
            FloatDType::BF16 => assert_clips_made_again::<burn::tensor::bf16>(&map, &input, &got),
            _ => assert_clips_made_again::<f32>(&map, &input, &got),
        }
        let expected = burn::tensor::activation::relu(batch_norm(
            &reference,
            Tensor::<B, 3>::from_inner(input.cast(FloatDType::F32)),
        ));
        got.cast(FloatDType::F32)
            .to_data()
            .assert_approx_eq::<f32>(&expected.inner().to_data(), tolerance);
        assert_same_running_statistics(&norm, &reference, tolerance);
    }
}

fn assert_clips_made_again<T: crate::cpu_kernels::HostFloat + PartialEq + std::fmt::Debug>(
    map: &ChannelNorm,
    input: &Tensor<TestBackend, 3>,
    output: &Tensor<TestBackend, 3>,
) {
    let [n, ..] = input.dims();
    let input = input.to_data().to_vec::<T>().unwrap();
    let output = output.to_data().to_vec::<T>().unwrap();
    let clip = input.len() / n;
    let mut made = vec![T::from_f32(0.0); clip];
    for (input, output) in input.chunks(clip).zip(output.chunks(clip)) {
        map.forward_into(input, &mut made, map.clip_dims(clip));
        assert_eq!(made, output);
    }
}

/// A compressed input (`model.activation_bits`) read a row at a time gives the gradients of
/// the same values restored whole, in f32 and bf16 (rows of 175 values: blocks straddle
/// them), with either gate.
#[test]
fn an_input_read_from_codes_equals_the_restored_input() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let norm = random_affine_norm(4);
    let dims = [3, 4, 5, 5, 7];
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let x = Tensor::<TestBackend, 1>::random([2100], Distribution::Normal(1.0, 2.0), &device)
            .cast(dtype);
        let upstream = Tensor::<B, 5>::random(dims, Distribution::Default, &device).cast(dtype);
        let crate::quantize::Quantized::Host { codes, .. } =
            crate::quantize::Quantized::new(x.clone(), 8, 4)
        else {
            panic!("the CPU backend keeps host codes");
        };
        let restored: Tensor<B, 5> = Tensor::from_inner(
            crate::quantize::Quantized::new(x, 8, 4)
                .restore()
                .reshape(dims),
        );
        assert_eq!(codes.dtype(), restored.dtype());
        let input = HostInput {
            codes: &codes,
            dims,
        };
        for gate in [ReluGate::FromInput, ReluGate::Applied] {
            let (params_a, input_a) = backward(&norm, true, gate).of_codes(input, upstream.clone());
            let flat = |x: Tensor<B, 5>| x.reshape([3, 4, 175]);
            let (params_b, input_b) =
                backward(&norm, true, gate).on_host(flat(restored.clone()), flat(upstream.clone()));
            assert_eq!(
                input_a.unwrap().reshape([3, 4, 175]).into_data(),
                input_b.unwrap().into_data(),
                "{dtype:?} {gate:?}"
            );
            for param in [&norm.gamma, &norm.beta] {
                assert_eq!(
                    params_a
                        .get::<TestBackend, 1>(param.id)
                        .unwrap()
                        .into_data(),
                    params_b
                        .get::<TestBackend, 1>(param.id)
                        .unwrap()
                        .into_data()
                );
            }
        }
    }
}

/// BatchNorm with and without a ReLU as the tracked host op (training on the CPU) equals the
/// composition of Burn ops on a 5-D activation: output, the gradients of the input, γ and β,
/// and the running statistics; in f32 to 1e-5 and in bf16 (f32 parameters, mixed precision) to
/// bf16's resolution. In evaluation, the host pass with the running statistics equals Burn's
/// `BatchNorm`.
#[test]
fn tracked_norm_equals_the_composition() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    for (dtype, tolerance) in [
        (FloatDType::F32, Tolerance::rel_abs(1e-5, 1e-5)),
        (FloatDType::BF16, Tolerance::rel_abs(2e-2, 2e-2)),
    ] {
        for relu in [false, true] {
            // Separate modules (running statistics of their own), the same γ and β.
            let ours = random_affine_norm(4);
            let theirs = BatchNorm {
                gamma: Param::from_tensor(ours.gamma.val().detach()),
                beta: Param::from_tensor(ours.beta.val().detach()),
                ..BatchNormConfig::new(4).init::<B>(&device)
            };
            let x =
                Tensor::<B, 5>::random([2, 4, 3, 5, 6], Distribution::Normal(1.0, 2.0), &device)
                    .cast(dtype)
                    .detach();
            let (x_ours, x_theirs) = (x.clone().require_grad(), x.require_grad());
            let got = tracked::norm_tracked(&ours, x_ours.clone(), relu)
                .expect("tensors of burn-flex under autodiff");
            let expected = batch_norm_composed(&theirs, x_theirs.clone());
            let expected = if relu {
                burn::tensor::activation::relu(expected)
            } else {
                expected
            };
            assert_eq!(got.dtype(), DType::from(dtype));
            let as_f32 = |tensor: Tensor<B, 5>| tensor.cast(FloatDType::F32).into_data();
            as_f32(got.clone()).assert_approx_eq::<f32>(&as_f32(expected.clone()), tolerance);

            let upstream = Tensor::<B, 5>::random(got.dims(), Distribution::Default, &device);
            let loss =
                |output: Tensor<B, 5>| (output.cast(FloatDType::F32) * upstream.clone()).sum();
            let grads_ours = loss(got).backward();
            let grads_theirs = loss(expected).backward();
            let input_gradient = |x: &Tensor<B, 5>, grads| {
                let gradient = x.grad(grads).expect("the input is tracked");
                assert_eq!(gradient.dtype(), DType::from(dtype));
                gradient.cast(FloatDType::F32).into_data()
            };
            input_gradient(&x_ours, &grads_ours)
                .assert_approx_eq::<f32>(&input_gradient(&x_theirs, &grads_theirs), tolerance);
            for (a, b) in [(&ours.gamma, &theirs.gamma), (&ours.beta, &theirs.beta)] {
                a.grad(&grads_ours)
                    .unwrap()
                    .to_data()
                    .assert_approx_eq::<f32>(&b.grad(&grads_theirs).unwrap().to_data(), tolerance);
            }
            assert_same_running_statistics(&ours, &theirs, Tolerance::rel_abs(1e-5, 1e-5));

            // Evaluation (the plain backend): the host pass with the running statistics.
            let x =
                Tensor::<TestBackend, 5>::random([2, 4, 3, 2, 2], Distribution::Default, &device)
                    .cast(dtype);
            let (ours, theirs) = (ours.valid(), theirs.valid());
            let got = if relu {
                batch_norm_relu_channels(&ours, x.clone())
            } else {
                batch_norm_channels(&ours, x.clone())
            };
            let expected = batch_norm_composed(&theirs, x);
            let expected = if relu {
                burn::tensor::activation::relu(expected)
            } else {
                expected
            };
            let as_f32 = |tensor: Tensor<TestBackend, 5>| tensor.cast(FloatDType::F32).into_data();
            as_f32(got).assert_approx_eq::<f32>(&as_f32(expected), tolerance);
        }
    }
}
