//! A linear layer in training on the CPU as one op of Burn's autodiff graph (recorded through
//! `crate::tracked_ops`, decision 0016) whose products are vidtrain's: bf16 activations by the
//! bf16 kernel (`gemm_bf16`, AVX512_BF16) against the weight rounded to bf16, f32 by gemm's
//! kernels (`gemm_f32`), each written into the op's own buffers.
//!
//! Burn's composition casts the f32 master weight to the activation's dtype (an op that keeps a
//! bf16 copy of the weight for backward) and multiplies bf16 tensors on burn-flex through f32
//! copies of both operands: a bf16 step ran slower than the f32 one. The op keeps what Burn's
//! matmul keeps (its input, and the weight itself), and makes the same gradients: the input's
//! `∂y · Wᵀ`, the weight's `xᵀ · ∂y` and the bias's column sums, summed in f32.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, TensorData, TensorMetadata, bf16};
use rayon::prelude::*;

use crate::cpu_kernels::{cast, convert_into, filled, stored};
use crate::gemm_bf16::{Matrix, Path, Update};
use crate::gemm_f32::{GemmOperand, bf16_path};
use crate::tracked_ops::{
    KeptTensor, TrackedHost, flex, from_tracked_host, host, parent_ids, record, register,
    tracked_host,
};

/// `x · W + b` (`W`: `[in, out]`, Burn's `Linear` layout) over the last axis of `x`, as one
/// autodiff op on the host, when the three are burn-flex tensors under autodiff and `x` is f32,
/// bf16 or f16; otherwise `None` (the caller composes Burn's ops). The output in `x`'s dtype.
pub(super) fn linear_tracked<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Option<Tensor<B, D>> {
    if !crate::cpu_kernels::host_float(x.dtype()) {
        return None;
    }
    let shape = x.dims();
    let [inner, outer] = weight.dims();
    let rows = shape[..D - 1].iter().product::<usize>();
    let x = tracked_host(x)?;
    let weight = tracked_host(weight)?;
    let output = match bias {
        Some(bias) => {
            let bias = tracked_host(bias)?;
            finish(
                LinearOnHost::<3>,
                [&x, &weight, &bias],
                [rows, inner, outer],
            )
        }
        None => finish(LinearOnHost::<2>, [&x, &weight], [rows, inner, outer]),
    };
    let mut output_shape = shape;
    output_shape[D - 1] = outer;
    Some(from_tracked_host::<B, 2>(output).reshape(output_shape))
}

/// Runs the forward of `parents` (input, weight and, when `N` is 3, bias) for `sizes`
/// `[rows, in, out]` and records the op; the output is `[rows, out]`.
fn finish<const N: usize>(
    op: LinearOnHost<N>,
    parents: [&TrackedHost; N],
    sizes: [usize; 3],
) -> TrackedHost
where
    LinearOnHost<N>: Backward<Flex, N, State = LinearState>,
{
    let [rows, inner, _] = sizes;
    let input_shape = parents[0].primitive.shape();
    let x = host::<2>(Flex::float_reshape(
        parents[0].primitive.clone(),
        Shape::new([rows, inner]),
    ));
    let weight = host::<2>(parents[1].primitive.clone());
    let bias = parents.get(2).map(|bias| host::<1>(bias.primitive.clone()));
    let bias_dtype = bias.as_ref().map(Tensor::dtype);
    let dtype = x.dtype();
    let output = match bf16_path(&[dtype]) {
        Some(path) => forward_as::<bf16>(x.clone(), weight.clone(), bias, sizes, Some(path)),
        None => forward_as::<f32>(x.clone(), weight.clone(), bias, sizes, None),
    };
    let output = flex(cast(output, dtype));
    record(op, parents, output, || LinearState {
        input: KeptTensor::keep(flex(x)),
        input_shape,
        weight: flex(weight),
        bias_dtype,
        sizes,
    })
}

