//! A 3-D convolution written as patch gathering (strided slices) + one matrix multiply.
//!
//! burn-ndarray's `Conv3d` is a naive loop whose backward takes minutes at the seed's sizes;
//! strided slices and a GEMM train 10–50× faster there and map to fast kernels on CUDA. Video is
//! laid out frames first, `[n, t, c, h, w]`, so each frame is a channels-first image.

use burn::module::{Initializer, Param};
use burn::prelude::*;
use burn::tensor::Slice;

use crate::precision::like;

/// Configuration of a [`Conv3dGemm`].
#[derive(Config, Debug)]
pub struct Conv3dGemmConfig {
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
}

impl Conv3dGemmConfig {
    /// Initialises weights like PyTorch's `Conv3d` (uniform ±1/√fan_in for weight and bias).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Conv3dGemm<B> {
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
        let bias = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init([self.channels_out], device);
        Conv3dGemm {
            weight,
            bias,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// A 3-D convolution as gather + GEMM. Weight layout is Burn's/PyTorch's `[out, in, kt, kh, kw]`,
/// so weights move between this module and `Conv3d` unchanged.
#[derive(Module, Debug)]
pub struct Conv3dGemm<B: Backend> {
    /// `[out, in, kt, kh, kw]`.
    pub weight: Param<Tensor<B, 5>>,
    /// `[out]`.
    pub bias: Param<Tensor<B, 1>>,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
}

impl<B: Backend> Conv3dGemm<B> {
    /// Output size `[t, h, w]` for an input of size `[t, h, w]`.
    pub fn output_size(&self, input: [usize; 3]) -> [usize; 3] {
        std::array::from_fn(|axis| {
            (input[axis] + 2 * self.padding[axis] - self.kernel[axis]) / self.stride[axis] + 1
        })
    }

    /// # Shapes
    /// - input: `[n, t, c_in, h, w]` (frames first, then channels-first images)
    /// - output: `[n, t_out, c_out, h_out, w_out]`
    pub fn forward(&self, input: Tensor<B, 5>) -> Tensor<B, 5> {
        let [n, t, c_in, h, w] = input.dims();
        let [t_out, h_out, w_out] = self.output_size([t, h, w]);
        let [kt, kh, kw] = self.kernel;
        let c_out = self.bias.dims()[0];

        let [pad_t, pad_h, pad_w] = self.padding;
        let padded = pad_axis(input, 1, pad_t, pad_t);
        let padded = pad_axis(padded, 3, pad_h, pad_h);
        let padded = pad_axis(padded, 4, pad_w, pad_w);
        // One strided view per kernel tap, concatenated along channels: [n, t', K·c_in, h', w'],
        // taps ordered (kt, kh, kw), channels inner. Concatenating on the channel axis keeps the
        // copied runs `w'` long (on the last axis they would be 3 values long and 2–3× slower).
        let window = |offset: usize, len: usize, stride: usize| {
            let end = offset + (len - 1) * stride + 1;
            Slice::new(offset as isize, Some(end as isize), stride as isize)
        };
        let mut taps = Vec::with_capacity(kt * kh * kw);
        for dt in 0..kt {
            for dh in 0..kh {
                for dw in 0..kw {
                    taps.push(padded.clone().slice([
                        Slice::new(0, None, 1),
                        window(dt, t_out, self.stride[0]),
                        Slice::new(0, None, 1),
                        window(dh, h_out, self.stride[1]),
                        window(dw, w_out, self.stride[2]),
                    ]));
                }
            }
        }
        let k = kt * kh * kw * c_in;
        let patches = Tensor::cat(taps, 2).reshape([n * t_out, k, h_out * w_out]);
        // [out, in, kt, kh, kw] → [out, kt, kh, kw, in] → [out, K·c_in], matching the patch order.
        let weight = like(self.weight.val(), &patches)
            .permute([0, 2, 3, 4, 1])
            .reshape([1, c_out, k]);
        let output = weight.matmul(patches); // [n·t', out, h'·w']
        let bias = like(self.bias.val(), &output).reshape([1, c_out, 1]);
        let output = output + bias;
        output.reshape([n, t_out, c_out, h_out, w_out])
    }
}

/// Zero-pads `tensor` by `before` and `after` elements on `axis`.
fn pad_axis<B: Backend>(
    tensor: Tensor<B, 5>,
    axis: usize,
    before: usize,
    after: usize,
) -> Tensor<B, 5> {
    if before == 0 && after == 0 {
        return tensor;
    }
    let device = tensor.device();
    let dtype = tensor.dtype();
    let zeros = |len: usize| {
        let mut shape = tensor.dims();
        shape[axis] = len;
        Tensor::zeros(shape, (&device, dtype))
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(zeros(before));
    }
    let after_part = (after > 0).then(|| zeros(after));
    parts.push(tensor);
    parts.extend(after_part);
    Tensor::cat(parts, axis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::nn::PaddingConfig3d;
    use burn::nn::conv::Conv3dConfig;
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<TestBackend>;

    /// The GEMM convolution equals Burn's `Conv3d` with the same weights: outputs and the
    /// gradients of weight, bias and input.
    fn check(
        channels_in: usize,
        channels_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) {
        let device = Default::default();
        let ours = Conv3dGemmConfig::new(channels_in, channels_out, kernel, stride, padding)
            .init::<B>(&device);
        let mut theirs = Conv3dConfig::new([channels_in, channels_out], kernel)
            .with_stride(stride)
            .with_padding(PaddingConfig3d::Explicit(
                padding[0], padding[1], padding[2],
            ))
            .init::<B>(&device);
        theirs.weight = Param::from_tensor(ours.weight.val().detach());
        theirs.bias = Some(Param::from_tensor(ours.bias.val().detach()));

        // Channels-first input for Burn, the same values frames-first for ours.
        let input =
            Tensor::<B, 5>::random([2, channels_in, 5, 11, 10], Distribution::Default, &device);
        let input_first = input.clone().detach().require_grad();
        let input_last = input.detach().permute([0, 2, 1, 3, 4]).require_grad();
        let expected = theirs.forward(input_first.clone());
        let got = ours.forward(input_last.clone()).permute([0, 2, 1, 3, 4]);
        got.to_data()
            .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::rel_abs(1e-5, 1e-5));

        // A fixed random upstream gradient through both.
        let upstream =
            Tensor::<B, 5>::random(expected.dims(), Distribution::Default, &device).detach();
        let grads_theirs = (expected * upstream.clone()).sum().backward();
        let grads_ours = (got * upstream).sum().backward();
        let tolerance = Tolerance::rel_abs(1e-4, 1e-4);
        ours.weight
            .grad(&grads_ours)
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(
                &theirs.weight.grad(&grads_theirs).unwrap().to_data(),
                tolerance,
            );
        ours.bias
            .grad(&grads_ours)
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(
                &theirs
                    .bias
                    .as_ref()
                    .unwrap()
                    .grad(&grads_theirs)
                    .unwrap()
                    .to_data(),
                tolerance,
            );
        input_last
            .grad(&grads_ours)
            .unwrap()
            .permute([0, 2, 1, 3, 4])
            .to_data()
            .assert_approx_eq::<f32>(
                &input_first.grad(&grads_theirs).unwrap().to_data(),
                tolerance,
            );
    }

    #[test]
    fn matches_burn_conv3d_stem_first_stage() {
        let _rng = crate::rng_lock();
        check(3, 4, [3, 7, 7], [1, 2, 2], [1, 3, 3]);
    }

    #[test]
    fn matches_burn_conv3d_stem_second_stage() {
        let _rng = crate::rng_lock();
        check(4, 6, [1, 3, 3], [1, 2, 2], [0, 1, 1]);
    }

    #[test]
    fn matches_burn_conv3d_without_padding() {
        let _rng = crate::rng_lock();
        check(2, 3, [2, 2, 3], [2, 1, 3], [0, 0, 0]);
    }

    #[test]
    fn matches_burn_conv3d_with_odd_sizes_and_large_strides() {
        let _rng = crate::rng_lock();
        check(2, 3, [1, 5, 4], [1, 3, 2], [0, 2, 1]);
        check(1, 2, [3, 3, 3], [1, 1, 1], [1, 1, 1]);
    }
}
