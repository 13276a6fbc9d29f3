//! A matrix product of bf16 operands into f32, `c += a · b`, on the CPU's bf16 dot-product
//! instruction where it has one (AVX512_BF16's `vdpbf16ps`: 32 multiply-adds per instruction,
//! twice f32's 16) and on a portable path otherwise.
//!
//! burn-flex multiplies bf16 tensors by converting both operands to f32 and calling gemm's f32
//! kernel, so a bf16 convolution ran at f32's speed with two more copies. Here both operands
//! stay bf16: they are packed once into the instruction's layout and multiplied tile by tile,
//! every product exact in f32 (a bf16 mantissa has 8 bits) and summed in f32.
//!
//! Layout (BLIS's): `a` is packed in panels of [`ROWS`] rows and `b` in panels of [`COLUMNS`]
//! columns, both by pairs of `k` (the instruction multiplies pairs: lane `j` of the result adds
//! `a[2i]·b[2i][j] + a[2i+1]·b[2i+1][j]`), one [`K_BLOCK`] of `k` at a time so that a panel of
//! `b` stays in the L1 cache while every panel of `a` passes over it. The compute pool's
//! threads each own a band of `c`'s rows.
//!
//! Where the CPU has AMX-BF16 tiles ([`amx`]), the packed product multiplies its tiles there
//! instead, 32 × 32 of `c` at a time; the strided tiles and the packing stay on AVX-512.
//!
//! The `unsafe` here is the call into the AVX512_BF16 kernel after the CPU has been asked for
//! the instruction (`docs/decisions/0013-avx512-bf16-kernel.md`), and [`amx`]'s assembly.

mod amx;

use burn::tensor::bf16;
use rayon::prelude::*;

/// Rows of `c` per tile: 12 rows × 2 vectors = 24 accumulators of AVX-512's 32 registers.
pub const ROWS: usize = 12;
/// Columns of `c` per tile: two vectors of 16 f32 lanes.
pub const COLUMNS: usize = 32;
/// Values of `k` per packed block: a panel of `b` (`K_BLOCK · COLUMNS` bf16, 16 KiB) fits the
/// L1 cache.
pub const K_BLOCK: usize = 256;

/// How a product is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// AMX-BF16's `tdpbf16ps` for packed products, AVX512_BF16 for everything else, where the
    /// CPU has both and the system lets the process use the tiles.
    Amx,
    /// AVX512_BF16's `vdpbf16ps`, where the CPU has it.
    Avx512Bf16,
    /// The same packing and tiles in plain Rust, for every CPU (and the tests of the packing).
    Portable,
}

impl Path {
    /// AMX tiles (unless `VIDTRAIN_CPU_KERNELS=no-amx`), else the bf16 dot-product
    /// instruction, where this CPU has them and `VIDTRAIN_CPU_KERNELS` does not say
    /// `reference`; `None` otherwise (the callers then compute in f32).
    pub fn fastest() -> Option<Path> {
        static FASTEST: std::sync::OnceLock<Option<Path>> = std::sync::OnceLock::new();
        *FASTEST.get_or_init(|| {
            if crate::cpu_kernels::reference() {
                return None;
            }
            [Path::Amx, Path::Avx512Bf16]
                .into_iter()
                .filter(|&path| path != Path::Amx || !crate::cpu_kernels::amx_refused())
                .find(|path| path.available())
        })
    }

    /// How bf16 convolutions compute on this CPU, for the training log.
    pub fn describe_cpu_route() -> String {
        match Path::fastest() {
            Some(Path::Amx) => "bf16 convolutions multiply bf16 on AMX-BF16 tiles (tdpbf16ps: \
                 packed products) and AVX512_BF16 (vdpbf16ps: direct convolutions)"
                .to_string(),
            Some(_) => "bf16 convolutions multiply bf16 on AVX512_BF16 (vdpbf16ps)".to_string(),
            None if crate::cpu_kernels::reference() => {
                "bf16 convolutions compute in f32 (VIDTRAIN_CPU_KERNELS=reference)".to_string()
            }
            None => format!(
                "bf16 convolutions compute in f32 (this CPU has no AVX512_BF16): {}",
                crate::gemm_f32::F32Path::describe_half_cpu_route()
            ),
        }
    }

    /// Whether this CPU runs the path.
    pub fn available(self) -> bool {
        match self {
            Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Bf16 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx512Bf16 => false,
            Path::Amx => Path::Avx512Bf16.available() && amx::available(),
        }
    }

    /// The path of everything but the packed product's tiles: packing, strided tiles.
    fn vectors(self) -> Path {
        match self {
            Path::Amx => Path::Avx512Bf16,
            path => path,
        }
    }
}

/// A matrix of `T` values (bf16 here, f32 for `gemm_f32`) read through strides: element
/// `(i, j)` is `values[i · row_stride + j · column_stride]`, so a transposed or sliced matrix
/// needs no copy.
#[derive(Debug)]
pub struct Matrix<'a, T = bf16> {
    pub values: &'a [T],
    pub rows: usize,
    pub columns: usize,
    pub row_stride: usize,
    pub column_stride: usize,
}

impl<T> Clone for Matrix<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Matrix<'_, T> {}

impl<'a, T> Matrix<'a, T> {
    /// A row-major `rows × columns` matrix whose rows are `row_stride` apart.
    pub fn row_major(values: &'a [T], rows: usize, columns: usize, row_stride: usize) -> Self {
        Self {
            values,
            rows,
            columns,
            row_stride,
            column_stride: 1,
        }
    }

    /// The transpose, without a copy.
    pub fn transposed(self) -> Self {
        Self {
            values: self.values,
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
        }
    }

    /// Panics unless every element lies inside `values` (what `gemm_f32` hands gemm's kernel
    /// as a pointer and strides).
    pub fn assert_within(&self) {
        if self.rows > 0 && self.columns > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.columns - 1) * self.column_stride;
            assert!(last < self.values.len(), "a matrix reaches past its values");
        }
    }
}

