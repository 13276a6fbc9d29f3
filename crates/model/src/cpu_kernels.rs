//! Whether vidtrain's own CPU kernels replace compositions of Burn ops (`layers::conv_gemm`, ...).
//!
//! They run where the backend computes on the host (burn-flex) and read tensors as host slices;
//! on any other backend (CUDA) the Burn composition runs. `VIDTRAIN_CPU_KERNELS=reference` turns
//! them off for a whole process, so a run can be compared with the composition they replace
//! (the unit tests call both paths directly).

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType, TensorData, bf16, f16};
use rayon::prelude::*;

/// Whether the fast CPU kernels serve tensors of backend `B` on `device` (the plain CPU
/// backend: kernels work on the inner tensors of by-hand gradients).
pub fn enabled<B: Backend>(device: &B::Device) -> bool {
    !reference() && B::name(device) == HOST
}

/// Whether the fast CPU kernels serve tensors of backend `B` on `device`, `B` being burn-flex
/// itself or burn-flex under autodiff (kernels that build constants for a tracked tensor, such
/// as [`crate::layers::dropout`]'s mask).
pub fn host_tensors<B: Backend>(device: &B::Device) -> bool {
    !reference() && computes_on_host::<B>(device)
}

/// Whether `B` computes on the host (burn-flex, plain or under autodiff), whatever
/// `VIDTRAIN_CPU_KERNELS` says: what chooses between CPU and device compositions of Burn ops.
pub fn computes_on_host<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name == HOST
        || name
            .strip_prefix("autodiff<")
            .and_then(|inner| inner.strip_suffix('>'))
            == Some(HOST)
}

/// Whether the host kernels read and write `dtype` (f32, bf16, f16: [`HostFloat`]).
pub(crate) fn host_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// `Backend::name` of the CPU backend, burn-flex.
const HOST: &str = "flex";

/// `VIDTRAIN_CPU_KERNELS=reference`: Burn's compositions everywhere.
pub(crate) fn reference() -> bool {
    static REFERENCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFERENCE.get_or_init(|| {
        std::env::var("VIDTRAIN_CPU_KERNELS").is_ok_and(|value| value == "reference")
    })
}

/// `VIDTRAIN_CPU_KERNELS=no-winograd`: 3 × 3 × 3 convolutions multiplied directly and ST-GCN's
/// 9-tap temporal ones through im2col columns instead of by Winograd's transforms
/// (`layers::conv_winograd`, `layers::conv_winograd_temporal`): the A/B of the routes in one
/// binary.
pub(crate) fn winograd_refused() -> bool {
    static REFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFUSED.get_or_init(|| {
        std::env::var("VIDTRAIN_CPU_KERNELS").is_ok_and(|value| value == "no-winograd")
    })
}

/// `VIDTRAIN_CPU_KERNELS=no-amx`: vidtrain's kernels without AMX tiles (bf16 products on
/// AVX512_BF16 where the CPU has both): a user's way around a tile fault, and the A/B of the
/// tiles in one binary.
pub(crate) fn amx_refused() -> bool {
    static REFUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFUSED
        .get_or_init(|| std::env::var("VIDTRAIN_CPU_KERNELS").is_ok_and(|value| value == "no-amx"))
}

/// Runs `kernel` compiled for the widest vector level this CPU has ([`VectorLevel`]): AVX-512
/// (F, BW, DQ, VL), else AVX2 with FMA and F16C (x86-64-v3: every x86 server CPU since 2013, and
/// the AVX-512-less EPYCs these sessions meet), else as built (the x86-64 baseline: SSE2). The
/// same arithmetic at every level (Rust never fuses a multiply and an add on its own), so the
/// same results. The element-wise loops of vidtrain's CPU kernels vectorise as the compiler sees
/// fit for the instructions it may use: built for the baseline, converting bf16 and f32 went four
/// values at a time (13 % of ST-GCN's bf16 step at stop 44). `kernel` is inlined into a function
/// built for that level, so what it calls inline is too; call it inside each task of a parallel
/// loop (a closure handed to rayon is a function of its own, built for the baseline).
/// `VIDTRAIN_CPU_KERNELS=reference` runs the baseline build (the tests of every level).
#[inline(always)]
pub fn vectorized<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match VectorLevel::in_use() {
        VectorLevel::Avx512 => {
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi1,bmi2")]
            #[inline]
            fn with_avx512<R>(kernel: impl FnOnce() -> R) -> R {
                kernel()
            }
            #[allow(unsafe_code)]
            // SAFETY: the CPU has every feature the function is built for
            // (`VectorLevel::available`), the only requirement of calling it; `kernel` is safe Rust.
            return unsafe { with_avx512(kernel) };
        }
        VectorLevel::Avx2 => {
            #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
            #[inline]
            fn with_avx2<R>(kernel: impl FnOnce() -> R) -> R {
                kernel()
            }
            #[allow(unsafe_code)]
            // SAFETY: as above, for the AVX2 level's features.
            return unsafe { with_avx2(kernel) };
        }
        VectorLevel::Baseline => {}
    }
    kernel()
}

