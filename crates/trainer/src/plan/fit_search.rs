//! `--fit`: the fastest settings whose memory plan fits a budget, searched over micro-batch,
//! precision, recompute, optimizer state and kept-activation bits.

use serde::Serialize;
use vidtrain_config::{Config, OptimizerStateFormat, Precision, RecomputeMode};
use vidtrain_memutil::plan::MemoryPlan;

use super::{DatasetSizes, largest_component, plan};
use crate::BackendChoice;

/// The settings `--fit` chose, with their plan.
#[derive(Debug, Clone, Serialize)]
pub struct Fit {
    /// Overrides to apply, `key=value`.
    pub overrides: Vec<String>,
    /// `data.batch_size` chosen.
    pub batch_size: usize,
    /// `train.accumulate_grad_batches` chosen.
    pub accumulate_grad_batches: usize,
    /// `model.checkpoint` chosen.
    pub checkpoint: RecomputeMode,
    /// `trainer.precision` chosen.
    pub precision: Precision,
    /// `train.optimizer_state` chosen.
    pub optimizer_state: OptimizerStateFormat,
    /// `model.activation_bits` chosen.
    pub activation_bits: u32,
    /// The plan of the chosen settings.
    pub plan: MemoryPlan,
}

/// Why nothing fits.
#[derive(Debug, Clone, Serialize)]
pub struct NoFit {
    /// The smallest plan tried (micro-batch 1, everything recomputed, the lowest precision).
    pub smallest: MemoryPlan,
    /// What to say.
    pub message: String,
}

/// Whether bf16 trains faster than 32 on this CPU, as measured (`cargo xtask bench cpu`, stop
/// 44, at micro-batch 4 and at micro-batch 1 × 4): on a CPU with AVX512_BF16
/// (`vidtrain_model::gemm_bf16`), the seed model's RGB stem (bf16 6.2 vs fp32 4.0 samples/s at
/// b4, 5.6 vs 3.7 at b1×4), ViViT (10.1 vs 8.3, 8.4 vs 7.3), the 3-D ResNet (1.79 vs 1.20, 1.26
/// vs 1.21; 1.49 vs 1.11 in the stop's first sitting) and ST-GCN (14.3 vs 11.2, 13.2 vs 11.4).
/// Until stop 43 ViViT and the 3-D ResNet read either side of 32 at b1×4 from one sitting to
/// the next. Mamba and the keypoint transformer are not measured.
pub(super) fn bf16_is_faster_on_this_cpu(config: &Config) -> bool {
    use vidtrain_config::{Backbone, InputType};
    let measured_faster = match config.model.backbone {
        Backbone::Transformer => config.model.input_type != InputType::Kpt,
        Backbone::Vivit | Backbone::Resnet3d | Backbone::Stgcn => true,
        Backbone::Mamba => false,
    };
    measured_faster && crate::Bf16ProductPath::fastest().is_some()
}

