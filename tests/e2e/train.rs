//! `vidtrain demo-data` and `vidtrain train`: the run directory contract, the demo's accuracy,
//! and clear failures (half precision on CPU, ffmpeg missing).

use std::path::Path;

use crate::{assert_clean_failure, scratch, stderr, vidtrain, vidtrain_with};

/// A small dataset: 3 persons, 200 frames of 48×48.
fn small_dataset(dir: &Path) -> String {
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

const TINY_MODEL: [&str; 7] = [
    "data.img_size=32",
    "model.transformer_dim=32",
    "model.transformer_layers=1",
    "model.transformer_ff_dim=64",
    "train.k_folds=3",
    "data.batch_size=4",
    "train.lr=1e-3",
];

fn only_run_dir(runs: &Path) -> std::path::PathBuf {
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
    let mut args = vec![
        "train",
        "--config",
        &config,
        "train.max_epochs=2",
        "experiment=contract",
    ];
    args.extend(TINY_MODEL);
    let output = vidtrain(&dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let run = only_run_dir(&dir.join("runs"));
    assert!(run.starts_with(dir.join("runs/contract")));

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
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
    let memory: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("memory.json")).unwrap()).unwrap();
    assert!(!memory["timeline"].as_array().unwrap().is_empty());

    assert!(run.join("checkpoints/model-last.mpk").is_file());
    assert!(run.join("checkpoints/model-best.mpk").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("run directory:"));
}

#[test]
fn accumulation_counts_optimizer_steps() {
    let dir = scratch("train-accumulate");
    let config = small_dataset(&dir);
    let mut args = vec![
        "train",
        "--config",
        &config,
        "train.max_epochs=1",
        "train.accumulate_grad_batches=3",
    ];
    args.extend(TINY_MODEL);
    let output = vidtrain(&dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(only_run_dir(&dir.join("runs")).join("summary.json")).unwrap(),
    )
    .unwrap();
    let train_size = summary["train_size"].as_u64().unwrap();
    let micro_batches = train_size.div_ceil(4);
    assert_eq!(
        summary["steps"].as_u64().unwrap(),
        micro_batches.div_ceil(3)
    );
}

#[test]
fn half_precision_on_the_cpu_fails_clearly_before_any_work() {
    let dir = scratch("train-half");
    let config = small_dataset(&dir);
    let output = vidtrain(
        &dir,
        &["train", "--config", &config, "trainer.precision=16"],
    );
    assert_clean_failure(&output, 2);
    let text = stderr(&output);
    assert!(
        text.contains("trainer.precision") && text.contains("CPU"),
        "{text}"
    );
    assert!(!dir.join("runs").exists());
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
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(only_run_dir(&dir.join("runs")).join("summary.json")).unwrap(),
    )
    .unwrap();
    let accuracy = summary["val_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.8, "demo val_accuracy {accuracy}: {summary}");
}
