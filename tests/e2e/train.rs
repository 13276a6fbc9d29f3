//! `vidtrain demo-data` and `vidtrain train`: the run directory contract, the demo's accuracy,
//! half precision on the CPU, and clear failures (ffmpeg missing).

use std::path::Path;

use crate::{assert_clean_failure, scratch, stderr, vidtrain, vidtrain_with};

/// A small dataset: 3 persons, 200 frames of 48×48.
pub(crate) fn small_dataset(dir: &Path) -> String {
    let output = vidtrain(
        dir,
        &[
            "demo-data",
            "--out",
            "data",
            "--persons",
            "3",
            "--frames",
            "200",
            "--size",
            "48x48",
            "--seed",
            "1",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    for view in ["front", "left", "right"] {
        for person in 1..=3 {
            assert!(
                dir.join(format!("data/videos/{view}/person_{person:02}_demo.mp4"))
                    .is_file()
            );
            assert!(
                dir.join(format!("data/keypoints/{view}/person_{person:02}_demo.npy"))
                    .is_file()
            );
        }
    }
    "data/vidtrain.toml".to_string()
}

pub(crate) const TINY_MODEL: [&str; 7] = [
    "data.img_size=32",
    "model.transformer_dim=32",
    "model.transformer_layers=1",
    "model.transformer_ff_dim=64",
    "train.k_folds=3",
    "data.batch_size=4",
    "train.lr=1e-3",
];

/// `vidtrain train --config CONFIG <extra> <TINY_MODEL>`, which must succeed.
pub(crate) fn train_tiny(dir: &Path, config: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", "--config", config];
    args.extend_from_slice(extra);
    args.extend(TINY_MODEL);
    let output = vidtrain(dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

pub(crate) fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub(crate) fn only_run_dir(runs: &Path) -> std::path::PathBuf {
    let experiments: Vec<_> = std::fs::read_dir(runs).unwrap().flatten().collect();
    assert_eq!(experiments.len(), 1);
    let stamps: Vec<_> = std::fs::read_dir(experiments[0].path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(stamps.len(), 1);
    stamps[0].path()
}

#[test]
fn training_writes_the_run_directory_contract() {
    let dir = scratch("train-contract");
    let config = small_dataset(&dir);
    let output = train_tiny(
        &dir,
        &config,
        &["train.max_epochs=2", "experiment=contract"],
    );
    let run = only_run_dir(&dir.join("runs"));
    assert!(run.starts_with(dir.join("runs/contract")));

    let summary = read_json(&run.join("summary.json"));
    for key in [
        "val_accuracy",
        "val_macro_f1",
        "train_loss_final",
        "samples_per_s",
        "wall_s",
    ] {
        assert!(
            summary[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {summary}"
        );
    }
    assert!(summary["steps"].as_u64().unwrap() >= 2);
    let auroc = summary["val_macro_auroc"]
        .as_f64()
        .expect("val_macro_auroc");
    assert!((0.0..=1.0).contains(&auroc), "{auroc}");
    assert!(summary["peak_host_rss_bytes"].as_u64().unwrap() > 10 << 20);
    assert!(
        summary["peak_device_bytes"].is_null(),
        "CPU run has no device memory"
    );

    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    assert_eq!(saved["data"]["img_size"].as_integer(), Some(32));
    assert_eq!(saved["experiment"].as_str(), Some("contract"));

    let epochs: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|record: &serde_json::Value| record["event"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 2);
    let memory = read_json(&run.join("memory.json"));
    assert!(!memory["timeline"].as_array().unwrap().is_empty());

    for file in ["model.mpk", "optimizer.mpk", "state.json"] {
        assert!(run.join("checkpoints/last").join(file).is_file(), "{file}");
    }
    for file in ["model.mpk", "metrics.json"] {
        assert!(run.join("checkpoints/best").join(file).is_file(), "{file}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.contains("partial") || name.contains(".old")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("run directory:"));
}

#[test]
fn accumulation_counts_optimizer_steps() {
    let dir = scratch("train-accumulate");
    let config = small_dataset(&dir);
    train_tiny(
        &dir,
        &config,
        &["train.max_epochs=1", "train.accumulate_grad_batches=3"],
    );
    let summary = read_json(&only_run_dir(&dir.join("runs")).join("summary.json"));
    let train_size = summary["train_size"].as_u64().unwrap();
    let micro_batches = train_size.div_ceil(4);
    assert_eq!(
        summary["steps"].as_u64().unwrap(),
        micro_batches.div_ceil(3)
    );
}

/// The seed's scenario A (fp16, batch 1 × 4 accumulation) as its users type it, on the CPU
/// backend: it trains, with fp16 loss scaling, and says so in the summary.
#[test]
fn scenario_a_fp16_with_accumulation_trains_on_the_cpu() {
    let dir = scratch("train-fp16");
    let config = small_dataset(&dir);
    let mut args = vec![
        "train",
        "--config",
        &config,
        "trainer.precision=16",
        "train.accumulate_grad_batches=4",
        "data.batch_size=1",
        "train.max_epochs=1",
    ];
    args.extend(
        TINY_MODEL
            .iter()
            .filter(|arg| !arg.starts_with("data.batch_size")),
    );
    let output = vidtrain(&dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let run = only_run_dir(&dir.join("runs"));
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["precision"], "16-mixed");
    assert_eq!(summary["backend"], "cpu (flex)");
    let train_size = summary["train_size"].as_u64().unwrap();
    assert_eq!(summary["steps"].as_u64().unwrap(), train_size.div_ceil(4));
    assert!(summary["final_loss_scale"].as_f64().unwrap() >= 1.0);
    let losses = step_losses(&run);
    assert!(!losses.is_empty() && losses.iter().all(|(_, loss)| loss.is_finite()));
}

/// bf16 on the CPU follows the f32 run step by step: same seed, same data, the same model
/// computed in bf16 (f32 master weights and Adam state).
#[test]
fn a_bf16_loss_curve_tracks_the_f32_one() {
    let dir = scratch("train-bf16");
    let config = small_dataset(&dir);
    let mut curves = Vec::new();
    for precision in ["32", "bf16"] {
        let precision = format!("trainer.precision={precision}");
        let experiment = format!("experiment=curve-{}", curves.len());
        train_tiny(
            &dir,
            &config,
            &["train.max_epochs=2", &precision, &experiment],
        );
        let experiment_dir = dir.join("runs").join(format!("curve-{}", curves.len()));
        let stamp = std::fs::read_dir(&experiment_dir)
            .unwrap()
            .flatten()
            .next()
            .unwrap();
        curves.push(step_losses(&stamp.path()));
    }
    let (full, half) = (&curves[0], &curves[1]);
    assert_eq!(full.len(), half.len());
    assert!(full.len() >= 4, "{full:?}");
    for ((step, a), (_, b)) in full.iter().zip(half) {
        assert!(
            (a - b).abs() <= 0.05 * a.abs().max(0.1),
            "step {step}: f32 loss {a}, bf16 loss {b}\nf32 {full:?}\nbf16 {half:?}"
        );
    }
}

#[test]
fn a_missing_ffmpeg_says_how_to_install_it() {
    let dir = scratch("no-ffmpeg");
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let output = vidtrain_with(&dir, &["demo-data", "--out", "data"], |command| {
        command.env("PATH", &empty);
    });
    assert_clean_failure(&output, 1);
    let text = stderr(&output);
    assert!(
        text.contains("ffmpeg") && text.contains("apt-get install"),
        "{text}"
    );
}

/// The main job: `vidtrain train` with no dataset generates the demo and must learn it
/// (9 classes, chance 0.11). This is the README's promise, so it runs the real preset.
#[test]
fn the_bundled_demo_trains_to_at_least_80_percent() {
    let dir = scratch("demo");
    let output = vidtrain(&dir, &["train"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = read_json(&only_run_dir(&dir.join("runs")).join("summary.json"));
    let accuracy = summary["val_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.8, "demo val_accuracy {accuracy}: {summary}");
}

/// The losses logged for each optimizer step in a run's metrics.jsonl.
pub(crate) fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record["event"] == "step")
        .map(|record| {
            (
                record["step"].as_u64().unwrap(),
                record["loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

pub(crate) fn runs_of(experiment: &Path) -> Vec<std::path::PathBuf> {
    let mut runs: Vec<_> = std::fs::read_dir(experiment)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    runs.sort();
    runs
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    assert_resume_is_exact("train-resume", &[]);
}

#[test]
fn a_resumed_run_with_augmentation_sgd_and_balanced_draws_equals_an_uninterrupted_one() {
    assert_resume_is_exact(
        "train-resume-augmented",
        &[
            "data.augment=standard",
            "data.load_kpt=true",
            "data.sampler=balanced",
            "train.optimizer=sgd",
            "train.nesterov=true",
            "train.lr=0.01",
            // Warm-up but no cosine: the cosine follows `train.max_steps`, which differs
            // between the halves here.
            "train.warmup_steps=3",
            "train.label_smoothing=0.1",
            "train.class_weights=balanced",
        ],
    );
}

/// Kept activations in 8 bits: the stem's inputs and, on the CPU, what the kept encoder blocks'
/// ops keep, rounded from per-segment seeds, so the resumed half draws the codes the
/// uninterrupted run drew.
#[test]
fn a_resumed_run_with_8bit_kept_activations_equals_an_uninterrupted_one() {
    assert_resume_is_exact(
        "train-resume-8bit-activations",
        &["model.activation_bits=8"],
    );
}

#[test]
fn a_resumed_run_with_8bit_adam_state_equals_an_uninterrupted_one() {
    // Width 64: the blocks' weights (64 × 192, 64 × 128) hold 8-bit state, the rest f32.
    let wide = ["model.transformer_dim=64", "model.transformer_ff_dim=128"];
    let dir = assert_resume_is_exact(
        "train-resume-8bit",
        &[&["train.optimizer_state=8bit"][..], &wide].concat(),
    );
    // Resuming that 8-bit state as f32 is refused before training, naming both formats.
    let config = dir.join("data/vidtrain.toml");
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "experiment=resumed",
        "train.resume=last",
        "train.max_steps=12",
        "train.optimizer_state=f32",
    ];
    args.extend_from_slice(&TINY_MODEL[..5]);
    args.extend_from_slice(&wide);
    let output = vidtrain(&dir, &args);
    crate::assert_clean_failure(&output, 1);
    let text = stderr(&output);
    assert!(
        text.contains("written with train.optimizer=adam train.optimizer_state=8bit")
            && text.contains("train.optimizer_state=f32"),
        "{text}"
    );
}

/// Trains 10 steps straight, and 5 + 5 with a resume in between; every step's loss must agree.
/// Returns the test's folder.
pub(crate) fn assert_resume_is_exact(name: &str, extra: &[&str]) -> std::path::PathBuf {
    let dir = scratch(name);
    let config = small_dataset(&dir);
    // Dropout on, accumulation on, several epochs: everything that could drift on resume.
    let common = |experiment: &'static str, limits: &[&'static str]| {
        // Not `train_tiny`: this test trains with batch 2 and the default learning rate.
        let mut args = vec![
            "train",
            "--config",
            config.as_str(),
            "train.max_epochs=6",
            "data.batch_size=2",
            "train.accumulate_grad_batches=2",
            "model.transformer_dropout=0.2",
        ];
        args.push(experiment);
        args.extend_from_slice(&TINY_MODEL[..5]);
        args.extend_from_slice(limits);
        args.extend_from_slice(extra);
        let output = vidtrain(&dir, &args);
        assert!(output.status.success(), "{}", stderr(&output));
    };
    common("experiment=straight", &["train.max_steps=10"]);
    common("experiment=resumed", &["train.max_steps=5"]);
    common(
        "experiment=resumed",
        &["train.max_steps=10", "train.resume=last"],
    );

    let straight = step_losses(&runs_of(&dir.join("runs/straight"))[0]);
    let resumed_runs = runs_of(&dir.join("runs/resumed"));
    assert_eq!(resumed_runs.len(), 2);
    let first_half = step_losses(&resumed_runs[0]);
    let second_half = step_losses(&resumed_runs[1]);
    // The resumed run carries the best epoch so far, so `eval` on it has a best model even
    // when no later epoch beat the earlier run's.
    let best = read_json(&resumed_runs[1].join("checkpoints/best/metrics.json"));
    assert!(best["epoch"].as_u64().is_some(), "{best}");
    assert_eq!(straight.len(), 10);
    assert_eq!(
        first_half.iter().map(|(step, _)| *step).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>()
    );
    assert_eq!(
        second_half
            .iter()
            .map(|(step, _)| *step)
            .collect::<Vec<_>>(),
        (6..=10).collect::<Vec<_>>()
    );
    for ((step, expected), (_, got)) in straight.iter().zip(first_half.iter().chain(&second_half)) {
        assert!(
            (expected - got).abs() <= 1e-6,
            "step {step}: {expected} uninterrupted vs {got} resumed"
        );
    }
    dir
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130() {
    let dir = scratch("train-interrupt");
    let config = small_dataset(&dir);
    let mut args = vec![
        "train",
        "--config",
        config.as_str(),
        "train.max_epochs=200",
        "experiment=stopped",
    ];
    args.extend(TINY_MODEL);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vidtrain"))
        .args(&args)
        .current_dir(&dir)
        .env(
            "VIDTRAIN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("vidtrain-cache"),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first optimizer step, then interrupt like a terminal's Ctrl-C.
    let started = std::time::Instant::now();
    let metrics = loop {
        let found = std::fs::read_dir(dir.join("runs/stopped"))
            .ok()
            .and_then(|mut runs| runs.next())
            .and_then(|run| run.ok())
            .map(|run| run.path().join("metrics.jsonl"))
            .filter(|metrics| {
                std::fs::read_to_string(metrics).is_ok_and(|text| text.contains("\"step\""))
            });
        if let Some(metrics) = found {
            break metrics;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "no training step within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_clean_failure(&output, 130);
    let text = stderr(&output);
    assert!(
        text.contains("interrupted") && text.contains("train.resume="),
        "{text}"
    );
    let run = metrics.parent().unwrap();
    assert!(run.join("checkpoints/last/state.json").is_file());
    assert!(!run.join("checkpoints/last.partial").exists());
}

#[test]
fn the_seeds_checkpointing_switch_trains() {
    let dir = scratch("train-checkpointing");
    let config = small_dataset(&dir);
    train_tiny(
        &dir,
        &config,
        &[
            "train.max_epochs=1",
            "model.use_gradient_checkpointing=true",
        ],
    );
    let saved =
        std::fs::read_to_string(only_run_dir(&dir.join("runs")).join("config.toml")).unwrap();
    assert!(
        saved.contains("use_gradient_checkpointing = true"),
        "{saved}"
    );
}

#[test]
fn fold_all_runs_every_fold_and_summarises_them() {
    let dir = scratch("train-folds");
    let config = small_dataset(&dir);
    let output = train_tiny(
        &dir,
        &config,
        &["train.max_epochs=1", "train.fold=all", "experiment=cv"],
    );
    let experiment = dir.join("runs/cv");
    for fold in 0..3 {
        let stamps: Vec<_> = std::fs::read_dir(experiment.join(format!("fold-{fold}")))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(stamps.len(), 1, "fold {fold}");
        assert!(
            stamps[0].path().join("summary.json").is_file(),
            "fold {fold}"
        );
    }
    let summary_file = std::fs::read_dir(&experiment)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("cross-validation-")
        })
        .expect("a cross-validation summary");
    let summary = read_json(&summary_file);
    let folds = summary["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 3);
    let accuracies: Vec<f64> = folds
        .iter()
        .map(|run| run["val_accuracy"].as_f64().unwrap())
        .collect();
    let mean = accuracies.iter().sum::<f64>() / 3.0;
    assert!((summary["val_accuracy_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    // Every person is validated exactly once across the folds.
    let validated: u64 = folds
        .iter()
        .map(|run| run["val_size"].as_u64().unwrap())
        .sum();
    let trained_and_validated =
        folds[0]["train_size"].as_u64().unwrap() + folds[0]["val_size"].as_u64().unwrap();
    assert_eq!(validated, trained_and_validated);
    assert!(String::from_utf8_lossy(&output.stdout).contains("mean"));
}

#[test]
fn recompute_leaves_every_step_loss_of_a_run_unchanged_with_dropout_on() {
    // PyTorch's checkpointing preserves the RNG stream, so toggling it leaves a run unchanged;
    // vidtrain's must too: every segment draws its dropout masks from its own seed, in every
    // mode. Several steps, accumulation on, dropout on, each backbone, fusion and input type.
    let dir = scratch("train-recompute-equal");
    let config = small_dataset(&dir);
    let cases: &[&[&str]] = &[
        &["model.fusion_mode=logit_mean"],
        &["model.fusion_mode=prob_mean"],
        &["model.fusion_mode=feature_mean"],
        &["model.fusion_mode=feature_concat"],
        &["model.backbone=vivit", "model.fusion_mode=logit_mean"],
        &["model.backbone=vivit", "model.fusion_mode=feature_concat"],
        &[
            "model.input_type=rgb_kpt",
            "data.load_kpt=true",
            "model.fusion_mode=prob_mean",
        ],
        &[
            "model.input_type=kpt",
            "data.load_kpt=true",
            "data.load_rgb=false",
        ],
        &[
            "model.backbone=3dcnn",
            "model.resnet_depth=10",
            "model.resnet_width=4",
            "model.fusion_mode=logit_mean",
        ],
        &[
            "model.backbone=3dcnn",
            "model.resnet_depth=10",
            "model.resnet_width=4",
            "model.fusion_mode=feature_concat",
            "model.input_type=rgb_kpt",
            "data.load_kpt=true",
            "model.keypoint_backbone=stgcn",
            "model.stgcn_width=4",
        ],
        &[
            "model.backbone=stgcn",
            "model.stgcn_width=4",
            "model.input_type=kpt",
            "data.load_kpt=true",
            "data.load_rgb=false",
            "model.fusion_mode=prob_mean",
        ],
        // VideoMamba with keypoint Mamba beside it; chunks of 3 do not divide its 16 tokens.
        &[
            "model.backbone=mamba",
            "model.mamba_dim=16",
            "model.mamba_layers=2",
            "model.mamba_chunk=3",
            "model.input_type=rgb_kpt",
            "data.load_kpt=true",
            "model.keypoint_backbone=mamba",
            "model.fusion_mode=feature_concat",
        ],
    ];
    for (number, case) in cases.iter().enumerate() {
        let mut losses = Vec::new();
        for mode in ["none", "all"] {
            let experiment = format!("experiment=case-{number}-{mode}");
            let checkpoint = format!("model.checkpoint={mode}");
            let mut args = vec![
                "train",
                "--config",
                config.as_str(),
                "train.max_steps=4",
                "train.accumulate_grad_batches=2",
                "model.transformer_dropout=0.2",
                "model.tubelet_size=[2,16,16]",
                experiment.as_str(),
                checkpoint.as_str(),
            ];
            args.extend(TINY_MODEL);
            args.extend_from_slice(case);
            let output = vidtrain(&dir, &args);
            assert!(output.status.success(), "{case:?}: {}", stderr(&output));
            losses.push(step_losses(
                &runs_of(&dir.join(format!("runs/case-{number}-{mode}")))[0],
            ));
        }
        assert_eq!(losses[0].len(), 4, "{case:?}");
        for ((step, plain), (_, recomputed)) in losses[0].iter().zip(&losses[1]) {
            assert!(
                (plain - recomputed).abs() <= 1e-6,
                "{case:?} step {step}: {plain} without recompute, {recomputed} with"
            );
        }
    }
}
