//! Activations kept for backward in fewer bits (`model.activation_bits`), after ActNN (Chen et
//! al., ICML 2021): the values are cut into blocks of [`BLOCK`] consecutive elements, each block
//! stores its own range (lowest value and step, f32) and every value as an unsigned code of
//! `bits` bits, rounded **stochastically** (up with probability equal to the remainder), so the
//! dequantized value is the original in expectation and gradients computed from it stay unbiased.
//! 16 bits are codes too, not bf16: BatchNorm's backward recomputes its statistics from the kept
//! input, and a channel whose values sit far from zero (a mean of 10, a spread of 0.01) keeps
//! nothing of its spread in bf16's 8 significant bits, while a block's own range keeps 16.
//!
//! Two routes with the same layout and rounding: on burn-flex a fused, multi-threaded pass over
//! the stored buffer whose random draws are a hash of (seed, block, position), so a result does
//! not depend on the thread count; on every other backend (CUDA, wgpu) the same arithmetic as
//! tensor ops, its draws from the backend's generator seeded with the same seed. Either way a
//! replay or a resumed run draws the same codes.

use burn::prelude::*;
use burn::tensor::{DType, Distribution, FloatDType, IntDType, TensorData, bf16, f16};
use rayon::prelude::*;

use crate::cpu_kernels::{self, HostFloat, bf16_from_f32, bf16_to_f32, f16_from_f32, f16_to_f32};

/// Values per block, each block with its own range: 256 as in bitsandbytes' block-wise codes
/// (the range costs 8 bytes per block: 1.6 % of the codes at 16 bits, 12.5 % at 2).
pub const BLOCK: usize = 256;

/// The bit widths `model.activation_bits` takes.
pub const WIDTHS: [u32; 5] = [32, 16, 8, 4, 2];

/// Bytes that `elements` values of `value_bytes` each take when kept at `bits` bits: what the
/// memory plan prices a compressed activation at.
pub fn kept_bytes(elements: u64, value_bytes: u64, bits: u32) -> u64 {
    if bits >= 32 {
        return elements * value_bytes;
    }
    let blocks = elements.div_ceil(BLOCK as u64);
    blocks * (BLOCK as u64 * u64::from(bits) / 8 + 8)
}

/// A tensor kept at fewer bits than it is computed in.
pub(crate) enum Quantized<B: Backend> {
    /// Codes in host memory (burn-flex).
    Host { codes: HostCodes, device: B::Device },
    /// Codes as backend tensors (any other backend).
    Tensors(TensorCodes<B>),
}

/// Block codes as backend tensors, made and read by tensor ops.
pub(crate) struct TensorCodes<B: Backend> {
    /// `[blocks, BLOCK · bits / 8]`, u8 (`[blocks, BLOCK]`, u16, at 16 bits).
    codes: Tensor<B, 2, Int>,
    /// `[blocks, 1]` each.
    lows: Tensor<B, 2>,
    steps: Tensor<B, 2>,
    length: usize,
    bits: u32,
    dtype: DType,
}

impl<B: Backend> Quantized<B> {
    /// Keeps `values` at `bits` (16, 8, 4 or 2) bits, drawing the rounding from `seed`.
    pub(crate) fn new(values: Tensor<B, 1>, bits: u32, seed: u64) -> Self {
        let dtype = values.dtype();
        let device = values.device();
        assert!(
            matches!(bits, 2 | 4 | 8 | 16),
            "activation bits are checked by the config: {bits}"
        );
        if cpu_kernels::enabled::<B>(&device) && cpu_kernels::host_float(dtype) {
            let codes = match dtype {
                DType::BF16 => {
                    HostCodes::new(&cpu_kernels::stored::<bf16, B, 1>(values), bits, seed)
                }
                DType::F16 => HostCodes::new(&cpu_kernels::stored::<f16, B, 1>(values), bits, seed),
                _ => HostCodes::new(&cpu_kernels::stored::<f32, B, 1>(values), bits, seed),
            };
            return Quantized::Host { codes, device };
        }
        quantize_by_tensor_ops(values, bits, seed)
    }

