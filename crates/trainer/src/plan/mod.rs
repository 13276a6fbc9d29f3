//! `vidtrain plan`: the memory a config will need, from its sizes alone (the model's layer
//! summary priced by `vidtrain_memutil::plan`), and `--fit`: the fastest settings that fit a
//! memory budget.

use serde::Serialize;
use vidtrain_config::{Config, OptimizerKind, OptimizerStateFormat, Precision, RecomputeMode};
use vidtrain_memutil::plan::{ActivationHome, ActivationLayer, Component, MemoryPlan, PlanInput};
use vidtrain_model::{
    ActionModelConfig, InputShape, KeptActivations, LayerRole, ModelSummary, SegmentKind,
};

use crate::BackendChoice;

/// Host memory of the process before any tensor: code, the allocator's arenas and thread stacks
/// (CPU backend), measured at the start of small runs here; the CUDA runtime adds its own host
/// mappings (driver, kernels), estimated.
const CPU_RUNTIME_BYTES: u64 = 24 << 20;
const CUDA_RUNTIME_BYTES: u64 = 600 << 20;
/// wgpu's instance, the Vulkan/Metal driver and compiled shaders, estimated (host side; on a
/// software driver such as lavapipe the device buffers are host memory too, priced as device).
const WGPU_RUNTIME_BYTES: u64 = 200 << 20;

/// The largest of a plan's components, as `name (size)`, for messages that say what to shrink.
pub(crate) fn largest_component(components: &[vidtrain_memutil::plan::Component]) -> String {
    components
        .iter()
        .max_by_key(|component| component.bytes)
        .map(|component| {
            format!(
                "{} ({})",
                component.name,
                vidtrain_memutil::format_bytes(component.bytes)
            )
        })
        .unwrap_or_default()
}

/// Sizes of the configured dataset, when it was indexed (ffprobe only, nothing decoded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DatasetSizes {
    /// Samples in the whole dataset (what the decoded-sample cache can hold at most).
    pub samples: usize,
    /// Samples in the validation split (validation batches are no larger).
    pub validation_samples: usize,
}

/// Indexes the dataset `config` names (probing videos, decoding nothing) for the plan; `None`
/// when it cannot be read (the plan then assumes full validation batches and a full cache).
pub fn dataset_sizes(config: &Config) -> Option<DatasetSizes> {
    let dataset = vidtrain_data::Dataset::open(config).ok()?;
    let k_folds = config.train.k_folds;
    let validation = |fold| {
        dataset
            .chunks
            .fold_samples(&dataset.index, fold, k_folds, true)
            .len()
    };
    let validation_samples = match config.train.fold {
        vidtrain_config::Fold::Index(fold) => validation(fold),
        vidtrain_config::Fold::All => (0..k_folds).map(validation).max().unwrap_or(0),
    };
    Some(DatasetSizes {
        samples: dataset.len(),
        validation_samples,
    })
}

/// The plan of `config` on `backend`. `dataset` (when it was indexed) caps the decoded-sample
/// cache at what the dataset can fill and validation batches at the validation split.
pub fn plan(config: &Config, backend: BackendChoice, dataset: Option<DatasetSizes>) -> MemoryPlan {
    MemoryPlan::build(&plan_input(config, backend, dataset))
}

/// A data-parallel run's plan: what each rank needs (every rank holds a whole replica, its
/// optimizer state and its own loading pipeline) and the batch an optimizer step averages.
#[derive(Debug, Clone, Serialize)]
pub struct DataParallelPlan {
    /// Ranks (`mpiexec -n N`).
    pub ranks: usize,
    /// Samples per optimizer step over all ranks: `batch_size × accumulate_grad_batches × ranks`.
    pub global_batch: usize,
    /// One rank's peaks (with the gradient all-reduce's buckets when `ranks > 1`); its fields
    /// sit at the top of `vidtrain plan --json`, as for a single process.
    #[serde(flatten)]
    pub per_rank: MemoryPlan,
    /// Host memory of all ranks when they share one machine.
    pub host_peak_bytes_one_machine: u64,
}

