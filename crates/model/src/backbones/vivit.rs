//! ViViT with joint space-time attention ("model 1" of Arnab et al., 2021): tubelet embedding →
//! learned positions → pre-norm encoder blocks over all space-time tokens → LayerNorm → mean.
//!
//! The tubelet embedding is a Conv3d whose stride equals its kernel, which is exactly a reshape
//! into non-overlapping tubelets plus one linear layer: no convolution kernel at all, on the CPU
//! or on CUDA.

use burn::module::{Initializer, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::{DType, TensorData, bf16, f16};
use rayon::prelude::*;

use super::video_transformer::ENCODER_NAMES;
use crate::chain::{Activation, BlockChain, ChainConfig, SegmentChain, SegmentKind, norm_and_mean};
use crate::cpu_kernels::HostFloat;
use crate::layers::encoder::{EncoderBlock, EncoderBlockConfig};
use crate::precision::{layer_norm, like, linear};
use crate::pytorch_names::{PytorchLayout, PytorchNames};
use crate::summary::{InputShape, LayerSummary, rows};

/// The names of ViViT in `bench/pytorch_reference.py`: its tubelet embedding (a Conv3d there,
/// see [`VivitConfig::pytorch_layouts`]) and learned positions, then the seed transformer's
/// encoder blocks and norm.
pub(crate) const PYTORCH_NAMES: PytorchNames = PytorchNames {
    import: &[
        &[
            (r"^embedding\.", "backbone.embedding."),
            (r"^positions$", "backbone.positions"),
        ],
        ENCODER_NAMES.import[0],
    ],
    export: &[
        &[
            (r"^backbone\.embedding\.", "embedding."),
            (r"^backbone\.positions$", "positions"),
        ],
        ENCODER_NAMES.export[0],
    ],
};

/// Configuration of a [`Vivit`].
#[derive(Config, Debug)]
pub struct VivitConfig {
    /// Every encoder block's configuration (its `dim` is the token width D).
    pub block: EncoderBlockConfig,
    /// Encoder blocks.
    pub layers: usize,
    /// The clip and its tubelets (the learned positions cover its tokens).
    pub grid: TubeletGrid,
}

impl VivitConfig {
    /// ViViT as `model.transformer_*` and `model.tubelet_size` describe it, its positions
    /// covering the clip of `data.uniform_temporal_subsample_num` × `data.img_size`².
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        Self::new(
            EncoderBlockConfig::from_vidtrain(model),
            model.transformer_layers,
            TubeletGrid::from_vidtrain(config),
        )
    }

    /// Builds the backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vivit<B> {
        let dim = self.block.dim;
        Vivit {
            embedding: LinearConfig::new(self.grid.values(), dim).init(device),
            positions: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([self.grid.tokens(), dim], device),
            blocks: (0..self.layers).map(|_| self.block.init(device)).collect(),
            norm: LayerNormConfig::new(dim)
                .with_epsilon(crate::precision::LAYER_NORM_EPSILON)
                .init(device),
            tubelet: self.grid.tubelet,
        }
    }
}

/// Clip → feature vector.
#[derive(Module, Debug)]
pub struct Vivit<B: Backend> {
    embedding: Linear<B>,
    /// `[tokens, dim]`.
    positions: Param<Tensor<B, 2>>,
    blocks: Vec<EncoderBlock<B>>,
    norm: LayerNorm<B>,
    #[module(skip)]
    tubelet: [usize; 3],
}