impl Matrix<'_, bf16> {
    /// Packs rows `first_k..first_k + 2·pairs` of the panel of columns from `first` on, for a
    /// matrix whose columns are contiguous (`row_stride` 1: a transposed row-major matrix):
    /// column by column, each read as one run and its pairs written `panel` apart into the
    /// (cache-sized) block. Row by row, every pair would read one value from each of the
    /// panel's columns. On AVX-512 the pairs go 16 at a time through a transpose of vectors
    /// (one store per value was 8 % of the seed model's bf16 step); the rest value by value.
    pub(crate) fn pack_columns(
        &self,
        first_k: usize,
        pairs: usize,
        first: usize,
        packed: &mut [u32],
        panel: usize,
        path: Path,
    ) {
        let count = (2 * pairs).min(self.rows - first_k);
        let width = panel.min(self.columns.saturating_sub(first));
        let column_start = |column: usize| (first + column) * self.column_stride + first_k;
        let transposed_pairs = match path.vectors() {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Bf16 if panel <= 2 * avx512_bf16::PAIRS => {
                let pairs = count / 2 / avx512_bf16::PAIRS * avx512_bf16::PAIRS;
                #[allow(unsafe_code)]
                // SAFETY: `gemm` asserted `Path::available` (AVX-512F among it), the only
                // requirement of `avx512_bf16::pack_pairs`, which reads and writes only
                // through slices.
                unsafe {
                    avx512_bf16::pack_pairs(self.values, column_start, width, pairs, packed, panel);
                }
                pairs
            }
            _ => 0,
        };
        let packed = &mut packed[transposed_pairs * panel..];
        if width < panel {
            for pair in packed.chunks_exact_mut(panel) {
                pair[width..].fill(0);
            }
        }
        for column in 0..width {
            let start = column_start(column) + 2 * transposed_pairs;
            let end = column_start(column) + count;
            let (whole, last) = self.values[start..end].as_chunks::<2>();
            let bits = |value: &bf16| u32::from(value.to_bits());
            for (pair, [low, high]) in whole.iter().enumerate() {
                packed[pair * panel + column] = bits(low) | bits(high) << 16;
            }
            if let [low] = last {
                packed[whole.len() * panel + column] = bits(low);
            }
        }
    }

    /// Packs rows `k` and `k + 1` from column `first` on into `packed`, a pair per element (row
    /// `k` in the low half): zeros past the matrix's last row or column. Contiguous rows are
    /// read as slices in one pass the compiler vectorises (it had been a pass to zero and one
    /// per row, 3–5 % of the seed model's bf16 step); strided ones value by value.
    pub(crate) fn pack_row_pair(&self, k: usize, first: usize, packed: &mut [u32], path: Path) {
        let width = if first < self.columns {
            packed.len().min(self.columns - first)
        } else {
            0
        };
        let (written, padding) = packed.split_at_mut(width);
        padding.fill(0);
        let row =
            |i: usize| (i < self.rows).then(|| i * self.row_stride + first * self.column_stride);
        let bits = |value: &bf16| u32::from(value.to_bits());
        match (row(k), row(k + 1)) {
            (Some(low), Some(high)) if self.column_stride == 1 => {
                let (low, high) = (
                    &self.values[low..low + width],
                    &self.values[high..high + width],
                );
                // Whole vectors of pairs on AVX-512, the rest value by value.
                let done = match path.vectors() {
                    #[cfg(target_arch = "x86_64")]
                    #[allow(unsafe_code)]
                    // SAFETY: `gemm` asserted `Path::available` (AVX-512F among it), the only
                    // requirement of `avx512_bf16::interleave`, which reads and writes only
                    // through slices.
                    Path::Avx512Bf16 => unsafe { avx512_bf16::interleave(low, high, written) },
                    _ => 0,
                };
                let (low, high, written) = (&low[done..], &high[done..], &mut written[done..]);
                for ((packed, low), high) in written.iter_mut().zip(low).zip(high) {
                    *packed = bits(low) | bits(high) << 16;
                }
            }
            (Some(low), high) => {
                let stride = self.column_stride;
                for (column, packed) in written.iter_mut().enumerate() {
                    let high = high.map_or(0, |high| bits(&self.values[high + column * stride]));
                    *packed = bits(&self.values[low + column * stride]) | high << 16;
                }
            }
            (None, _) => written.fill(0),
        }
    }
}

/// What a product does with what `c` held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// `c += a · b`.
    Add,
    /// `c = a · b` (no pass to zero `c` first).
    Overwrite,
}

/// `c += a · b` or `c = a · b` (`update`) with `c` row-major `[a.rows × b.columns]`, its rows
/// `c_stride` apart.
///
/// # Panics
/// When the inner sizes differ, `c` is too short, or the path is not [`Path::available`]
/// (callers choose with [`Path::fastest`]).
pub fn gemm(
    path: Path,
    a: Matrix<'_>,
    b: Matrix<'_>,
    c: &mut [f32],
    c_stride: usize,
    update: Update,
) {
    product(path, Left::Matrix(a), &b, c, c_stride, update);
}

/// `a` packed once for several products: a convolution's weight, multiplied by every group of
/// columns of every clip. Packed per product, the 3-D ResNet's weights were packed once per
/// group of columns (a tenth of its bf16 step).
pub struct PackedLeft {
    packed: Vec<u32>,
    rows: usize,
    columns: usize,
    /// Packed for AMX tiles (row by row) rather than for the vector kernel.
    for_tiles: bool,
}

impl PackedLeft {
    pub fn new(a: Matrix<'_>, path: Path) -> Self {
        let mut packed = Vec::new();
        pack_left(a, &mut packed, path);
        Self {
            packed,
            rows: a.rows,
            columns: a.columns,
            for_tiles: path == Path::Amx,
        }
    }
}

/// The left operand of a [`product`]: packed by the product, or already packed.
#[derive(Clone, Copy)]
pub enum Left<'a> {
    Matrix(Matrix<'a>),
    Packed(&'a PackedLeft),
}

impl Left<'_> {
    /// `(rows, columns)`.
    fn dims(&self) -> (usize, usize) {
        match self {
            Left::Matrix(a) => (a.rows, a.columns),
            Left::Packed(a) => (a.rows, a.columns),
        }
    }
}

/// The right operand `b` (`k × n`) of a [`product`], which packs itself into the product's
/// layout (see [`pack`]): a [`Matrix`], or values made as they are packed (a convolution's
/// im2col columns, which then never exist unpacked).
pub trait PackRight: Sync {
    /// `k`.
    fn rows(&self) -> usize;
    /// `n`.
    fn columns(&self) -> usize;
    /// Writes every value of `packed`, resized to [`packed_len`]`(k, n)`.
    fn pack(&self, packed: &mut Vec<u32>, path: Path);
}

