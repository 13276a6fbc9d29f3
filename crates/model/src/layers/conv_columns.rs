//! The operands of a convolution's three products ([`super::conv_gemm`]): the weight, prepared
//! once per call, and the im2col columns of a group of output lines of one clip.
//!
//! For f32, gemm's kernel packs its operands itself: the columns are written into a buffer by
//! [`im2col`] and read from it. For bf16, vidtrain's kernel ([`gemm_bf16`]) packs the columns
//! straight from the clip, run by run ([`im2col_row`]) into a cache-sized scratch, so that they
//! never exist unpacked: written by im2col, read back and written again packed, the columns
//! (megabytes per group) cost as much time as the 3-D ResNet's bf16 multiply-adds. The weight is
//! packed once per call instead of once per group.

use burn::tensor::bf16;
use rayon::prelude::*;

use super::im2col::{ClipValues, ColumnMap, im2col, im2col_row};
use crate::cpu_kernels::HostFloat;
use crate::gemm_bf16::{
    self, COLUMNS, Left, Matrix, PackRight, PackedLeft, Path, Update, k_blocks, packed_len,
};
use crate::gemm_f32::GemmOperand;

/// The im2col columns `[c_in·taps × lines·w']` of output lines `first..first + lines` of one
/// clip (`[c_in, t, h, w]`), not yet written anywhere.
#[derive(Clone, Copy)]
pub(super) struct ClipColumns<'a, T> {
    pub clip: ClipValues<'a, T>,
    pub map: &'a ColumnMap,
    pub first: usize,
    pub lines: usize,
}

impl<T: HostFloat + Default> ClipColumns<'_, T> {
    /// `c_in·taps`.
    fn rows(&self) -> usize {
        self.map.geometry.input[1] * self.map.geometry.taps()
    }

    /// `lines·w'`.
    fn length(&self) -> usize {
        self.lines * self.map.geometry.output[2]
    }

    /// Values `from..from + out.len()` of row `row`.
    fn row(&self, row: usize, from: usize, out: &mut [T]) {
        let start = self.first * self.map.geometry.output[2] + from;
        im2col_row(self.clip, self.map, row, start, out);
    }

    /// Every row, written into `buffer` (resized), as a row-major matrix.
    fn written<'b>(&self, buffer: &'b mut Vec<T>) -> Matrix<'b, T> {
        let (rows, length) = (self.rows(), self.length());
        buffer.resize(rows * length, T::default());
        im2col(self.clip, self.map, self.first, self.lines, buffer);
        Matrix::row_major(buffer, rows, length, length)
    }
}

/// The columns as `b` (`k` = rows): each thread packs a band of column panels, a pair of rows at a
/// time, each pair's run of the band made into a scratch of two rows and interleaved from there.
impl PackRight for ClipColumns<'_, bf16> {
    fn rows(&self) -> usize {
        ClipColumns::rows(self)
    }

    fn columns(&self) -> usize {
        self.length()
    }

    fn pack(&self, packed: &mut Vec<u32>, path: Path) {
        let (k, n) = (ClipColumns::rows(self), self.length());
        let panels = n.div_ceil(COLUMNS);
        let band_panels = panels.div_ceil(rayon::current_num_threads().clamp(1, panels));
        // The region's loop in the AVX-512 build: a closure handed to the pool is built for
        // the baseline, and its copies of interleaved runs into the panels went 16 bytes at a
        // time (5 % of the seed model's bf16 step at micro-batch 1).
        for_each_region(packed, [k, n], band_panels, |scratch, region| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || self.pack_region(scratch, region, [k, n], band_panels, path),
            )
        });
    }
}

