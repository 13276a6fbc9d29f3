//! Optimizer state kept small between steps (`train.optimizer_state`): Adam's moments and SGD's
//! momentum stored as bfloat16 or block-wise 8-bit instead of f32, and the optimizers that update
//! them a block at a time ([`update`]).
//!
//! The 8-bit format is bitsandbytes' (Dettmers et al., "8-bit Optimizers via Block-wise
//! Quantization", ICLR 2022): each block of [`BLOCK`] values keeps one f32 scale (its largest
//! magnitude) and one byte per value, the index of the nearest entry of a 256-entry dynamic
//! (non-linear, exponent + fraction) code — signed for the first moment and momentum, unsigned
//! for the second moment. Tensors of fewer than [`MIN_QUANTIZED_VALUES`] values (biases, norms)
//! keep f32 state, as bitsandbytes' `min_8bit_size`. Parameters, gradients and the update
//! arithmetic stay f32: a block is decoded into a stack buffer, updated, and encoded again, so
//! no f32 copy of a whole state tensor ever exists.

pub mod update;

use std::sync::OnceLock;

use burn::prelude::Backend;
use burn::record::{PrecisionSettings, Record};
use serde::{Deserialize, Serialize};
use vidtrain_config::OptimizerStateFormat;

/// Values per quantization block (one f32 scale each: 0.2 % on top of the bytes).
pub const BLOCK: usize = 2048;

/// Tensors with fewer values keep f32 state whatever the format (bitsandbytes' `min_8bit_size`).
pub const MIN_QUANTIZED_VALUES: usize = 4096;

/// One moment of one parameter tensor, in its stored format. Saved as little-endian byte strings
/// (MessagePack would spend 2–5 bytes on each number of a plain sequence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoredMoment {
    /// 4 bytes a value.
    F32(#[serde(with = "le_bytes")] Vec<f32>),
    /// bfloat16 bit patterns, 2 bytes a value.
    Bf16(#[serde(with = "le_bytes")] Vec<u16>),
    /// One byte a value (an index into [`DynamicCode`]) and one scale per [`BLOCK`] values.
    Blockwise8 {
        #[serde(with = "serde_bytes")]
        codes: Vec<u8>,
        #[serde(with = "le_bytes")]
        scales: Vec<f32>,
        /// The signed code (first moment, momentum) or the unsigned one (second moment).
        signed: bool,
    },
}

impl StoredMoment {
    /// `len` zeros in `format` (f32 for a tensor under [`MIN_QUANTIZED_VALUES`] values).
    pub fn zeros(format: OptimizerStateFormat, len: usize, signed: bool) -> Self {
        match effective_format(format, len) {
            OptimizerStateFormat::F32 => StoredMoment::F32(vec![0.0; len]),
            OptimizerStateFormat::Bf16 => StoredMoment::Bf16(vec![0; len]),
            OptimizerStateFormat::Blockwise8 => {
                let zero = DynamicCode::get(signed).encode(0.0);
                StoredMoment::Blockwise8 {
                    codes: vec![zero; len],
                    scales: vec![0.0; len.div_ceil(BLOCK)],
                    signed,
                }
            }
        }
    }

    /// Values stored.
    pub fn len(&self) -> usize {
        match self {
            StoredMoment::F32(values) => values.len(),
            StoredMoment::Bf16(values) => values.len(),
            StoredMoment::Blockwise8 { codes, .. } => codes.len(),
        }
    }

    /// Whether it stores no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (values and scales).
    pub fn bytes(&self) -> usize {
        match self {
            StoredMoment::F32(values) => 4 * values.len(),
            StoredMoment::Bf16(values) => 2 * values.len(),
            StoredMoment::Blockwise8 { codes, scales, .. } => codes.len() + 4 * scales.len(),
        }
    }

    /// The values as f32 (for tests and inspection: the optimizers never decode a whole moment),
    /// block by block as [`MomentBlock::read`] decodes them, on a copy.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        let mut copy = self.clone();
        for (block, out) in copy.blocks_mut().iter().zip(out.chunks_mut(BLOCK)) {
            block.read(out);
        }
        out
    }

    /// The moment as [`BLOCK`]-sized pieces that can be read and written independently (in
    /// parallel).
    pub fn blocks_mut(&mut self) -> Vec<MomentBlock<'_>> {
        match self {
            StoredMoment::F32(values) => values.chunks_mut(BLOCK).map(MomentBlock::F32).collect(),
            StoredMoment::Bf16(values) => values.chunks_mut(BLOCK).map(MomentBlock::Bf16).collect(),
            StoredMoment::Blockwise8 {
                codes,
                scales,
                signed,
            } => {
                let code = DynamicCode::get(*signed);
                codes
                    .chunks_mut(BLOCK)
                    .zip(scales.iter_mut())
                    .map(|(codes, scale)| MomentBlock::Blockwise8 { codes, scale, code })
                    .collect()
            }
        }
    }
}