/// The instruction sets [`vectorized`] builds its kernels for, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VectorLevel {
    /// The x86-64 baseline (SSE2): every CPU, and `VIDTRAIN_CPU_KERNELS=reference`.
    Baseline,
    /// AVX2, FMA, F16C, BMI1/2 (x86-64-v3).
    Avx2,
    /// AVX-512 F, BW, DQ, VL with the AVX2 level's features.
    Avx512,
}

impl VectorLevel {
    /// The widest level this CPU has, unless `VIDTRAIN_CPU_KERNELS` says `reference`.
    pub fn fastest() -> VectorLevel {
        static FASTEST: std::sync::OnceLock<VectorLevel> = std::sync::OnceLock::new();
        *FASTEST.get_or_init(|| {
            if reference() {
                return VectorLevel::Baseline;
            }
            [VectorLevel::Avx512, VectorLevel::Avx2]
                .into_iter()
                .find(|level| level.available())
                .unwrap_or(VectorLevel::Baseline)
        })
    }

    /// The level [`vectorized`] runs: [`VectorLevel::fastest`], or lower where a test capped it.
    #[inline(always)]
    fn in_use() -> VectorLevel {
        VectorLevel::fastest().min(level_cap())
    }

    /// Whether this CPU has every feature the level's build uses.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = || {
                has!("avx2")
                    && has!("fma")
                    && has!("f16c")
                    && has!("bmi1")
                    && has!("bmi2")
                    && has!("lzcnt")
                    && has!("popcnt")
            };
            match self {
                VectorLevel::Baseline => true,
                VectorLevel::Avx2 => avx2(),
                VectorLevel::Avx512 => {
                    avx2()
                        && has!("avx512f")
                        && has!("avx512bw")
                        && has!("avx512dq")
                        && has!("avx512vl")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == VectorLevel::Baseline
        }
    }

    /// For the training log.
    pub fn describe(self) -> &'static str {
        match self {
            VectorLevel::Avx512 => "element-wise kernels built for AVX-512",
            VectorLevel::Avx2 => {
                "element-wise kernels built for AVX2 + FMA + F16C (no AVX-512 on this CPU)"
            }
            VectorLevel::Baseline if reference() => {
                "element-wise kernels as built (SSE2; VIDTRAIN_CPU_KERNELS=reference)"
            }
            VectorLevel::Baseline => "element-wise kernels as built (SSE2: this CPU has no AVX2)",
        }
    }
}

/// The widest level a test lets [`vectorized`] use (the tests of every level on one CPU).
#[cfg(test)]
#[inline(always)]
fn level_cap() -> VectorLevel {
    match tests::LEVEL_CAP.load(std::sync::atomic::Ordering::Relaxed) {
        0 => VectorLevel::Baseline,
        1 => VectorLevel::Avx2,
        _ => VectorLevel::Avx512,
    }
}

#[cfg(not(test))]
#[inline(always)]
fn level_cap() -> VectorLevel {
    VectorLevel::Avx512
}