impl PackRight for Matrix<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn columns(&self) -> usize {
        self.columns
    }

    fn pack(&self, packed: &mut Vec<u32>, path: Path) {
        pack(*self, COLUMNS, packed, path);
    }
}

/// The length of a packed right operand of `k × n`: panels of [`COLUMNS`] by pairs of `k`.
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(COLUMNS) * k.div_ceil(2) * COLUMNS
}

/// [`gemm`] of any [`Left`] and [`PackRight`] operands.
///
/// # Panics
/// As [`gemm`].
pub fn product(
    path: Path,
    a: Left<'_>,
    b: &impl PackRight,
    c: &mut [f32],
    c_stride: usize,
    update: Update,
) {
    let ((m, k), n) = (a.dims(), b.columns());
    assert_eq!(k, b.rows(), "inner sizes of a bf16 matrix product");
    assert!(path.available(), "{path:?} is not available on this CPU");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.len() >= (m - 1) * c_stride + n,
        "c holds {m} × {n} values"
    );
    let mut packed = PACKED.take();
    let (a_buffer, b_packed) = &mut packed;
    let a_packed: &[u32] = match a {
        Left::Matrix(a) => {
            pack_left(a, a_buffer, path);
            a_buffer
        }
        Left::Packed(a) => {
            assert_eq!(
                a.for_tiles,
                path == Path::Amx,
                "a left operand packed for another path"
            );
            &a.packed
        }
    };
    b.pack(b_packed, path.vectors());
    // A panel of `a` per tile's rows, each block's pairs padded to whole steps on AMX, where
    // a tile sums a run of blocks before `c` is stored.
    let (panel_rows, panel_pairs, run_len): (usize, fn(usize) -> usize, usize) = match path {
        Path::Amx => (amx::ROWS, amx::padded_pairs, AMX_BLOCKS_PER_RUN),
        _ => (ROWS, |pairs| pairs, 1),
    };
    let row_panels = m.div_ceil(panel_rows);
    let column_panels = n.div_ceil(COLUMNS);
    // Each block of `k`: its panels of `a` and of `b`, and its pairs.
    let mut blocks = Vec::new();
    let (mut a_rest, mut b_rest) = (a_packed, &b_packed[..]);
    for (_, pairs) in k_blocks(k) {
        let (a_block, a_after) = a_rest.split_at(row_panels * panel_pairs(pairs) * panel_rows);
        let (b_block, b_after) = b_rest.split_at(column_panels * pairs * COLUMNS);
        (a_rest, b_rest) = (a_after, b_after);
        blocks.push((a_block, b_block, pairs));
    }
    let threads = rayon::current_num_threads().clamp(1, row_panels);
    let panels_per_band = row_panels.div_ceil(threads);
    c[..(m - 1) * c_stride + n]
        .par_chunks_mut(panels_per_band * panel_rows * c_stride)
        .enumerate()
        .for_each(|(band, c_band)| {
            let first_panel = band * panels_per_band;
            let panels = panels_per_band.min(row_panels - first_panel);
            let mut tiles = (path == Path::Amx).then(amx::Tiles::configure);
            let mut run = Vec::with_capacity(run_len);
            for (index, blocks) in blocks.chunks(run_len).enumerate() {
                let overwrite = index == 0 && update == Update::Overwrite;
                for column_panel in 0..column_panels {
                    for panel in first_panel..first_panel + panels {
                        // The tile's panels in each block of the run.
                        run.clear();
                        run.extend(blocks.iter().map(|&(a_block, b_block, pairs)| {
                            let a_len = panel_pairs(pairs) * panel_rows;
                            amx::BlockOfK {
                                a: &a_block[panel * a_len..][..a_len],
                                b: &b_block[column_panel * pairs * COLUMNS..][..pairs * COLUMNS],
                                pairs,
                            }
                        }));
                        let first_column = column_panel * COLUMNS;
                        let start = (panel - first_panel) * panel_rows * c_stride + first_column;
                        let tile = TileOfC {
                            rows: panel_rows.min(m - panel * panel_rows),
                            columns: COLUMNS.min(n - first_column),
                            stride: c_stride,
                            overwrite,
                        };
                        let c = &mut c_band[start..];
                        match &mut tiles {
                            Some(tiles) => tiles.multiply(&run, c, tile),
                            None => multiply(path, run[0].a, run[0].b, c, tile),
                        }
                    }
                }
            }
        });
    // Larger buffers (a linear layer's whole activation packed for its weight gradient) are
    // given back: kept, they stayed resident for the rest of the run outside every count.
    for buffer in [&mut packed.0, &mut packed.1] {
        if buffer.capacity() * std::mem::size_of::<u32>() > KEEP_PACKED_BYTES {
            *buffer = Vec::new();
        }
    }
    PACKED.set(packed);
}

/// Blocks of `k` an AMX tile sums before `c` is stored: the tile's `a` panels of the run (32
/// rows × 1024 `k`, 64 KiB) and `b`'s stay in the L2 cache.
const AMX_BLOCKS_PER_RUN: usize = 4;

/// The largest packed buffer a thread keeps for its next product: what a convolution's group
/// of im2col columns packs into (`conv_gemm::COLUMN_BYTES` of f32 columns, half that in bf16).
const KEEP_PACKED_BYTES: usize = 4 << 20;

