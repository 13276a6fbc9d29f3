//! `vidtrain bench-model`: the training step alone (the one `vidtrain train` runs: its optimizer,
//! schedule, loss, recompute, loss scaling and clipping), on random batches without a data
//! loader, row by row (precision, micro-batch × accumulation, recompute, clip size) — the numbers
//! to put next to PyTorch's (`bench/pytorch_reference.py` runs the same rows). Per row: samples/s over the timed
//! steps (device synced around them), the time of the first optimizer step (kernel compilation
//! and autotuning on CUDA), peak device memory in use and reserved, peak host RSS, final loss.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use vidtrain_config::{Backbone, Config, Precision, RecomputeMode};
use vidtrain_data::{Batch, SampleShape};
use vidtrain_memutil::MemorySampler;
use vidtrain_model::ActionModel;

use crate::distributed::World;
use crate::fit::loss::training_loss;
use crate::fit::optimizer::TrainingOptimizer;
use crate::fit::step::{Learner, MemoryProbe};
use crate::precision::LossScaler;
use crate::{BackendChoice, Error, Result};

/// One configuration to time.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Short name, e.g. `bf16 b1x4 recompute`.
    pub name: String,
    /// Model.
    pub backbone: Backbone,
    /// Precision.
    pub precision: Precision,
    /// Samples per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
    /// Activation recompute.
    pub recompute: RecomputeMode,
    /// Frames per clip.
    pub frames: usize,
    /// Frame side in pixels.
    pub image: usize,
    /// `model.activation_bits`, when the row sets it (otherwise the config's).
    pub activation_bits: Option<u32>,
}

/// What one row measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The row.
    pub row: BenchRow,
    /// Samples per second over the timed steps.
    pub samples_per_s: Option<f64>,
    /// Seconds of the first optimizer step (compilation, autotuning, first allocations).
    pub first_step_s: Option<f64>,
    /// Peak device bytes in use (read after each micro-batch's forward, where the graph is
    /// largest without recompute).
    pub peak_device_in_use_bytes: Option<u64>,
    /// Peak device bytes reserved by the memory pools.
    pub peak_device_reserved_bytes: Option<u64>,
    /// Peak used bytes of the whole device as the driver reports them (context and kernels
    /// included; compare with `nvidia-smi`).
    pub peak_device_driver_used_bytes: Option<u64>,
    /// Peak host RSS of the process during the row.
    pub peak_host_rss_bytes: Option<u64>,
    /// Loss of the last step.
    pub final_loss: Option<f32>,
    /// CPU seconds (user, system) of the whole process over the timed steps.
    pub timed_cpu_s: Option<(f64, f64)>,
    /// Share of that CPU time spent in the kernel (page faults, zeroing and unmapping memory).
    pub kernel_share: Option<f64>,
    /// The allocator's reuse pool over the row (cached bytes are part of the host RSS).
    pub pool: vidtrain_memutil::reuse_pool::PoolStats,
    /// Why the row failed, if it did.
    pub error: Option<String>,
}

/// The rows of issue 7 for `backbone` at the seed's (transformer) or ViViT-S (vivit) size, and
/// the two model sizes; `tiny` shrinks everything so that the harness runs on a CPU in seconds.
pub fn standard_rows(backbone: Backbone, tiny: bool) -> Vec<BenchRow> {
    let (frames, image) = match (backbone, tiny) {
        (_, true) => (4, 32),
        (Backbone::Transformer, false) => (8, 224),
        (Backbone::Vivit | Backbone::Mamba, false) => (16, 224),
        // torchvision's R3D clips; ST-GCN reads 64 frames of keypoints (`image` unused).
        (Backbone::Resnet3d, false) => (16, 112),
        (Backbone::Stgcn, false) => (64, 32),
    };
    let row = |name: &str, precision, micro_batch, accumulate, recompute, frames, image| BenchRow {
        name: name.to_string(),
        backbone,
        precision,
        micro_batch,
        accumulate,
        recompute,
        frames,
        image,
        activation_bits: Option::None,
    };
    use Precision::{BHalf, Full, Half};
    use RecomputeMode::{All, None};
    let small_image = if tiny { 16 } else { 112 };
    vec![
        row("fp32 b4", Full, 4, 1, None, frames, image),
        row("bf16 b4", BHalf, 4, 1, None, frames, image),
        row("fp16 b4", Half, 4, 1, None, frames, image),
        row("fp32 b1x4", Full, 1, 4, None, frames, image),
        row("bf16 b1x4", BHalf, 1, 4, None, frames, image),
        row("bf16 b1x4 recompute", BHalf, 1, 4, All, frames, image),
        row(
            "bf16 b1x4 recompute 112px",
            BHalf,
            1,
            4,
            All,
            8,
            small_image,
        ),
        // The least memory vidtrain trains the model in at micro-batch 4 with gradients worth
        // having: everything recomputed, the kept activations in 4 bits, in the precision that
        // holds less (`lowest_precision`); PyTorch's side is its leanest CPU set-up, bf16
        // autocast with checkpointing.
        BenchRow {
            activation_bits: Some(4),
            ..row(
                "lowest b4",
                lowest_precision(backbone),
                4,
                1,
                All,
                frames,
                image,
            )
        },
    ]
}

