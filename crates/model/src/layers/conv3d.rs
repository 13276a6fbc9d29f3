//! A 3-D convolution on channels-first video through the backend's own `conv3d` kernel, with the
//! weights cast to the input's dtype (mixed precision) and no input gradient when the input is
//! data.
//!
//! Session 1 wrote convolutions as strided-slice gather + GEMM because burn-ndarray's `Conv3d`
//! was a naive loop. On burn-flex (decision 0003) Burn's own kernel is a tiled im2col + gemm that
//! never builds the whole patch matrix: measured on the seed stem it is 4× faster forward and
//! 1.6–2× faster backward than the gather, and it keeps only its input for backward instead of a
//! patch matrix 147× the input (`docs/benchmarks.md`). On CUDA it is cubecl's implicit GEMM.

use burn::module::{Initializer, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Slice, TensorPrimitive};

use crate::cpu_kernels::cast;
use crate::layers::conv_gemm::{
    ConvBackward, ConvGeometry, ConvGradients, ConvInput, conv3d_forward,
};
use crate::precision::like;

/// Configuration of a [`VideoConv3d`].
#[derive(Config, Debug)]
pub struct VideoConv3dConfig {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Kernel size `[t, h, w]`.
    pub kernel: [usize; 3],
    /// Stride `[t, h, w]`.
    pub stride: [usize; 3],
    /// Zero padding on each side `[t, h, w]`.
    pub padding: [usize; 3],
    /// Whether it adds a bias (torchvision's ResNets have none: a BatchNorm follows).
    #[config(default = true)]
    pub bias: bool,
}

