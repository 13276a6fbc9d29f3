//! A matrix product of f32 operands on slices, `c = a · b` or `c += a · b`, by gemm's kernels
//! (the crate burn-flex multiplies with), for vidtrain's CPU convolution.
//!
//! burn-flex's `matmul` allocates each product's output through a buffer it then copies to
//! realign (`FlexTensor::empty` → `Bytes::from_bytes_vec`), and the kernel reads it back out
//! through `into_data`: in an r3d_18 step 10 % of the time went to those copies and their page
//! faults. Here the product is written into the caller's buffer (reused group after group), strided
//! operands (a transposed or sliced matrix) are read in place, and a sum over groups accumulates
//! in `c` (gemm's `read_dst`) instead of adding tensors.
//!
//! gemm's entry point takes raw pointers and strides; [`gemm`] checks every element it will read
//! or write lies inside the slices it was given before the call (decision 0016).

use burn::tensor::{DType, bf16};

use crate::cpu_kernels::HostFloat;
use crate::gemm_bf16::{self, Matrix, Path, Update};

/// Products with at least this many multiply-adds use the compute pool's threads (burn-flex's
/// threshold: smaller ones cost more to split than to compute).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `c += a · b` or `c = a · b` (`update`) with `c` row-major `[a.rows × b.columns]`, its rows
/// `c_stride` apart.
///
/// # Panics
/// When the inner sizes differ, or a matrix or `c` is too short for its sizes and strides.
pub fn gemm(
    a: Matrix<'_, f32>,
    b: Matrix<'_, f32>,
    c: &mut [f32],
    c_stride: usize,
    update: Update,
) {
    assert_eq!(a.columns, b.rows, "inner sizes of an f32 matrix product");
    let (m, n, k) = (a.rows, b.columns, a.columns);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c_stride >= n && (m - 1) * c_stride + n <= c.len(),
        "the product's output is shorter than its sizes"
    );
    a.assert_within();
    b.assert_within();
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let stride = |value: usize| isize::try_from(value).expect("a stride fits isize");
    // SAFETY: every element read — `a`'s and `b`'s `(i, j)` at `i · row_stride + j ·
    // column_stride` for `i < rows`, `j < columns` — lies inside its slice (`assert_within`), and
    // every element written, `c[i · c_stride + j]` for `i < m`, `j < n`, inside `c` (asserted
    // above); `c` is borrowed mutably, so it overlaps neither operand.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            stride(c_stride),
            update == Update::Add,
            a.values.as_ptr(),
            stride(a.column_stride),
            stride(a.row_stride),
            b.values.as_ptr(),
            stride(b.column_stride),
            stride(b.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The bf16 product's path when every operand is bf16 and the CPU has a bf16 dot-product
/// instruction ([`Path::fastest`]); otherwise the product computes in f32 (bf16 values are
/// exact in f32, so only the speed differs).
pub(crate) fn bf16_path(dtypes: &[DType]) -> Option<Path> {
    dtypes
        .iter()
        .all(|&dtype| dtype == DType::BF16)
        .then(Path::fastest)
        .flatten()
}

/// The values vidtrain's matrix products read (convolutions, linear layers): f32 by [`gemm_f32`], bf16 by [`gemm_bf16`]
/// on a bf16 path; both sum in f32.
pub(crate) trait GemmOperand: HostFloat {
    /// `c = a · b` or `c += a · b` (`update`), `c`'s rows `c_stride` apart; `path` is the bf16
    /// product's (`None` for f32).
    fn gemm(
        path: Option<Path>,
        a: Matrix<'_, Self>,
        b: Matrix<'_, Self>,
        c: &mut [f32],
        c_stride: usize,
        update: Update,
    );
}

impl GemmOperand for f32 {
    fn gemm(
        _: Option<Path>,
        a: Matrix<'_, f32>,
        b: Matrix<'_, f32>,
        c: &mut [f32],
        c_stride: usize,
        update: Update,
    ) {
        gemm(a, b, c, c_stride, update);
    }
}

impl GemmOperand for bf16 {
    fn gemm(
        path: Option<Path>,
        a: Matrix<'_, bf16>,
        b: Matrix<'_, bf16>,
        c: &mut [f32],
        c_stride: usize,
        update: Update,
    ) {
        let path = path.expect("bf16 operands are multiplied on a bf16 path");
        gemm_bf16::gemm(path, a, b, c, c_stride, update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product equals a plain triple loop for row-major and transposed operands, both
    /// updates, and an output whose rows are wider than the product.
    #[test]
    fn equals_the_definition() {
        let (m, n, k, c_stride) = (7, 5, 300, 9);
        let a_values: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let b_values: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
            .collect();
        let a = Matrix::row_major(&a_values, m, k, k);
        for b in [
            Matrix::row_major(&b_values, k, n, n),
            Matrix::row_major(&b_values, n, k, k).transposed(),
        ] {
            for update in [Update::Overwrite, Update::Add] {
                let mut c = vec![1.5f32; m * c_stride];
                gemm(a, b, &mut c, c_stride, update);
                for i in 0..m {
                    for j in 0..c_stride {
                        let expected = if j >= n {
                            1.5
                        } else {
                            let product: f64 = (0..k)
                                .map(|l| {
                                    let at = |matrix: Matrix<'_, f32>, i: usize, j: usize| {
                                        matrix.values
                                            [i * matrix.row_stride + j * matrix.column_stride]
                                    };
                                    at(a, i, l) as f64 * at(b, l, j) as f64
                                })
                                .sum();
                            product as f32 + if update == Update::Add { 1.5 } else { 0.0 }
                        };
                        let got = c[i * c_stride + j];
                        assert!(
                            (got - expected).abs() <= 1e-3,
                            "({i}, {j}): {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }

    /// An operand too short for its sizes is refused before the kernel reads it.
    #[test]
    #[should_panic(expected = "reaches past its values")]
    fn refuses_an_operand_shorter_than_its_sizes() {
        let values = vec![0f32; 10];
        let mut c = vec![0f32; 4];
        gemm(
            Matrix::row_major(&values, 2, 6, 6),
            Matrix::row_major(&values, 6, 2, 2),
            &mut c,
            2,
            Update::Overwrite,
        );
    }
}
