//! The memory plan's unit tests: what each switch does to the plan, and what `--fit` proposes.

use super::*;

/// The seed's model at 224 px, batch 4, one view, validating 4 samples at a time.
fn seed_config() -> Config {
    let mut config = Config::default();
    config.data.batch_size = 4;
    config.train.accumulate_grad_batches = 1;
    config.train.view = vidtrain_config::ViewMode::Single;
    config.train.video_batch_size = vidtrain_config::InferenceBatch::Samples(4);
    config
}

/// Issue 29 item 5: validation, `eval` and `predict` keep no gradients, so at the default
/// (`train.video_batch_size = "auto"`: a training micro-batch) their planned activations
/// never exceed the training step's, whatever the micro-batch, recompute or backbone.
#[test]
fn by_default_validation_plans_no_more_than_the_training_step() {
    use vidtrain_config::Backbone;
    use vidtrain_memutil::plan::{activation_peak, inference_peak};
    for backbone in [Backbone::Transformer, Backbone::Vivit, Backbone::Resnet3d] {
        for batch_size in [1, 4] {
            for checkpoint in [RecomputeMode::None, RecomputeMode::All] {
                let mut config = Config::default();
                config.model.backbone = backbone;
                config.model.recompute = checkpoint;
                config.data.batch_size = batch_size;
                let input = plan_input(&config, BackendChoice::Cpu, None);
                let training =
                    activation_peak(&input.layers, input.clips).0 + input.input_tensor_bytes;
                let validation = inference_peak(
                    &input.inference_layers,
                    input.inference_clips,
                    input.inference_input_tensor_bytes,
                )
                .0;
                assert!(
                    validation <= training,
                    "{backbone:?} batch {batch_size} {checkpoint:?}: validation {validation} \
                     > training {training}"
                );
            }
        }
    }
}

#[test]
fn recompute_lowers_the_planned_peak_of_vivit_and_the_seed_stem_is_lean_without_it() {
    let mut config = seed_config();
    let none = plan(&config, BackendChoice::Cpu, None).host_peak_bytes;
    config.model.recompute = RecomputeMode::All;
    let all = plan(&config, BackendChoice::Cpu, None).host_peak_bytes;
    // The stem keeps only its steps' inputs in every mode (differentiated by hand).
    assert!(
        all <= none && all * 10 > none * 9,
        "all {all} vs none {none}"
    );
    config.model.backbone = vidtrain_config::Backbone::Vivit;
    let all = plan(&config, BackendChoice::Cpu, None).host_peak_bytes;
    config.model.recompute = RecomputeMode::None;
    let none = plan(&config, BackendChoice::Cpu, None).host_peak_bytes;
    assert!(all * 10 < none * 7, "vivit: all {all} vs none {none}");
}

#[test]
fn fit_prefers_the_precision_measured_faster_on_each_backend() {
    let config = seed_config();
    let roomy = Some(100_000u64 << 20);
    let cpu = fit(&config, BackendChoice::Cpu, None, None, roomy).unwrap();
    // The seed model's stem multiplies bf16 on AVX512_BF16 (faster there); elsewhere 32.
    let cpu_faster = match crate::Bf16ProductPath::fastest() {
        Some(_) => Precision::BHalf,
        None => Precision::Full,
    };
    assert_eq!(cpu.precision, cpu_faster, "{:?}", cpu.overrides);
    // ViViT and the 3-D ResNet as well (stop 44), and ST-GCN (stop 43).
    for backbone in [
        vidtrain_config::Backbone::Vivit,
        vidtrain_config::Backbone::Resnet3d,
    ] {
        let mut other = config.clone();
        other.model.backbone = backbone;
        let cpu = fit(&other, BackendChoice::Cpu, None, None, roomy).unwrap();
        assert_eq!(
            cpu.precision, cpu_faster,
            "{backbone:?} {:?}",
            cpu.overrides
        );
    }
    // Mamba is not measured: 32 first.
    let mut mamba = config.clone();
    mamba.model.backbone = vidtrain_config::Backbone::Mamba;
    let cpu = fit(&mamba, BackendChoice::Cpu, None, None, roomy).unwrap();
    assert_eq!(cpu.precision, Precision::Full, "{:?}", cpu.overrides);
    let mut stgcn = config.clone();
    stgcn.model.backbone = vidtrain_config::Backbone::Stgcn;
    stgcn.model.input_type = vidtrain_config::InputType::Kpt;
    stgcn.data.load_kpt = true;
    stgcn.data.load_rgb = false;
    let cpu = fit(&stgcn, BackendChoice::Cpu, None, None, roomy).unwrap();
    assert_eq!(cpu.precision, cpu_faster, "{:?}", cpu.overrides);
    let gpu = fit(&config, BackendChoice::Cuda, None, roomy, roomy).unwrap();
    assert_eq!(gpu.precision, Precision::BHalf, "{:?}", gpu.overrides);
}