/// The precision the "lowest" row trains `backbone` in: bf16 where the CPU multiplies bf16
/// (measured at stop 45, everything recomputed, 4-bit activations, micro-batch 4: the seed model
/// 368 MiB against 486 in f32, r3d_18 860 against 1029, ST-GCN 130 against 164, each faster),
/// f32 for ViViT (419 MiB in bf16 against 406) and where bf16 computes through f32 copies (its
/// step then held more: stop 37).
fn lowest_precision(backbone: Backbone) -> Precision {
    if backbone == Backbone::Vivit || crate::Bf16ProductPath::fastest().is_none() {
        Precision::Full
    } else {
        Precision::BHalf
    }
}

/// The model configuration of a row: the seed's transformer (D 256, 4 layers, 4 heads, FF 1024)
/// or ViViT-S (D 384, 12 layers, 6 heads, FF 1536, 2×16×16 tubelets); one view, 9 classes.
pub fn row_config(base: &Config, row: &BenchRow, tiny: bool) -> Config {
    let mut config = base.clone();
    config.model.backbone = row.backbone;
    let (dim, layers, heads, ff) = match (row.backbone, tiny) {
        (_, true) => (32, 2, 2, 64),
        (Backbone::Transformer, false) => (256, 4, 4, 1024),
        (Backbone::Vivit, false) => (384, 12, 6, 1536),
        // The 3-D ResNet, ST-GCN and VideoMamba have sizes of their own (`model.resnet_*`,
        // `model.stgcn_*`, `model.mamba_*`; VideoMamba-Ti by default).
        (Backbone::Resnet3d | Backbone::Stgcn | Backbone::Mamba, false) => (256, 4, 4, 1024),
    };
    if tiny {
        config.model.resnet_width = 8;
        config.model.stgcn_width = 8;
        config.model.mamba_dim = 32;
        config.model.mamba_layers = 2;
    }
    config.model.transformer_dim = dim;
    config.model.transformer_layers = layers;
    config.model.transformer_heads = heads;
    config.model.transformer_ff_dim = ff;
    config.model.tubelet_size = if tiny { [2, 8, 8] } else { [2, 16, 16] };
    config.model.recompute = row.recompute;
    if let Some(bits) = row.activation_bits {
        config.model.activation_bits = bits;
    }
    config.model.use_gradient_checkpointing = false;
    // ST-GCN reads keypoints only, every other backbone video only.
    let keypoints = row.backbone == Backbone::Stgcn;
    config.model.input_type = if keypoints {
        vidtrain_config::InputType::Kpt
    } else {
        vidtrain_config::InputType::Rgb
    };
    config.data.load_kpt = keypoints;
    config.data.load_rgb = !keypoints;
    config.train.view = vidtrain_config::ViewMode::Single;
    config.data.uniform_temporal_subsample_num = row.frames;
    config.data.img_size = row.image;
    config.data.batch_size = row.micro_batch;
    config.train.accumulate_grad_batches = row.accumulate;
    config.trainer.precision = row.precision;
    config
}

/// Runs every row on `backend`: `warmup` optimizer steps (the first one timed alone), then
/// `steps` timed ones. A failing row is reported with its error; the others still run.
pub fn bench_rows(
    base: &Config,
    rows: &[BenchRow],
    backend: BackendChoice,
    warmup: usize,
    steps: usize,
    tiny: bool,
) -> Vec<BenchResult> {
    crate::device::memory::persist_kernel_caches(backend);
    crate::configure_compute_threads(base);
    rows.iter()
        .map(|row| {
            let config = row_config(base, row, tiny);
            let outcome = if !backend.built() {
                Err(Error::Unsupported {
                    key: "trainer.accelerator".into(),
                    message: format!("this vidtrain was built without {}", backend.name()),
                })
            } else {
                on_backend!(backend, |B, device| {
                    bench_row::<burn::backend::Autodiff<B>>(
                        &config, row, &device, backend, warmup, steps,
                    )
                })
            };
            outcome.unwrap_or_else(|error| BenchResult {
                row: row.clone(),
                samples_per_s: None,
                first_step_s: None,
                peak_device_in_use_bytes: None,
                peak_device_reserved_bytes: None,
                peak_device_driver_used_bytes: None,
                peak_host_rss_bytes: None,
                final_loss: None,
                timed_cpu_s: None,
                kernel_share: None,
                pool: vidtrain_memutil::reuse_pool::stats(),
                error: Some(error.to_string()),
            })
        })
        .collect()
}

/// The shape of one sample of `row` as the loader would deliver it.
fn sample_shape(config: &Config, row: &BenchRow) -> SampleShape {
    let input = config.model.input_type;
    SampleShape {
        views: 1,
        frames: row.frames,
        img_size: row.image,
        joints: if input == vidtrain_config::InputType::Rgb {
            0
        } else {
            config.data.keypoint_indices.len()
        },
        rgb: input != vidtrain_config::InputType::Kpt,
    }
}

