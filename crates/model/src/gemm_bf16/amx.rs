//! AMX-BF16 tiles for the packed product ([`super::product`]) on the Xeons that have them
//! (Sapphire Rapids on): `tdpbf16ps` multiplies a 16 × 32 tile of bf16 by a 32 × 16 one into
//! 16 × 16 f32 sums, 8192 multiply-adds per instruction where `vdpbf16ps` does 32. PyTorch's
//! oneDNN uses them for its bf16 convolutions and matrix products on such a CPU; without them
//! vidtrain's bf16 rows ran at a fraction of its speed there.
//!
//! Layout: `c` is computed 32 × 32 at a time, four accumulator tiles (`tmm0`–`tmm3`) fed by two
//! tiles of `a` (`tmm4`, `tmm5`: 16 rows each) and two of `b` (`tmm6`, `tmm7`: 16 columns each)
//! per step of [`STEP_PAIRS`] pairs of `k`. `b` keeps the packed layout of the vector path
//! (`[pair][COLUMNS]`: a tile's row is a pair of `k` for 16 columns, what the instruction
//! reads); `a` is packed row by row instead (`[row][pair]`: a tile's row is one row of `a`
//! over 16 pairs), its pairs padded with zeros to whole steps ([`padded_pairs`]).
//!
//! Rust has no stable AMX intrinsics, so the instructions are inline assembly
//! (`docs/decisions/0021-amx-bf16-tiles.md`): the `unsafe` here is that assembly, the tile
//! configuration it depends on, and the system call by which Linux lets a process use the tile
//! registers. Every pointer handed to the assembly is checked against its slice first.

use super::{COLUMNS, TileOfC};
use std::marker::PhantomData;

/// Rows of `c` per tile of the product: two AMX tiles of 16 rows.
pub const ROWS: usize = 32;
/// Pairs of `k` per step: one 64-byte row of an AMX tile.
pub const STEP_PAIRS: usize = 16;
/// Rows of one AMX tile.
const TILE_ROWS: usize = 16;
/// Bytes of one row of an AMX tile.
const ROW_BYTES: usize = 64;

/// `pairs` rounded up to whole steps: the row length of a packed panel of `a`.
pub fn padded_pairs(pairs: usize) -> usize {
    pairs.div_ceil(STEP_PAIRS) * STEP_PAIRS
}

/// Whether this CPU has AMX-BF16 and the operating system lets this process use the tiles.
/// Asked once; on Linux the first call requests the permission (`arch_prctl`), which every
/// thread of the process then holds.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_tiles() && tile_data_permitted())
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
#[cfg(target_arch = "x86_64")]
fn cpu_has_tiles() -> bool {
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_tiles() -> bool {
    false
}

/// Linux (5.16 on) keeps the tile registers' 8 KiB of state out of a process until it asks
/// (`ARCH_REQ_XCOMP_PERM` for `XFEATURE_XTILEDATA`); a tile instruction before that is a
/// SIGILL. The request fails where the kernel does not manage the state, and then the vector
/// path is used.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn tile_data_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    #[allow(unsafe_code)]
    // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, feature)` takes two integers and changes only
    // which register state the kernel saves for this process; an unsupported request returns
    // an error.
    let status = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    status == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn tile_data_permitted() -> bool {
    false
}

/// The tile configuration (palette 1): all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Palette([u8; 64]);

const PALETTE: Palette = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = ROW_BYTES as u8;
        bytes[48 + tile] = TILE_ROWS as u8;
        tile += 1;
    }
    Palette(bytes)
};

/// The tile registers of this thread, configured by [`Tiles::configure`] and released when
/// dropped. Not `Send`: the configuration belongs to the thread that loaded it.
pub struct Tiles {
    _thread_bound: PhantomData<*const ()>,
}

impl Tiles {
    /// Configures this thread's tiles for [`Tiles::multiply`].
    ///
    /// # Panics
    /// When the CPU or the system does not allow tiles ([`available`]).
    pub fn configure() -> Tiles {
        assert!(available(), "this CPU or system does not run AMX tiles");
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AMX-TILE and the process holds the tile state's permission
        // (asserted above); `ldtilecfg` reads the 64 bytes of a valid palette-1 configuration.
        unsafe {
            std::arch::asm!(
                "ldtilecfg [{palette}]",
                palette = in(reg) PALETTE.0.as_ptr(),
                options(nostack, readonly)
            );
        }
        Tiles {
            _thread_bound: PhantomData,
        }
    }

