//! Tests of `conv_gemm`.

use super::*;
use crate::TestBackend;
use crate::gemm_f32::F32Path;
use crate::quantize::Quantized;
use burn::tensor::{Distribution, FloatDType, Tolerance};

/// `clips` clips of 3 channels, 5 frames of 9 × 8, into `channels_out` channels through a
/// 3 × 3 × 2 kernel with stride 1 × 2 × 2 and padding 1 × 1 × 0: odd sizes, padding on some
/// axes only, a temporal kernel whose reads overlap between groups of lines.
fn odd_geometry(clips: usize, channels_out: usize) -> ConvGeometry {
    ConvGeometry {
        input: [clips, 3, 5, 9, 8],
        channels_out,
        kernel: [3, 3, 2],
        stride: [1, 2, 2],
        padding: [1, 1, 0],
        output: [5, 5, 4],
    }
}

/// The bf16 route equals the f32 route on the same bf16 values (every product of two bf16
/// values is exact in f32; only the order of the f32 sums differs), on the AVX512_BF16 path
/// where the CPU has it and on the portable path everywhere, whatever the line groups: the
/// weight and bias gradients to f32 precision, the input gradient and the forward (stored in
/// bf16) to one bf16 rounding.
#[test]
fn bf16_products_equal_the_f32_route_on_bf16_values() {
    bf16_route_equals_the_f32_route(odd_geometry(2, 14), &[1, 7, 25]);
}

/// An f16 convolution (no f16 kernel: the f32 route) reads its input and upstream a clip at a
/// time and stores its forward and input gradient in f16, with no whole f32 copy: it equals the
/// f32 route on the same values to one f16 rounding of what it stores, the weight and bias
/// gradients to f32 precision. Through the public entry points, which choose the route by
/// dtype.
#[test]
fn f16_convolutions_equal_the_f32_route_and_store_f16() {
    let _rng = crate::rng_lock();
    let geometry = odd_geometry(3, 6);
    let (operands, bias, f32_route) = half_operands_and_the_f32_route(geometry, FloatDType::F16);
    let f16_results = results_of(
        &operands,
        &bias,
        geometry,
        |backward| backward.gradients(),
        |input, weight, bias| conv3d_forward(input, weight, bias, geometry),
    );
    assert_half_results_equal_the_f32_route(f16_results, &f32_route, DType::F16, "f16");
}

/// Half values multiplied in f32 (fp16 everywhere, bf16 on a CPU without a bf16 product) are
/// widened as the columns are written and as each group's upstream is read, never as whole f32
/// clips: whatever the line groups, bf16 and f16 inputs on the f32 route equal the f32 route on
/// the same values, the forward and input gradient to one rounding of what they store. The
/// forced route runs on every CPU, whichever route the public entry points would choose. Two
/// geometries: reads that overlap between groups, and strides past the kernel, whose input
/// lines between reads no group touches (they stay zero).
#[test]
fn half_values_multiplied_in_f32_equal_the_f32_route_whatever_the_groups() {
    let _rng = crate::rng_lock();
    let gaps = ConvGeometry {
        input: [2, 3, 5, 9, 8],
        channels_out: 5,
        kernel: [1, 2, 2],
        stride: [2, 3, 3],
        padding: [0, 0, 1],
        output: [3, 3, 3],
    };
    for geometry in [odd_geometry(2, 14), gaps] {
        half_values_multiplied_in_f32_equal_the_f32_route(geometry);
    }
}

fn half_values_multiplied_in_f32_equal_the_f32_route(geometry: ConvGeometry) {
    for (half, dtype) in [
        (FloatDType::BF16, DType::BF16),
        (FloatDType::F16, DType::F16),
    ] {
        let (operands, bias, f32_route) = half_operands_and_the_f32_route(geometry, half);
        for group in [1, 2, 7, 25] {
            let results = results_of(
                &operands,
                &bias,
                geometry,
                |backward| match dtype {
                    DType::F16 => backward.products::<f32, burn::tensor::f16>(group, None),
                    _ => backward.products::<f32, bf16>(group, None),
                },
                |input, weight, bias| forward_in_groups(input, weight, bias, geometry, group, None),
            );
            let label = format!("{dtype:?} values in f32, groups of {group} lines");
            assert_half_results_equal_the_f32_route(results, &f32_route, dtype, &label);
        }
    }
}