/// Times the step training runs: `fit`'s [`Learner`] with the configured optimizer
/// (`train.optimizer`), learning-rate schedule and warm-up, loss (`train.label_smoothing`),
/// activation recompute, fp16 loss scaling and gradient clipping
/// (`trainer.gradient_clip_val`), on host batches converted as the loader's are.
fn bench_row<B: AutodiffBackend>(
    config: &Config,
    row: &BenchRow,
    device: &B::Device,
    backend: BackendChoice,
    warmup: usize,
    steps: usize,
) -> Result<BenchResult> {
    config.validate()?;
    vidtrain_memutil::reuse_pool::release_cached();
    vidtrain_memutil::reuse_pool::reset_peak();
    vidtrain_memutil::reset_peak_rss();
    B::seed(device, 42);
    let model: ActionModel<B> = crate::build_model(config, device);
    let mut learner = Learner::new(
        model,
        TrainingOptimizer::from_config(config),
        training_loss::<B>(config, None, device),
        crate::fit::kept_activations(config),
    );
    let mut scaler = LossScaler::new(config.trainer.precision);
    let memory = MemorySampler::start(std::time::Duration::from_millis(50));
    let probe = MemoryProbe {
        memory: &memory,
        backend,
    };
    let world = World::default();
    let sync = |device: &B::Device| {
        B::sync(device).map_err(|error| Error::Unsupported {
            key: "trainer.accelerator".into(),
            message: format!("the device failed: {error:?}"),
        })
    };

    let shape = sample_shape(config, row);
    let classes = config.model.model_class_num;
    let total_steps = warmup.max(1) + steps;
    let mut first_step_s = None;
    let mut final_loss = None;
    let mut timed = None;
    let mut cpu_at_start = None;
    for step in 0..total_steps {
        if step == warmup.max(1) {
            sync(device)?;
            timed = Some(Instant::now());
            cpu_at_start = vidtrain_memutil::process_cpu_seconds();
        }
        let started = Instant::now();
        let mut step_loss = 0.0f32;
        for micro in 0..row.accumulate {
            let seed = (step * row.accumulate + micro) as u64;
            // Random batches in the loader's host layout, so that the timed step includes the
            // host → device copy and conversion a real step does.
            let mut batch = Batch::random(shape, row.micro_batch, classes, seed);
            let weight = scaler.scale / row.accumulate as f64;
            let loss = learner.micro_batch(&mut batch, weight, seed, &probe, device);
            step_loss += loss / row.accumulate as f32;
        }
        let lr = crate::fit::optimizer::learning_rate(config, step, total_steps);
        learner.optimizer_step(
            lr,
            &mut scaler,
            config.trainer.gradient_clip_val,
            &world,
            device,
        );
        sync(device)?;
        crate::fit::sample_device(&memory, backend);
        if step == 0 {
            first_step_s = Some(started.elapsed().as_secs_f64());
        }
        final_loss = Some(step_loss);
    }
    let samples = (steps * row.micro_batch * row.accumulate) as f64;
    let samples_per_s = timed.map(|started| samples / started.elapsed().as_secs_f64());
    let timed_cpu_s = cpu_at_start
        .zip(vidtrain_memutil::process_cpu_seconds())
        .map(|((user0, sys0), (user1, sys1))| (user1 - user0, sys1 - sys0));
    let kernel_share = timed_cpu_s
        .filter(|(user, sys)| user + sys > 0.0)
        .map(|(user, sys)| sys / (user + sys));
    let report = memory.finish();
    Ok(BenchResult {
        row: row.clone(),
        samples_per_s: if steps > 0 { samples_per_s } else { None },
        first_step_s,
        peak_device_in_use_bytes: report.peak_device_in_use_bytes,
        peak_device_reserved_bytes: report.peak_device_reserved_bytes,
        peak_device_driver_used_bytes: report.peak_device_driver_used_bytes,
        peak_host_rss_bytes: vidtrain_memutil::peak_rss_bytes(),
        final_loss,
        timed_cpu_s: if steps > 0 { timed_cpu_s } else { None },
        kernel_share: if steps > 0 { kernel_share } else { None },
        pool: vidtrain_memutil::reuse_pool::stats(),
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_rows_of_every_precision_train_on_the_cpu() {
        let base = Config::default();
        for backbone in [Backbone::Transformer, Backbone::Vivit] {
            let rows = standard_rows(backbone, true);
            let results = bench_rows(&base, &rows, BackendChoice::Cpu, 1, 1, true);
            for result in &results {
                assert!(result.error.is_none(), "{:?}", result.error);
                assert!(result.final_loss.is_some_and(f32::is_finite), "{result:?}");
                assert!(result.samples_per_s.is_some_and(|s| s > 0.0));
                assert!(result.peak_device_in_use_bytes.is_none());
            }
        }
    }
}