#[test]
fn fit_never_proposes_settings_its_own_plan_says_exceed_the_budget() {
    let config = seed_config();
    for budget_mib in [600u64, 1000, 1500, 2500, 4000, 100_000] {
        let budget = budget_mib << 20;
        match fit(&config, BackendChoice::Cpu, None, None, Some(budget)) {
            Ok(fit) => {
                assert!(
                    fit.plan.host_peak_bytes <= budget,
                    "{budget_mib} MiB: {fit:?}"
                );
                assert_eq!(fit.batch_size * fit.accumulate_grad_batches, 4);
                // The same settings planned again agree.
                let mut chosen = config.clone();
                chosen.data.batch_size = fit.batch_size;
                chosen.train.accumulate_grad_batches = fit.accumulate_grad_batches;
                chosen.model.recompute = fit.checkpoint;
                chosen.trainer.precision = fit.precision;
                chosen.train.optimizer_state = fit.optimizer_state;
                chosen.model.activation_bits = fit.activation_bits;
                assert_eq!(
                    plan(&chosen, BackendChoice::Cpu, None).host_peak_bytes,
                    fit.plan.host_peak_bytes
                );
            }
            Err(no_fit) => {
                assert!(no_fit.smallest.host_peak_bytes > budget);
                assert!(
                    no_fit.message.contains("nothing fits"),
                    "{}",
                    no_fit.message
                );
            }
        }
    }
    // A generous budget keeps the largest micro-batch, no recompute and f32 state.
    let fit = fit(&config, BackendChoice::Cpu, None, None, Some(100 << 30)).unwrap();
    assert_eq!(
        (fit.batch_size, fit.checkpoint, fit.optimizer_state),
        (4, RecomputeMode::None, OptimizerStateFormat::F32)
    );
}

/// r3d_18 (33 M parameters): between the plan with f32 Adam state and the one with 8-bit
/// state, `--fit` keeps micro-batch 4 without recompute and stores the moments in 8 bits.
#[test]
fn fit_turns_to_8bit_optimizer_state_before_recompute_or_a_smaller_micro_batch() {
    let mut config = seed_config();
    config.model.backbone = vidtrain_config::Backbone::Resnet3d;
    config.model.resnet_depth = 18;
    config.data.img_size = 112;
    // One precision asked (with 32 asked, `--fit` would try bf16 first on a CPU with
    // AVX512_BF16, whose smaller activations fit with f32 state here).
    config.trainer.precision = Precision::BHalf;
    let f32_state = plan(&config, BackendChoice::Cpu, None).host_peak_bytes;
    let mut eight_bit = config.clone();
    eight_bit.train.optimizer_state = OptimizerStateFormat::Blockwise8;
    let eight_bit = plan(&eight_bit, BackendChoice::Cpu, None).host_peak_bytes;
    assert!(eight_bit < f32_state);
    let chosen = fit(
        &config,
        BackendChoice::Cpu,
        None,
        None,
        Some((f32_state + eight_bit) / 2),
    )
    .unwrap();
    assert_eq!(
        (chosen.batch_size, chosen.checkpoint, chosen.optimizer_state),
        (4, RecomputeMode::None, OptimizerStateFormat::Blockwise8),
        "{:?}",
        chosen.overrides
    );
    assert!(
        chosen
            .overrides
            .contains(&"train.optimizer_state=8bit".to_string())
    );
}