impl VideoConv3dConfig {
    /// Initialises weights like PyTorch's `Conv3d` (uniform ±1/√fan_in for weight and bias).
    pub fn init<B: Backend>(&self, device: &B::Device) -> VideoConv3d<B> {
        let [kt, kh, kw] = self.kernel;
        let fan_in = self.channels_in * kt * kh * kw;
        let initializer = Initializer::KaimingUniform {
            gain: 1.0 / 3f64.sqrt(),
            fan_out_only: false,
        };
        let weight = initializer.init_with(
            [self.channels_out, self.channels_in, kt, kh, kw],
            Some(fan_in),
            None,
            device,
        );
        let bound = 1.0 / (fan_in as f64).sqrt();
        let bias = self.bias.then(|| {
            Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([self.channels_out], device)
        });
        VideoConv3d {
            weight,
            bias,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// A 3-D convolution. Weight layout is Burn's/PyTorch's `[out, in, kt, kh, kw]`; the record
/// (`weight`, `bias`) is the one session 1's gather convolution wrote, so old checkpoints load.
#[derive(Module, Debug)]
pub struct VideoConv3d<B: Backend> {
    /// `[out, in, kt, kh, kw]`.
    pub weight: Param<Tensor<B, 5>>,
    /// `[out]`, when the convolution has a bias.
    pub bias: Option<Param<Tensor<B, 1>>>,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
}

impl<B: Backend> VideoConv3d<B> {
    /// Output size `[t, h, w]` for an input of size `[t, h, w]`.
    pub fn output_size(&self, input: [usize; 3]) -> [usize; 3] {
        std::array::from_fn(|axis| {
            (input[axis] + 2 * self.padding[axis] - self.kernel[axis]) / self.stride[axis] + 1
        })
    }

    /// The sizes of this convolution over an input `[n, c_in, t, h, w]`.
    fn geometry(&self, [n, c_in, t, h, w]: [usize; 5]) -> ConvGeometry {
        ConvGeometry {
            input: [n, c_in, t, h, w],
            channels_out: self.weight.dims()[0],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            output: self.output_size([t, h, w]),
        }
    }

    /// Computes in the input's dtype. Burn's autodiff makes the input gradient only when the
    /// input is tracked, so a first layer fed data (untracked) never pays for it.
    ///
    /// # Shapes
    /// - input: `[n, c_in, t, h, w]`
    /// - output: `[n, c_out, t_out, h_out, w_out]`
    pub fn forward(&self, input: Tensor<B, 5>) -> Tensor<B, 5> {
        // Evaluation on the plain CPU backend (validation, eval, predict): vidtrain's im2col +
        // gemm kernel, as the untracked training forward; burn-flex's `conv3d` copies the whole
        // input to channels-last first.
        let device = input.device();
        if crate::cpu_kernels::enabled::<B>(&device) {
            let geometry = self.geometry(input.dims());
            let bias = self.bias.as_ref().map(|bias| bias.val());
            return conv3d_forward(input, self.weight.val(), bias, geometry);
        }
        // Training on the CPU (burn-flex under autodiff): the same kernel as one autodiff op
        // whose backward is the kernel's too (`tracked`).
        if crate::cpu_kernels::host_tensors::<B>(&device) {
            let geometry = self.geometry(input.dims());
            let bias = self.bias.as_ref().map(|bias| bias.val());
            if let Some(output) =
                tracked::conv3d_tracked(input.clone(), self.weight.val(), bias, geometry)
            {
                return output;
            }
        }
        self.forward_by_backend(input)
    }

    /// [`Self::forward`] as Burn's `conv3d` (its autodiff differentiates it): the path on
    /// devices, and under `VIDTRAIN_CPU_KERNELS=reference`.
    fn forward_by_backend(&self, input: Tensor<B, 5>) -> Tensor<B, 5> {
        let weight = like(self.weight.val(), &input);
        let bias = self.bias.as_ref().map(|bias| like(bias.val(), &input));
        conv3d(input, weight, bias, self.options())
    }

    /// Burn's options for this convolution (no dilation, one group).
    fn options(&self) -> ConvOptions<3> {
        ConvOptions::new(self.stride, self.padding, [1, 1, 1], 1)
    }
}

impl<B: AutodiffBackend> VideoConv3d<B> {
    /// [`Self::forward`] of an input that runs untracked (the stem in training, whose gradients
    /// are taken by hand), along the path [`Self::gradients`] takes: on the CPU vidtrain's
    /// im2col + gemm kernel, off it one matrix product over each clip's patches instead of
    /// cubecl's convolution kernels; Burn's `conv3d` under `VIDTRAIN_CPU_KERNELS=reference`.
    pub fn forward_untracked(&self, input: Tensor<B, 5>) -> Tensor<B, 5> {
        match ConvPath::for_device::<B>(&input.device()) {
            ConvPath::CpuGemm => {
                let geometry = self.geometry(input.dims());
                let weight = self.weight.val().inner();
                let bias = self.bias.as_ref().map(|bias| bias.val().inner());
                Tensor::from_inner(conv3d_forward(input.inner(), weight, bias, geometry))
            }
            ConvPath::BackendOps => self.forward(input),
            ConvPath::Patches => Tensor::from_inner(self.forward_by_patches(input.inner())),
        }
    }

    /// The convolution of `x` as patches times the weight, one clip at a time.
    fn forward_by_patches(&self, x: Tensor<B::InnerBackend, 5>) -> Tensor<B::InnerBackend, 5> {
        let [n, c_in, t, h, w] = x.dims();
        let output = self.output_size([t, h, w]);
        let [t_out, h_out, w_out] = output;
        let dtype = x.dtype();
        let weight = self.weight.val().inner().cast(dtype);
        let c_out = weight.dims()[0];
        let weight = weight
            .reshape([c_out, c_in * self.kernel.iter().product::<usize>()])
            .transpose();
        let bias = self
            .bias
            .as_ref()
            .map(|bias| bias.val().inner().cast(dtype).unsqueeze_dim::<2>(0));
        let windows = self.tap_windows(output, c_in);
        let clips = (0..n)
            .map(|clip| {
                let padded = self.padded(x.clone().slice(clip..clip + 1));
                let output = patch_matrix(&padded, &windows).matmul(weight.clone());
                let output = match &bias {
                    Some(bias) => output + bias.clone(),
                    None => output,
                };
                output
                    .reshape([1, t_out, h_out, w_out, c_out])
                    .permute([0, 4, 1, 2, 3])
            })
            .collect();
        Tensor::cat(clips, 0)
    }

    /// The gradients of this convolution for `upstream`, the gradient of its output: its weight
    /// and bias gradients (f32, like the parameters), and its input's when `wants_input` is set.
    /// Computed by hand on the inner backend instead of by Burn's autodiff: on the CPU by the
    /// wide-gemm kernel of `layers::conv_gemm` (Burn's generic conv3d backward swaps the batch
    /// and channel axes of activation-sized tensors, single-threaded copies on burn-flex: 35 % of
    /// the seed stem's step in a profile); off the CPU as matrix products over the input's
    /// patches ([`Self::gradients_by_patches`]); the bias gradient is a sum over contiguous rows.
    ///
    /// # Shapes
    /// - input: `[n, c_in, t, h, w]`, as the forward pass read it
    /// - upstream: `[n, c_out, t', h', w']`
    pub fn gradients(
        &self,
        input: Tensor<B, 5>,
        upstream: Tensor<B, 5>,
        wants_input: bool,
    ) -> (GradientsParams, Option<Tensor<B, 5>>) {
        let path = ConvPath::for_device::<B>(&input.device());
        self.gradients_by(input, upstream, wants_input, path)
    }

    /// [`Self::gradients`] along `path`. Each path returns the weight gradient and the input
    /// gradient on the inner backend; the casts back to the parameters' and the input's dtypes
    /// are here, once.
    fn gradients_by(
        &self,
        input: Tensor<B, 5>,
        upstream: Tensor<B, 5>,
        wants_input: bool,
        path: ConvPath,
    ) -> (GradientsParams, Option<Tensor<B, 5>>) {
        let [n, c_in, t, h, w] = input.dims();
        // One copy when the input is a view with rearranged axes (the stem's first step reads
        // frames-first data channels-first); a reshape of contiguous data costs nothing. Without
        // it every path would walk the view element by element.
        let x = input
            .inner()
            .reshape([n, c_in * t * h * w])
            .reshape([n, c_in, t, h, w]);
        let dtype = x.dtype();
        let upstream = upstream.inner();
        let [_, c_out, t_out, h_out, w_out] = upstream.dims();
        let weight = self.weight.val().inner();
        // Summed in f32 whatever the activations' dtype (the CPU route sums as it reads).
        let bias_gradient = |upstream: &Tensor<B::InnerBackend, 5>| {
            self.bias.as_ref().map(|_| {
                crate::cpu_kernels::cast(upstream.clone(), FloatDType::F32)
                    .reshape([n, c_out, t_out * h_out * w_out])
                    .sum_dim(2)
                    .sum_dim(0)
                    .reshape([c_out])
            })
        };
        // Backend compositions compute in the output gradient's dtype.
        let compute = upstream.dtype();
        let ((weight_gradient, input_gradient), bias_gradient) = match path {
            ConvPath::CpuGemm => {
                let dims = [n, c_in, t, h, w];
                self.cpu_backward(ConvInput::Tensor(x), dims, upstream, wants_input)
                    .gradients()
            }
            ConvPath::Patches => {
                let bias = bias_gradient(&upstream);
                let (x, weight) = (x.cast(compute), weight.cast(compute));
                (
                    self.gradients_by_patches(x, weight, upstream, wants_input),
                    bias,
                )
            }
            ConvPath::BackendOps => {
                let bias = bias_gradient(&upstream);
                let operands = [x.cast(compute), weight.cast(compute), upstream];
                let gradients = gradients_by_convolution(operands, self.options(), wants_input);
                (gradients, bias)
            }
        };
        self.registered(
            (
                weight_gradient,
                input_gradient.map(|gradient| cast(gradient, dtype)),
            ),
            bias_gradient,
        )
    }

    /// The backward of vidtrain's CPU kernel ([`ConvBackward`]) for `input` of `dims`.
    fn cpu_backward<'a>(
        &self,
        input: ConvInput<'a, B::InnerBackend>,
        dims: [usize; 5],
        upstream: Tensor<B::InnerBackend, 5>,
        wants_input: bool,
    ) -> ConvBackward<'a, B::InnerBackend> {
        ConvBackward {
            input,
            weight: self.weight.val().inner(),
            upstream,
            geometry: self.geometry(dims),
            wants: [wants_input, self.bias.is_some()],
        }
    }

    /// [`Self::gradients`] of an input that vidtrain's CPU kernel reads one clip at a time, so
    /// that it never exists whole: kept compressed (`model.activation_bits`) and restored, or a
    /// BatchNorm + ReLU output made again from that step's input.
    pub(crate) fn gradients_by_clips(
        &self,
        input: ConvInput<'_, B::InnerBackend>,
        upstream: Tensor<B, 5>,
        wants_input: bool,
    ) -> (GradientsParams, Option<Tensor<B, 5>>) {
        let (dims, dtype) = (input.dims(), input.dtype());
        let backward = self.cpu_backward(input, dims, upstream.inner(), wants_input);
        let ((weight_gradient, input_gradient), bias_gradient) = backward.gradients();
        self.registered(
            (
                weight_gradient,
                input_gradient.map(|gradient| cast(gradient, dtype)),
            ),
            bias_gradient,
        )
    }

    /// The gradients as parameters' (in their dtypes) and the input's, on the autodiff backend.
    fn registered(
        &self,
        (weight_gradient, input_gradient): ConvGradients<B::InnerBackend>,
        bias_gradient: Option<Tensor<B::InnerBackend, 1>>,
    ) -> (GradientsParams, Option<Tensor<B, 5>>) {
        let mut gradients = GradientsParams::new();
        let master = self.weight.val().dtype();
        gradients.register(self.weight.id, weight_gradient.cast(master));
        if let (Some(bias), Some(gradient)) = (&self.bias, bias_gradient) {
            gradients.register(bias.id, gradient.cast(bias.val().dtype()));
        }
        (gradients, input_gradient.map(Tensor::from_inner))
    }

    /// The weight gradient (f32) and input gradient as two matrix products over the input's
    /// patches (im2col) in backend ops, the path off the CPU: `upstreamᵀ · patches`, and
    /// `upstream · weight` scattered back tap by tap. On the first H200 run
    /// (`docs/benchmarks.md`) cubecl computed the backward kernels above with direct
    /// convolutions, 178 ms for the stride-2 input gradient and about 60 ms for each weight
    /// gradient against PyTorch's 16 ms for the whole step, while its matrix products are fast.
    /// One clip at a time, so that the transient patch matrix, `[t'·h'·w', c_in·kt·kh·kw]`, is
    /// one clip's column buffer as the memory plan prices it (`summary/costs.rs`).
    fn gradients_by_patches(
        &self,
        x: Tensor<B::InnerBackend, 5>,
        weight: Tensor<B::InnerBackend, 5>,
        upstream: Tensor<B::InnerBackend, 5>,
        wants_input: bool,
    ) -> ConvGradients<B::InnerBackend> {
        let [n, c_in, t, h, w] = x.dims();
        let [_, c_out, t_out, h_out, w_out] = upstream.dims();
        let [kt, kh, kw] = self.kernel;
        let [pt, ph, pw] = self.padding;
        let taps = kt * kh * kw;
        let positions = t_out * h_out * w_out;
        let weight = weight.reshape([c_out, c_in * taps]);
        let windows = self.tap_windows([t_out, h_out, w_out], c_in);
        let mut weight_gradient: Option<Tensor<B::InnerBackend, 2>> = None;
        let mut input_gradients = Vec::with_capacity(if wants_input { n } else { 0 });
        for clip in 0..n {
            let padded = self.padded(x.clone().slice(clip..clip + 1));
            // [positions, c_out]: one output position per row.
            let upstream = upstream
                .clone()
                .slice(clip..clip + 1)
                .permute([0, 2, 3, 4, 1])
                .reshape([positions, c_out]);
            // Summed over clips in f32 whatever the activations' dtype.
            let clip_weight = upstream
                .clone()
                .transpose()
                .matmul(patch_matrix(&padded, &windows))
                .cast(FloatDType::F32);
            weight_gradient = Some(match weight_gradient {
                Some(sum) => sum + clip_weight,
                None => clip_weight,
            });
            if wants_input {
                let columns = upstream
                    .matmul(weight.clone()) // [positions, c_in·taps]
                    .reshape([1, t_out, h_out, w_out, c_in, taps])
                    .permute([0, 4, 5, 1, 2, 3]); // [1, c_in, taps, t', h', w']
                let mut gradient = padded.zeros_like();
                for (tap, &window) in windows.iter().enumerate() {
                    let column = columns
                        .clone()
                        .slice([0..1, 0..c_in, tap..tap + 1, 0..t_out, 0..h_out, 0..w_out])
                        .reshape([1, c_in, t_out, h_out, w_out]);
                    let sum = gradient.clone().slice(window) + column;
                    gradient = gradient.slice_assign(window, sum);
                }
                // The clip's columns, its input gradient and the weight gradient so far.
                crate::memory_probe::at::<B::InnerBackend>(&gradient.device());
                input_gradients.push(gradient.slice([
                    0..1,
                    0..c_in,
                    pt..pt + t,
                    ph..ph + h,
                    pw..pw + w,
                ]));
            }
        }
        let weight_gradient = weight_gradient
            .expect("a micro-batch has at least one clip")
            .reshape([c_out, c_in, kt, kh, kw]);
        (
            weight_gradient,
            wants_input.then(|| Tensor::cat(input_gradients, 0)),
        )
    }

    /// `x` with this convolution's zero padding around its three inner axes.
    fn padded(&self, x: Tensor<B::InnerBackend, 5>) -> Tensor<B::InnerBackend, 5> {
        let [n, c_in, t, h, w] = x.dims();
        let [pt, ph, pw] = self.padding;
        if self.padding == [0, 0, 0] {
            return x;
        }
        let zeros = Tensor::zeros(
            [n, c_in, t + 2 * pt, h + 2 * ph, w + 2 * pw],
            (&x.device(), x.dtype()),
        );
        zeros.slice_assign([0..n, 0..c_in, pt..pt + t, ph..ph + h, pw..pw + w], x)
    }

    /// For each kernel tap `(a, b, c)` in the weight's order, the strided window of one padded
    /// clip that it reads for every output position: `[1, c_in, t', h', w']`.
    fn tap_windows(&self, output: [usize; 3], c_in: usize) -> Vec<[Slice; 5]> {
        let [kt, kh, kw] = self.kernel;
        let window = |offset: usize, axis: usize| {
            let step = self.stride[axis];
            let end = offset + (output[axis] - 1) * step + 1;
            Slice::new(offset as isize, Some(end as isize), step as isize)
        };
        let mut windows = Vec::with_capacity(kt * kh * kw);
        for a in 0..kt {
            for b in 0..kh {
                for c in 0..kw {
                    windows.push([
                        Slice::from(0..1),
                        Slice::from(0..c_in),
                        window(a, 0),
                        window(b, 1),
                        window(c, 2),
                    ]);
                }
            }
        }
        windows
    }
}

/// The patch matrix of one padded clip for `windows` ([`VideoConv3d::tap_windows`]): one row per
/// output position, `[t'·h'·w', c_in·taps]`, columns in the weight's `(c_in, kt, kh, kw)` order.
fn patch_matrix<B: Backend>(padded: &Tensor<B, 5>, windows: &[[Slice; 5]]) -> Tensor<B, 2> {
    let stacked = Tensor::stack::<6>(
        windows
            .iter()
            .map(|&window| padded.clone().slice(window))
            .collect(),
        2,
    ); // [1, c_in, taps, t', h', w']
    let [_, c_in, taps, t_out, h_out, w_out] = stacked.dims();
    stacked
        .permute([0, 3, 4, 5, 1, 2])
        .reshape([t_out * h_out * w_out, c_in * taps])
}

/// How a stem convolution computes its untracked forward and its gradients by hand:
/// vidtrain's im2col + gemm CPU kernel, matrix products over patches in backend ops (off the
/// CPU), or the backend's own convolution and its backward (the CPU's reference mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvPath {
    CpuGemm,
    Patches,
    BackendOps,
}