impl<B: Backend> Vivit<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values in 0..1
    /// - output: `[n, dim]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        let _span = tracing::trace_span!("vivit").entered();
        self.forward_chain(Activation::Clips(video))
    }

    /// Tubelets → tokens, plus learned positions. Token order is (time, row, column); each
    /// tubelet's values are ordered (frame, channel, row, column).
    ///
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`
    /// - output: `[n, tokens, dim]`
    fn embed(&self, video: Tensor<B, 5>) -> Tensor<B, 3> {
        let tokens = linear(&self.embedding, tubelets(video, self.tubelet)); // [n, tokens, dim]
        let positions = like(self.positions.val(), &tokens);
        tokens + positions.unsqueeze::<3>()
    }
}

/// Segments, in order: the tubelet embedding, one per encoder block.
impl<B: Backend> BlockChain<B> for Vivit<B> {
    type Block = EncoderBlock<B>;
    const LEAD: usize = 1;

    fn lead_kind(&self, _index: usize) -> SegmentKind {
        SegmentKind::StemPerClip
    }

    fn forward_lead(&self, _index: usize, input: Activation<B>) -> Activation<B> {
        Activation::Tokens(self.embed(input.into_clips()))
    }

    fn blocks(&self) -> impl Iterator<Item = &EncoderBlock<B>> {
        self.blocks.iter()
    }

    /// Final LayerNorm and mean over tokens: `[n, tokens, dim]` → `[n, dim]`.
    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        norm_and_mean(tokens, |tokens| layer_norm(&self.norm, tokens))
    }
}

impl ChainConfig for VivitConfig {
    fn architecture_keys(&self) -> Vec<&'static str> {
        TUBELET_CLIP_KEYS.to_vec()
    }

    fn dim(&self) -> usize {
        self.block.dim
    }

    fn pytorch_names(&self) -> PytorchNames {
        PYTORCH_NAMES
    }

    /// The tubelet embedding: a `Linear` weight `[D, frame · channel · row · column]` here (in
    /// PyTorch's orientation), the Conv3d weight `[D, channel, frame, row, column]` there.
    fn pytorch_layouts(&self) -> Vec<PytorchLayout> {
        let [tt, th, tw] = self.grid.tubelet;
        let dim = self.dim();
        vec![PytorchLayout {
            path: "backbone.embedding.weight",
            shape: vec![dim, self.grid.values()],
            view: vec![dim, tt, 3, th, tw],
            permutation: vec![0, 2, 1, 3, 4],
        }]
    }

    fn dropout(&self) -> f64 {
        self.block.dropout
    }

    fn summary_rows(&self, prefix: &str, clips: usize, _input: InputShape) -> Vec<LayerSummary> {
        let tokens = self.grid.tokens();
        let mut rows = vec![rows::tubelet_embedding(
            prefix,
            clips,
            tokens,
            self.grid.values(),
            self.dim(),
            tokens * self.dim(),
        )];
        rows.extend(rows::encoder_blocks(
            prefix,
            self.layers,
            &self.block,
            clips,
            tokens,
        ));
        rows
    }
}

/// The config keys that size a tubelet embedding's learned positions (one per tubelet of the
/// clip): ViViT's and VideoMamba's.
pub(crate) const TUBELET_CLIP_KEYS: &[&str] = &[
    "model.tubelet_size",
    "data.img_size",
    "data.uniform_temporal_subsample_num",
];

/// A clip cut into tubelets: the geometry of ViViT's and VideoMamba's tubelet embedding.
#[derive(Config, Debug)]
pub struct TubeletGrid {
    /// Tubelet size `[t, h, w]`.
    pub tubelet: [usize; 3],
    /// Input clip size `[t, h, w]`.
    pub clip: [usize; 3],
}

impl TubeletGrid {
    /// `model.tubelet_size` over the clip of `data.uniform_temporal_subsample_num` ×
    /// `data.img_size`² (the keys of [`TUBELET_CLIP_KEYS`]).
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let data = &config.data;
        Self::new(
            config.model.tubelet_size,
            [
                data.uniform_temporal_subsample_num,
                data.img_size,
                data.img_size,
            ],
        )
    }

    /// Tokens along time, height and width.
    pub fn token_grid(&self) -> [usize; 3] {
        std::array::from_fn(|axis| self.clip[axis] / self.tubelet[axis])
    }

    /// Tokens per clip: `(t / tt) · (h / th) · (w / tw)`.
    pub fn tokens(&self) -> usize {
        self.token_grid().iter().product()
    }

    /// Values in one tubelet: `3 · tt · th · tw`.
    pub fn values(&self) -> usize {
        3 * self.tubelet.iter().product::<usize>()
    }
}

/// Cuts clips into non-overlapping tubelets `[tt, th, tw]`: token order (time, row, column),
/// each tubelet's values ordered (frame, channel, row, column).
///
/// # Shapes
/// - input: `[n, t, c, h, w]`
/// - output: `[n, (t / tt) · (h / th) · (w / tw), tt · c · th · tw]`
pub(crate) fn tubelets<B: Backend>(video: Tensor<B, 5>, tubelet: [usize; 3]) -> Tensor<B, 3> {
    let [n, t, c, h, w] = video.dims();
    let [tt, th, tw] = tubelet;
    let [gt, gh, gw] = [t / tt, h / th, w / tw];
    let device = video.device();
    // On the CPU, gathered by the pool's threads: burn-flex's permute below copies value by
    // value through a strided iterator on one thread (2.5 % of ViViT's bf16 step at
    // micro-batch 1 with recompute, the other core idle). Only for a video outside the
    // autodiff graph: the gathered tokens are a new leaf.
    if crate::cpu_kernels::host_tensors::<B>(&device) && crate::tracked_ops::untracked(&video) {
        let dtype = video.dtype();
        let gathered = match dtype {
            DType::BF16 => gathered_tubelets::<bf16, B>(video, tubelet),
            DType::F16 => gathered_tubelets::<f16, B>(video, tubelet),
            _ => gathered_tubelets::<f32, B>(video, tubelet),
        };
        return Tensor::from_data(gathered, (&device, dtype));
    }
    // Burn's CPU backend stops at rank 6, so split the axes in two steps.
    video
        .reshape([n * gt, tt * c, gh, th, w]) // frames of a tubelet next to the channels
        .reshape([n * gt, tt * c, gh, th, gw, tw])
        .permute([0, 2, 4, 1, 3, 5]) // [n·gt, gh, gw, tt·c, th, tw]
        .reshape([n, gt * gh * gw, tt * c * th * tw])
}

/// [`tubelets`]'s values, read as `T` where the video is stored, in parallel over tokens.
fn gathered_tubelets<T: HostFloat, B: Backend>(
    video: Tensor<B, 5>,
    [tt, th, tw]: [usize; 3],
) -> TensorData {
    let [n, t, c, h, w] = video.dims();
    let [gt, gh, gw] = [t / tt, h / th, w / tw];
    let values = crate::cpu_kernels::stored::<T, B, 5>(video);
    let token_values = tt * c * th * tw;
    let mut tokens = crate::cpu_kernels::filled(n * gt * gh * gw * token_values, T::from_f32(0.0));
    tokens
        .par_chunks_mut(token_values.max(1))
        .enumerate()
        .for_each(|(token, token_values)| {
            // Token (clip · gt + frame group, gy, gx); its values (frame · c + channel, y, x).
            let (group, gy, gx) = (token / (gh * gw), token / gw % gh, token % gw);
            for (plane, rows) in token_values.chunks_mut(th * tw).enumerate() {
                let plane_start = (group * tt * c + plane) * h * w;
                for (y, row) in rows.chunks_mut(tw).enumerate() {
                    let start = plane_start + (gy * th + y) * w + gx * tw;
                    row.copy_from_slice(&values[start..start + tw]);
                }
            }
        });
    TensorData::new(tokens, [n, gt * gh * gw, token_values])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::Distribution;

    /// The tubelets gathered on the host (a video that wants no gradient) are the values of
    /// Burn's reshape and permute (taken for a tracked video), in f32 and bf16.
    #[test]
    fn gathered_tubelets_equal_the_permuted_video() {
        use burn::backend::Autodiff;
        use burn::tensor::FloatDType;
        let _rng = crate::rng_lock();
        let device = Default::default();
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let video = Tensor::<Autodiff<TestBackend>, 5>::random(
                [2, 4, 3, 8, 12],
                Distribution::Default,
                &device,
            )
            .cast(dtype);
            let gathered = tubelets(video.clone(), [2, 4, 6]);
            let permuted = tubelets(video.require_grad(), [2, 4, 6]);
            assert_eq!(gathered.dims(), [2, 2 * 2 * 2, 2 * 3 * 4 * 6]);
            assert_eq!(gathered.into_data(), permuted.into_data(), "{dtype:?}");
        }
    }

    #[test]
    fn tubelet_embedding_equals_a_stride_equal_convolution() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let config = VivitConfig::new(
            EncoderBlockConfig::new(5, 1, 8, 0.0),
            0,
            TubeletGrid::new([2, 4, 4], [4, 8, 12]),
        );
        let model: Vivit<TestBackend> = config.init(&device);
        let video =
            Tensor::<TestBackend, 5>::random([2, 4, 3, 8, 12], Distribution::Default, &device);
        let tokens = model.embed(video.clone()) - model.positions.val().unsqueeze::<3>();
        let tokens = tokens.into_data().to_vec::<f32>().unwrap();

        // The same sum written as a direct convolution loop over one output position at a time.
        let input = video.into_data().to_vec::<f32>().unwrap();
        let weight = model
            .embedding
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap(); // [in, out]
        let bias = model
            .embedding
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let at = |n: usize, t: usize, c: usize, y: usize, x: usize| {
            input[(((n * 4 + t) * 3 + c) * 8 + y) * 12 + x]
        };
        let grid = config.grid.token_grid();
        assert_eq!(config.grid.tokens(), 2 * 2 * 3);
        for n in 0..2 {
            for (token, (gt, gy, gx)) in (0..grid[0])
                .flat_map(|gt| {
                    (0..grid[1]).flat_map(move |gy| (0..grid[2]).map(move |gx| (gt, gy, gx)))
                })
                .enumerate()
            {
                for out in 0..5 {
                    let mut sum = bias[out];
                    let mut feature = 0;
                    for dt in 0..2 {
                        for c in 0..3 {
                            for dy in 0..4 {
                                for dx in 0..4 {
                                    let value = at(n, gt * 2 + dt, c, gy * 4 + dy, gx * 4 + dx);
                                    sum += value * weight[feature * 5 + out];
                                    feature += 1;
                                }
                            }
                        }
                    }
                    let got = tokens[(n * 12 + token) * 5 + out];
                    assert!(
                        (got - sum).abs() < 1e-5,
                        "n {n} token {token} out {out}: {got} vs {sum}"
                    );
                }
            }
        }
    }
}
