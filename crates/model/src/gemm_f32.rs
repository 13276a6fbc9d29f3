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
use crate::gemm_bf16::{self, COLUMNS, Matrix, Path, ROWS, Strided, Tile, Update};

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
    let parallel = a.rows.saturating_mul(b.columns).saturating_mul(a.columns) >= PARALLEL_WORK;
    product(a, b, c, c_stride, update, parallel);
}

/// [`gemm`] on the calling thread whatever its size: for products that are themselves tasks of
/// the compute pool (one per Winograd point).
pub(crate) fn gemm_on_this_thread(
    a: Matrix<'_, f32>,
    b: Matrix<'_, f32>,
    c: &mut [f32],
    c_stride: usize,
    update: Update,
) {
    product(a, b, c, c_stride, update, false);
}

/// [`gemm`] on the compute pool's threads or (`parallel` false) the calling one.
fn product(
    a: Matrix<'_, f32>,
    b: Matrix<'_, f32>,
    c: &mut [f32],
    c_stride: usize,
    update: Update,
    parallel: bool,
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
    let parallelism = if parallel {
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
    fastest_when_all(dtypes, DType::BF16, Path::fastest)
}

/// The f32 strided tiles' path ([`F32Path::fastest`]) for operands that are all f32, or all of
/// one half dtype that no bf16 kernel multiplies — f16, or bf16 on a CPU without the bf16 dot
/// product — which the tiles multiply in f32 and read and store in their dtype
/// ([`crate::layers::conv_direct`]); otherwise convolutions take the packed route.
pub(crate) fn f32_path(dtypes: &[DType]) -> Option<F32Path> {
    let first = *dtypes.first()?;
    let multiplied_in_f32 = match first {
        DType::F32 | DType::F16 => true,
        DType::BF16 => bf16_path(dtypes).is_none(),
        _ => false,
    };
    (multiplied_in_f32 && dtypes.iter().all(|&each| each == first))
        .then(F32Path::fastest)
        .flatten()
}

/// `fastest()` when every one of `dtypes` is `dtype`.
fn fastest_when_all<P>(dtypes: &[DType], dtype: DType, fastest: fn() -> Option<P>) -> Option<P> {
    dtypes
        .iter()
        .all(|&each| each == dtype)
        .then(fastest)
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

/// Where vidtrain's own f32 tiles ([`strided_tile`]) compute. gemm's kernels serve every packed
/// f32 product; these serve the products whose operands are read where they lie
/// (`layers::conv_direct`), which gemm's entry point cannot take (it packs every operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Path {
    /// AVX-512F's fused multiply-add, where the CPU has it.
    Avx512,
    /// AVX2's 8-lane fused multiply-add (FMA3), where the CPU has it and not AVX-512F.
    Avx2,
    /// The same tiles in plain Rust, for every CPU (and the tests of the callers' layouts).
    Portable,
}

impl F32Path {
    /// AVX-512F, else AVX2 with FMA, where this CPU has it and `VIDTRAIN_CPU_KERNELS` does not
    /// say `reference`; `None` otherwise (the callers then take gemm's packed route: plain Rust
    /// tiles are slower than packing).
    pub fn fastest() -> Option<F32Path> {
        static FASTEST: std::sync::OnceLock<Option<F32Path>> = std::sync::OnceLock::new();
        *FASTEST.get_or_init(|| {
            if crate::cpu_kernels::reference() {
                return None;
            }
            [F32Path::Avx512, F32Path::Avx2]
                .into_iter()
                .find(|path| path.available())
        })
    }

    /// How fp16 convolutions compute on this CPU, for the training log.
    pub fn describe_fp16_cpu_route() -> String {
        format!("fp16 convolutions {}", Self::describe_half_cpu_route())
    }

    /// How half-precision convolutions that no bf16 kernel multiplies (fp16; bf16 on a CPU
    /// without AVX512_BF16) compute on this CPU: the end of [`Self::describe_fp16_cpu_route`]'s
    /// sentence and of `gemm_bf16::Path::describe_cpu_route`'s on such a CPU.
    pub(crate) fn describe_half_cpu_route() -> &'static str {
        match F32Path::fastest() {
            Some(_) if !crate::cpu_kernels::winograd_refused() => {
                "multiplied in f32 and stored in half precision: 3 × 3 × 3 ones of stride 1 and \
                 padding 1 on many tiles and 9-tap temporal ones of stride 1 by Winograd's \
                 transforms, other stride-1 convolutions of 27 taps and more from the clip, \
                 widened clip by clip; the others through im2col columns"
            }
            Some(_) => {
                "multiplied in f32 and stored in half precision: stride-1 convolutions of 27 taps \
                 and more from the clip, widened clip by clip; the others through im2col columns"
            }
            None => "multiplied in f32 through im2col columns, stored in half precision",
        }
    }

    /// How f32 convolutions compute on this CPU, for the training log.
    pub fn describe_cpu_route() -> &'static str {
        match F32Path::fastest() {
            Some(F32Path::Avx512) if !crate::cpu_kernels::winograd_refused() => {
                "f32 3 × 3 × 3 convolutions of stride 1 and padding 1 on many tiles multiply by \
                 Winograd's transforms F(2³, 3³) and 9-tap temporal ones of stride 1 by F(3 × 3, \
                 3 × 3), other stride-1 convolutions of 27 taps and more from the clip, on \
                 AVX-512F; the others through im2col columns"
            }
            Some(F32Path::Avx512) => {
                "f32 stride-1 convolutions of 27 taps and more multiply from the clip on AVX-512F; \
                 the others through im2col columns"
            }
            Some(_) if !crate::cpu_kernels::winograd_refused() => {
                "f32 3 × 3 × 3 convolutions of stride 1 and padding 1 on many tiles multiply by \
                 Winograd's transforms F(2³, 3³) and 9-tap temporal ones of stride 1 by F(3 × 3, \
                 3 × 3), other stride-1 convolutions of 27 taps and more from the clip, on AVX2 + \
                 FMA (no AVX-512F on this CPU); the others through im2col columns"
            }
            Some(_) => {
                "f32 stride-1 convolutions of 27 taps and more multiply from the clip on AVX2 + \
                 FMA (no AVX-512F on this CPU); the others through im2col columns"
            }
            None if crate::cpu_kernels::reference() => {
                "f32 convolutions multiply im2col columns (VIDTRAIN_CPU_KERNELS=reference)"
            }
            None => {
                "f32 convolutions multiply im2col columns: this CPU has neither AVX-512F nor AVX2"
            }
        }
    }

    /// Whether this CPU runs the path.
    pub fn available(self) -> bool {
        match self {
            F32Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            F32Path::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            F32Path::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            F32Path::Avx512 | F32Path::Avx2 => false,
        }
    }
}