/// `tensor.cast(dtype)` for float tensors, converted in parallel over the compute pool where the
/// fast kernels serve (burn-flex's own cast converts through an f64 copy of the whole tensor on
/// one thread). For tensors of the plain CPU backend (`flex`: the inner tensors of by-hand
/// gradients and untracked forwards) and burn-flex autodiff tensors outside the graph (a batch's
/// video: 1 % of the seed model's bf16 step at micro-batch 1, the other core idle); a tracked
/// tensor takes Burn's cast, which records the op for backward. Dtypes other than f32/bf16/f16
/// take Burn's cast too.
pub fn cast<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    dtype: impl Into<FloatDType>,
) -> Tensor<B, D> {
    let dtype: FloatDType = dtype.into();
    let device = tensor.device();
    let from = tensor.dtype();
    let to = DType::from(dtype);
    let on_host = enabled::<B>(&device)
        || (host_tensors::<B>(&device) && crate::tracked_ops::untracked(&tensor));
    if from == to || !host_float(from) || !host_float(to) || !on_host {
        return tensor.cast(dtype);
    }
    let converted = match (from, to) {
        (DType::F32, DType::BF16) => convert(tensor, bf16_from_f32),
        (DType::F32, DType::F16) => convert(tensor, f16_from_f32),
        (DType::BF16, DType::F32) => convert(tensor, bf16_to_f32),
        (DType::F16, DType::F32) => convert(tensor, f16_to_f32),
        (DType::BF16, DType::F16) => convert(tensor, |v: bf16| f16_from_f32(bf16_to_f32(v))),
        (DType::F16, DType::BF16) => convert(tensor, |v: f16| bf16_from_f32(f16_to_f32(v))),
        _ => unreachable!("both dtypes are f32, bf16 or f16 and differ"),
    };
    Tensor::from_data(converted, (&device, to))
}

/// The values of a tensor as f32, in its logical (row-major) order: no copy when the tensor is
/// f32, contiguous and not shared (burn-flex hands its buffer over).
pub(crate) fn floats<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    values(tensor)
}

/// The values of a tensor as `T`, in its logical order, cast in parallel where the dtype
/// differs: no copy when the tensor is of dtype `T`, contiguous and not shared.
pub(crate) fn values<T: HostFloat, B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<T> {
    cast(tensor, T::FLOAT)
        .into_data()
        .into_vec::<T>()
        .expect("a tensor cast to T holds T")
}

/// The values of a tensor as `T` (f32, bf16 or f16), in its logical order, read where burn-flex
/// stores them when the tensor is a contiguous CPU tensor of that dtype (plain or under
/// autodiff, shared or not); otherwise cast and copied. `into_data` copies a shared tensor twice
/// (into a byte vector, then again to realign it), and the inputs the stem's steps read are
/// always shared: kept for their backward. A batch's video under autodiff was copied once per
/// micro-batch by each host pass that reads it (its cast, ViViT's tubelets).
pub(crate) fn stored<T: HostFloat, B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Stored<T> {
    if tensor.dtype() == T::dtype() {
        let flex = into_flex(tensor.clone()).ok().or_else(|| {
            crate::tracked_ops::tracked_host(tensor.clone()).map(|tracked| tracked.primitive)
        });
        if let Some(flex) = flex
            && flex.as_slice::<T>().is_some()
        {
            return Stored::InPlace(flex, std::marker::PhantomData);
        }
    }
    Stored::Copied(values(tensor))
}

/// The burn-flex tensor a tensor of backend `B` is, or the tensor back when `B` is another
/// backend.
fn into_flex<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
    let primitive: Box<dyn std::any::Any> = Box::new(tensor.into_primitive().tensor());
    match primitive.downcast::<FlexTensor>() {
        Ok(flex) => Ok(*flex),
        Err(other) => {
            let primitive = *other
                .downcast::<B::FloatTensorPrimitive>()
                .expect("it was the backend's primitive");
            Err(Tensor::from_primitive(
                burn::tensor::TensorPrimitive::Float(primitive),
            ))
        }
    }
}

/// A CPU tensor that nothing else holds, contiguous and stored as `T`: its values can be
/// overwritten in place ([`Unique::values_mut`]), and it is a tensor again after
/// ([`Unique::into_tensor`]). Otherwise the tensor back.
pub(crate) fn unique<T: HostFloat, B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<Unique<T>, Tensor<B, D>> {
    if tensor.dtype() != T::dtype() {
        return Err(tensor);
    }
    let flex = into_flex(tensor)?;
    match flex.layout().contiguous_offsets() {
        Some(range) if flex.is_unique() => Ok(Unique {
            range,
            flex,
            values: std::marker::PhantomData,
        }),
        _ => Err(from_flex(flex)),
    }
}