/// The plan of `config` trained by `ranks` processes.
pub fn plan_data_parallel(
    config: &Config,
    backend: BackendChoice,
    dataset: Option<DatasetSizes>,
    ranks: usize,
) -> DataParallelPlan {
    let ranks = ranks.max(1);
    let mut per_rank = plan(config, backend, dataset);
    if ranks > 1 {
        // The gradients of one bucket flattened into one tensor, read back to the host, and the
        // all-reduce's send copy: three buffers of up to one bucket (25 MiB of f32).
        let parameters = model_summary(config).params() as u64;
        let bytes = 3 * (parameters * 4).min(25 * 1024 * 1024);
        per_rank.host.push(Component {
            name: "gradient all-reduce buckets (data parallel)".into(),
            bytes,
        });
        per_rank.host_peak_bytes += bytes;
    }
    DataParallelPlan {
        ranks,
        global_batch: config.data.batch_size * config.train.accumulate_grad_batches * ranks,
        host_peak_bytes_one_machine: per_rank.host_peak_bytes * ranks as u64,
        per_rank,
    }
}

impl DataParallelPlan {
    /// The per-rank table, then the ranks' totals and the global batch.
    pub fn table(&self) -> String {
        let mut text = self.per_rank.table();
        if self.ranks > 1 {
            text += &format!(
                "\ndata parallel: {} ranks; the peaks above are per rank (each holds a replica, \
                 its optimizer state and its own pipeline)\n  host, all ranks on one machine \
                 {:>12}\n",
                self.ranks,
                vidtrain_memutil::format_bytes(self.host_peak_bytes_one_machine)
            );
        }
        text += &format!(
            "global batch: {} samples per optimizer step (batch_size × accumulate_grad_batches × \
             {} rank{})\n",
            self.global_batch,
            self.ranks,
            if self.ranks == 1 { "" } else { "s" }
        );
        text
    }
}

/// The model's layer summary for micro-batches of `data.batch_size`.
pub fn model_summary(config: &Config) -> ModelSummary {
    summary_for_batch(config, config.data.batch_size)
}

fn summary_for_batch(config: &Config, batch: usize) -> ModelSummary {
    let data = &config.data;
    ActionModelConfig::from_config(config).summary(InputShape {
        batch,
        frames: data.uniform_temporal_subsample_num,
        image: data.img_size,
    })
}