/// The format a tensor of `len` values stores its state in under `format`.
pub fn effective_format(format: OptimizerStateFormat, len: usize) -> OptimizerStateFormat {
    if len < MIN_QUANTIZED_VALUES {
        OptimizerStateFormat::F32
    } else {
        format
    }
}

/// Bytes of state a parameter tensor of `len` values keeps per moment under `format`.
pub fn moment_bytes(format: OptimizerStateFormat, len: usize) -> u64 {
    let len = len as u64;
    match effective_format(format, len as usize) {
        OptimizerStateFormat::F32 => 4 * len,
        OptimizerStateFormat::Bf16 => 2 * len,
        OptimizerStateFormat::Blockwise8 => len + 4 * len.div_ceil(BLOCK as u64),
    }
}

/// A writable block of a [`StoredMoment`].
pub enum MomentBlock<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [u16]),
    Blockwise8 {
        codes: &'a mut [u8],
        scale: &'a mut f32,
        code: &'static DynamicCode,
    },
}

impl MomentBlock<'_> {
    /// Decodes the block into `out` (as long as the block).
    pub fn read(&self, out: &mut [f32]) {
        match self {
            MomentBlock::F32(values) => out.copy_from_slice(values),
            MomentBlock::Bf16(values) => {
                for (out, &bits) in out.iter_mut().zip(values.iter()) {
                    *out = burn::tensor::bf16::from_bits(bits).to_f32();
                }
            }
            MomentBlock::Blockwise8 { codes, scale, code } => code.decode(codes, **scale, out),
        }
    }

    /// Encodes `values` (as long as the block) into the block.
    pub fn write(&mut self, values: &[f32]) {
        match self {
            MomentBlock::F32(stored) => stored.copy_from_slice(values),
            MomentBlock::Bf16(stored) => {
                for (stored, &value) in stored.iter_mut().zip(values) {
                    *stored = burn::tensor::bf16::from_f32(value).to_bits();
                }
            }
            MomentBlock::Blockwise8 { codes, scale, code } => {
                **scale = code.encode_block(values, codes)
            }
        }
    }
}

/// bitsandbytes' dynamic 8-bit code (`create_dynamic_map(signed, max_exponent_bits=7)`): 256
/// sorted values in [-1, 1] (signed) or [0, 1] (unsigned). Each decade from 10⁻⁶ to 1 gets
/// twice the entries of the one below it, so small magnitudes keep their relative precision.
#[derive(Debug)]
pub struct DynamicCode {
    values: [f32; 256],
}