/// A burn-flex tensor as a tensor of backend `B` (which is burn-flex).
fn from_flex<B: Backend, const D: usize>(flex: FlexTensor) -> Tensor<B, D> {
    let primitive: Box<dyn std::any::Any> = Box::new(flex);
    let primitive = *primitive
        .downcast::<B::FloatTensorPrimitive>()
        .expect("only burn-flex tensors are unwrapped");
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(primitive))
}

/// A tensor whose buffer is this code's alone ([`unique`]).
pub(crate) struct Unique<T> {
    flex: FlexTensor,
    range: (usize, usize),
    values: std::marker::PhantomData<T>,
}

impl<T: HostFloat> Unique<T> {
    pub(crate) fn values(&self) -> &[T] {
        &self.flex.storage::<T>()[self.range.0..self.range.1]
    }

    pub(crate) fn values_mut(&mut self) -> &mut [T] {
        let (start, end) = self.range;
        &mut self
            .flex
            .try_storage_mut::<T>()
            .expect("`unique` checked that nothing else holds the buffer")[start..end]
    }

    pub(crate) fn into_tensor<B: Backend, const D: usize>(self) -> Tensor<B, D> {
        from_flex(self.flex)
    }
}

/// A tensor's values read by [`stored`]: in place in burn-flex's buffer, or a copy.
pub(crate) enum Stored<T> {
    InPlace(FlexTensor, std::marker::PhantomData<T>),
    Copied(Vec<T>),
}

impl<T: HostFloat> std::ops::Deref for Stored<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Stored::InPlace(tensor, _) => tensor
                .as_slice::<T>()
                .expect("`stored` checked the dtype and layout"),
            Stored::Copied(values) => values,
        }
    }
}

/// The float types the host kernels read and write: f32, bf16 and f16, widened to f32 to
/// compute and rounded to nearest even when stored.
pub(crate) trait HostFloat:
    burn::tensor::Element + bytemuck::Pod + Copy + Send + Sync + 'static
{
    /// The dtype, as a cast names it.
    const FLOAT: FloatDType;
    fn to_f32(self) -> f32;
    fn from_f32(value: f32) -> Self;
    /// `values` as f32, when `Self` is f32: where a kernel sums in f32 and stores `Self`, it
    /// then sums in place instead of through a buffer rounded afterwards.
    fn as_f32_mut(_values: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl HostFloat for f32 {
    const FLOAT: FloatDType = FloatDType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        value
    }
    fn as_f32_mut(values: &mut [f32]) -> Option<&mut [f32]> {
        Some(values)
    }
}

/// `values` as `T` when `S` is `T`'s dtype: a kernel generic over what it reads copies such
/// values instead of converting them one by one.
pub(crate) fn same_dtype<S: HostFloat, T: HostFloat>(values: &[S]) -> Option<&[T]> {
    (S::FLOAT == T::FLOAT).then(|| bytemuck::cast_slice(values))
}

/// The half types widen exactly and round to nearest even: bf16 by [`bf16_to_f32`] and
/// [`bf16_from_f32`], f16 by [`f16_to_f32`] and [`f16_from_f32`] (the same bits as `half`'s,
/// without its branches).
macro_rules! half_host_float {
    ($($half:ident => $float:ident, widened by $widen:path, rounded by $round:path),*) => {$(
        impl HostFloat for $half {
            const FLOAT: FloatDType = FloatDType::$float;
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $widen(self)
            }
            #[inline(always)]
            fn from_f32(value: f32) -> Self {
                $round(value)
            }
        }
    )*};
}

half_host_float!(
    bf16 => BF16, widened by bf16_to_f32, rounded by bf16_from_f32,
    f16 => F16, widened by f16_to_f32, rounded by f16_from_f32
);

/// `value` as f32 (exact), a NaN made quiet: `half`'s `bf16::to_f32`, bit for bit, without its
/// branch. `half` branches on NaN, which kept every loop that reads bf16 one value at a time
/// (dropout, GELU, LayerNorm and the casts read bf16: 6 % of ViViT's bf16 step at micro-batch 1
/// at stop 44); here it is a select the compiler vectorises.
#[inline(always)]
pub(crate) fn bf16_to_f32(value: bf16) -> f32 {
    let bits = u32::from(value.to_bits());
    let quiet = if bits & 0x7fff > 0x7f80 { 0x40 } else { 0 };
    f32::from_bits((bits | quiet) << 16)
}