/// The summary's layers priced at `activation_bytes` per element; `keeping` marks the recomputed
/// and prices their kept inputs.
fn activation_layers(
    summary: &ModelSummary,
    activation_bytes: u64,
    bf16_products: bool,
    keeping: KeptActivations,
    backend: BackendChoice,
) -> Vec<ActivationLayer> {
    let KeptActivations {
        recompute: mode,
        bits,
    } = keeping;
    let clips = summary.clips as u64;
    let mut input_elements = 0u64;
    let mut after_norm_relu = false;
    summary
        .layers
        .iter()
        .map(|layer| {
            let output_elements = layer.output_elements() as u64;
            // On a device cubecl's convolutions compute in half and Burn's fusion runs
            // BatchNorm's cast → normalise → cast chain as one kernel, so no f32 temporary is
            // stored (priced at 4 bytes, lavapipe's fp16 plan of the tiny demo came out at 1.90
            // of the measured device peak). The CPU runs the stem on its own kernels, priced
            // below ([`cpu_stem_temporaries`]).
            let half_stem_step = layer.by_hand && activation_bytes < 4;
            // A Mamba block keeps and makes f32 values whatever the compute dtype.
            let internal_bytes = if layer.f32_internals {
                activation_bytes.max(4)
            } else {
                activation_bytes
            };
            let cpu_stem = (layer.by_hand && backend == BackendChoice::Cpu).then(|| {
                let bytes = (activation_bytes, bf16_products);
                cpu_stem_temporaries(layer, input_elements, bytes)
            });
            // Without autodiff the CPU runs a stem step on the same kernels as the untracked
            // training forward (a convolution's columns, f32 where a half precision computes
            // in f32; BatchNorm + ReLU in place, with the running
            // statistics). Elsewhere a half-precision BatchNorm casts its input to f32.
            let inference_extra = match cpu_stem {
                Some((forward, _)) => forward,
                None => {
                    let f32_input =
                        if half_stem_step && matches!(layer.role, LayerRole::BatchNormRelu) {
                            input_elements * 4
                        } else {
                            0
                        };
                    layer.inference_extra_elements as u64 * internal_bytes + f32_input
                }
            };
            let layer_input = input_elements;
            input_elements = output_elements;
            let temporaries = |elements: usize| elements as u64 * internal_bytes;
            // A stem step differentiated by hand replays only its backward.
            let (forward_extra, backward_extra, replay_peak) = match cpu_stem {
                Some((forward, backward)) => (forward, backward, backward),
                None => (
                    temporaries(layer.forward_extra_elements),
                    temporaries(layer.backward_extra_elements),
                    temporaries(layer.replay_peak_elements),
                ),
            };
            let recomputed =
                layer.by_hand || layer.segment.is_some_and(|kind| kind.recomputed_by(mode));
            // A compressed input: its codes and block ranges, and for BatchNorm + ReLU differentiated
            // by hand the forward's ReLU gate, a bit per output value.
            let norm_relu = matches!(layer.role, LayerRole::BatchNormRelu);
            let gate = if layer.by_hand && norm_relu {
                output_elements / 8
            } else {
                0
            };
            let by_hand_on_cpu = layer.by_hand && backend == BackendChoice::Cpu;
            // On the CPU a convolution after BatchNorm + ReLU keeps nothing: its backward makes
            // its input again, a clip at a time, from that step's kept input.
            let made_again = by_hand_on_cpu && !norm_relu && after_norm_relu;
            after_norm_relu = by_hand_on_cpu && norm_relu;
            let kept_input = if made_again {
                Some(0)
            } else {
                (recomputed && bits < 32).then(|| {
                    vidtrain_model::quantize::kept_bytes(layer_input, activation_bytes, bits) + gate
                })
            };
            // On the CPU a stem step reads its compressed input in pieces (a convolution one
            // clip at a time, BatchNorm + ReLU a row at a time) and BatchNorm + ReLU writes its
            // output over its input; a replay restores its input whole.
            let pieces = kept_input.filter(|_| by_hand_on_cpu);
            let restored_input = pieces.map(|codes| {
                let clip = if norm_relu {
                    0
                } else {
                    layer_input * restored_clip_bytes(activation_bytes, bf16_products)
                        / clips.max(1)
                };
                codes + clip
            });
            let in_place = pieces.is_some() && norm_relu;
            // Kept by autodiff on the CPU, its tracked ops keep codes (`KeptTensor`).
            let saved = match layer.compressed_saved {
                Some(kept) if bits < 32 && !recomputed && backend == BackendChoice::Cpu => {
                    vidtrain_model::quantize::kept_bytes(kept.codes as u64, activation_bytes, bits)
                        + kept.whole as u64 * internal_bytes
                        + kept.gates as u64 / 8
                }
                _ => layer.saved_elements as u64 * internal_bytes,
            };
            ActivationLayer {
                name: layer.name.clone(),
                saved,
                forward_extra,
                backward_extra,
                replay_peak,
                inference_extra,
                output: layer.output_elements() as u64 * activation_bytes,
                // A stem step differentiated by hand keeps only its input and runs its backward
                // from it, as a recomputed layer does (its "replay" is only that backward).
                recomputed,
                kept_input,
                restored_input,
                in_place,
                per_clip: !layer.by_hand && layer.segment == Some(SegmentKind::StemPerClip),
                // `SegmentChain::forward_chain` runs these a clip at a time without autodiff,
                // the seed stem's convolutions included.
                inference_per_clip: layer.segment == Some(SegmentKind::StemPerClip),
            }
        })
        .collect()
}

/// Bytes per value of the input clip a CPU stem convolution restores (or makes again) for its
/// backward: f32 where its products are f32, half values included; the activation's own where
/// they are bf16 (`bf16_products`).
fn restored_clip_bytes(activation_bytes: u64, bf16_products: bool) -> u64 {
    if bf16_products { activation_bytes } else { 4 }
}