impl ClipColumns<'_, bf16> {
    /// [`PackRight::pack`]'s work on one region of `band_panels` column panels.
    #[inline(always)]
    fn pack_region(
        &self,
        scratch: &mut (Vec<bf16>, Vec<u32>),
        region: Region<'_>,
        [k, n]: [usize; 2],
        band_panels: usize,
        path: Path,
    ) {
        let first_column = region.band * band_panels * COLUMNS;
        let width = (band_panels * COLUMNS).min(n - first_column);
        let (pair_rows, interleaved) = scratch;
        pair_rows.resize(2 * width, bf16::ZERO);
        interleaved.resize(band_panels * COLUMNS, 0);
        for pair in 0..region.pairs {
            let row = region.first_k + 2 * pair;
            let (low, high) = pair_rows[..2 * width].split_at_mut(width);
            self.row(row, first_column, low);
            if row + 1 < k {
                self.row(row + 1, first_column, high);
            } else {
                high.fill(bf16::ZERO);
            }
            // The band's run interleaved at once, then copied panel by panel: one
            // interleave per panel cost more than the products it packed for.
            let pair_rows = Matrix::row_major(pair_rows, 2, width, width);
            pair_rows.pack_row_pair(0, 0, interleaved, path);
            let (runs, _) = interleaved.as_chunks::<COLUMNS>();
            let panels = region.values.chunks_exact_mut(region.pairs * COLUMNS);
            for (panel, run) in panels.zip(runs) {
                let target = &mut panel[pair * COLUMNS..][..COLUMNS];
                *<&mut [u32; COLUMNS]>::try_from(target).expect("a panel row") = *run;
            }
        }
    }
}

/// The columns transposed, `[lines·w' × c_in·taps]`: the weight gradient's `b`.
pub(super) struct Transposed<'a, T>(pub ClipColumns<'a, T>);

/// For each panel of [`COLUMNS`] rows of the columns and block of `k` (positions), the block's
/// run of each row is made into a scratch (16 KiB, in the L1 cache) and packed from there by
/// pairs of positions, the transposing pack of a matrix whose columns are contiguous. Panel by
/// panel, whole rows (up to a MiB for the seed's stem) left the cache, and the seed's stem
/// has only 5 panels for two threads.
impl PackRight for Transposed<'_, bf16> {
    fn rows(&self) -> usize {
        self.0.length()
    }

    fn columns(&self) -> usize {
        self.0.rows()
    }

    fn pack(&self, packed: &mut Vec<u32>, path: Path) {
        let (k, n) = (self.0.length(), self.0.rows());
        for_each_region(packed, [k, n], 1, |(rows, _), region| {
            let first_row = region.band * COLUMNS;
            let width = COLUMNS.min(n - first_row);
            let run = (2 * region.pairs).min(k - region.first_k);
            // Every value is written before it is read: the scratch is not cleared.
            rows.resize(width * run, bf16::ZERO);
            for (row, out) in rows.chunks_exact_mut(run).take(width).enumerate() {
                self.0.row(first_row + row, region.first_k, out);
            }
            let block = Matrix::row_major(&rows[..width * run], width, run, run).transposed();
            block.pack_columns(0, region.pairs, 0, region.values, COLUMNS, path);
        });
    }
}

/// One band of column panels of one block of `k` of a packed right operand
/// (`[panel][pair][COLUMNS]`).
struct Region<'a> {
    /// Which band of panels.
    band: usize,
    /// The block's first `k`.
    first_k: usize,
    pairs: usize,
    values: &'a mut [u32],
}