impl DynamicCode {
    /// The signed or the unsigned code.
    pub fn get(signed: bool) -> &'static DynamicCode {
        static SIGNED: OnceLock<DynamicCode> = OnceLock::new();
        static UNSIGNED: OnceLock<DynamicCode> = OnceLock::new();
        if signed {
            SIGNED.get_or_init(|| DynamicCode::new(true))
        } else {
            UNSIGNED.get_or_init(|| DynamicCode::new(false))
        }
    }

    fn new(signed: bool) -> Self {
        const MAX_EXPONENT_BITS: i32 = 7;
        let mut values: Vec<f64> = Vec::with_capacity(256);
        for exponent in 0..MAX_EXPONENT_BITS {
            // `2^i + 1` boundaries (signed) or `2^(i+1) + 1` (unsigned) spread over [0.1, 1];
            // the entries are the midpoints between neighbours, scaled to the decade.
            let boundaries = if signed {
                (1usize << exponent) + 1
            } else {
                (1usize << (exponent + 1)) + 1
            };
            let decade = 10f64.powi(-(MAX_EXPONENT_BITS - 1) + exponent);
            let step = 0.9 / (boundaries - 1) as f64;
            for k in 0..boundaries - 1 {
                let mean = 0.1 + step * (k as f64 + 0.5);
                values.push(decade * mean);
                if signed {
                    values.push(-decade * mean);
                }
            }
        }
        values.push(0.0);
        values.push(1.0);
        assert_eq!(values.len(), 256, "the dynamic code has 256 entries");
        values.sort_by(f64::total_cmp);
        Self {
            values: std::array::from_fn(|i| values[i] as f32),
        }
    }

    /// The code's entries, ascending.
    pub fn values(&self) -> &[f32; 256] {
        &self.values
    }

    /// The index of the entry nearest `x` (in the code's range; a value beyond it maps to the
    /// end entry).
    pub fn encode(&self, x: f32) -> u8 {
        let above = self.values.partition_point(|&entry| entry < x);
        if above == 0 {
            return 0;
        }
        if above == 256 {
            return 255;
        }
        let (low, high) = (self.values[above - 1], self.values[above]);
        if x - low <= high - x {
            (above - 1) as u8
        } else {
            above as u8
        }
    }

    /// Encodes `values` into `codes` relative to their largest magnitude, which it returns (the
    /// block's scale; 0 for a block of zeros).
    pub fn encode_block(&self, values: &[f32], codes: &mut [u8]) -> f32 {
        let scale = values.iter().fold(0f32, |max, v| max.max(v.abs()));
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (code, &value) in codes.iter_mut().zip(values) {
            *code = self.encode(value * inverse);
        }
        scale
    }

    /// Decodes `codes` at `scale` into `out`.
    pub fn decode(&self, codes: &[u8], scale: f32, out: &mut [f32]) {
        for (out, &code) in out.iter_mut().zip(codes) {
            *out = self.values[code as usize] * scale;
        }
    }
}

/// The state of one parameter tensor: the step count and its moments (Adam: first and second;
/// SGD: the momentum buffer). Saved in checkpoints as it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MomentState {
    /// Steps taken (Adam's bias correction).
    pub time: usize,
    /// The moments.
    pub moments: Vec<StoredMoment>,
}

impl MomentState {
    /// Bytes held by the moments.
    pub fn bytes(&self) -> usize {
        self.moments.iter().map(StoredMoment::bytes).sum()
    }
}