/// The temporaries (forward, backward) in bytes of a stem step differentiated by hand on the
/// CPU, by vidtrain's own kernels, measured with `cargo xtask bench plan` (stop 37):
/// - BatchNorm + ReLU (`norm_relu_host`) reads its input where it is stored, writes its output
///   (priced as the output) and its input gradient over the upstream one: nothing more.
/// - A convolution (`conv_gemm`) holds a few MiB of im2col columns and a group's product or
///   column gradient ([`COLUMN_BYTES`] each at most), and in backward its input gradient, made whole
///   unless it reads the data. A half-precision convolution computing in f32 widens its input
///   as it writes the columns and its upstream a group at a time (a group-sized f32 buffer).
/// - A half input gradient is stored in half and summed in f32 over a window of input lines
///   that slides with the groups (`SlidingSums`), priced here at its bound, one clip of f32
///   sums: the window's size depends on kernel and stride, which the layer summary does not
///   carry (the seed model's 224 px bf16 row came out at 1.13 with that bound, stop 56).
///
/// bf16 convolutions multiplying bf16 (`gemm_bf16`, `bf16_products`) make no f32 buffer of
/// their operands: their columns are bf16. (Until stop 39 they were priced as the f32 route: the bf16 step measured
/// about 200 MiB more than its kernels held. That was Burn's cast of the stem's output around
/// the spatial mean, an f64 copy forward and backward, since removed: `mean_dim_f32`.)
///
/// [`COLUMN_BYTES`]: vidtrain_model::layers::conv_gemm::COLUMN_BYTES
fn cpu_stem_temporaries(
    layer: &vidtrain_model::LayerSummary,
    input_elements: u64,
    (activation_bytes, bf16_products): (u64, bool),
) -> (u64, u64) {
    let LayerRole::Conv3d {
        taps,
        channels_in,
        reads_data,
    } = layer.role
    else {
        return (0, 0);
    };
    // A group's columns are at most COLUMN_BYTES and at most one clip's (a small clip's are
    // far less: priced at the bound, the e2e plan test's 96 px stem came out at 1.2).
    let clip_positions: usize = layer.output_shape.iter().skip(2).product();
    let columns = (4 * taps * channels_in * clip_positions)
        .min(vidtrain_model::layers::conv_gemm::COLUMN_BYTES) as u64;
    // The columns and the product (forward) or the columns' gradient (backward); the
    // backend's gemm packs in buffers of its own, small next to them.
    let buffers = 2 * columns;
    let input_gradient = if reads_data { 0 } else { 4 * input_elements };
    if activation_bytes == 4 {
        (buffers, buffers + input_gradient)
    } else if bf16_products {
        let clips = layer.output_shape.first().copied().unwrap_or(1).max(1) as u64;
        let input_gradient = if reads_data {
            0
        } else {
            2 * input_elements + 4 * input_elements / clips
        };
        (buffers, buffers + input_gradient)
    } else {
        // Half values multiplied in f32 are widened as the columns are written and as each
        // group's share of the upstream gradient is read (`ClipValues`, `ClipReader::group_rows`),
        // and outputs and input gradients are stored in half as they are made: forward nothing
        // beyond the columns; backward the input gradient whole in half with its f32 sums (at
        // most a clip, see above), and a group's upstream in f32 (as many positions as the
        // columns, `c_out` rows).
        // (Priced until stop 55 with whole f32 copies of input, output and input gradient, which
        // stops 52–53 removed: the seed model's 224 px bf16 row came out at 1.89× its measured
        // peak; until stop 56 with an f32 clip of the input and of the upstream, which made the
        // seed model's bf16 step at micro-batch 1 heavier than its fp32 step.)
        let clips = layer.output_shape.first().copied().unwrap_or(1).max(1) as u64;
        let input_gradient = if reads_data {
            0
        } else {
            2 * input_elements + 4 * input_elements / clips
        };
        let rows = (taps * channels_in).max(1) as u64;
        let upstream_group =
            columns * layer.output_shape.get(1).copied().unwrap_or(1) as u64 / rows;
        (buffers, buffers + input_gradient + upstream_group)
    }
}