    /// The values again, in their dtype (each within one step of its block of the original).
    pub(crate) fn restore(self) -> Tensor<B, 1> {
        match self {
            Quantized::Host { codes, device } => codes.to_tensor(&device),
            Quantized::Tensors(codes) => codes.restore(),
        }
    }
}

impl<B: Backend> TensorCodes<B> {
    /// The values again, in their dtype: each byte's codes split out by integer ops.
    fn restore(self) -> Tensor<B, 1> {
        let bits = self.bits as usize;
        let per_byte = (8 / bits).max(1);
        let [blocks, bytes] = self.codes.dims();
        let codes = self.codes.cast(IntDType::I32);
        let parts = (0..per_byte)
            .map(|position| {
                codes
                    .clone()
                    .div_scalar(1i32 << (bits * position))
                    .remainder_scalar(1i32 << bits)
                    .unsqueeze_dim::<3>(2)
            })
            .collect();
        let codes = Tensor::cat(parts, 2).reshape([blocks, bytes * per_byte]);
        let values = codes.float().mul(self.steps).add(self.lows);
        values
            .reshape([blocks * BLOCK])
            .narrow(0, 0, self.length)
            .cast(FloatDType::from(self.dtype))
    }
}

/// The tensor-op route of [`Quantized::new`], for backends that do not compute on the host.
fn quantize_by_tensor_ops<B: Backend>(values: Tensor<B, 1>, bits: u32, seed: u64) -> Quantized<B> {
    let dtype = values.dtype();
    let device = values.device();
    let length = values.dims()[0];
    let blocks = length.div_ceil(BLOCK);
    let values = values.cast(FloatDType::F32);
    let padding = blocks * BLOCK - length;
    // The padding repeats the last value, so it does not widen the last block's range.
    let values = if padding > 0 {
        let last = values
            .clone()
            .narrow(0, length - 1, 1)
            .repeat_dim(0, padding);
        Tensor::cat(vec![values, last], 0)
    } else {
        values
    };
    let values = values.reshape([blocks, BLOCK]);
    let levels = ((1u32 << bits) - 1) as f32;
    let lows = values.clone().min_dim(1);
    let steps = values
        .clone()
        .max_dim(1)
        .sub(lows.clone())
        .div_scalar(levels);
    // A constant block has step 0: its codes are all 0.
    let inverse = steps
        .clone()
        .equal_elem(0.0)
        .float()
        .add(steps.clone())
        .recip()
        .mul(steps.clone().not_equal_elem(0.0).float());
    B::seed(&device, seed);
    let draws = Tensor::<B, 2>::random([blocks, BLOCK], Distribution::Default, &device);
    let codes = values
        .sub(lows.clone())
        .mul(inverse)
        .add(draws)
        .floor()
        .clamp(0.0, levels)
        .int()
        .cast(IntDType::I32);
    let codes = if bits == 16 {
        codes.cast(IntDType::U16)
    } else {
        let per_byte = 8 / bits as usize;
        let weights: Vec<i32> = (0..per_byte).map(|i| 1 << (bits as usize * i)).collect();
        let weights =
            Tensor::<B, 3, Int>::from_data(TensorData::new(weights, [1, 1, per_byte]), &device)
                .cast(IntDType::I32);
        codes
            .reshape([blocks, BLOCK / per_byte, per_byte])
            .mul(weights)
            .sum_dim(2)
            .reshape([blocks, BLOCK / per_byte])
            .cast(IntDType::U8)
    };
    Quantized::Tensors(TensorCodes {
        codes,
        lows,
        steps,
        length,
        bits,
        dtype,
    })
}