thread_local! {
    /// The packed operands of the last product on this thread, kept for the next: the packed
    /// `b` of a convolution's group is megabytes, and a fresh buffer per product is a fresh
    /// mapping that the kernel zeroes (a fifth of the bf16 step's time when measured). Taken
    /// out while a product runs, so a nested product packs into buffers of its own.
    static PACKED: std::cell::Cell<(Vec<u32>, Vec<u32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Where one tile's products go: `rows × columns` of `c` (at most `ROWS × COLUMNS`: fewer at
/// the matrix's edges) from the slice's start, rows `stride` apart, added to what `c` held or
/// written over it.
#[derive(Debug, Clone, Copy)]
struct TileOfC {
    rows: usize,
    columns: usize,
    stride: usize,
    overwrite: bool,
}

impl TileOfC {
    /// Adds or writes `values` (one row of the tile, at least `columns` long) into row `row`.
    #[inline(always)]
    fn store_row(&self, c: &mut [f32], row: usize, values: &[f32]) {
        let c = &mut c[row * self.stride..][..self.columns];
        if self.overwrite {
            c.copy_from_slice(&values[..self.columns]);
        } else {
            for (c, value) in c.iter_mut().zip(values) {
                *c += value;
            }
        }
    }
}

/// Operands read where they lie rather than packed: a stride-1 convolution reads its input
/// shifted once per kernel tap (`layers::conv_direct`), and packing the shifted copies (im2col)
/// cost as much as the multiply-adds. For a segment starting at `(a_start, b_start)`, unit `p`
/// of `k` of the tile's [`ROWS`] rows is `a[a_start + p·a_unit_stride ..][..ROWS]` and of its
/// [`COLUMNS`] columns `b[b_start + p·b_unit_stride ..][..COLUMNS]`: a packed panel whose units
/// are further apart. A unit is a pair of bf16 `k` in a `u32` (the lower `k` in the low half)
/// here, one f32 in [`crate::gemm_f32::strided_tile`].
#[derive(Clone, Copy)]
pub struct Strided<'a, U = u32> {
    pub a: &'a [U],
    pub a_unit_stride: usize,
    pub b: &'a [U],
    pub b_unit_stride: usize,
    pub units: usize,
}

impl<U> Strided<'_, U> {
    /// Whether the tile has anything to add (`units > 0`), every segment checked to lie within
    /// `a` and `b` before a kernel reads it.
    ///
    /// # Panics
    /// When a segment reaches past `a` or `b`, or units overlap (strides below the tile's
    /// rows or columns).
    pub(crate) fn checked(&self, segments: &[(usize, usize)]) -> bool {
        if self.units == 0 {
            return false;
        }
        assert!(
            self.a_unit_stride >= ROWS && self.b_unit_stride >= COLUMNS,
            "a strided tile's units overlap"
        );
        for &(a_start, b_start) in segments {
            assert!(
                a_start + (self.units - 1) * self.a_unit_stride + ROWS <= self.a.len()
                    && b_start + (self.units - 1) * self.b_unit_stride + COLUMNS <= self.b.len(),
                "a strided tile's segment reaches past its operands"
            );
        }
        true
    }

    /// The units of the segment at `(a_start, b_start)` (which [`Self::checked`] passed): the
    /// tile's rows' values and its columns' values of each unit of `k`, as arrays. Walked as
    /// chunks of the strides, a unit costs the kernel's loop one length test per operand where
    /// slicing each unit at `unit · stride` tested and re-sliced three times (11 % of
    /// r3d_18's f32 step).
    #[inline(always)]
    pub(crate) fn segment_units(
        &self,
        (a_start, b_start): (usize, usize),
    ) -> impl Iterator<Item = (&[U; ROWS], &[U; COLUMNS])> {
        let a = &self.a[a_start..][..(self.units - 1) * self.a_unit_stride + ROWS];
        let b = &self.b[b_start..][..(self.units - 1) * self.b_unit_stride + COLUMNS];
        a.chunks(self.a_unit_stride)
            .zip(b.chunks(self.b_unit_stride))
            .map(|(a, b)| {
                let a = a.first_chunk().expect("a unit's rows lie within its chunk");
                let b = b
                    .first_chunk()
                    .expect("a unit's columns lie within its chunk");
                (a, b)
            })
    }
}

/// A tile of [`ROWS`] × [`COLUMNS`] f32 values.
pub type Tile = [[f32; COLUMNS]; ROWS];