/// As above where the bf16 kernel packs the columns in several blocks of `k` and bands of
/// panels: 135 rows of columns (5 channels × 27 taps, odd), groups of 77 and 528 positions
/// (lines of 11 that panels of 32 cut in their middles).
#[test]
fn bf16_products_equal_the_f32_route_where_columns_take_several_blocks() {
    let geometry = ConvGeometry {
        input: [2, 5, 4, 12, 11],
        channels_out: 13,
        kernel: [3, 3, 3],
        stride: [1, 1, 1],
        padding: [1, 1, 1],
        output: [4, 12, 11],
    };
    bf16_route_equals_the_f32_route(geometry, &[7, 48]);
}

/// A convolution's forward and gradients: `(forward, weight, input, bias)`.
type Results = (
    Tensor<TestBackend, 5>,
    Tensor<TestBackend, 5>,
    Tensor<TestBackend, 5>,
    Tensor<TestBackend, 1>,
);

/// Random bf16 operands of `geometry` and the f32 route's results on them: `(input, weight,
/// upstream, bias)` and [`Results`]. The weight is f32 holding bf16 values, as the bf16 routes
/// round it.
fn bf16_operands_and_the_f32_route(
    geometry: ConvGeometry,
) -> ([Tensor<TestBackend, 5>; 3], Tensor<TestBackend, 1>, Results) {
    half_operands_and_the_f32_route(geometry, FloatDType::BF16)
}

/// [`bf16_operands_and_the_f32_route`] with values of `half` (bf16 or f16).
fn half_operands_and_the_f32_route(
    geometry: ConvGeometry,
    half: FloatDType,
) -> ([Tensor<TestBackend, 5>; 3], Tensor<TestBackend, 1>, Results) {
    let device = Default::default();
    let random = |shape: [usize; 5]| {
        Tensor::<TestBackend, 5>::random(shape, Distribution::Default, &device).cast(half)
    };
    let [n, c_in, ..] = geometry.input;
    let c_out = geometry.channels_out;
    let [t_out, h_out, w_out] = geometry.output;
    let input = random(geometry.input);
    let upstream = random([n, c_out, t_out, h_out, w_out]);
    let [kt, kh, kw] = geometry.kernel;
    let weight = random([c_out, c_in, kt, kh, kw]).cast(FloatDType::F32);
    let bias = Tensor::<TestBackend, 1>::random([c_out], Distribution::Default, &device);
    let operands = [input, weight, upstream];
    // The f32 route on the same values in f32 (a half input would be read clip by clip and its
    // forward stored in its dtype).
    let widened = operands
        .clone()
        .map(|operand| operand.cast(FloatDType::F32));
    let results = results_of(
        &widened,
        &bias,
        geometry,
        |backward| backward.products::<f32, f32>(7, None),
        |input, weight, bias| forward_in_groups(input, weight, bias, geometry, 7, None),
    );
    (operands, bias, results)
}