/// `value` rounded to the nearest bf16, ties to even, NaN kept a quiet NaN: `half`'s
/// `bf16::from_f32`, bit for bit, without its branches. `half` returns early for a NaN and
/// branches on the rounding bits, which kept every loop that stores bf16 scalar (one value at a
/// time: the stem's BatchNorm backward, casts, GELU's and LayerNorm's outputs, a quarter of the
/// seed model's bf16 step at stop 42); here both cases are selects the compiler vectorises.
#[inline(always)]
pub(crate) fn bf16_from_f32(value: f32) -> bf16 {
    let bits = value.to_bits();
    // Adding 0x7fff, plus 1 when the kept part is odd, carries into the kept part exactly when
    // the dropped half is above one half, or one half with the kept part odd.
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = (bits >> 16) as u16 | 0x40;
    let is_nan = bits & 0x7fff_ffff > 0x7f80_0000;
    bf16::from_bits(if is_nan { quiet_nan } else { rounded })
}

/// `value` as f32 (exact), a NaN made quiet: `half`'s `f16::to_f32`, bit for bit, in integer
/// and float operations the compiler vectorises. `half` converts one value per call behind a
/// run-time check for F16C (or branches per case without it), which kept every loop that reads
/// f16 one value at a time.
#[inline(always)]
pub(crate) fn f16_to_f32(value: f16) -> f32 {
    let bits = u32::from(value.to_bits());
    let sign = (bits & 0x8000) << 16;
    let magnitude = bits & 0x7fff;
    // Normal numbers: the exponent rebased from 15 to 127, the mantissa moved up 13 bits.
    let normal = (magnitude << 13) + ((127 - 15) << 23);
    // Subnormals (and zero): the mantissa m is m · 2⁻²⁴, computed exactly as
    // (2⁻¹⁴ + m · 2⁻²⁴) − 2⁻¹⁴ in f32.
    let subnormal = (f32::from_bits(normal + (1 << 23)) - f32::from_bits(113 << 23)).to_bits();
    // Infinities and NaNs: the exponent all ones, a NaN's payload kept and made quiet.
    let quiet = if magnitude > 0x7c00 { 0x0040_0000 } else { 0 };
    let special = (magnitude << 13) | 0x7f80_0000 | quiet;
    let widened = if magnitude >= 0x7c00 {
        special
    } else if magnitude < 0x0400 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(sign | widened)
}

/// `value` rounded to the nearest f16, ties to even, overflow to infinity, a NaN kept a quiet
/// NaN with its payload's high bits: `half`'s `f16::from_f32` (F16C's `vcvtps2ph`), bit for bit,
/// without a call and a branch per value ([`f16_to_f32`]).
#[inline(always)]
pub(crate) fn f16_from_f32(value: f32) -> f16 {
    let bits = value.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let magnitude = bits & 0x7fff_ffff;
    // Normal results: rebase the exponent, then add 0xfff plus the kept part's lowest bit so
    // that the carry into the kept part rounds to nearest, ties to even (as `bf16_from_f32`).
    let odd = (magnitude >> 13) & 1;
    let normal = magnitude
        .wrapping_sub((127 - 15) << 23)
        .wrapping_add(0xfff + odd)
        >> 13;
    // Subnormal results: adding 0.5 (2⁻¹) shifts the value's bits so that f32's own
    // round-to-nearest-even leaves the f16 mantissa in the low bits.
    let half_magic = 126 << 23;
    let subnormal = (f32::from_bits(magnitude) + f32::from_bits(half_magic))
        .to_bits()
        .wrapping_sub(half_magic);
    let nan = 0x7e00 | ((magnitude >> 13) & 0x3ff);
    let rounded = if magnitude > 0x7f80_0000 {
        nan
    } else if magnitude >= (127 + 16) << 23 {
        0x7c00
    } else if magnitude < 113 << 23 {
        subnormal
    } else {
        normal
    };
    f16::from_bits((sign | rounded) as u16)
}

/// Elements converted per task: large enough that a task outweighs its scheduling.
const CAST_CHUNK: usize = 1 << 16;