/// `tile += Σ` over `segments` and their pairs of `a`'s row times `b`'s pair ([`Strided`]).
///
/// # Panics
/// When a segment reaches past `a` or `b`, or the path is not [`Path::available`].
pub fn strided_tile(
    path: Path,
    operands: Strided<'_>,
    segments: &[(usize, usize)],
    tile: &mut Tile,
) {
    assert!(path.available(), "{path:?} is not available on this CPU");
    if !operands.checked(segments) {
        return;
    }
    match path.vectors() {
        Path::Portable => strided_tile_portable(operands, segments, tile),
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Bf16 => {
            #[allow(unsafe_code)]
            // SAFETY: asserted above: this CPU has AVX-512F and AVX512_BF16, the only
            // requirement of `avx512_bf16::strided_tile` (it reads and writes only through
            // slices).
            unsafe {
                avx512_bf16::strided_tile(operands, segments, tile)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Path::Avx512Bf16 => unreachable!("asserted the path is available"),
        Path::Amx => unreachable!("strided tiles run on the tiles' vector path"),
    }
}

/// [`strided_tile`] in plain Rust.
fn strided_tile_portable(operands: Strided<'_>, segments: &[(usize, usize)], tile: &mut Tile) {
    let value = |bits: u32| bf16::from_bits(bits as u16).to_f32();
    let Strided {
        a,
        a_unit_stride,
        b,
        b_unit_stride,
        units: pairs,
    } = operands;
    for &(a_start, b_start) in segments {
        for pair in 0..pairs {
            let a_pair = &a[a_start + pair * a_unit_stride..][..ROWS];
            let b_pair = &b[b_start + pair * b_unit_stride..][..COLUMNS];
            for (sums, &a) in tile.iter_mut().zip(a_pair) {
                let (a_low, a_high) = (value(a), value(a >> 16));
                for (sum, &b) in sums.iter_mut().zip(b_pair) {
                    *sum += a_low * value(b) + a_high * value(b >> 16);
                }
            }
        }
    }
}

/// One tile of `c` from packed panels of one block of `k`, stored by `tile`.
fn multiply(path: Path, a_panel: &[u32], b_panel: &[u32], c: &mut [f32], tile: TileOfC) {
    match path {
        Path::Portable => multiply_portable(a_panel, b_panel, c, tile),
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Bf16 => {
            #[allow(unsafe_code)]
            // SAFETY: `gemm` asserted `Path::available`: this CPU has AVX-512F and AVX512_BF16,
            // the only requirement of `avx512_bf16::multiply` (it reads and writes only
            // through slices).
            unsafe {
                avx512_bf16::multiply(a_panel, b_panel, c, tile)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Path::Avx512Bf16 => unreachable!("gemm asserted the path is available"),
        Path::Amx => unreachable!("the product multiplies AMX tiles itself"),
    }
}

/// The instruction's arithmetic in plain Rust: each pair's two products summed, then added.
fn multiply_portable(a_panel: &[u32], b_panel: &[u32], c: &mut [f32], tile: TileOfC) {
    let mut sums = [[0f32; COLUMNS]; ROWS];
    let value = |bits: u32| bf16::from_bits(bits as u16).to_f32();
    for (a, b) in a_panel
        .chunks_exact(ROWS)
        .zip(b_panel.chunks_exact(COLUMNS))
    {
        for (sums_row, &a) in sums.iter_mut().zip(a) {
            let (a_low, a_high) = (value(a), value(a >> 16));
            for (sum, &b) in sums_row.iter_mut().zip(b) {
                *sum += a_low * value(b) + a_high * value(b >> 16);
            }
        }
    }
    for (row, values) in sums.iter().enumerate().take(tile.rows) {
        tile.store_row(c, row, values);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_bf16 {
    use super::{COLUMNS, ROWS, TileOfC};
    use burn::tensor::bf16;
    use std::arch::x86_64::{
        __m256i, __m512, __m512bh, __m512i, _mm512_add_ps, _mm512_cvtepu16_epi32, _mm512_dpbf16_ps,
        _mm512_or_si512, _mm512_set1_epi32, _mm512_setzero_ps, _mm512_setzero_si512,
        _mm512_shuffle_i32x4, _mm512_slli_epi32, _mm512_unpackhi_epi32, _mm512_unpackhi_epi64,
        _mm512_unpacklo_epi32, _mm512_unpacklo_epi64,
    };

    /// `packed[j] = low[j] | high[j] << 16` (two rows' bf16 bits as pairs) for the whole
    /// vectors of 16 at the start, by widening each row's values to 32 bits; returns how many
    /// it wrote (the caller writes the rest). The compiler's own loop, built for SSE2,
    /// interleaved 4 values per instruction (8 % of r3d_18's bf16 step at stop 43).
    #[target_feature(enable = "avx512f")]
    pub(super) fn interleave(low: &[bf16], high: &[bf16], packed: &mut [u32]) -> usize {
        let bits = |values: &[bf16]| -> __m512i {
            let values: &[u16] = bytemuck::cast_slice(values);
            let values: [u16; PAIRS] = values.try_into().expect("a vector is 16 values");
            _mm512_cvtepu16_epi32(bytemuck::cast::<[u16; PAIRS], __m256i>(values))
        };
        let (whole, _) = packed.as_chunks_mut::<PAIRS>();
        for (index, packed) in whole.iter_mut().enumerate() {
            let range = index * PAIRS..(index + 1) * PAIRS;
            let (low, high) = (bits(&low[range.clone()]), bits(&high[range]));
            *packed = bytemuck::cast(_mm512_or_si512(low, _mm512_slli_epi32::<16>(high)));
        }
        whole.len() * PAIRS
    }

    /// Pairs of `k` one vector holds, and columns one transpose takes.
    pub(super) const PAIRS: usize = 16;

    /// Packs the first `pairs` pairs (a multiple of [`PAIRS`]) of the panel's `width` columns,
    /// column `j`'s values starting at `values[column_start(j)]`, into `packed` (pair `p` of
    /// column `j` at `p · panel + j`; columns `width..panel` zero): 16 columns' runs of 16
    /// pairs are loaded as 16 vectors and transposed in registers.
    #[target_feature(enable = "avx512f")]
    pub(super) fn pack_pairs(
        values: &[bf16],
        column_start: impl Fn(usize) -> usize,
        width: usize,
        pairs: usize,
        packed: &mut [u32],
        panel: usize,
    ) {
        for group in 0..pairs / PAIRS {
            for first_column in (0..panel).step_by(PAIRS) {
                let columns: [__m512i; PAIRS] = std::array::from_fn(|offset| {
                    let column = first_column + offset;
                    if column >= width {
                        return _mm512_setzero_si512();
                    }
                    let start = column_start(column) + 2 * PAIRS * group;
                    let run: &[u16] = bytemuck::cast_slice(&values[start..start + 2 * PAIRS]);
                    let run: [u16; 2 * PAIRS] = run.try_into().expect("a vector is 32 values");
                    bytemuck::cast(run)
                });
                let stored = PAIRS.min(panel - first_column);
                for (pair, row) in transpose(columns).into_iter().enumerate() {
                    let row: [u32; PAIRS] = bytemuck::cast(row);
                    let at = (group * PAIRS + pair) * panel + first_column;
                    let target = &mut packed[at..at + stored];
                    // A whole vector as one store; a copy of a length known only at run time
                    // was a call to `memmove` per row (3 % of ST-GCN's bf16 step).
                    match <&mut [u32; PAIRS]>::try_from(&mut *target) {
                        Ok(target) => *target = row,
                        Err(_) => target.copy_from_slice(&row[..stored]),
                    }
                }
            }
        }
    }

    /// 16 pairs of `k` of 32 rows (`pairs_of_rows[pair][row]`) into rows of an AMX panel of
    /// `a`: `values[row · padded + first_pair ..][..16]`, two 16 × 16 transposes.
    #[target_feature(enable = "avx512f")]
    pub(super) fn store_rows(
        pairs_of_rows: &[[u32; 2 * PAIRS]; PAIRS],
        values: &mut [u32],
        padded: usize,
        first_pair: usize,
    ) {
        for half in 0..2 {
            let pairs: [__m512i; PAIRS] = std::array::from_fn(|pair| {
                let (_, rows) = pairs_of_rows[pair].split_at(half * PAIRS);
                let rows: [u32; PAIRS] = rows[..PAIRS].try_into().expect("16 rows");
                bytemuck::cast(rows)
            });
            for (offset, row) in transpose(pairs).into_iter().enumerate() {
                let at = (half * PAIRS + offset) * padded + first_pair;
                let target: &mut [u32; PAIRS] = (&mut values[at..at + PAIRS])
                    .try_into()
                    .expect("a vector is 16 values");
                *target = bytemuck::cast(row);
            }
        }
    }

    /// The transpose of a 16 × 16 matrix of `u32` held as 16 vectors (row `i` in vector `i`):
    /// 32-bit and 64-bit interleaves within each 128-bit lane, then two exchanges of lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(rows: [__m512i; PAIRS]) -> [__m512i; PAIRS] {
        // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved, low and high halves of each lane.
        let t: [__m512i; PAIRS] = std::array::from_fn(|index| {
            let (a, b) = (rows[index & !1], rows[index | 1]);
            if index % 2 == 0 {
                _mm512_unpacklo_epi32(a, b)
            } else {
                _mm512_unpackhi_epi32(a, b)
            }
        });
        // u[4g + c]: in lane L, rows 4g..4g + 3 of column 4L + c.
        let u: [__m512i; PAIRS] = std::array::from_fn(|index| {
            let (group, c) = (index / 4, index % 4);
            let (low, high) = (t[4 * group + c / 2], t[4 * group + 2 + c / 2]);
            if c % 2 == 0 {
                _mm512_unpacklo_epi64(low, high)
            } else {
                _mm512_unpackhi_epi64(low, high)
            }
        });
        // v[c][0..4]: for column class c, lanes (0, 2) and (1, 3) of u[c] with u[4 + c], and
        // of u[8 + c] with u[12 + c].
        let v: [[__m512i; 4]; 4] = std::array::from_fn(|c| {
            [
                _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]),
                _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]),
                _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]),
                _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]),
            ]
        });
        // Output 4L + c: lane L of u[c], u[4 + c], u[8 + c] and u[12 + c].
        std::array::from_fn(|index| {
            let (lane, c) = (index / 4, index % 4);
            let [even, odd, even_high, odd_high] = v[c];
            match lane {
                0 => _mm512_shuffle_i32x4::<0x88>(even, even_high),
                1 => _mm512_shuffle_i32x4::<0x88>(odd, odd_high),
                2 => _mm512_shuffle_i32x4::<0xdd>(even, even_high),
                _ => _mm512_shuffle_i32x4::<0xdd>(odd, odd_high),
            }
        })
    }

    /// [`super::multiply_portable`] with `vdpbf16ps`: per pair of `k`, two vectors of `b`'s
    /// row pair and one broadcast pair of each `a` row. A whole tile row goes from registers
    /// into `c` as two vectors; returning the tile by value copied it through the stack
    /// several times (6 % of the seed model's bf16 step at stop 42).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn multiply(a_panel: &[u32], b_panel: &[u32], c: &mut [f32], tile: TileOfC) {
        let mut sums = [[_mm512_setzero_ps(); 2]; ROWS];
        for (a, b) in a_panel
            .chunks_exact(ROWS)
            .zip(b_panel.chunks_exact(COLUMNS))
        {
            let (b_left, b_right) = b.split_at(COLUMNS / 2);
            let b_left = vector(b_left);
            let b_right = vector(b_right);
            for (sums, &a) in sums.iter_mut().zip(a) {
                let a: __m512bh = bytemuck::cast(_mm512_set1_epi32(a as i32));
                sums[0] = _mm512_dpbf16_ps(sums[0], a, b_left);
                sums[1] = _mm512_dpbf16_ps(sums[1], a, b_right);
            }
        }
        for (row, [left, right]) in sums.into_iter().enumerate().take(tile.rows) {
            if tile.columns < COLUMNS {
                let (left, right): ([f32; 16], [f32; 16]) =
                    (bytemuck::cast(left), bytemuck::cast(right));
                let mut values = [0f32; COLUMNS];
                values[..16].copy_from_slice(&left);
                values[16..].copy_from_slice(&right);
                tile.store_row(c, row, &values);
                continue;
            }
            let c = &mut c[row * tile.stride..][..COLUMNS];
            let (c_left, c_right) = c.split_at_mut(16);
            for (c, sum) in [(c_left, left), (c_right, right)] {
                let c: &mut [f32; 16] = c.try_into().expect("a vector is 16 values");
                let sum = if tile.overwrite {
                    sum
                } else {
                    _mm512_add_ps(sum, bytemuck::cast(*c))
                };
                *c = bytemuck::cast(sum);
            }
        }
    }

    /// [`super::strided_tile_portable`] with `vdpbf16ps`, as [`multiply`] with panels whose
    /// pairs are further apart; the tile is held in registers across the segments.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn strided_tile(
        operands: super::Strided<'_>,
        segments: &[(usize, usize)],
        tile: &mut super::Tile,
    ) {
        let mut sums: [[__m512; 2]; ROWS] = std::array::from_fn(|row| {
            let (left, right) = tile[row].split_at(16);
            let left: [f32; 16] = left.try_into().expect("a vector is 16 values");
            let right: [f32; 16] = right.try_into().expect("a vector is 16 values");
            [bytemuck::cast(left), bytemuck::cast(right)]
        });
        for &segment in segments {
            for (a_pair, b_pair) in operands.segment_units(segment) {
                let (b_halves, _) = b_pair.as_chunks::<16>();
                let (b_left, b_right) = (vector(&b_halves[0]), vector(&b_halves[1]));
                for (sums, &a) in sums.iter_mut().zip(a_pair) {
                    let a: __m512bh = bytemuck::cast(_mm512_set1_epi32(a as i32));
                    sums[0] = _mm512_dpbf16_ps(sums[0], a, b_left);
                    sums[1] = _mm512_dpbf16_ps(sums[1], a, b_right);
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

    /// 16 packed pairs as one vector.
    #[inline(always)]
    fn vector(pairs: &[u32]) -> __m512bh {
        let pairs: [u32; 16] = pairs.try_into().expect("a vector is 16 pairs");
        bytemuck::cast::<__m512i, __m512bh>(bytemuck::cast(pairs))
    }

    const _: () = assert!(COLUMNS == 32 && size_of::<__m512>() == 64);
}

/// `a` (`m × k`) packed as the left operand of a product on `path`: as its transpose in panels
/// of [`ROWS`] for the vector kernel ([`pack`]); for AMX tiles in blocks of [`K_BLOCK`] `k`,
/// each a run of panels of [`amx::ROWS`] rows laid out row by row, `[block][panel][row][pair]`,
/// every row's pairs padded with zeros to [`amx::padded_pairs`] (and rows past `m` zero).
fn pack_left(a: Matrix<'_>, packed: &mut Vec<u32>, path: Path) {
    if path != Path::Amx {
        pack(a.transposed(), ROWS, packed, path);
        return;
    }
    let panels = a.rows.div_ceil(amx::ROWS);
    let blocks: Vec<_> = k_blocks(a.columns).collect();
    let total: usize = blocks
        .iter()
        .map(|&(_, pairs)| panels * amx::ROWS * amx::padded_pairs(pairs))
        .sum();
    // Every value is written below (padding included), as in `pack`.
    packed.resize(total, 0);
    let mut tasks = Vec::with_capacity(blocks.len() * panels);
    let mut rest = &mut packed[..];
    for (first_k, pairs) in blocks {
        let panel_len = amx::ROWS * amx::padded_pairs(pairs);
        let (block, after) = rest.split_at_mut(panels * panel_len);
        rest = after;
        tasks.extend(
            block
                .chunks_exact_mut(panel_len)
                .enumerate()
                .map(|(panel, values)| (first_k, pairs, panel * amx::ROWS, values)),
        );
    }
    let vectors = path.vectors();
    tasks
        .into_par_iter()
        .for_each(|(first_k, pairs, first_row, values)| {
            let padded = amx::padded_pairs(pairs);
            let count = (2 * pairs).min(a.columns - first_k);
            if a.column_stride == 1 {
                // Rows of `a` are runs of `k`: each row's pairs are its values two by two.
                for (row, packed) in values.chunks_exact_mut(padded).enumerate() {
                    let row = first_row + row;
                    if row >= a.rows {
                        packed.fill(0);
                        continue;
                    }
                    // A pair in a `u32` is its two bf16 in memory order (AMX is x86: little
                    // endian): a copy of the bits.
                    let start = row * a.row_stride + first_k;
                    let run: &[u16] = bytemuck::cast_slice(&a.values[start..start + count]);
                    let halves: &mut [u16] = bytemuck::cast_slice_mut(packed);
                    let (written, padding) = halves.split_at_mut(count);
                    written.copy_from_slice(run);
                    padding.fill(0);
                }
                return;
            }
            // Otherwise 16 pairs of `k` at a time over the panel's rows (each pair from the
            // transpose's rows: runs where `a` is a transposed row-major matrix), then
            // transposed into the rows (on AVX-512 as 16 × 16 blocks: one value per store was
            // the packing's cost).
            let transposed = a.transposed();
            let mut pairs_of_rows = [[0u32; amx::ROWS]; amx::STEP_PAIRS];
            for first_pair in (0..padded).step_by(amx::STEP_PAIRS) {
                for (offset, pair_of_rows) in pairs_of_rows.iter_mut().enumerate() {
                    let pair = first_pair + offset;
                    if pair < pairs {
                        let k = first_k + 2 * pair;
                        transposed.pack_row_pair(k, first_row, pair_of_rows, vectors);
                    } else {
                        pair_of_rows.fill(0);
                    }
                }
                match vectors {
                    #[cfg(target_arch = "x86_64")]
                    Path::Avx512Bf16 => {
                        #[allow(unsafe_code)]
                        // SAFETY: `product` asserted `Path::available` (AVX-512F among it), the
                        // only requirement of `avx512_bf16::store_rows`, which reads and writes
                        // only through slices.
                        unsafe {
                            avx512_bf16::store_rows(&pairs_of_rows, values, padded, first_pair)
                        }
                    }
                    _ => {
                        for (offset, pair_of_rows) in pairs_of_rows.iter().enumerate() {
                            for (row, &value) in pair_of_rows.iter().enumerate() {
                                values[row * padded + first_pair + offset] = value;
                            }
                        }
                    }
                }
            }
        });
}

/// `matrix` (`k × width`) into `packed`, in blocks of [`K_BLOCK`] rows of `k`, each a run of
/// `panel`-column panels laid out pair of rows by pair of rows: `[block][panel][pair][column]`,
/// a pair of `k` per `u32` (the lower `k` in the low half), zero-padded past the last column
/// and `k`. `a` is packed as its transpose in panels of [`ROWS`], `b` in panels of
/// [`COLUMNS`].
fn pack(matrix: Matrix<'_>, panel: usize, packed: &mut Vec<u32>, path: Path) {
    let panels = matrix.columns.div_ceil(panel);
    // Every value is written below (padding included), so the buffer is not zeroed first:
    // zeroing megabytes per product was 7 % of the bf16 step.
    packed.resize(panels * matrix.rows.div_ceil(2) * panel, 0);
    let mut blocks = Vec::with_capacity(matrix.rows.div_ceil(K_BLOCK));
    let mut rest = &mut packed[..];
    for (first_k, pairs) in k_blocks(matrix.rows) {
        let (block, after) = rest.split_at_mut(panels * pairs * panel);
        rest = after;
        blocks.push((first_k, pairs, block));
    }
    // Rows read as runs (a row-major matrix, or a transposed one's columns), each pair of them
    // interleaved whole once and dealt to the panels, a block of `k` per task: panel by panel,
    // a weight gradient's `xᵀ` over tens of thousands of positions (ST-GCN's aggregation) was
    // packed a dozen values per call, and its product ran at 108 GFLOP/s, four fifths packing.
    if matrix.row_stride != 1 && matrix.column_stride == 1 && blocks.len() >= 4 {
        blocks.into_par_iter().for_each(|(first_k, pairs, block)| {
            let mut row_pair = vec![0u32; panels * panel];
            for pair in 0..pairs {
                matrix.pack_row_pair(first_k + 2 * pair, 0, &mut row_pair, path);
                for (index, values) in row_pair.chunks_exact(panel).enumerate() {
                    deal(
                        values,
                        &mut block[(index * pairs + pair) * panel..][..panel],
                    );
                }
            }
        });
        return;
    }
    // Otherwise one task per panel of every block, all in one parallel loop (a fork and join
    // per block woke the other thread for a few microseconds of work each time).
    let tasks: Vec<_> = blocks
        .into_iter()
        .flat_map(|(first_k, pairs, block)| {
            let panels = block.chunks_mut(pairs * panel).enumerate();
            panels.map(move |(index, packed)| (first_k, pairs, index, packed))
        })
        .collect();
    tasks
        .into_par_iter()
        .for_each(|(first_k, pairs, index, packed)| {
            if matrix.row_stride == 1 {
                matrix.pack_columns(first_k, pairs, index * panel, packed, panel, path);
            } else {
                for (pair, packed) in packed.chunks_exact_mut(panel).enumerate() {
                    matrix.pack_row_pair(first_k + 2 * pair, index * panel, packed, path);
                }
            }
        });
}

/// `target = values`, as a fixed-size copy for the two panel widths (a call to `memcpy` per
/// dozen values otherwise).
#[inline(always)]
fn deal(values: &[u32], target: &mut [u32]) {
    fn fixed<const N: usize>(values: &[u32], target: &mut [u32]) -> bool {
        match (
            <&[u32; N]>::try_from(values),
            <&mut [u32; N]>::try_from(target),
        ) {
            (Ok(values), Ok(target)) => {
                *target = *values;
                true
            }
            _ => false,
        }
    }
    if !fixed::<ROWS>(values, target) && !fixed::<COLUMNS>(values, target) {
        target.copy_from_slice(values);
    }
}

/// Blocks of `k`: `(first k, pairs)`.
pub(crate) fn k_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k)
        .step_by(K_BLOCK)
        .map(move |first| (first, (K_BLOCK.min(k - first)).div_ceil(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` bf16 values in [-2, 2) from the backend's generator seeded with `seed`.
    fn values(count: usize, seed: u64) -> Vec<bf16> {
        use burn::prelude::*;
        let _rng = crate::rng_lock();
        crate::TestBackend::seed(&Default::default(), seed);
        let distribution = burn::tensor::Distribution::Uniform(-2.0, 2.0);
        Tensor::<crate::TestBackend, 1>::random([count], distribution, &Default::default())
            .cast(burn::tensor::FloatDType::BF16)
            .into_data()
            .into_vec::<bf16>()
            .expect("a bf16 tensor holds bf16")
    }

    /// `c += a · b` one product at a time in f64, the reference.
    fn reference(a: Matrix<'_>, b: Matrix<'_>, c: &mut [f32], c_stride: usize) {
        for i in 0..a.rows {
            for j in 0..b.columns {
                let sum: f64 = (0..a.columns)
                    .map(|k| {
                        f64::from(a.values[i * a.row_stride + k * a.column_stride].to_f32())
                            * f64::from(b.values[k * b.row_stride + j * b.column_stride].to_f32())
                    })
                    .sum();
                c[i * c_stride + j] += sum as f32;
            }
        }
    }

    /// Every path equals the f64 reference on sizes that leave partial tiles, odd `k` (a padded
    /// pair), several blocks of `k`, transposed operands and a `c` wider than the product,
    /// added to what `c` held.
    fn equals_the_reference(path: Path) {
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 7, 3),
            (12, 32, 2),
            (13, 33, 257),
            (30, 70, 600),
            (64, 9, 147),
            // Blocks enough of `k` that a row-major `b` (and a transposed `a`) are packed a
            // block per task, an odd `k` leaving a last row without its pair.
            (14, 45, 1101),
            // Whole and edge tiles of 32 rows (AMX), pairs in whole and partial steps of 16.
            (64, 64, 64),
            (70, 96, 530),
        ] {
            let a_values = values(m * k, 1);
            let b_values = values(2 * k * n, 2);
            for (layout, a_transposed) in [
                ("row-major", false),
                ("transposed", false),
                ("strided", false),
                ("row-major", true),
            ] {
                // a as given, or as the transpose of a row-major `[k × m]` (its rows then
                // packed as runs, like b's).
                let a = if a_transposed {
                    Matrix::row_major(&a_values, k, m, m).transposed()
                } else {
                    Matrix::row_major(&a_values, m, k, k)
                };
                // b as given, as the transpose of a row-major `[n × k]`, or every other value of
                // a row-major `[k × 2n]` (neither stride 1).
                let b = match layout {
                    "transposed" => Matrix::row_major(&b_values, n, k, k).transposed(),
                    "strided" => Matrix {
                        values: &b_values,
                        rows: k,
                        columns: n,
                        row_stride: 2 * n,
                        column_stride: 2,
                    },
                    _ => Matrix::row_major(&b_values, k, n, n),
                };
                let c_stride = n + 3;
                let start: Vec<f32> = (0..m * c_stride).map(|i| i as f32 * 0.25).collect();
                let mut expected = start.clone();
                reference(a, b, &mut expected, c_stride);
                let mut c = start.clone();
                gemm(path, a, b, &mut c, c_stride, Update::Add);
                // Overwritten, `c` is the product alone (its padding columns kept).
                let mut overwritten = start.clone();
                gemm(path, a, b, &mut overwritten, c_stride, Update::Overwrite);
                let mut product = vec![0f32; m * c_stride];
                reference(a, b, &mut product, c_stride);
                for (index, value) in overwritten.iter().enumerate() {
                    let expected = if index % c_stride < n {
                        product[index]
                    } else {
                        start[index]
                    };
                    let tolerance = 1e-5 * (k as f32).sqrt() * expected.abs().max(4.0);
                    assert!(
                        (value - expected).abs() <= tolerance,
                        "{path:?} overwrite m {m} n {n} k {k} {layout} (a transposed: \
                         {a_transposed}): c[{index}] = {value}, expected {expected}"
                    );
                }
                for (index, (c, expected)) in c.iter().zip(&expected).enumerate() {
                    let tolerance = 1e-5 * (k as f32).sqrt() * expected.abs().max(4.0);
                    assert!(
                        (c - expected).abs() <= tolerance,
                        "{path:?} m {m} n {n} k {k} {layout} (a transposed: {a_transposed}): \
                         c[{index}] = {c}, expected {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_portable_path_equals_the_reference() {
        equals_the_reference(Path::Portable);
    }

    /// Runs where the CPU has AVX512_BF16 and says so where it does not (CI's machines vary:
    /// the portable path above checks the packing and tiles on every one).
    #[test]
    fn the_avx512_bf16_path_equals_the_reference_where_the_cpu_has_it() {
        if !Path::Avx512Bf16.available() {
            eprintln!("this CPU has no AVX512_BF16: the instruction's path is not tested here");
            return;
        }
        equals_the_reference(Path::Avx512Bf16);
    }

    /// Runs where the CPU has AMX-BF16 (and the system grants the tiles), says so elsewhere.
    #[test]
    fn the_amx_path_equals_the_reference_where_the_cpu_has_it() {
        if !Path::Amx.available() {
            eprintln!("this CPU or system has no AMX-BF16 tiles: their path is not tested here");
            return;
        }
        equals_the_reference(Path::Amx);
        // A left operand packed once serves several products on its path.
        let (m, n, k) = (45, 40, 300);
        let (a_values, b_values) = (values(m * k, 3), values(k * n, 4));
        let a = Matrix::row_major(&a_values, m, k, k);
        let b = Matrix::row_major(&b_values, k, n, n);
        let packed = PackedLeft::new(a, Path::Amx);
        let mut expected = vec![0f32; m * n];
        reference(a, b, &mut expected, n);
        let mut c = vec![0f32; m * n];
        product(
            Path::Amx,
            Left::Packed(&packed),
            &b,
            &mut c,
            n,
            Update::Overwrite,
        );
        for (c, expected) in c.iter().zip(&expected) {
            assert!((c - expected).abs() <= 1e-4 * expected.abs().max(4.0));
        }
    }
}