impl ConvPath {
    /// The path for autodiff backend `B` on `device`.
    fn for_device<B: AutodiffBackend>(device: &B::Device) -> Self {
        if crate::cpu_kernels::enabled::<B::InnerBackend>(device) {
            ConvPath::CpuGemm
        } else if crate::cpu_kernels::computes_on_host::<B::InnerBackend>(device) {
            ConvPath::BackendOps
        } else {
            ConvPath::Patches
        }
    }
}

/// The weight and input gradients through the backend's own convolution backward kernels
/// (`conv3d_weight_backward`, `conv3d_x_backward`: the ones Burn's autodiff calls). On the CPU
/// under `VIDTRAIN_CPU_KERNELS=reference`.
fn gradients_by_convolution<B: Backend>(
    [x, weight, upstream]: [Tensor<B, 5>; 3],
    options: ConvOptions<3>,
    wants_input: bool,
) -> ConvGradients<B> {
    let float = |tensor: Tensor<B, 5>| tensor.into_primitive().tensor();
    let tensor = |float| Tensor::from_primitive(TensorPrimitive::Float(float));
    let weight_gradient = tensor(B::conv3d_weight_backward(
        float(x.clone()),
        float(weight.clone()),
        float(upstream.clone()),
        options.clone(),
    ));
    let input_gradient = wants_input.then(|| {
        tensor(B::conv3d_x_backward(
            float(x),
            float(weight),
            float(upstream),
            options,
        ))
    });
    (weight_gradient, input_gradient)
}

#[cfg(test)]
mod tests;
mod tracked;
pub(crate) use tracked::conv3d_tracked;

/// `input` (`[n, c_in, t, h, w]`) convolved with `weight` (and `bias`) of `geometry` by
/// vidtrain's CPU kernel: the plain kernel on burn-flex tensors, one op of the autodiff graph on
/// burn-flex under autodiff; `None` elsewhere (the caller composes Burn's op). For the
/// convolutions outside [`VideoConv3d`]: ST-GCN's temporal and 1×1 convolutions.
pub(crate) fn convolve_on_cpu<B: Backend>(
    input: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
) -> Option<Tensor<B, 5>> {
    let device = input.device();
    if crate::cpu_kernels::enabled::<B>(&device) {
        Some(crate::layers::conv_gemm::conv3d_forward(
            input, weight, bias, geometry,
        ))
    } else if B::ad_enabled(&device) && crate::cpu_kernels::host_tensors::<B>(&device) {
        conv3d_tracked(input, weight, bias, geometry)
    } else {
        None
    }
}