/// `tensor`'s values (stored as `S`) mapped by `each` to a new buffer, in parallel, read where
/// burn-flex stores them ([`stored`]): `into_data` copied a shared tensor twice on one thread
/// first — every f32 master weight a layer rounds to bf16, on every pass (ViViT's bf16 step at
/// micro-batch 1 spent 60 % of its linear layers' backward there).
fn convert<S, T, B, const D: usize>(
    tensor: Tensor<B, D>,
    each: impl Fn(S) -> T + Sync,
) -> TensorData
where
    S: HostFloat,
    T: burn::tensor::Element + Copy + Send + Default,
    B: Backend,
{
    let shape = tensor.shape();
    let source = stored::<S, B, D>(tensor);
    let mut target = filled(source.len(), T::default());
    convert_into(&source, &mut target, each);
    TensorData::new(target, shape)
}

/// `len` copies of `value`, written by the compute pool's threads: `vec![value; len]` fills on
/// the calling thread, and for a block the reuse pool recycles `vec![0.0; len]` is a memset too
/// (with the layouts of `layers::conv_direct`, 3–5 % of r3d_18's bf16 step at micro-batch 1 was
/// such fills, the other core idle). For buffers a kernel then overwrites in parallel.
pub(crate) fn filled<U: Copy + Send + Sync>(len: usize, value: U) -> Vec<U> {
    let mut values = Vec::new();
    extend_filled(&mut values, len, value);
    values
}

/// Appends `len` copies of `value` to `values`, in parallel above a few pages ([`filled`]).
pub(crate) fn extend_filled<U: Copy + Send + Sync>(values: &mut Vec<U>, len: usize, value: U) {
    if len * size_of::<U>() < FILL_IN_PARALLEL_BYTES {
        values.resize(values.len() + len, value);
    } else {
        values.par_extend(rayon::iter::repeat_n(value, len));
    }
}

/// `sum + addend`, added on the pool's threads into `sum`'s buffer when both are host tensors of
/// one float dtype and nothing else holds `sum` (Burn's add otherwise). Gradient accumulation
/// adds every parameter's gradient once per micro-batch; burn-flex's add runs on one thread,
/// while the other core waited (2 % of ViViT's bf16 step at micro-batch 1).
pub fn add_assign<B: Backend, const D: usize>(
    sum: Tensor<B, D>,
    addend: Tensor<B, D>,
) -> Tensor<B, D> {
    fn added<T: HostFloat, B: Backend, const D: usize>(
        sum: Tensor<B, D>,
        addend: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let mut sum = match unique::<T, B, D>(sum) {
            Ok(sum) => sum,
            Err(sum) => return sum.add(addend),
        };
        let addend = stored::<T, B, D>(addend);
        update_from(sum.values_mut(), &addend, |sum, addend| {
            *sum = T::from_f32(sum.to_f32() + addend.to_f32());
        });
        sum.into_tensor()
    }
    if !host_tensors::<B>(&sum.device())
        || sum.dtype() != addend.dtype()
        || sum.dims() != addend.dims()
    {
        return sum.add(addend);
    }
    match sum.dtype() {
        DType::F32 => added::<f32, B, D>(sum, addend),
        DType::BF16 => added::<bf16, B, D>(sum, addend),
        DType::F16 => added::<f16, B, D>(sum, addend),
        _ => sum.add(addend),
    }
}

/// Fills below this many bytes stay on the calling thread (a task costs more than they do).
const FILL_IN_PARALLEL_BYTES: usize = 64 << 10;

/// `target[i] = each(source[i])`, in parallel over chunks of [`CAST_CHUNK`].
pub(crate) fn convert_into<S: Copy + Sync, T: Send>(
    source: &[S],
    target: &mut [T],
    each: impl Fn(S) -> T + Sync,
) {
    update_from(target, source, |target, source| *target = each(source));
}