#[test]
fn fit_prefers_a_larger_micro_batch_with_recompute_to_a_smaller_one_without() {
    let mut config = seed_config();
    config.model.backbone = vidtrain_config::Backbone::Vivit;
    // One precision asked (with 32 asked, `--fit` would try bf16 first on a CPU with
    // AVX512_BF16, which fits without recompute here).
    config.trainer.precision = Precision::BHalf;
    let none_at_4 = plan(&config, BackendChoice::Cpu, None).host_peak_bytes;
    let mut all_at_4 = config.clone();
    all_at_4.model.recompute = RecomputeMode::All;
    let all_at_4 = plan(&all_at_4, BackendChoice::Cpu, None).host_peak_bytes;
    // A budget between the two: micro-batch 4 with recompute.
    let budget = (none_at_4 + all_at_4) / 2;
    let chosen = fit(&config, BackendChoice::Cpu, None, None, Some(budget)).unwrap();
    assert_eq!(chosen.batch_size, 4);
    assert_ne!(chosen.checkpoint, RecomputeMode::None);
}

/// `model.activation_bits` shrinks the planned training peak of the seed model (whose stem's
/// inputs are kept outside Burn's graph) step by step, and `--fit` compresses only where
/// recompute and 8-bit optimizer state at the same micro-batch do not fit: 16 or 8 bits before a
/// smaller micro-batch, and says so in its overrides; 4 bits only in a last round.
#[test]
fn fit_compresses_kept_activations_only_after_recompute_and_8bit_state() {
    let mut config = seed_config();
    config.model.transformer_dim = 256;
    config.data.cache_decoded_mib = 0;
    config.trainer.precision = Precision::Full;
    // `--fit` tries bf16 before 32 where this CPU multiplies bf16 (then bf16 is what it
    // compresses first).
    let first_precision = if super::fit_search::bf16_is_faster_on_this_cpu(&config) {
        Precision::BHalf
    } else {
        Precision::Full
    };
    let planned = |precision: Precision, bits: u32, mode: RecomputeMode| {
        let mut candidate = config.clone();
        candidate.trainer.precision = precision;
        candidate.model.activation_bits = bits;
        candidate.model.recompute = mode;
        candidate.train.optimizer_state = OptimizerStateFormat::Blockwise8;
        plan(&candidate, BackendChoice::Cpu, None).host_peak_bytes
    };
    // In f32 every width is smaller than the one above it (in bf16, 16 bits saves nothing:
    // the values already take 2 bytes).
    let widths = [32, 16, 8, 4, 2].map(|bits| planned(Precision::Full, bits, RecomputeMode::All));
    assert!(
        widths.windows(2).all(|pair| pair[1] < pair[0]),
        "{widths:?}"
    );
    let peak = |bits: u32, mode: RecomputeMode| planned(first_precision, bits, mode);
    let all = peak(32, RecomputeMode::All);
    // Between all-recompute whole and all-recompute in 8 bits: micro-batch 4, compressed.
    let budget = (all + peak(8, RecomputeMode::All)) / 2;
    let chosen = fit(&config, BackendChoice::Cpu, None, None, Some(budget)).unwrap();
    assert_eq!(chosen.batch_size, 4, "{:?}", chosen.overrides);
    assert!(
        [16, 8].contains(&chosen.activation_bits),
        "{:?}",
        chosen.overrides
    );
    assert!(
        chosen
            .overrides
            .contains(&format!("model.activation_bits={}", chosen.activation_bits))
    );
    // A roomy budget compresses nothing.
    let roomy = fit(&config, BackendChoice::Cpu, None, None, Some(100 << 30)).unwrap();
    assert_eq!(roomy.activation_bits, 32);
}