/// `x · W + b` with `x` and `W` read as `T` (the weight rounded to bf16 on the bf16 route), the
/// product summed in f32 and stored as `T`.
fn forward_as<T: GemmOperand>(
    x: Tensor<Flex, 2>,
    weight: Tensor<Flex, 2>,
    bias: Option<Tensor<Flex, 1>>,
    [rows, inner, outer]: [usize; 3],
    path: Option<Path>,
) -> Tensor<Flex, 2> {
    let device = x.device();
    let (x, weight) = (stored::<T, _, 2>(x), stored::<T, _, 2>(weight));
    let bias = bias.map(crate::cpu_kernels::floats);
    let values = product_as::<T>(
        path,
        Matrix::row_major(&x, rows, inner, inner),
        Matrix::row_major(&weight, inner, outer, outer),
        bias.as_deref(),
        PRODUCT_BLOCK_VALUES,
    );
    Tensor::from_data(
        TensorData::new(values, [rows, outer]),
        (&device, T::dtype()),
    )
}

/// Rows of a product computed at once when it is stored in a half type: about 4 MiB of f32 sums
/// (a whole `[rows, out]` f32 product was twice the bf16 activation it became).
const PRODUCT_BLOCK_VALUES: usize = 1 << 20;

/// `a · b` (plus `bias` per column) stored as `T`, computed a block of rows at a time (about
/// `block_values` values): for f32 straight into the result, for a half type summed in f32 and
/// rounded once.
fn product_as<T: GemmOperand>(
    path: Option<Path>,
    a: Matrix<'_, T>,
    b: Matrix<'_, T>,
    bias: Option<&[f32]>,
    block_values: usize,
) -> Vec<T> {
    let columns = b.columns;
    let mut output = filled(a.rows * columns, T::from_f32(0.0));
    let block_rows = (block_values / columns.max(1)).max(1);
    let mut sums = Vec::new();
    for (index, target) in output.chunks_mut(block_rows * columns).enumerate() {
        let first = index * block_rows;
        let block = Matrix {
            values: &a.values[first * a.row_stride..],
            rows: target.len() / columns,
            ..a
        };
        let add_bias = |values: &mut [f32]| {
            if let Some(bias) = bias {
                values.par_chunks_mut(columns).for_each(|row| {
                    row.iter_mut()
                        .zip(bias)
                        .for_each(|(value, shift)| *value += shift);
                });
            }
        };
        if let Some(values) = T::as_f32_mut(target) {
            T::gemm(path, block, b, values, columns, Update::Overwrite);
            add_bias(values);
            continue;
        }
        sums.resize(target.len(), 0f32);
        T::gemm(path, block, b, &mut sums, columns, Update::Overwrite);
        add_bias(&mut sums);
        convert_into(&sums, target, T::from_f32);
    }
    output
}

/// What the backward reads: the input (`[rows, in]`) and the weight as the forward read them,
/// the input's own shape, the bias's dtype, and the sizes `[rows, in, out]`.
#[derive(Clone, Debug)]
struct LinearState {
    input: KeptTensor,
    input_shape: Shape,
    weight: FlexTensor,
    bias_dtype: Option<DType>,
    sizes: [usize; 3],
}

/// The op with `N` parents: input, weight and, when `N` is 3, bias.
#[derive(Debug)]
struct LinearOnHost<const N: usize>;

impl<const N: usize> Backward<Flex, N> for LinearOnHost<N> {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, weight_node, bias_node] = parent_ids(&ops);
        let LinearState {
            input,
            input_shape,
            weight,
            bias_dtype,
            sizes,
        } = ops.state;
        let [rows, _, outer] = sizes;
        let upstream = host::<2>(Flex::float_reshape(upstream, Shape::new([rows, outer])));
        let (input, weight) = (host::<2>(input.restore()), host::<2>(weight));
        let (input_dtype, weight_dtype) = (input.dtype(), weight.dtype());
        let wants = [input_node.is_some(), bias_node.is_some()];
        let gradients = match bf16_path(&[input_dtype, upstream.dtype()]) {
            Some(path) => gradients_as::<bf16>(input, weight, upstream, sizes, wants, Some(path)),
            None => gradients_as::<f32>(input, weight, upstream, sizes, wants, None),
        };
        let LinearGradients {
            input: input_gradient,
            weight: weight_gradient,
            bias: bias_gradient,
        } = gradients;
        let input_gradient = input_gradient
            .map(|gradient| Flex::float_reshape(flex(cast(gradient, input_dtype)), input_shape));
        register(grads, input_node, input_gradient);
        let weight_gradient = flex(cast(weight_gradient, weight_dtype));
        register(grads, weight_node, Some(weight_gradient));
        let bias_gradient = bias_gradient.zip(bias_dtype);
        let bias_gradient = bias_gradient.map(|(gradient, dtype)| flex(cast(gradient, dtype)));
        register(grads, bias_node, bias_gradient);
    }
}