/// One route's [`Results`] on `[input, weight, upstream]` and `bias`: its `backward` of a
/// [`ConvBackward`] wanting every gradient, and its `forward(input, weight, bias)`.
fn results_of(
    [input, weight, upstream]: &[Tensor<TestBackend, 5>; 3],
    bias: &Tensor<TestBackend, 1>,
    geometry: ConvGeometry,
    backward: impl FnOnce(ConvBackward<'_, TestBackend>) -> ConvGradientsWithBias<TestBackend>,
    forward: impl FnOnce(
        Tensor<TestBackend, 5>,
        Tensor<TestBackend, 5>,
        Option<Tensor<TestBackend, 1>>,
    ) -> Tensor<TestBackend, 5>,
) -> Results {
    let ((weight_gradient, input_gradient), bias_gradient) = backward(ConvBackward {
        input: ConvInput::Tensor(input.clone()),
        weight: weight.clone(),
        upstream: upstream.clone(),
        geometry,
        wants: [true, true],
    });
    let forward = forward(input.clone(), weight.clone(), Some(bias.clone()));
    (
        forward,
        weight_gradient,
        input_gradient.expect("the input gradient was wanted"),
        bias_gradient.expect("the bias gradient was wanted"),
    )
}

/// bf16 results equal the f32 route's on the same bf16 values: the weight and bias gradients
/// to f32 precision (every product of two bf16 values is exact in f32; only the order of the
/// sums differs), the input gradient and the forward (stored in bf16) to one bf16 rounding.
fn assert_equal_to_the_f32_route(results: Results, f32_route: &Results, path: Path) {
    assert_half_results_equal_the_f32_route(results, f32_route, DType::BF16, &format!("{path:?}"));
}

/// [`assert_equal_to_the_f32_route`] for results stored in `half` (bf16 or f16), `label`
/// naming the route in a failure.
fn assert_half_results_equal_the_f32_route(
    results: Results,
    f32_route: &Results,
    half: DType,
    label: &str,
) {
    let (forward, weight_gradient, input_gradient, bias_gradient) = results;
    let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
    // One rounding of the stored result: 8 bits of significand in bf16, 11 in f16.
    let rounded = match half {
        DType::F16 => Tolerance::rel_abs(1.0 / 2048.0, 1e-4),
        _ => Tolerance::rel_abs(1.0 / 256.0, 1e-3),
    };
    bias_gradient
        .to_data()
        .assert_approx_eq::<f32>(&f32_route.3.to_data(), tolerance);
    weight_gradient
        .to_data()
        .assert_approx_eq::<f32>(&f32_route.1.to_data(), tolerance);
    for (half_values, f32_values) in [(input_gradient, &f32_route.2), (forward, &f32_route.0)] {
        assert_eq!(half_values.dtype(), half, "{label}");
        half_values
            .cast(FloatDType::F32)
            .to_data()
            .assert_approx_eq::<f32>(&f32_values.to_data(), rounded);
    }
}

fn bf16_route_equals_the_f32_route(geometry: ConvGeometry, groups: &[usize]) {
    let _rng = crate::rng_lock();
    let (operands, bias, f32_route) = bf16_operands_and_the_f32_route(geometry);
    let paths = [Path::Portable, Path::Avx512Bf16, Path::Amx];
    for path in paths.into_iter().filter(|path| path.available()) {
        for &group in groups {
            let results = results_of(
                &operands,
                &bias,
                geometry,
                |backward| backward.products::<bf16, bf16>(group, Some(path)),
                |input, weight, bias| {
                    forward_in_groups(input, weight, bias, geometry, group, Some(path))
                },
            );
            assert_equal_to_the_f32_route(results, &f32_route, path);
        }
    }
}

/// Stride-1 convolutions computed without columns (`conv_direct`) equal the f32 route on the
/// same bf16 values — in bf16 and in f32 (on f32, bf16 and f16 values), on the AVX512_BF16 and
/// AVX-512F / AVX2 paths where the CPU has them and on the portable paths everywhere: odd channel counts (a zero pair, partial panels of output channels), a weight
/// gradient over several blocks of positions, a padding smaller than the kernel on some axes
/// and none on others, a padding of one less than the kernel, a temporal-only kernel as ST-GCN's, a 1 × 1 × 1 kernel.
#[test]
fn direct_convolutions_equal_the_f32_route() {
    let _rng = crate::rng_lock();
    let geometries = [
        ([2, 5, 4, 12, 11], 13, [3, 3, 3], [1, 1, 1]),
        ([1, 3, 5, 9, 8], 14, [3, 3, 2], [0, 1, 1]),
        ([1, 70, 6, 3, 5], 40, [3, 1, 1], [1, 0, 0]),
        ([2, 33, 2, 3, 4], 7, [1, 1, 1], [0, 0, 0]),
        // Padding of one less than the kernel: the rows' shared gap is the whole padding.
        ([1, 3, 3, 5, 4], 5, [3, 3, 3], [2, 2, 1]),
        // Clips whose layouts outgrow the weight gradient's sums: summed block by block of
        // positions (1452 units of pairs in blocks of 256).
        ([1, 4, 6, 20, 20], 6, [3, 3, 3], [1, 1, 1]),
        // Many channels on a small volume: both clips stay pending and are multiplied into the
        // gradient's order at the end, over more positions than a block.
        ([2, 96, 4, 12, 12], 96, [3, 3, 3], [1, 1, 1]),
    ];
    for (input, channels_out, kernel, padding) in geometries {
        let output =
            std::array::from_fn(|axis| input[axis + 2] + 2 * padding[axis] - kernel[axis] + 1);
        let geometry = ConvGeometry {
            input,
            channels_out,
            kernel,
            stride: [1; 3],
            padding,
            output,
        };
        // Computed here whatever the taps; the routing takes fewer to im2col.
        assert_eq!(
            conv_direct::applies(&geometry),
            kernel.iter().product::<usize>() >= conv_direct::FEWEST_TAPS
        );
        let (operands, bias, f32_route) = bf16_operands_and_the_f32_route(geometry);
        let paths = [Path::Portable, Path::Avx512Bf16, Path::Amx];
        for path in paths.into_iter().filter(|path| path.available()) {
            let results = direct_results::<bf16>(&operands, &bias, geometry, path);
            assert_equal_to_the_f32_route(results, &f32_route, path);
        }
        // The f32 kernel on f32 values, and on half values it widens clip by clip.
        f32_tiles_equal_the_f32_route(geometry, "direct", |operands, bias, path| {
            direct_results::<f32>(operands, bias, geometry, path)
        });
    }
}

/// A route multiplied on the f32 tiles (`results(operands, bias, path)`: its [`Results`]) equals
/// the f32 route on the same values, on every f32 tile path this CPU has: on f32 values to 1e-5
/// (only the order of the sums differs), on bf16 and f16 values (fp16; bf16 on a CPU without the
/// bf16 instruction: read and stored in their dtype) to one rounding of what is stored.
fn f32_tiles_equal_the_f32_route(
    geometry: ConvGeometry,
    route: &str,
    results: impl Fn(&[Tensor<TestBackend, 5>; 3], &Tensor<TestBackend, 1>, F32Path) -> Results,
) {
    let paths = [F32Path::Portable, F32Path::Avx512, F32Path::Avx2];
    let (operands, bias, f32_route) = half_operands_and_the_f32_route(geometry, FloatDType::F32);
    for path in paths.into_iter().filter(|path| path.available()) {
        let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
        let (forward, weight_gradient, input_gradient, bias_gradient) =
            results(&operands, &bias, path);
        for (values, expected, name) in [
            (forward, &f32_route.0, "forward"),
            (weight_gradient, &f32_route.1, "weight gradient"),
            (input_gradient, &f32_route.2, "input gradient"),
        ] {
            assert_eq!(values.dtype(), DType::F32, "{route} {path:?} {name}");
            let expected = expected.to_data();
            values
                .to_data()
                .assert_approx_eq::<f32>(&expected, tolerance);
        }
        let expected = f32_route.3.to_data();
        bias_gradient
            .to_data()
            .assert_approx_eq::<f32>(&expected, tolerance);
    }
    for (half, dtype) in [
        (FloatDType::BF16, DType::BF16),
        (FloatDType::F16, DType::F16),
    ] {
        let (operands, bias, f32_route) = half_operands_and_the_f32_route(geometry, half);
        for path in paths.into_iter().filter(|path| path.available()) {
            let label = format!("{route} {path:?} on {dtype:?}");
            let results = results(&operands, &bias, path);
            assert_half_results_equal_the_f32_route(results, &f32_route, dtype, &label);
        }
    }
}

/// The direct route's [`Results`] multiplied in `T` on `path` ([`results_of`]).
fn direct_results<T: DirectOperand>(
    operands: &[Tensor<TestBackend, 5>; 3],
    bias: &Tensor<TestBackend, 1>,
    geometry: ConvGeometry,
    path: T::Path,
) -> Results {
    results_of(
        operands,
        bias,
        geometry,
        |backward| backward.direct::<T>(path),
        |input, weight, bias| conv_direct::forward::<_, T>(input, weight, bias, geometry, path),
    )
}

/// Output lines taken one at a time, a few at a time (across frame boundaries) or all
/// together give the same gradients (a temporal kernel of 3 with padding reads input frames
/// shared between groups). The
/// gradients themselves are checked against Burn's `Conv3d` in `conv3d`'s tests.
#[test]
fn line_groups_do_not_change_the_forward_or_the_gradients() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let geometry = odd_geometry(2, 4);
    let input = Tensor::<TestBackend, 5>::random([2, 3, 5, 9, 8], Distribution::Default, &device);
    let weight = Tensor::<TestBackend, 5>::random([4, 3, 3, 3, 2], Distribution::Default, &device);
    let upstream =
        Tensor::<TestBackend, 5>::random([2, 4, 5, 5, 4], Distribution::Default, &device);
    let run = |group| {
        ConvBackward {
            input: ConvInput::Tensor(input.clone()),
            weight: weight.clone(),
            upstream: upstream.clone(),
            geometry,
            wants: [true, true],
        }
        .products::<f32, f32>(group, None)
        .0
    };
    // 25 output lines (5 frames of 5 rows): all at once, and groups that split frames.
    let (weight_all, input_all) = run(25);
    for group in [1, 3, 7] {
        let (weight_grouped, input_grouped) = run(group);
        let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
        weight_grouped
            .to_data()
            .assert_approx_eq::<f32>(&weight_all.to_data(), tolerance);
        input_grouped
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(&input_all.clone().unwrap().to_data(), tolerance);
    }
    // The forward likewise, against Burn's convolution.
    let bias = Tensor::<TestBackend, 1>::random([4], Distribution::Default, &device);
    let expected = burn::tensor::module::conv3d(
        input.clone(),
        weight.clone(),
        Some(bias.clone()),
        burn::tensor::ops::ConvOptions::new([1, 2, 2], [1, 1, 0], [1, 1, 1], 1),
    );
    for group in [1, 3, 7, 25] {
        forward_in_groups(
            input.clone(),
            weight.clone(),
            Some(bias.clone()),
            geometry,
            group,
            None,
        )
        .to_data()
        .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::rel_abs(1e-5, 1e-5));
    }
}