/// The compression of what the CPU's tracked ops keep (convolutions, BatchNorm, ReLU: the
/// 3-D ResNet's and ST-GCN's blocks), for the stretch of kept segments being run on this thread.
#[derive(Clone, Copy)]
struct KeptScope {
    bits: u32,
    seed: u64,
    /// Tensors kept so far in the stretch: each draws its rounding from its own seed.
    count: u64,
}

thread_local! {
    static KEPT_SCOPE: std::cell::Cell<Option<KeptScope>> = const { std::cell::Cell::new(None) };
}

/// While alive, the tracked ops recorded on this thread keep what their backward reads at `bits`
/// bits (`model.activation_bits`), the k-th tensor's rounding drawn from a hash of `seed` and k:
/// a segment run again with the same seed keeps the same codes. Autodiff records a segment's
/// ops on the thread that runs its forward (the compute pool only splits their kernels).
pub(crate) struct CompressedKeeping {
    previous: Option<KeptScope>,
}

impl CompressedKeeping {
    /// Starts compressing at `bits` (below 32) with rounding seeded by `seed`.
    pub(crate) fn begin(bits: u32, seed: u64) -> Self {
        let scope = KeptScope {
            bits,
            seed,
            count: 0,
        };
        Self {
            previous: KEPT_SCOPE.replace(Some(scope)),
        }
    }
}

impl Drop for CompressedKeeping {
    fn drop(&mut self) {
        KEPT_SCOPE.set(self.previous);
    }
}

/// The bits and the rounding seed of one more tensor a tracked op keeps, inside a
/// [`CompressedKeeping`]; `None` outside one (keep it as computed).
pub(crate) fn next_kept_codes() -> Option<(u32, u64)> {
    let mut scope = KEPT_SCOPE.get()?;
    scope.count += 1;
    KEPT_SCOPE.set(Some(scope));
    let seed = scope.seed ^ u64::from(mix(scope.count as u32)).rotate_left(29);
    Some((scope.bits, seed))
}

/// Which values of `output` (a host tensor of f32, bf16 or f16, flattened) are positive, read
/// where they are stored: a ReLU's gate ([`positive_bits`]), kept instead of its output or beside
/// a compressed input (a gate recomputed from dequantized values would close where the
/// forward's was open for values within one step of 0).
pub(crate) fn gate_bits<B: Backend>(output: Tensor<B, 1>) -> Vec<u8> {
    match output.dtype() {
        DType::BF16 => positive_bits(&cpu_kernels::stored::<bf16, B, 1>(output)),
        DType::F16 => positive_bits(&cpu_kernels::stored::<f16, B, 1>(output)),
        _ => positive_bits(&cpu_kernels::stored::<f32, B, 1>(output)),
    }
}

/// Bit `i % 8` of byte `i / 8` set where value `i` is positive.
fn positive_bits<T: HostFloat>(values: &[T]) -> Vec<u8> {
    let mut bits = vec![0u8; values.len().div_ceil(8)];
    bits.par_chunks_mut(GATE_BYTES_PER_TASK)
        .zip(values.par_chunks(GATE_BYTES_PER_TASK * 8))
        .for_each(|(bits, values)| {
            for (byte, values) in bits.iter_mut().zip(values.chunks(8)) {
                *byte = gate_byte(values);
            }
        });
    bits
}

/// The gate byte of up to eight values: bit `i` set where value `i` is positive.
#[inline(always)]
pub(crate) fn gate_byte<T: HostFloat>(values: &[T]) -> u8 {
    values.iter().enumerate().fold(0, |byte, (bit, value)| {
        byte | (u8::from(value.to_f32() > 0.0) << bit)
    })
}