    /// One tile of `c` (at most [`ROWS`] × [`COLUMNS`], as `tile` says) summed over a run of
    /// blocks of `k`, each a packed panel of `a` (`[ROWS][padded]` pairs, `padded` =
    /// [`padded_pairs`]`(pairs)`, zeros past `pairs`), one of `b` (`[pairs][COLUMNS]`) and its
    /// pairs. The tile stays in the tile registers across the run: loaded and stored once per
    /// block, `c` took half the kernel's time (2048³).
    ///
    /// # Panics
    /// When a panel is shorter than its layout, or `c` than the tile.
    pub fn multiply(&mut self, run: &[BlockOfK<'_>], c: &mut [f32], tile: TileOfC) {
        if tile.rows == ROWS && tile.columns == COLUMNS {
            assert!(
                c.len() >= (ROWS - 1) * tile.stride + COLUMNS,
                "c holds an AMX tile"
            );
            let load = !tile.overwrite;
            self.sums(run, c, tile.stride, load);
            return;
        }
        // An edge tile: sums into a whole tile here, then the rows and columns `c` has.
        let mut sums = [[0f32; COLUMNS]; ROWS];
        self.sums(run, sums.as_flattened_mut(), COLUMNS, false);
        for (row, values) in sums.iter().enumerate().take(tile.rows) {
            tile.store_row(c, row, values);
        }
    }

    /// `c[..ROWS][..COLUMNS]` (rows `c_stride` apart) = its values when `load` (else zero) +
    /// the product of the run's panels.
    fn sums(&mut self, run: &[BlockOfK<'_>], c: &mut [f32], c_stride: usize, load: bool) {
        assert!(c.len() >= (ROWS - 1) * c_stride + COLUMNS);
        let c_stride_bytes = c_stride * size_of::<f32>();
        let c_top = c.as_mut_ptr();
        let c_bottom = c[TILE_ROWS * c_stride..].as_mut_ptr();
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: this thread's tiles are configured (`self` exists only after `configure`) as
        // 16 rows of 64 bytes; a load reads 16 rows of 64 bytes at its stride, a store writes
        // as many: `c`'s rows 0–15 and 16–31 from its start, 16 f32 each at offsets 0 and 64
        // bytes, within `c` by the assertion above. The tiles hold nothing the compiler sees.
        unsafe {
            use std::arch::asm;
            if load {
                asm!(
                    "tileloadd tmm0, [{top} + {stride}*1]",
                    "tileloadd tmm1, [{top} + {stride}*1 + 64]",
                    "tileloadd tmm2, [{bottom} + {stride}*1]",
                    "tileloadd tmm3, [{bottom} + {stride}*1 + 64]",
                    top = in(reg) c_top,
                    bottom = in(reg) c_bottom,
                    stride = in(reg) c_stride_bytes,
                    options(nostack, readonly)
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
        }
        for block in run {
            self.add_block(block);
        }
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: as for the loads above.
        unsafe {
            std::arch::asm!(
                "tilestored [{top} + {stride}*1], tmm0",
                "tilestored [{top} + {stride}*1 + 64], tmm1",
                "tilestored [{bottom} + {stride}*1], tmm2",
                "tilestored [{bottom} + {stride}*1 + 64], tmm3",
                top = in(reg) c_top,
                bottom = in(reg) c_bottom,
                stride = in(reg) c_stride_bytes,
                options(nostack)
            );
        }
    }

    /// Adds one block's product to the accumulator tiles `tmm0`–`tmm3`.
    fn add_block(&mut self, block: &BlockOfK<'_>) {
        let &BlockOfK { a, b, pairs } = block;
        let padded = padded_pairs(pairs);
        assert!(
            a.len() >= ROWS * padded && b.len() >= pairs * COLUMNS,
            "an AMX tile's panels are shorter than their layout"
        );
        let whole_steps = pairs / STEP_PAIRS;
        // The last step's pairs of `b` padded with zero rows: read from the panel, the rows
        // past it would be the next panel's values (0 · inf is NaN) or past the buffer. Made
        // only when there is a rest: zeroing 2 KiB per tile was 6 % of r3d_18's bf16 step.
        let rest = &b[whole_steps * STEP_PAIRS * COLUMNS..pairs * COLUMNS];
        let padded_rest: [u32; STEP_PAIRS * COLUMNS];
        let last_b = if rest.is_empty() {
            None
        } else {
            let mut values = [0u32; STEP_PAIRS * COLUMNS];
            values[..rest.len()].copy_from_slice(rest);
            padded_rest = values;
            Some(&padded_rest)
        };
        let steps = whole_steps + usize::from(last_b.is_some());
        let a_stride = padded * size_of::<u32>();
        let b_stride = COLUMNS * size_of::<u32>();
        for step in 0..steps {
            let a_top = a[step * STEP_PAIRS..].as_ptr();
            let a_bottom = a[TILE_ROWS * padded + step * STEP_PAIRS..].as_ptr();
            let b = match last_b {
                Some(last) if step == whole_steps => last.as_ptr(),
                _ => b[step * STEP_PAIRS * COLUMNS..].as_ptr(),
            };
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            // SAFETY: tiles configured as above. `a`'s two loads read rows 0–15 and 16–31 of
            // the panel (`padded` pairs apart) from pair `step · 16`, 16 pairs each: within
            // `ROWS · padded` values as `step · 16 + 16 ≤ padded` (`steps` is `pairs` in whole
            // steps, `padded` the same rounded up). `b`'s read 16 pairs of 32 columns from pair
            // `step · 16`: of the panel for whole steps (`(whole_steps · 16) · 32 ≤ b.len()`,
            // asserted), of `last_b` (16 · 32 values) for the last.
            unsafe {
                std::arch::asm!(
                    "tileloadd tmm4, [{a_top} + {a_stride}*1]",
                    "tileloadd tmm6, [{b} + {b_stride}*1]",
                    "tileloadd tmm7, [{b} + {b_stride}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a_bottom} + {a_stride}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a_top = in(reg) a_top,
                    a_bottom = in(reg) a_bottom,
                    a_stride = in(reg) a_stride,
                    b = in(reg) b,
                    b_stride = in(reg) b_stride,
                    options(nostack, readonly)
                );
            }
        }
    }
}

/// One block of `k` of a tile's product: the packed panel of `a` and of `b` and its pairs
/// ([`Tiles::multiply`]).
#[derive(Clone, Copy)]
pub struct BlockOfK<'a> {
    pub a: &'a [u32],
    pub b: &'a [u32],
    pub pairs: usize,
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: `tilerelease` returns the configured tiles to their initial state; nothing
        // reads them after this.
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

const _: () = assert!(COLUMNS == 2 * TILE_ROWS && ROWS == 2 * TILE_ROWS);
const _: () = assert!(STEP_PAIRS * size_of::<u32>() == ROW_BYTES);