/// A compressed input (`model.activation_bits`) read a clip at a time gives the gradients of
/// the same values restored whole, on the f32 and the bf16 routes (clips of 1080 values:
/// blocks straddle them).
#[test]
fn an_input_read_from_codes_equals_the_restored_input() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let geometry = odd_geometry(3, 4);
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let random = |shape: [usize; 5]| {
            Tensor::<TestBackend, 5>::random(shape, Distribution::Default, &device).cast(dtype)
        };
        let (input, upstream) = (random([3, 3, 5, 9, 8]), random([3, 4, 5, 5, 4]));
        let weight = random([4, 3, 3, 3, 2]).cast(FloatDType::F32);
        let flat = input.reshape([3 * 3 * 5 * 9 * 8]);
        let Quantized::Host { codes, .. } = Quantized::new(flat.clone(), 4, 9) else {
            panic!("the CPU backend keeps host codes");
        };
        let restored = Quantized::new(flat, 4, 9)
            .restore()
            .reshape([3, 3, 5, 9, 8]);
        assert_eq!(codes.dtype(), restored.dtype());
        let input = HostInput {
            codes: &codes,
            dims: geometry.input,
        };
        let backward = |input| ConvBackward {
            input,
            weight: weight.clone(),
            upstream: upstream.clone(),
            geometry,
            wants: [true, true],
        };
        let ((weight_a, input_a), bias_a) = backward(ConvInput::Codes(input)).gradients();
        let ((weight_b, input_b), bias_b) = backward(ConvInput::Tensor(restored)).gradients();
        assert_eq!(weight_a.to_data(), weight_b.to_data(), "{dtype:?}");
        assert_eq!(input_a.unwrap().to_data(), input_b.unwrap().to_data());
        assert_eq!(bias_a.unwrap().to_data(), bias_b.unwrap().to_data());
    }
}