/// `upstream` (a host tensor of f32, bf16 or f16, flattened as the gate) zeroed where `bits`
/// ([`gate_bits`]) has a 0, in its dtype (written over its values when nothing else holds them):
/// a gradient through the ReLU.
pub(crate) fn gated_by<B: Backend>(bits: &[u8], upstream: Tensor<B, 1>) -> Tensor<B, 1> {
    fn gated<B: Backend, T: HostFloat>(bits: &[u8], upstream: Tensor<B, 1>) -> Tensor<B, 1> {
        let device = upstream.device();
        let mut values = cpu_kernels::values::<T, B, 1>(upstream);
        zero_where_closed(bits, &mut values);
        let length = values.len();
        Tensor::from_data(TensorData::new(values, [length]), (&device, T::dtype()))
    }
    match upstream.dtype() {
        DType::BF16 => gated::<B, bf16>(bits, upstream),
        DType::F16 => gated::<B, f16>(bits, upstream),
        _ => gated::<B, f32>(bits, upstream),
    }
}

/// Zeroes `values` where `bits` ([`positive_bits`]) has a 0: a gradient through the ReLU.
/// Branch-free, on the values' bits: a gate is open or closed at random, and a branch per value
/// mispredicted half the time made this pass 4 % of ST-GCN's bf16 step.
pub(crate) fn zero_where_closed<T: HostFloat>(bits: &[u8], values: &mut [T]) {
    match size_of::<T>() {
        2 => masked(bits, bytemuck::cast_slice_mut::<T, u16>(values)),
        _ => masked(bits, bytemuck::cast_slice_mut::<T, u32>(values)),
    }
}

/// `values` kept where their bit in `bits` is set and zeroed elsewhere.
fn masked<U: ValueBits>(bits: &[u8], values: &mut [U]) {
    values
        .par_chunks_mut(GATE_BYTES_PER_TASK * 8)
        .zip(bits.par_chunks(GATE_BYTES_PER_TASK))
        .for_each(|(values, bits)| {
            for (values, &byte) in values.chunks_mut(8).zip(bits) {
                for (bit, value) in values.iter_mut().enumerate() {
                    *value &= U::all_or_none(byte >> bit & 1);
                }
            }
        });
}

/// The bits of a stored value (`u16` for the half types, `u32` for f32).
trait ValueBits: Copy + Send + std::ops::BitAndAssign {
    /// All ones for 1, none for 0.
    fn all_or_none(bit: u8) -> Self;
}

impl ValueBits for u16 {
    #[inline(always)]
    fn all_or_none(bit: u8) -> Self {
        0u16.wrapping_sub(u16::from(bit))
    }
}

impl ValueBits for u32 {
    #[inline(always)]
    fn all_or_none(bit: u8) -> Self {
        0u32.wrapping_sub(u32::from(bit))
    }
}

/// Bytes of a ReLU gate per parallel task.
const GATE_BYTES_PER_TASK: usize = 1 << 14;

/// A compressed clips activation `[n, c, t, h, w]` in host memory, as a kernel that reads it piece
/// by piece takes it.
#[derive(Clone, Copy)]
pub(crate) struct HostInput<'a> {
    pub codes: &'a HostCodes,
    pub dims: [usize; 5],
}

/// Block codes in host memory.
pub(crate) struct HostCodes {
    /// `BLOCK · bits / 8` bytes per block; within a byte the first value takes the low bits.
    codes: Vec<u8>,
    /// Per block: the lowest value and the step between codes. One buffer, not two: at the
    /// seed stem's sizes each half would be under the 1 MiB the host allocator's reuse pool
    /// takes, and glibc's heap, fragmented by such long-lived blocks, kept 50-60 MiB resident
    /// beyond the pool's peak.
    ranges: Vec<[f32; 2]>,
    length: usize,
    bits: u32,
    /// What the values were stored in before compression: what they are restored to, and
    /// rounded to where a kernel restores them wider ([`Self::restore_as_stored`]).
    dtype: DType,
}

/// Blocks per parallel task: large enough that a task outweighs its scheduling.
const BLOCKS_PER_TASK: usize = 256;