/// The sizes [`plan`] prices.
pub fn plan_input(
    config: &Config,
    backend: BackendChoice,
    dataset: Option<DatasetSizes>,
) -> PlanInput {
    let data = &config.data;
    let summary = model_summary(config);
    let activation_bytes: u64 = match config.trainer.precision {
        Precision::Full => 4,
        Precision::Half | Precision::BHalf => 2,
    };
    // bf16 convolutions on the CPU multiply bf16 where it has a bf16 dot product.
    let bf16_products = config.trainer.precision == Precision::BHalf
        && backend == BackendChoice::Cpu
        && crate::Bf16ProductPath::fastest().is_some();
    let layers = activation_layers(
        &summary,
        activation_bytes,
        bf16_products,
        crate::fit::kept_activations(config),
        backend,
    );
    let validation_batch = match dataset {
        Some(sizes) => config
            .inference_batch_size()
            .min(sizes.validation_samples.max(1)),
        None => config.inference_batch_size(),
    };
    let inference_layers = activation_layers(
        &summary_for_batch(config, validation_batch),
        activation_bytes,
        bf16_products,
        RecomputeMode::None.into(),
        backend,
    );
    let views = config.active_views().len();
    let frames = data.uniform_temporal_subsample_num;
    let video_values = if data.load_rgb {
        views * frames * data.img_size * data.img_size * 3
    } else {
        0
    };
    let keypoint_values = if data.load_kpt {
        views * frames * data.keypoint_indices.len() * 3
    } else {
        0
    };
    let sample_bytes = (video_values + 4 * keypoint_values) as u64;
    let batch_bytes = sample_bytes * data.batch_size as u64;
    // Frames become f32 (the conversion's vector and the tensor made from it), keypoints are
    // moved. On a device only the tensor is device memory; the vector is the host's, freed once
    // uploaded (priced as two device copies, lavapipe's plan of the tiny demo came out at 1.20
    // of the measured device peak in f32 and 1.50 in fp16; `tests/e2e/device.rs`).
    let f32_frame_copies = if backend.on_device() { 1 } else { 2 };
    let input_per_sample = (f32_frame_copies * 4 * video_values + 4 * keypoint_values) as u64;
    let cache_budget = (data.cache_decoded_mib as u64) << 20;
    let decoded_cache_bytes = match dataset {
        Some(sizes) => cache_budget.min(sizes.samples as u64 * video_values as u64),
        None => cache_budget,
    };
    PlanInput {
        parameters: summary.params() as u64,
        largest_layer_parameters: summary
            .layers
            .iter()
            .map(|layer| layer.params as u64)
            .max()
            .unwrap_or(0),
        parameter_bytes: 4,
        optimizer_state_bytes: optimizer_state_bytes(config, &summary),
        optimizer_state: optimizer_state_name(config),
        blockwise_optimizer_step: config.train.optimizer_state != OptimizerStateFormat::F32
            && optimizer_moments(config) > 0,
        clips: summary.clips as u64,
        layers,
        batch_bytes,
        pipeline_batches: (data.prefetch_depth + data.num_workers + 1) as u64,
        input_tensor_bytes: input_per_sample * data.batch_size as u64,
        inference_layers,
        // Validation converts a batch to f32 before the forward, when nothing else is alive;
        // the model then holds the tensor through its first layer.
        inference_input_tensor_bytes: 4
            * (video_values + keypoint_values) as u64
            * validation_batch as u64,
        inference_batch: validation_batch as u64,
        inference_clips: (validation_batch * views) as u64,
        decoded_cache_bytes,
        runtime_bytes: match backend {
            BackendChoice::Cpu => CPU_RUNTIME_BYTES,
            BackendChoice::Cuda => CUDA_RUNTIME_BYTES,
            BackendChoice::Wgpu => WGPU_RUNTIME_BYTES,
        },
        home: if backend.on_device() {
            ActivationHome::Device
        } else {
            ActivationHome::Host
        },
        allocator_slack_percent: u64::from(config.trainer.allocator_slack_percent),
    }
}

/// Moments the optimizer keeps per parameter: Adam's two, SGD's momentum buffer (none without
/// momentum).
fn optimizer_moments(config: &Config) -> u64 {
    match config.train.optimizer {
        OptimizerKind::Adam | OptimizerKind::Adamw => 2,
        OptimizerKind::Sgd if config.train.momentum > 0.0 => 1,
        OptimizerKind::Sgd => 0,
    }
}

/// The optimizer state's bytes, layer by layer in `train.optimizer_state` (a layer under the
/// quantization threshold stays f32, as the optimizer keeps small tensors).
fn optimizer_state_bytes(config: &Config, summary: &ModelSummary) -> u64 {
    let format = config.train.optimizer_state;
    let per_moment: u64 = summary
        .layers
        .iter()
        .map(|layer| crate::optimizer_state::moment_bytes(format, layer.params))
        .sum();
    optimizer_moments(config) * per_moment
}

fn optimizer_state_name(config: &Config) -> String {
    let what = match config.train.optimizer {
        OptimizerKind::Adam | OptimizerKind::Adamw => "Adam moments",
        OptimizerKind::Sgd => "SGD momentum",
    };
    format!("{what}, {}", config.train.optimizer_state.name())
}

mod fit_search;
pub use fit_search::{Fit, NoFit, fit};

#[cfg(test)]
mod tests;