/// 3 × 3 × 3 convolutions by Winograd's transforms (`conv_winograd`) equal the f32 route on the
/// same values — the forward and every gradient, on f32, bf16 and f16 values — on every f32 tile
/// path this CPU has: odd sizes on every axis (tiles cut by the clip's end), a single frame,
/// channel counts off the tiles' rows and columns, several clips, blocks of rows of tiles and
/// chunks of the weight gradient.
#[test]
fn winograd_convolutions_equal_the_f32_route() {
    let _rng = crate::rng_lock();
    let geometries = [
        ([2, 5, 4, 12, 11], 13),
        ([1, 3, 1, 5, 3], 33),
        ([3, 40, 5, 7, 9], 70),
        ([1, 2, 7, 30, 30], 4),
        // Blocks of several rows of tiles (6 rows of 20 tiles, 128 columns of the products,
        // 16 blocks over both clips).
        ([2, 32, 6, 24, 40], 12),
        // The weight gradient's chunks of 12 rows of tiles (655 KB of transforms a row), the
        // last one of 4.
        ([1, 64, 4, 40, 40], 64),
    ];
    for (input, channels_out) in geometries {
        let geometry = ConvGeometry {
            input,
            channels_out,
            kernel: [3; 3],
            stride: [1; 3],
            padding: [1; 3],
            output: [input[2], input[3], input[4]],
        };
        f32_tiles_equal_the_f32_route(geometry, "Winograd", |operands, bias, path| {
            results_of(
                operands,
                bias,
                geometry,
                |backward| backward.winograd(path),
                |input, weight, bias| conv_winograd::forward(input, weight, bias, geometry, path),
            )
        });
    }
}