/// Numbers saved as one byte string, little-endian.
mod le_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub trait LeBytes: Sized {
        const SIZE: usize;
        fn extend_le(&self, out: &mut Vec<u8>);
        fn from_le(bytes: &[u8]) -> Self;
    }

    impl LeBytes for f32 {
        const SIZE: usize = 4;
        fn extend_le(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
        fn from_le(bytes: &[u8]) -> Self {
            f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        }
    }

    impl LeBytes for u16 {
        const SIZE: usize = 2;
        fn extend_le(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
        fn from_le(bytes: &[u8]) -> Self {
            u16::from_le_bytes([bytes[0], bytes[1]])
        }
    }

    pub fn serialize<T: LeBytes, S: Serializer>(
        values: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
        values.iter().for_each(|value| value.extend_le(&mut bytes));
        serializer.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, T: LeBytes, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        if bytes.len() % T::SIZE != 0 {
            return Err(serde::de::Error::custom(format!(
                "{} bytes are not a whole number of {}-byte values",
                bytes.len(),
                T::SIZE
            )));
        }
        Ok(bytes.chunks_exact(T::SIZE).map(T::from_le).collect())
    }
}

// The state is host data, not tensors: its record item is itself, whatever the precision
// settings (an 8-bit state must not be widened to f32 on save).
impl<B: Backend> Record<B> for MomentState {
    type Item<S: PrecisionSettings> = MomentState;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        self
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, _device: &B::Device) -> Self {
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize, seed: u64) -> Vec<f32> {
        // Magnitudes over six decades, both signs, as Adam's moments have.
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
                let sign = if state & 1 == 0 { 1.0 } else { -1.0 };
                (sign * 10f64.powf(-6.0 * unit)) as f32
            })
            .collect()
    }

    #[test]
    fn the_dynamic_codes_are_bitsandbytes() {
        let signed = DynamicCode::get(true).values();
        let unsigned = DynamicCode::get(false).values();
        // Sorted, spanning [-0.9955, 1] and [0, 1]; the smallest nonzero magnitudes are the
        // first decade's midpoints (10⁻⁶ · 0.55 signed, 10⁻⁶ · 0.325 unsigned).
        assert!(signed.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(unsigned.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!((signed[255], unsigned[255], unsigned[0]), (1.0, 1.0, 0.0));
        assert!((signed[0] + 0.99296875).abs() < 1e-6, "{}", signed[0]);
        let smallest = |code: &[f32; 256]| {
            code.iter()
                .map(|v| v.abs())
                .filter(|&v| v > 0.0)
                .fold(f32::MAX, f32::min)
        };
        assert!((smallest(signed) - 0.55e-6).abs() < 1e-12);
        assert!((smallest(unsigned) - 0.325e-6).abs() < 1e-12);
    }

    #[test]
    fn blockwise_8bit_round_trips_within_the_codes_spacing() {
        let values = sample(3 * BLOCK + 17, 7);
        for signed in [true, false] {
            let values: Vec<f32> = if signed {
                values.clone()
            } else {
                values.iter().map(|v| v.abs()).collect()
            };
            let mut moment =
                StoredMoment::zeros(OptimizerStateFormat::Blockwise8, values.len(), signed);
            for (mut block, chunk) in moment.blocks_mut().into_iter().zip(values.chunks(BLOCK)) {
                block.write(chunk);
            }
            let code = DynamicCode::get(signed).values();
            let decoded = moment.to_f32();
            for (block, (original, decoded)) in
                values.chunks(BLOCK).zip(decoded.chunks(BLOCK)).enumerate()
            {
                let scale = original.iter().fold(0f32, |max, v| max.max(v.abs()));
                for (&x, &y) in original.iter().zip(decoded) {
                    // The decoded value is the code entry nearest x / scale: no entry lies
                    // closer, and the error is at most half the gap around it.
                    let nearest = code
                        .iter()
                        .map(|entry| (entry * scale - x).abs())
                        .fold(f32::MAX, f32::min);
                    assert!(
                        (y - x).abs() <= nearest + 1e-6 * scale,
                        "block {block}: {x} decoded as {y}, nearest entry {nearest} away"
                    );
                }
                // The block's largest magnitude is its scale: decoded to within the code's top
                // entries (1 exactly, −0.99296875 for the most negative).
                let largest = original.iter().map(|v| v.abs()).fold(0f32, f32::max);
                let decoded_largest = decoded.iter().map(|v| v.abs()).fold(0f32, f32::max);
                assert!((decoded_largest - largest).abs() <= 0.0071 * largest);
            }
            assert_eq!(
                moment.bytes(),
                values.len() + 4 * values.len().div_ceil(BLOCK)
            );
        }
    }

    #[test]
    fn bf16_round_trips_to_bf16_precision_and_small_tensors_stay_f32() {
        let values = sample(MIN_QUANTIZED_VALUES, 3);
        let mut moment = StoredMoment::zeros(OptimizerStateFormat::Bf16, values.len(), true);
        for (mut block, chunk) in moment.blocks_mut().into_iter().zip(values.chunks(BLOCK)) {
            block.write(chunk);
        }
        for (x, y) in values.iter().zip(moment.to_f32()) {
            assert!((x - y).abs() <= x.abs() / 256.0, "{x} → {y}");
        }
        assert_eq!(moment.bytes(), 2 * values.len());
        let small = StoredMoment::zeros(
            OptimizerStateFormat::Blockwise8,
            MIN_QUANTIZED_VALUES - 1,
            true,
        );
        assert!(matches!(small, StoredMoment::F32(_)));
        assert_eq!(
            moment_bytes(OptimizerStateFormat::Blockwise8, 10 * BLOCK),
            10 * BLOCK as u64 + 40
        );
    }
}