/// Sizes `packed` for a right operand of `k × n` ([`packed_len`]) and runs `pack(scratch,
/// region)` in parallel over its regions: bands of `band_panels` column panels, block of `k` by
/// block. `scratch` is kept for the regions a thread packs in turn (one per region cost more in
/// allocating and zeroing than in packing).
fn for_each_region(
    packed: &mut Vec<u32>,
    [k, n]: [usize; 2],
    band_panels: usize,
    pack: impl Fn(&mut (Vec<bf16>, Vec<u32>), Region<'_>) + Sync,
) {
    packed.resize(packed_len(k, n), 0);
    let panels = n.div_ceil(COLUMNS);
    let mut regions = Vec::new();
    let mut rest = &mut packed[..];
    for (first_k, pairs) in k_blocks(k) {
        let (block, after) = rest.split_at_mut(panels * pairs * COLUMNS);
        rest = after;
        for (band, values) in block.chunks_mut(band_panels * pairs * COLUMNS).enumerate() {
            regions.push(Region {
                band,
                first_k,
                pairs,
                values,
            });
        }
    }
    regions
        .into_par_iter()
        .for_each_init(Default::default, |scratch, region| {
            crate::cpu_kernels::vectorized(
                #[inline(always)]
                || pack(scratch, region),
            );
        });
}

/// How a convolution's products are computed for one operand type.
pub(crate) trait ConvOperand: GemmOperand {
    /// A left operand for many products: the matrix itself for f32, packed once for bf16.
    type Prepared<'a>: Sync;

    fn prepare<'a>(a: Matrix<'a, Self>, path: Option<Path>) -> Self::Prepared<'a>;

    /// `c = a · columns` or `c += …` (`update`): the forward.
    fn times_columns(
        path: Option<Path>,
        a: &Self::Prepared<'_>,
        columns: ClipColumns<'_, Self>,
        buffer: &mut Vec<Self>,
        c: &mut [f32],
        update: Update,
    );

    /// `c += a · columnsᵀ` or `c = …`: the weight gradient, `c`'s rows `c_in·taps` apart.
    fn times_columns_transposed(
        path: Option<Path>,
        a: Matrix<'_, Self>,
        columns: ClipColumns<'_, Self>,
        buffer: &mut Vec<Self>,
        c: &mut [f32],
        update: Update,
    );

    /// `c = a · b` or `c += …`, `c`'s rows `b.columns` apart: the input gradient's columns.
    fn prepared_times(
        path: Option<Path>,
        a: &Self::Prepared<'_>,
        b: Matrix<'_, Self>,
        c: &mut [f32],
        update: Update,
    );
}

impl ConvOperand for f32 {
    type Prepared<'a> = Matrix<'a, f32>;

    fn prepare<'a>(a: Matrix<'a, f32>, _: Option<Path>) -> Matrix<'a, f32> {
        a
    }

    fn times_columns(
        path: Option<Path>,
        a: &Matrix<'_, f32>,
        columns: ClipColumns<'_, f32>,
        buffer: &mut Vec<f32>,
        c: &mut [f32],
        update: Update,
    ) {
        let columns = columns.written(buffer);
        f32::gemm(path, *a, columns, c, columns.columns, update);
    }

    fn times_columns_transposed(
        path: Option<Path>,
        a: Matrix<'_, f32>,
        columns: ClipColumns<'_, f32>,
        buffer: &mut Vec<f32>,
        c: &mut [f32],
        update: Update,
    ) {
        let columns = columns.written(buffer).transposed();
        f32::gemm(path, a, columns, c, columns.columns, update);
    }

    fn prepared_times(
        path: Option<Path>,
        a: &Matrix<'_, f32>,
        b: Matrix<'_, f32>,
        c: &mut [f32],
        update: Update,
    ) {
        f32::gemm(path, *a, b, c, b.columns, update);
    }
}

impl ConvOperand for bf16 {
    type Prepared<'a> = PackedLeft;

    fn prepare(a: Matrix<'_, bf16>, path: Option<Path>) -> PackedLeft {
        PackedLeft::new(a, bf16_path(path))
    }

    fn times_columns(
        path: Option<Path>,
        a: &PackedLeft,
        columns: ClipColumns<'_, bf16>,
        _: &mut Vec<bf16>,
        c: &mut [f32],
        update: Update,
    ) {
        let stride = columns.length();
        gemm_bf16::product(
            bf16_path(path),
            Left::Packed(a),
            &columns,
            c,
            stride,
            update,
        );
    }

    fn times_columns_transposed(
        path: Option<Path>,
        a: Matrix<'_, bf16>,
        columns: ClipColumns<'_, bf16>,
        _: &mut Vec<bf16>,
        c: &mut [f32],
        update: Update,
    ) {
        let (path, stride) = (bf16_path(path), columns.rows());
        let columns = Transposed(columns);
        gemm_bf16::product(path, Left::Matrix(a), &columns, c, stride, update);
    }

    fn prepared_times(
        path: Option<Path>,
        a: &PackedLeft,
        b: Matrix<'_, bf16>,
        c: &mut [f32],
        update: Update,
    ) {
        gemm_bf16::product(bf16_path(path), Left::Packed(a), &b, c, b.columns, update);
    }
}

/// The path bf16 operands are multiplied on (the callers chose it with `gemm_f32::bf16_path`).
fn bf16_path(path: Option<Path>) -> Path {
    path.expect("bf16 operands are multiplied on a bf16 path")
}