/// Temporal convolutions of nine taps by Winograd's nested transforms
/// (`conv_winograd_temporal`) equal the f32 route on the same values — the forward and every
/// gradient, on f32, bf16 and f16 values — on every
/// f32 tile path this CPU has: clips shorter than a tile, a last tile cut by the clip's end,
/// joint and channel counts off the tiles' rows and columns, several clips, blocks and chunks.
#[test]
fn temporal_winograd_convolutions_equal_the_f32_route() {
    let _rng = crate::rng_lock();
    let geometries = [
        ([2, 5, 20, 1, 13], 7),
        ([1, 3, 5, 1, 3], 33),
        ([1, 2, 1, 1, 4], 5),
        ([3, 40, 16, 1, 52], 70),
        ([2, 64, 27, 1, 25], 12),
        // The weight gradient's chunks of one clip each (5.3 MB of transforms a clip), the last
        // products after the third.
        ([3, 64, 64, 1, 52], 64),
    ];
    for (input, channels_out) in geometries {
        let geometry = ConvGeometry {
            input,
            channels_out,
            kernel: [9, 1, 1],
            stride: [1; 3],
            padding: [4, 0, 0],
            output: [input[2], 1, input[4]],
        };
        f32_tiles_equal_the_f32_route(geometry, "temporal Winograd", |operands, bias, path| {
            results_of(
                operands,
                bias,
                geometry,
                |backward| backward.temporal_winograd(path),
                |input, weight, bias| {
                    conv_winograd_temporal::forward(input, weight, bias, geometry, path)
                },
            )
        });
    }
}