/// `each(&mut target[i], source[i])` for every `i`, in parallel over chunks of [`CAST_CHUNK`],
/// each chunk's loop built for AVX-512 where the CPU has it ([`vectorized`]).
fn update_from<S: Copy + Sync, T: Send>(
    target: &mut [T],
    source: &[S],
    each: impl Fn(&mut T, S) + Sync,
) {
    target
        .par_chunks_mut(CAST_CHUNK)
        .zip(source.par_chunks(CAST_CHUNK))
        .for_each(|(target, source)| {
            vectorized(
                #[inline(always)]
                || {
                    for (target, &source) in target.iter_mut().zip(source) {
                        each(target, source);
                    }
                },
            )
        });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The widest [`VectorLevel`] [`vectorized`] may use, as a number (0 baseline, 1 AVX2,
    /// 2 AVX-512): a test lowers it to run the other builds on every thread (the results are
    /// the same bits at every level, which is what the test below checks).
    pub(crate) static LEVEL_CAP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

    /// The kernels built for each vector level this CPU has give the bits of the baseline build:
    /// casts both ways (bf16 and f16) and the lane sums (BatchNorm's statistics), on values over
    /// many magnitudes.
    #[test]
    fn vectorized_kernels_equal_the_baseline_build() {
        let values: Vec<f32> = (0..300_001u32)
            .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) >> 2) * 1e-20)
            .chain([f32::NAN, f32::INFINITY, -0.0, 1.0 + f32::EPSILON])
            .collect();
        let run = || {
            let mut rounded = vec![bf16::ZERO; values.len()];
            convert_into(&values, &mut rounded, bf16_from_f32);
            let mut widened = vec![0f32; values.len()];
            convert_into(&rounded, &mut widened, bf16_to_f32);
            let sums = (
                crate::layers::norm_relu_host::lane_sum(&rounded, |v| v * v),
                crate::layers::norm_relu_host::lane_sum(&widened, |v| v),
            );
            let mut rounded_f16 = vec![f16::ZERO; values.len()];
            convert_into(&values, &mut rounded_f16, f16_from_f32);
            let mut widened_f16 = vec![0f32; values.len()];
            convert_into(&rounded_f16, &mut widened_f16, f16_to_f32);
            let bits: Vec<u32> = widened
                .iter()
                .chain(&widened_f16)
                .map(|v| v.to_bits())
                .collect();
            (bits, sums.0.to_bits(), sums.1.to_bits())
        };
        let at_level = |level: VectorLevel| {
            LEVEL_CAP.store(level as u8, std::sync::atomic::Ordering::Relaxed);
            let results = run();
            LEVEL_CAP.store(2, std::sync::atomic::Ordering::Relaxed);
            results
        };
        let baseline = at_level(VectorLevel::Baseline);
        for level in [VectorLevel::Avx2, VectorLevel::Avx512] {
            if level.available() {
                assert!(at_level(level) == baseline, "the {level:?} build differs");
            }
        }
    }
    use crate::TestBackend;
    use burn::tensor::Distribution;

    /// The branch-free widenings equal `half`'s `to_f32` bit for bit on every bf16 and f16.
    #[test]
    fn widening_equals_halfs_on_every_half() {
        for bits in 0..=u16::MAX {
            let (brain, half) = (bf16::from_bits(bits), f16::from_bits(bits));
            let pairs = [
                (bf16_to_f32(brain), brain.to_f32(), "bf16"),
                (f16_to_f32(half), half.to_f32(), "f16"),
            ];
            for (ours, halfs, dtype) in pairs {
                assert_eq!(ours.to_bits(), halfs.to_bits(), "{dtype} {bits:#06x}");
            }
        }
    }

    /// How many of the 2³² f32 bit patterns `ours` rounds to other bits than `halfs`.
    fn roundings_unlike_halfs(
        ours: impl Fn(f32) -> u16 + Sync,
        halfs: impl Fn(f32) -> u16 + Sync,
    ) -> u64 {
        (0..=u16::MAX)
            .into_par_iter()
            .map(|high| {
                (0..=u16::MAX)
                    .filter(|&low| {
                        let value = f32::from_bits(u32::from(high) << 16 | u32::from(low));
                        ours(value) != halfs(value)
                    })
                    .count() as u64
            })
            .sum()
    }

    /// The branch-free rounding equals `half`'s `bf16::from_f32` bit for bit on every one of the
    /// 2³² f32 bit patterns (NaNs, infinities, subnormals, ties and the overflow to infinity
    /// included).
    #[test]
    fn bf16_rounding_equals_halfs_on_every_f32() {
        let mismatches = roundings_unlike_halfs(
            |value| bf16_from_f32(value).to_bits(),
            |value| bf16::from_f32(value).to_bits(),
        );
        assert_eq!(mismatches, 0, "bit patterns rounded unlike half's");
    }

    /// The branch-free f16 rounding equals `half`'s `f16::from_f32` bit for bit on every one of
    /// the 2³² f32 bit patterns (NaN payloads, infinities, subnormal results, ties and the
    /// overflow to infinity included).
    #[test]
    fn f16_rounding_equals_halfs_on_every_f32() {
        let mismatches = roundings_unlike_halfs(
            |value| f16_from_f32(value).to_bits(),
            |value| f16::from_f32(value).to_bits(),
        );
        assert_eq!(mismatches, 0, "bit patterns rounded unlike half's");
    }

    /// The parallel cast equals a one-element-at-a-time conversion that rounds to nearest even
    /// from the f32 value (as PyTorch does), in every direction between f32, bf16 and f16, on
    /// values spread over many magnitudes (ties, subnormals and overflow to infinity included);
    /// and it equals Burn's cast except where Burn's rounds wrongly: burn-flex converts through
    /// f64, and `half`'s f64 → bf16 drops the low mantissa bits before rounding, so values just
    /// above a tie round down (24 of 393 kB here, each by one bf16 step).
    #[test]
    fn cast_rounds_to_nearest_even_and_equals_burns_cast_elsewhere() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let count = 3 * (CAST_CHUNK + 7) * 2;
        let magnitudes =
            Tensor::<TestBackend, 1>::random([count], Distribution::Uniform(-40.0, 40.0), &device);
        let signs = Tensor::<TestBackend, 1>::random([count], Distribution::Default, &device)
            .sub_scalar(0.5)
            .sign();
        let values = magnitudes.exp().mul(signs).reshape([3, CAST_CHUNK + 7, 2]);
        let as_f32 = |tensor: Tensor<TestBackend, 3>| {
            tensor
                .cast(FloatDType::F32)
                .into_data()
                .into_vec::<f32>()
                .unwrap()
        };
        let one_by_one = |value: f32, from: FloatDType, to: FloatDType| {
            let value = match from {
                FloatDType::BF16 => bf16::from_f32(value).to_f32(),
                FloatDType::F16 => f16::from_f32(value).to_f32(),
                _ => value,
            };
            match to {
                FloatDType::BF16 => bf16::from_f32(value).to_f32(),
                FloatDType::F16 => f16::from_f32(value).to_f32(),
                _ => value,
            }
        };
        let dtypes = [FloatDType::F32, FloatDType::BF16, FloatDType::F16];
        let originals = as_f32(values.clone());
        for from in dtypes {
            let source = cast(values.clone(), from);
            for to in dtypes {
                let ours = cast(source.clone(), to);
                let burns = source.clone().cast(to);
                assert_eq!(ours.dtype(), burns.dtype());
                assert_eq!(ours.dims(), burns.dims());
                let (ours, burns) = (as_f32(ours), as_f32(burns));
                for (index, &original) in originals.iter().enumerate() {
                    let expected = one_by_one(original, from, to);
                    assert!(
                        ours[index].to_bits() == expected.to_bits(),
                        "{from:?} → {to:?}: {original} gave {}, expected {expected}",
                        ours[index]
                    );
                }
                let differ = ours
                    .iter()
                    .zip(&burns)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert!(
                    differ * 10_000 <= ours.len(),
                    "{from:?} → {to:?}: {differ} differ"
                );
            }
        }
    }

    /// Under autodiff, a tensor outside the graph is converted here (the values of the plain
    /// backend's cast, and a leaf that wants no gradient), while one in the graph takes Burn's
    /// cast and its gradient still flows back through it.
    #[test]
    fn cast_under_autodiff_converts_untracked_tensors_and_keeps_tracked_ones_in_the_graph() {
        use burn::backend::Autodiff;
        type A = Autodiff<TestBackend>;
        let _rng = crate::rng_lock();
        let device = Default::default();
        let values = Tensor::<TestBackend, 2>::random([3, 70_001], Distribution::Default, &device);
        let plain = cast(values.clone(), FloatDType::BF16).into_data();
        let untracked = Tensor::<A, 2>::from_inner(values.clone());
        let converted = cast(untracked, FloatDType::BF16);
        assert!(crate::tracked_ops::untracked(&converted));
        assert_eq!(converted.into_data(), plain);
        let leaf = Tensor::<A, 2>::from_inner(values).require_grad();
        let computed = leaf.clone() * 2.0;
        assert!(!crate::tracked_ops::untracked(&computed));
        let grads = cast(computed, FloatDType::BF16)
            .cast(FloatDType::F32)
            .sum()
            .backward();
        let gradient = leaf.grad(&grads).expect("the cast is in the graph");
        assert_eq!(gradient.into_data().into_vec::<f32>().unwrap()[0], 2.0);
    }
}