/// The gradients of a linear layer: its input's (when wanted, in the compute type), its
/// weight's and bias's (f32).
struct LinearGradients {
    input: Option<Tensor<Flex, 2>>,
    weight: Tensor<Flex, 2>,
    bias: Option<Tensor<Flex, 1>>,
}

/// The gradients for `upstream` (`[rows, out]`) with the operands read as `T`: the weight's
/// `xᵀ · ∂y` and the bias's column sums in f32, and when `wants` (input, bias) says so the
/// input's `∂y · Wᵀ` (summed in f32, stored as `T`) and the bias's.
fn gradients_as<T: GemmOperand>(
    input: Tensor<Flex, 2>,
    weight: Tensor<Flex, 2>,
    upstream: Tensor<Flex, 2>,
    [rows, inner, outer]: [usize; 3],
    [wants_input, wants_bias]: [bool; 2],
    path: Option<Path>,
) -> LinearGradients {
    let device = upstream.device();
    let upstream = stored::<T, _, 2>(upstream);
    let upstream_matrix = Matrix::row_major(&upstream, rows, outer, outer);
    let input = stored::<T, _, 2>(input);
    let mut weight_gradient = filled(inner * outer, 0f32);
    T::gemm(
        path,
        Matrix::row_major(&input, rows, inner, inner).transposed(),
        upstream_matrix,
        &mut weight_gradient,
        outer,
        Update::Overwrite,
    );
    let input_gradient = wants_input.then(|| {
        let weight = stored::<T, _, 2>(weight);
        let weight_transposed = Matrix::row_major(&weight, inner, outer, outer).transposed();
        let gradient = product_as::<T>(
            path,
            upstream_matrix,
            weight_transposed,
            None,
            PRODUCT_BLOCK_VALUES,
        );
        Tensor::from_data(
            TensorData::new(gradient, [rows, inner]),
            (&device, T::dtype()),
        )
    });
    let bias_gradient = wants_bias.then(|| {
        let sums = upstream
            .par_chunks(outer)
            .fold(
                || vec![0f64; outer],
                |mut sums, row| {
                    // In the AVX-512 build (rayon's fold closure is built for the baseline).
                    crate::cpu_kernels::vectorized(
                        #[inline(always)]
                        || {
                            for (sum, value) in sums.iter_mut().zip(row) {
                                *sum += f64::from(value.to_f32());
                            }
                        },
                    );
                    sums
                },
            )
            .reduce(
                || vec![0f64; outer],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let sums: Vec<f32> = sums.into_iter().map(|sum| sum as f32).collect();
        Tensor::from_data(TensorData::new(sums, [outer]), &device)
    });
    LinearGradients {
        input: input_gradient,
        weight: Tensor::from_data(TensorData::new(weight_gradient, [inner, outer]), &device),
        bias: bias_gradient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::precision::linear_composed;
    use burn::backend::Autodiff;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, FloatDType, Tolerance};

    type B = Autodiff<TestBackend>;

    /// A product computed in blocks of rows (a last block shorter than the others) equals the
    /// product in one block, bias included, in f32 and (where the CPU has the instruction) bf16.
    #[test]
    fn blocks_of_rows_give_the_whole_product() {
        let (rows, inner, columns) = (11, 6, 5);
        let a: Vec<f32> = (0..rows * inner).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..inner * columns).map(|i| (i % 5) as f32 * 0.5).collect();
        let bias: Vec<f32> = (0..columns).map(|i| i as f32).collect();
        let whole = |block_values| {
            product_as::<f32>(
                None,
                Matrix::row_major(&a, rows, inner, inner),
                Matrix::row_major(&b, inner, columns, columns),
                Some(&bias),
                block_values,
            )
        };
        assert_eq!(whole(3 * columns), whole(usize::MAX));
        if let Some(path) = bf16_path(&[DType::BF16]) {
            let half = |values: &[f32]| {
                values
                    .iter()
                    .map(|&v| bf16::from_f32(v))
                    .collect::<Vec<_>>()
            };
            let (a, b) = (half(&a), half(&b));
            let product = |block_values| {
                product_as::<bf16>(
                    Some(path),
                    Matrix::row_major(&a, rows, inner, inner),
                    Matrix::row_major(&b, inner, columns, columns),
                    Some(&bias),
                    block_values,
                )
            };
            // Small integers and halves: exact in bf16 and f32, whatever the order of the sums.
            assert_eq!(product(3 * columns), product(usize::MAX));
            let expected: Vec<bf16> = whole(usize::MAX).into_iter().map(bf16::from_f32).collect();
            assert_eq!(product(2 * columns), expected);
        }
    }

    /// The op equals Burn's composition (weights cast to the input's dtype, `linear`) on a 3-D
    /// input with and without a bias: output and the gradients of the input, weight and bias, in
    /// f32 to 1e-5 and in bf16 activations on f32 weights to bf16's resolution (on the
    /// AVX512_BF16 kernel where the CPU has it, in f32 otherwise).
    #[test]
    fn equals_burns_composition() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for (dtype, tolerance) in [
            (FloatDType::F32, Tolerance::rel_abs(1e-5, 1e-5)),
            (FloatDType::BF16, Tolerance::rel_abs(2e-2, 2e-2)),
        ] {
            for bias in [true, false] {
                let layer = LinearConfig::new(37, 19).with_bias(bias).init::<B>(&device);
                let x = Tensor::<B, 3>::random([3, 5, 37], Distribution::Default, &device)
                    .cast(dtype)
                    .detach();
                let upstream = Tensor::<B, 3>::random([3, 5, 19], Distribution::Default, &device);
                let run = |forward: &dyn Fn(Tensor<B, 3>) -> Tensor<B, 3>| {
                    let x = x.clone().require_grad();
                    let output = forward(x.clone());
                    assert_eq!(output.dtype(), DType::from(dtype));
                    let grads = (output.clone().cast(FloatDType::F32) * upstream.clone())
                        .sum()
                        .backward();
                    let input_gradient = x.grad(&grads).expect("the input is tracked");
                    assert_eq!(input_gradient.dtype(), DType::from(dtype));
                    let weight = layer.weight.grad(&grads).expect("a parameter");
                    let bias = layer.bias.as_ref().map(|bias| bias.grad(&grads).unwrap());
                    (output.inner(), input_gradient, weight, bias)
                };
                let ours = run(&|x| {
                    let bias = layer.bias.as_ref().map(|bias| bias.val());
                    linear_tracked(x, layer.weight.val(), bias).expect("burn-flex under autodiff")
                });
                let burns = run(&|x| linear_composed(&layer, x));
                let as_f32 =
                    |tensor: Tensor<TestBackend, 3>| tensor.cast(FloatDType::F32).into_data();
                as_f32(ours.0).assert_approx_eq::<f32>(&as_f32(burns.0), tolerance);
                as_f32(ours.1).assert_approx_eq::<f32>(&as_f32(burns.1), tolerance);
                assert_eq!(ours.2.dtype(), DType::F32);
                ours.2
                    .into_data()
                    .assert_approx_eq::<f32>(&burns.2.into_data(), tolerance);
                match (ours.3, burns.3) {
                    (Some(a), Some(b)) => a
                        .into_data()
                        .assert_approx_eq::<f32>(&b.into_data(), tolerance),
                    (None, None) => {}
                    _ => panic!("a bias gradient on one side only"),
                }
            }
        }
    }
}