/// `tile += Σ` over `segments` and their units of `a`'s row times `b`'s row of `k`
/// ([`Strided`], one f32 per unit): the f32 counterpart of [`gemm_bf16::strided_tile`].
///
/// # Panics
/// When a segment reaches past `a` or `b`, or the path is not [`F32Path::available`].
pub fn strided_tile(
    path: F32Path,
    operands: Strided<'_, f32>,
    segments: &[(usize, usize)],
    tile: &mut Tile,
) {
    assert!(path.available(), "{path:?} is not available on this CPU");
    if !operands.checked(segments) {
        return;
    }
    match path {
        F32Path::Portable => strided_tile_portable(operands, segments, tile),
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx512 => {
            #[allow(unsafe_code)]
            // SAFETY: asserted above: this CPU has AVX-512F, the only requirement of
            // `avx512::strided_tile` (it reads and writes only through slices).
            unsafe {
                avx512::strided_tile(operands, segments, tile)
            }
        }
        #[cfg(target_arch = "x86_64")]
        F32Path::Avx2 => {
            #[allow(unsafe_code)]
            // SAFETY: asserted above: this CPU has AVX2 and FMA, and every unit of every
            // segment lies inside the operands (`checked`), `avx2::strided_tile`'s requirements.
            unsafe {
                avx2::strided_tile(operands, segments, tile)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        F32Path::Avx512 | F32Path::Avx2 => unreachable!("asserted the path is available"),
    }
}

/// [`strided_tile`] in plain Rust.
fn strided_tile_portable(operands: Strided<'_, f32>, segments: &[(usize, usize)], tile: &mut Tile) {
    let Strided {
        a,
        a_unit_stride,
        b,
        b_unit_stride,
        units,
    } = operands;
    for &(a_start, b_start) in segments {
        for unit in 0..units {
            let a_unit = &a[a_start + unit * a_unit_stride..][..ROWS];
            let b_unit = &b[b_start + unit * b_unit_stride..][..COLUMNS];
            for (sums, &a) in tile.iter_mut().zip(a_unit) {
                for (sum, &b) in sums.iter_mut().zip(b_unit) {
                    *sum += a * b;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{COLUMNS, ROWS, Strided, Tile};
    use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_set1_ps};

    /// [`super::strided_tile_portable`] with `vfmadd231ps`: per unit of `k`, two vectors of
    /// `b`'s 32 columns and one broadcast value of each `a` row; the tile is held in registers
    /// (24 of the 32) across the segments.
    #[target_feature(enable = "avx512f")]
    pub(super) fn strided_tile(
        operands: Strided<'_, f32>,
        segments: &[(usize, usize)],
        tile: &mut Tile,
    ) {
        let mut sums: [[__m512; 2]; ROWS] = std::array::from_fn(|row| {
            let (left, right) = tile[row].split_at(16);
            [vector(left), vector(right)]
        });
        for &segment in segments {
            for (a_unit, b_unit) in operands.segment_units(segment) {
                let (b_halves, _) = b_unit.as_chunks::<16>();
                let (b_left, b_right) = (vector(&b_halves[0]), vector(&b_halves[1]));
                for (sums, &a) in sums.iter_mut().zip(a_unit) {
                    let a = _mm512_set1_ps(a);
                    sums[0] = _mm512_fmadd_ps(a, b_left, sums[0]);
                    sums[1] = _mm512_fmadd_ps(a, b_right, sums[1]);
                }
            }
        }
        for (row, [left, right]) in tile.iter_mut().zip(sums) {
            let (left, right): ([f32; 16], [f32; 16]) =
                (bytemuck::cast(left), bytemuck::cast(right));
            row[..16].copy_from_slice(&left);
            row[16..].copy_from_slice(&right);
        }
    }

    /// 16 values as one vector.
    #[inline(always)]
    fn vector(values: &[f32]) -> __m512 {
        let values: [f32; 16] = values.try_into().expect("a vector is 16 values");
        bytemuck::cast(values)
    }

    const _: () = assert!(COLUMNS == 32);
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{COLUMNS, ROWS, Strided, Tile};
    use std::arch::x86_64::{
        __m256, _MM_HINT_T0, _mm_prefetch, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps,
    };

    /// Rows of the tile summed in registers at a time: 6 × 2 vectors of 8 (16 columns) are 12
    /// of AVX2's 16 registers, with the two vectors of `b` and the broadcast value of `a`.
    const BLOCK_ROWS: usize = 6;

    /// Units of `k` the four blocks sum in turn before moving on: a segment of more units is
    /// cut into pieces of this many, fewer are grouped whole. The four blocks then read the
    /// same few kilobytes of both operands from L1; a whole segment of 128 and more input
    /// channels (an `a` unit a plane from the last) no longer fit it.
    const GROUP_UNITS: usize = 64;

    /// [`super::strided_tile_portable`] with `vfmadd231ps` on 8 lanes: the 12 × 32 tile does not
    /// fit AVX2's registers, so it is summed a 6 × 16 block at a time, the four blocks in turn
    /// over each group of units. Each block walking every segment read the operands' units four
    /// times from L2 (an `a` unit lies a whole plane after the last): r3d_18's convolutions ran
    /// at a third of gemm's rate.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and `operands.checked(segments)` holds: every unit of every
    /// segment lies inside `a` and `b`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn strided_tile(
        operands: Strided<'_, f32>,
        segments: &[(usize, usize)],
        tile: &mut Tile,
    ) {
        let units = operands.units;
        let mut run_blocks = |pieces: &[(usize, usize)], count: usize| {
            // SAFETY: every piece is a segment's run of `count` units that `checked` passed.
            unsafe {
                block::<0, 0>(operands, pieces, count, tile);
                block::<0, 16>(operands, pieces, count, tile);
                block::<6, 0>(operands, pieces, count, tile);
                block::<6, 16>(operands, pieces, count, tile);
            }
        };
        if units >= GROUP_UNITS {
            for &(a_start, b_start) in segments {
                for first in (0..units).step_by(GROUP_UNITS) {
                    let piece = (
                        a_start + first * operands.a_unit_stride,
                        b_start + first * operands.b_unit_stride,
                    );
                    run_blocks(&[piece], GROUP_UNITS.min(units - first));
                }
            }
        } else {
            for group in segments.chunks(GROUP_UNITS.div_ceil(units.max(1))) {
                run_blocks(group, units);
            }
        }
    }

    /// The tile's block of [`BLOCK_ROWS`] × 16 at (`R`, `C`) plus the products over `units`
    /// units from each of `pieces` (`a` and `b` offsets of a first unit). The units are walked
    /// by pointer: sliced unit by unit, the bounds tests doubled the loop's scalar work beside
    /// its 8 loads and 12 multiply-adds. The first block prefetches each unit's `a` values of
    /// the next tile (the forward's and input gradient's tiles walk the positions of a plane,
    /// `ROWS` at a time, and their units lie too far apart for the hardware's prefetchers):
    /// r3d_18's stage shapes ran 6–23 % faster on one Zen 3 core.
    ///
    /// Not inlined: inlined together, the four blocks' sums were spilled to the stack.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; each piece's `units` units lie inside `a` and `b`.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn block<const R: usize, const C: usize>(
        operands: Strided<'_, f32>,
        pieces: &[(usize, usize)],
        units: usize,
        tile: &mut Tile,
    ) {
        let mut sums: [[__m256; 2]; BLOCK_ROWS] = std::array::from_fn(|row| {
            let (left, right) = tile[R + row][C..C + 16].split_at(8);
            [vector(left), vector(right)]
        });
        for &(a_start, b_start) in pieces {
            let mut a = operands.a[a_start..].as_ptr();
            let mut b = operands.b[b_start..].as_ptr();
            for _ in 0..units {
                // SAFETY: the unit's `ROWS` values of `a` from `a` and `COLUMNS` of `b` from `b`
                // lie inside the operands (the caller's guarantee); `R + BLOCK_ROWS ≤ ROWS`,
                // `C + 16 ≤ COLUMNS`. The prefetch reads nothing and cannot fault.
                unsafe {
                    if R == 0 && C == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(ROWS).cast());
                    }
                    let b_left = _mm256_loadu_ps(b.add(C));
                    let b_right = _mm256_loadu_ps(b.add(C + 8));
                    for (row, sums) in sums.iter_mut().enumerate() {
                        let a = _mm256_broadcast_ss(&*a.add(R + row));
                        sums[0] = _mm256_fmadd_ps(a, b_left, sums[0]);
                        sums[1] = _mm256_fmadd_ps(a, b_right, sums[1]);
                    }
                    a = a.wrapping_add(operands.a_unit_stride);
                    b = b.wrapping_add(operands.b_unit_stride);
                }
            }
        }
        for (row, [left, right]) in sums.into_iter().enumerate() {
            let (left, right): ([f32; 8], [f32; 8]) = (bytemuck::cast(left), bytemuck::cast(right));
            let target = &mut tile[R + row][C..C + 16];
            target[..8].copy_from_slice(&left);
            target[8..].copy_from_slice(&right);
        }
    }

    /// 8 values as one vector.
    #[inline(always)]
    fn vector(values: &[f32]) -> __m256 {
        let values: [f32; 8] = values.try_into().expect("a vector is 8 values");
        bytemuck::cast(values)
    }

    const _: () = assert!(ROWS == 2 * BLOCK_ROWS && COLUMNS == 32);
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

    /// A strided tile equals the sum of products over its segments' units, on every path this
    /// CPU runs, added to what the tile held.
    #[test]
    fn strided_tiles_equal_the_definition() {
        let (a_stride, b_stride) = (17, 40);
        let a: Vec<f32> = (0..2700)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let b: Vec<f32> = (0..6400)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
            .collect();
        let segments = [(3, 5), (60, 301)];
        // Fewer units than a kernel's group (segments grouped whole), and more (a segment cut
        // into groups, the last one short).
        for units in [9, 150] {
            let operands = Strided {
                a: &a,
                a_unit_stride: a_stride,
                b: &b,
                b_unit_stride: b_stride,
                units,
            };
            for path in [F32Path::Portable, F32Path::Avx512, F32Path::Avx2] {
                if !path.available() {
                    continue;
                }
                let mut tile: Tile =
                    std::array::from_fn(|row| std::array::from_fn(|c| (row + c) as f32));
                strided_tile(path, operands, &segments, &mut tile);
                for (row, sums) in tile.iter().enumerate() {
                    for (column, &sum) in sums.iter().enumerate() {
                        let expected: f64 = (row + column) as f64
                            + segments
                                .iter()
                                .flat_map(|&(a_start, b_start)| {
                                    (0..units).map(move |unit| {
                                        (a_start + unit * a_stride, b_start + unit * b_stride)
                                    })
                                })
                                .map(|(a_at, b_at)| a[a_at + row] as f64 * b[b_at + column] as f64)
                                .sum::<f64>();
                        assert!(
                            (sum as f64 - expected).abs() <= 1e-3,
                            "{path:?}, {units} units ({row}, {column}): {sum} vs {expected}"
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
