//! The block codes: unbiased stochastic rounding, each value within one step of its block,
//! both routes (host kernel and tensor ops), half-precision dtypes, sizes as the plan prices them.

use super::*;
use crate::TestBackend;

type B = TestBackend;

/// Values over several magnitudes: a ramp, a sine, blocks of one constant and a tail that does
/// not fill its block.
fn sample(length: usize) -> Vec<f32> {
    (0..length)
        .map(|i| match (i / BLOCK) % 4 {
            0 => i as f32 * 0.013 - 3.0,
            1 => (i as f32 * 0.37).sin() * 40.0,
            2 => 1.5,
            _ => ((i * 7919) % 1000) as f32 * 1e-4,
        })
        .collect()
}

fn tensor(values: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &Default::default(),
    )
}

fn read(tensor: Tensor<B, 1>) -> Vec<f32> {
    tensor
        .cast(FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

/// Each block's range of `values`, as (low, step) at `bits`.
fn ranges(values: &[f32], bits: u32) -> Vec<(f32, f32)> {
    values
        .chunks(BLOCK)
        .map(|block| {
            let low = block.iter().copied().fold(f32::MAX, f32::min);
            let high = block.iter().copied().fold(f32::MIN, f32::max);
            (low, (high - low) / ((1u32 << bits) - 1) as f32)
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Route {
    Host,
    TensorOps,
}

fn round_trip(values: &[f32], bits: u32, seed: u64, route: Route) -> Vec<f32> {
    let quantized = match route {
        Route::Host => Quantized::new(tensor(values), bits, seed),
        Route::TensorOps => quantize_by_tensor_ops(tensor(values), bits, seed),
    };
    match (&quantized, route) {
        (Quantized::Host { .. }, Route::Host) | (Quantized::Tensors { .. }, Route::TensorOps) => {}
        _ => panic!("{route:?} took the other route"),
    }
    read(quantized.restore())
}

/// Every restored value lies within one step of the original inside its block's range, and the
/// mean over many seeds converges to the original (unbiased), where rounding to nearest would
/// leave up to half a step and truncation a whole one: per value within 6σ of the mean of
/// `draws` Bernoulli roundings, and over all values within 0.01 step on average.
#[test]
fn stochastic_rounding_is_unbiased_and_within_one_step_on_both_routes() {
    let _rng = crate::rng_lock();
    let values = sample(6 * BLOCK + 37);
    let draws = 200;
    for route in [Route::Host, Route::TensorOps] {
        for bits in [16, 8, 4, 2] {
            let ranges = ranges(&values, bits);
            let mut sums = vec![0f64; values.len()];
            for seed in 0..draws {
                let restored = round_trip(&values, bits, seed, route);
                assert_eq!(restored.len(), values.len());
                for (index, (&value, &got)) in values.iter().zip(&restored).enumerate() {
                    let (low, step) = ranges[index / BLOCK];
                    let slack = step * 1e-3 + 1e-6;
                    assert!(
                        (got - value).abs() <= step + slack
                            && got >= low - slack
                            && got <= low + step * ((1u32 << bits) - 1) as f32 + slack,
                        "{route:?} {bits} bits: value {index} = {value} came back {got} (step {step})"
                    );
                    sums[index] += f64::from(got);
                }
            }
            let mut signed_error = 0f64;
            let mut steps = 0usize;
            for (index, &value) in values.iter().enumerate() {
                let (_, step) = ranges[index / BLOCK];
                if step == 0.0 {
                    assert_eq!(sums[index] / draws as f64, f64::from(value));
                    continue;
                }
                let error = (sums[index] / draws as f64 - f64::from(value)) / f64::from(step);
                let sigma = 0.5 / (draws as f64).sqrt();
                assert!(
                    error.abs() <= 6.0 * sigma,
                    "{route:?} {bits} bits: value {index} biased by {error} steps"
                );
                signed_error += error;
                steps += 1;
            }
            let mean_error = signed_error / steps as f64;
            assert!(
                mean_error.abs() <= 0.01,
                "{route:?} {bits} bits: mean bias {mean_error} steps"
            );
        }
    }
}

/// The same seed draws the same codes (a replay or a resumed step reads what the first run
/// kept); another seed draws others.
#[test]
fn codes_depend_on_the_seed_alone() {
    let _rng = crate::rng_lock();
    let values = sample(3 * BLOCK);
    for route in [Route::Host, Route::TensorOps] {
        let first = round_trip(&values, 4, 7, route);
        assert_eq!(first, round_trip(&values, 4, 7, route), "{route:?}");
        assert_ne!(first, round_trip(&values, 4, 8, route), "{route:?}");
    }
}

/// Half-precision activations come back in their dtype, within one step of their block.
#[test]
fn half_precision_comes_back_in_its_dtype() {
    let values = sample(2 * BLOCK + 5);
    let half = tensor(&values).cast(FloatDType::BF16);
    let restored = Quantized::new(half.clone(), 8, 3).restore();
    assert_eq!(restored.dtype(), DType::BF16);
    let expected = read(half);
    let ranges = ranges(&expected, 8);
    for (index, (got, want)) in read(restored).iter().zip(&expected).enumerate() {
        // One step of the block, then bf16's rounding of the result.
        let bound = ranges[index / BLOCK].1 + got.abs() / 128.0;
        assert!((got - want).abs() <= bound, "{got} vs {want}");
    }
}

/// The plan's price of a kept activation is what the host route allocates.
#[test]
fn kept_bytes_is_what_the_host_codes_hold() {
    for (length, bits) in [
        (BLOCK * 2, 16),
        (BLOCK * 10, 8),
        (BLOCK * 3 + 1, 4),
        (17, 2),
    ] {
        let values = sample(length);
        let codes = HostCodes::new(&values, bits, 1);
        let held = codes.codes.len() + 8 * codes.ranges.len();
        assert_eq!(
            held as u64,
            kept_bytes(length as u64, 4, bits),
            "{length} at {bits}"
        );
    }
    assert_eq!(kept_bytes(1000, 4, 32), 4000);
    assert_eq!(kept_bytes(1000, 2, 32), 2000);
}

/// A permuted view (ST-GCN's blocks read `[n, c, t, v]` permuted from the input norm) is read
/// in its logical order, not in its buffer's.
#[test]
fn a_permuted_view_comes_back_in_logical_order() {
    let values = sample(4 * 3 * 5 * 7);
    let tensor = Tensor::<B, 1>::from_data(TensorData::new(values, [420]), &Default::default())
        .reshape([4, 3, 5, 7])
        .permute([0, 2, 3, 1]);
    let expected = read(tensor.clone().reshape([420]));
    let restored = read(Quantized::new(tensor.reshape([420]), 16, 5).restore());
    for (got, want) in restored.iter().zip(&expected) {
        assert!((got - want).abs() <= 2.5e-3, "{got} vs {want}");
    }
}