/// The fastest settings whose plan fits `device_budget` (the GPU; ignored on the CPU backend)
/// and `host_budget`: the largest micro-batch that divides the effective batch
/// (`batch_size × accumulate_grad_batches` stays what the config asks), then the precision
/// measured faster on the backend (32 on the CPU, bf16 on a GPU), then the least recompute,
/// then the configured optimizer state before 8-bit state (which costs neither speed nor
/// measurable accuracy here, so it comes before any recompute or smaller micro-batch). Kept
/// activations are compressed (`model.activation_bits` 16, then 8, then 4) only where nothing
/// at the micro-batch and precision fits with them whole, recompute included: recompute costs
/// time, compression a little accuracy.
pub fn fit(
    config: &Config,
    backend: BackendChoice,
    dataset: Option<DatasetSizes>,
    device_budget: Option<u64>,
    host_budget: Option<u64>,
) -> Result<Fit, NoFit> {
    let effective_batch = config.data.batch_size * config.train.accumulate_grad_batches;
    // Both backends have bf16 (burn-flex on the CPU, CUDA); the measured faster one first. On a
    // GPU that is bf16 (tensor cores), so 32 only when bf16 does not fit either. On the CPU it is
    // 32 (`cargo xtask bench cpu`, seed model b4 on a CPU without AVX512_BF16: fp32 1.18, bf16
    // 0.96 samples/s), except where `bf16_is_faster_on_this_cpu` measured otherwise (the
    // seed model, ViViT, the 3-D ResNet and ST-GCN on a CPU with AVX512_BF16, where vidtrain
    // multiplies in bf16).
    // wgpu has no bf16 (and f16 only on some adapters): what was asked.
    let precisions: Vec<Precision> = match (config.trainer.precision, backend) {
        (Precision::Full, BackendChoice::Cpu) if bf16_is_faster_on_this_cpu(config) => {
            vec![Precision::BHalf, Precision::Full]
        }
        (Precision::Full, BackendChoice::Cpu) => vec![Precision::Full, Precision::BHalf],
        (Precision::Full, BackendChoice::Cuda) => vec![Precision::BHalf, Precision::Full],
        (asked, _) => vec![asked],
    };
    let modes = [
        RecomputeMode::None,
        RecomputeMode::Encoder,
        RecomputeMode::Stem,
        RecomputeMode::All,
    ];
    // 2 bits is never chosen for the user: its gradients are mostly noise (docs/memory-guide.md).
    let mut batch_sizes: Vec<usize> = (1..=effective_batch)
        .filter(|size| effective_batch.is_multiple_of(*size))
        .collect();
    batch_sizes.reverse();
    // Tiers tried one after the other over every micro-batch: whole or near-lossless widths
    // first, 4 bits only when nothing else fits at micro-batch 1.
    let tiers: Vec<Vec<u32>> = match config.model.activation_bits {
        32 => vec![vec![32, 16, 8], vec![4]],
        asked => vec![vec![asked]],
    };
    let states: Vec<OptimizerStateFormat> = match config.train.optimizer_state {
        OptimizerStateFormat::Blockwise8 => vec![OptimizerStateFormat::Blockwise8],
        asked => vec![asked, OptimizerStateFormat::Blockwise8],
    };
    // Per tier, micro-batch and precision, in order: the width, then the recompute mode, then
    // the optimizer state.
    let mut candidates = Vec::new();
    for widths in &tiers {
        for &batch_size in &batch_sizes {
            for &precision in &precisions {
                for &bits in widths {
                    for mode in modes {
                        for &state in &states {
                            candidates.push((batch_size, precision, bits, mode, state));
                        }
                    }
                }
            }
        }
    }
    let fits = |plan: &MemoryPlan| {
        let device_ok = !backend.on_device()
            || device_budget.is_none_or(|budget| plan.device_peak_bytes <= budget);
        // On the CPU backend "VRAM" means nothing: the activations are host memory.
        let host_budget = if backend.on_device() {
            host_budget
        } else {
            host_budget.or(device_budget)
        };
        device_ok && host_budget.is_none_or(|budget| plan.host_peak_bytes <= budget)
    };
    let mut smallest = None;
    for (batch_size, precision, bits, mode, state) in candidates {
        let mut candidate = config.clone();
        candidate.data.batch_size = batch_size;
        candidate.train.accumulate_grad_batches = effective_batch / batch_size;
        candidate.model.use_gradient_checkpointing = false;
        candidate.model.recompute = mode;
        candidate.trainer.precision = precision;
        candidate.train.optimizer_state = state;
        candidate.model.activation_bits = bits;
        let plan = plan(&candidate, backend, dataset);
        if fits(&plan) {
            let overrides = vec![
                format!("data.batch_size={batch_size}"),
                format!(
                    "train.accumulate_grad_batches={}",
                    effective_batch / batch_size
                ),
                format!("model.checkpoint={}", mode.as_str()),
                "model.use_gradient_checkpointing=false".to_string(),
                format!("trainer.precision={precision}"),
                format!("train.optimizer_state={}", state.name()),
                format!("model.activation_bits={bits}"),
            ];
            return Ok(Fit {
                overrides,
                batch_size,
                accumulate_grad_batches: effective_batch / batch_size,
                checkpoint: mode,
                precision,
                optimizer_state: state,
                activation_bits: bits,
                plan,
            });
        }
        smallest = Some(plan);
    }
    let smallest = smallest.expect("at least one candidate was planned");
    let device_over = device_budget.is_some_and(|b| smallest.device_peak_bytes > b);
    let (home, budget, components) = if !backend.on_device() {
        ("host", host_budget.or(device_budget), &smallest.host)
    } else if device_over {
        ("device", device_budget, &smallest.device)
    } else {
        ("host", host_budget, &smallest.host)
    };
    let largest = largest_component(components);
    let message = format!(
        "nothing fits in {} of {home} memory: even micro-batch 1 with every layer recomputed \
         and kept in the fewest bits --fit uses needs {}; its largest part is {largest}. Lower data.img_size or \
         data.uniform_temporal_subsample_num, use a smaller model, or free memory",
        budget.map_or_else(|| "?".into(), vidtrain_memutil::format_bytes),
        vidtrain_memutil::format_bytes(match home {
            "device" => smallest.device_peak_bytes,
            _ => smallest.host_peak_bytes,
        })
    );
    Err(NoFit { smallest, message })
}