impl HostCodes {
    fn new<T: HostFloat>(values: &[T], bits: u32, seed: u64) -> Self {
        let length = values.len();
        let blocks = length.div_ceil(BLOCK);
        let block_bytes = BLOCK * bits as usize / 8;
        let mut codes = vec![0u8; blocks * block_bytes];
        let mut ranges = vec![[0f32; 2]; blocks];
        let levels = ((1u32 << bits) - 1) as f32;
        let key = (seed ^ (seed >> 32)) as u32;
        codes
            .par_chunks_mut(block_bytes * BLOCKS_PER_TASK)
            .zip(ranges.par_chunks_mut(BLOCKS_PER_TASK))
            .enumerate()
            .for_each(|(task, (codes, ranges))| {
                let first = task * BLOCKS_PER_TASK;
                for (offset, (codes, range)) in codes
                    .chunks_mut(block_bytes)
                    .zip(ranges.iter_mut())
                    .enumerate()
                {
                    let block = first + offset;
                    let values = &values[block * BLOCK..((block + 1) * BLOCK).min(length)];
                    let (min, max) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), v| {
                        let v = v.to_f32();
                        (lo.min(v), hi.max(v))
                    });
                    let step = (max - min) / levels;
                    *range = [min, step];
                    let inverse = if step > 0.0 { 1.0 / step } else { 0.0 };
                    let block_key = mix(key ^ mix(block as u32));
                    // The sum is not negative, so truncation is the floor (`floor` is a libm
                    // call on baseline x86-64); NaN and infinities (an fp16 overflow the loss
                    // scaler will skip) saturate instead of panicking.
                    let code = |index: usize, value: &T| {
                        let draw = unit(mix(block_key.wrapping_add(index as u32)));
                        ((value.to_f32() - min) * inverse + draw).min(levels) as u32
                    };
                    if bits == 16 {
                        for (index, (value, bytes)) in
                            values.iter().zip(codes.chunks_exact_mut(2)).enumerate()
                        {
                            bytes.copy_from_slice(&(code(index, value) as u16).to_le_bytes());
                        }
                    } else {
                        let per_byte = 8 / bits as usize;
                        for (index, value) in values.iter().enumerate() {
                            let shifted = code(index, value) << ((index % per_byte) as u32 * bits);
                            codes[index / per_byte] |= shifted as u8;
                        }
                    }
                }
            });
        Self {
            codes,
            ranges,
            length,
            bits,
            dtype: T::dtype(),
        }
    }

    /// The dtype the values were stored in before compression.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The values again, as a tensor of their dtype (f32, bf16 or f16).
    pub(crate) fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 1> {
        let dtype = self.dtype;
        let data = match dtype {
            DType::BF16 => TensorData::new(self.restore::<bf16>(), [self.length]),
            DType::F16 => TensorData::new(self.restore::<f16>(), [self.length]),
            _ => TensorData::new(self.restore::<f32>(), [self.length]),
        };
        Tensor::from_data(data, (device, dtype))
    }

    fn restore<T: HostFloat>(&self) -> Vec<T> {
        let mut values = vec![T::from_f32(0.0); self.length];
        self.restore_into(0, &mut values);
        values
    }

    /// Values `start..start + values.len()`, on this thread: a clip or a lane of a kernel that
    /// reads a compressed input piece by piece instead of restoring it whole.
    pub(crate) fn restore_range<T: HostFloat>(&self, start: usize, values: &mut [T]) {
        let per_byte = (8 / self.bits as usize).max(1);
        let block_bytes = BLOCK * self.bits as usize / 8;
        let mask = (1u32 << self.bits) - 1;
        let mut position = start;
        let mut rest = values;
        while !rest.is_empty() {
            let (block, first) = (position / BLOCK, position % BLOCK);
            let count = (BLOCK - first).min(rest.len());
            let (values, tail) = rest.split_at_mut(count);
            let codes = &self.codes[block * block_bytes..(block + 1) * block_bytes];
            let [low, step] = self.ranges[block];
            let decode = |code: u32| T::from_f32(low + code as f32 * step);
            if self.bits == 16 {
                let codes = codes.chunks_exact(2).skip(first);
                for (value, bytes) in values.iter_mut().zip(codes) {
                    *value = decode(u32::from(u16::from_le_bytes([bytes[0], bytes[1]])));
                }
            } else if self.bits == 8 {
                for (value, &code) in values.iter_mut().zip(&codes[first..]) {
                    *value = decode(u32::from(code));
                }
            } else if first.is_multiple_of(per_byte) && count.is_multiple_of(per_byte) {
                // Whole bytes: a fixed number of values each (the loop the compiler unrolls).
                let bytes = &codes[first / per_byte..];
                for (values, &byte) in values.chunks_exact_mut(per_byte).zip(bytes) {
                    for (position, value) in values.iter_mut().enumerate() {
                        *value = decode((u32::from(byte) >> (position as u32 * self.bits)) & mask);
                    }
                }
            } else {
                for (offset, value) in values.iter_mut().enumerate() {
                    let index = first + offset;
                    let shift = (index % per_byte) as u32 * self.bits;
                    *value = decode((u32::from(codes[index / per_byte]) >> shift) & mask);
                }
            }
            position += count;
            rest = tail;
        }
    }

    /// [`Self::restore_into`], each value then rounded to the dtype the values were stored in
    /// before compression where `T` is wider: a route that computes a half-precision input in
    /// f32 reads the values the input restored whole holds (bf16 convolutions on a CPU without
    /// the bf16 instruction read more precise values from codes than from the restored tensor,
    /// and the two gradients differed). Each task rounds the values it has just restored, while
    /// they are in its cache.
    pub(crate) fn restore_as_stored<T: HostFloat>(&self, start: usize, values: &mut [T]) {
        let dtype = self.dtype;
        match dtype {
            DType::BF16 if dtype != T::dtype() => self.restore_in_tasks(start, values, |values| {
                round_each(values, |v| bf16_to_f32(bf16_from_f32(v)))
            }),
            DType::F16 if dtype != T::dtype() => self.restore_in_tasks(start, values, |values| {
                round_each(values, |v| f16_to_f32(f16_from_f32(v)))
            }),
            _ => self.restore_into(start, values),
        }
    }

    /// [`Self::restore_range`] split across the compute pool.
    pub(crate) fn restore_into<T: HostFloat>(&self, start: usize, values: &mut [T]) {
        self.restore_in_tasks(start, values, |_| {});
    }

    /// [`Self::restore_range`] split across the compute pool, each task then passing the values
    /// it has just restored to `then` while they are in its cache.
    fn restore_in_tasks<T: HostFloat>(
        &self,
        start: usize,
        values: &mut [T],
        then: impl Fn(&mut [T]) + Sync,
    ) {
        values
            .par_chunks_mut(BLOCK * BLOCKS_PER_TASK)
            .enumerate()
            .for_each(|(task, values)| {
                self.restore_range(start + task * BLOCK * BLOCKS_PER_TASK, values);
                then(values);
            });
    }
}

/// `round` applied to every value (built for the CPU's vector level: [`cpu_kernels::vectorized`]).
fn round_each<T: HostFloat>(values: &mut [T], round: impl Fn(f32) -> f32) {
    cpu_kernels::vectorized(
        #[inline(always)]
        || {
            for value in values {
                *value = T::from_f32(round(value.to_f32()));
            }
        },
    )
}

/// A 32-bit integer hash (Chris Wellons' `lowbias32`): cheap, well mixed, and made of 32-bit
/// multiplies and shifts that vectorise.
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// A draw in `[0, 1)` from 24 bits of `bits`.
#[inline(always)]
fn unit(bits: u32) -> f32 {
    (bits >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

#[cfg(test)]
mod tests;
