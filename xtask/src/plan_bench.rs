//! `cargo xtask bench plan`: `vidtrain plan`'s predicted host peak next to the peak RSS measured
//! by a real CPU training run of the same config, for the demo, the seed's three scenarios at
//! reduced size (in their fp16), the seed model and ViViT at 224 px with and without recompute,
//! in f32 and in half precision, and torchvision's r3d_18 (112 px, 16 frames) and ST-GCN (64
//! frames) with and without recompute, and VideoMamba (112 px) and the keypoint Mamba (256
//! frames) likewise, r3d_18's model state in each `train.optimizer_state`, and a peak set by
//! validation (the seed model, 3 views at 160 px, validated 16 samples at a time), and the seed
//! model, ViViT, r3d_18 and ST-GCN with their kept activations in 8 bits (the seed model in 4
//! bits too: `model.activation_bits`).
//! `BENCH_CASES=r3d,stgcn` runs only the named cases.

use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::bench::{BenchFolder, demo_dataset, json_line, report, train_summary, write_report};
use crate::project_root;

pub fn plan() -> anyhow::Result<()> {
    let bench = BenchFolder::prepare("plan", "")?;
    let BenchFolder { vidtrain, runs, .. } = &bench;
    let data = bench.dataset()?;
    let data = data.to_str().context("UTF-8 path")?.to_string();
    let validation_data = validation_dataset(vidtrain, &bench.folder)?;
    let configs = project_root().join("configs");
    let run_dir = format!("paths.run_dir={}", runs.display());
    let cases: Vec<(&str, Vec<String>)> = CASES
        .iter()
        .map(|(name, template)| {
            let args = expand(template, &|placeholder| match placeholder {
                "{data}" => Some(data.clone()),
                "{validation_data}" => Some(validation_data.clone()),
                _ => placeholder
                    .strip_prefix("{preset:")
                    .and_then(|rest| rest.strip_suffix('}'))
                    .map(|preset| configs.join(preset).display().to_string()),
            });
            (*name, args)
        })
        .collect();
    // `BENCH_CASES=r3d,stgcn` runs only the cases whose name contains one of the words.
    let only: Vec<String> = std::env::var("BENCH_CASES")
        .map(|words| words.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for (number, (name, args)) in cases.iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|word| name.contains(word.as_str())) {
            continue;
        }
        let experiment = format!("experiment=plan-{number}");
        let mut plan_args = vec![
            "plan".to_string(),
            "--json".into(),
            "--device".into(),
            "cpu".into(),
        ];
        plan_args.extend(args.iter().cloned());
        let planned = json_line(vidtrain, &plan_args)?;
        let mut train_args = vec!["train".to_string()];
        train_args.extend(args.iter().cloned());
        train_args.extend([experiment, run_dir.clone()]);
        let summary = train_summary(vidtrain, &train_args, &runs.join(format!("plan-{number}")))
            .with_context(|| format!("case {name}"))?;
        let predicted = planned["host_peak_bytes"].as_f64().unwrap_or(f64::NAN);
        let measured = summary["peak_host_rss_bytes"].as_f64().unwrap_or(f64::NAN);
        rows.push(json!({
            "case": name,
            "predicted_host_peak_bytes": predicted,
            "measured_peak_host_rss_bytes": measured,
            "predicted_over_measured": predicted / measured,
            "peak_layer": planned["activation_peak_layer"],
        }));
    }
    println!("vidtrain plan (CPU backend) vs measured peak RSS of one training run");
    println!(
        "  {:<28} {:>12} {:>12} {:>9}",
        "case", "predicted", "measured", "ratio"
    );
    for row in &rows {
        let mib = |key: &str| row[key].as_f64().unwrap_or(f64::NAN) / 1048576.0;
        println!(
            "  {:<28} {:>8.0} MiB {:>8.0} MiB {:>9.2}",
            row["case"].as_str().unwrap_or(""),
            mib("predicted_host_peak_bytes"),
            mib("measured_peak_host_rss_bytes"),
            row["predicted_over_measured"].as_f64().unwrap_or(f64::NAN)
        );
    }
    write_report("plan", &report(json!({ "rows": rows })))
}

/// A demo dataset of 6 persons (47 labelled ranges): with `train.k_folds=2` its validation split
/// holds more than 16 samples.
fn validation_dataset(vidtrain: &Path, folder: &Path) -> anyhow::Result<String> {
    let config = demo_dataset(vidtrain, &folder.join("data-validation"), 6)?;
    Ok(config.to_str().context("UTF-8 path")?.to_string())
}

/// Groups of arguments the cases join by name (`@name`).
const GROUPS: &[(&str, &str)] = &[
    // The benchmark dataset, two optimizer steps of the first of two folds: the plan prices
    // the steady state, in which the optimizer's moments (made by the first step) live through
    // every later forward and backward; a one-step run never holds them beside activations
    // (r3d_18 at 112 px: 1169 MiB in one step, 1428 MiB in two).
    (
        "@on_data",
        "--config {data} train.max_steps=2 train.k_folds=2",
    ),
    (
        "@seed_224",
        "data.img_size=224 data.batch_size=4 train.view=single train.video_batch_size=4 \
         data.num_workers=0",
    ),
    (
        "@seed_112",
        "data.img_size=112 data.batch_size=4 train.view=single train.video_batch_size=4 \
         data.num_workers=0 data.uniform_temporal_subsample_num=16",
    ),
    ("@r3d_18", "model.backbone=3dcnn model.resnet_depth=18"),
    // r3d_18's state (33 M parameters) on a tiny clip.
    (
        "@r3d_state",
        "@r3d_18 data.img_size=32 data.batch_size=2 data.uniform_temporal_subsample_num=8 \
         train.view=single train.video_batch_size=2 data.num_workers=0",
    ),
    (
        "@stgcn",
        "model.backbone=stgcn model.input_type=kpt data.load_kpt=true data.load_rgb=false \
         data.batch_size=16 train.view=single data.uniform_temporal_subsample_num=64 \
         data.num_workers=0",
    ),
    // VideoMamba (D 192, state 16, expand 2, chunks of 16) with 4 blocks: 196 tokens a clip.
    (
        "@mamba_112",
        "model.backbone=mamba model.mamba_layers=4 data.img_size=112 data.batch_size=2 \
         train.view=single train.video_batch_size=2 data.num_workers=0 \
         data.uniform_temporal_subsample_num=8",
    ),
    // The keypoint Mamba over 256 frames of the 52 joints.
    (
        "@mamba_kpt",
        "model.backbone=mamba model.mamba_layers=4 model.input_type=kpt data.load_kpt=true \
         data.load_rgb=false data.batch_size=8 train.view=single \
         data.uniform_temporal_subsample_num=256 data.num_workers=0",
    ),
];

/// Each case: its name and its arguments, `@group`s expanded; `{data}` is the benchmark
/// dataset's config, `{validation_data}` the larger one's, `{preset:FILE}` a file of `configs/`.
/// The scenario presets ask for `trainer.precision=16`, which the CPU backend runs as it is.
const CASES: &[(&str, &str)] = &[
    // Two epochs: the plan prices the steady state, in which the decoded-sample cache is full
    // while a step trains. In the first epoch it fills as the samples come (one epoch peaked at
    // 65 MiB, two at 68 MiB, stop 42).
    ("demo, 2 epochs", "train.max_epochs=2"),
    (
        "scenario A at 112 px",
        "@on_data --config {preset:scenario-a-16g-ram-8g-vram.toml} data.img_size=112",
    ),
    (
        "scenario B at 112 px",
        "@on_data --config {preset:scenario-b-8g-ram-6g-vram.toml} data.img_size=112",
    ),
    (
        "scenario C (112 px)",
        "@on_data --config {preset:scenario-c-4g-vram.toml}",
    ),
    (
        "seed 224 px b4, none",
        "@on_data @seed_224 model.checkpoint=none",
    ),
    (
        "seed 224 px b4, all",
        "@on_data @seed_224 model.checkpoint=all",
    ),
    (
        "seed 224 px b4 bf16, none",
        "@on_data @seed_224 model.checkpoint=none trainer.precision=bf16",
    ),
    (
        "seed 224 px b4 16, all",
        "@on_data @seed_224 model.checkpoint=all trainer.precision=16",
    ),
    (
        "seed 224 px b4, 8-bit acts",
        "@on_data @seed_224 model.checkpoint=none model.activation_bits=8",
    ),
    (
        "seed 224 px b4 all, 4-bit",
        "@on_data @seed_224 model.checkpoint=all model.activation_bits=4",
    ),
    (
        "vivit 224 px b4, none",
        "@on_data @seed_224 model.backbone=vivit model.checkpoint=none",
    ),
    (
        "vivit 224 px b4, all",
        "@on_data @seed_224 model.backbone=vivit model.checkpoint=all",
    ),
    (
        "vivit 224 px b4, 8-bit acts",
        "@on_data @seed_224 model.backbone=vivit model.checkpoint=none model.activation_bits=8",
    ),
    (
        "vivit 224 px b4 bf16, all",
        "@on_data @seed_224 model.backbone=vivit model.checkpoint=all trainer.precision=bf16",
    ),
    (
        "r3d_18 112 px b4, none",
        "@on_data @seed_112 @r3d_18 model.checkpoint=none",
    ),
    (
        "r3d_18 112 px b4, all",
        "@on_data @seed_112 @r3d_18 model.checkpoint=all",
    ),
    // bf16 on a CPU with AVX512_BF16: the stride-1 convolutions lay their clips out
    // (`layers/conv_direct.rs`) where f32 writes im2col columns.
    (
        "r3d_18 112 px b4 bf16, none",
        "@on_data @seed_112 @r3d_18 model.checkpoint=none trainer.precision=bf16",
    ),
    (
        "r3d_18 112 px b4, 8-bit acts",
        "@on_data @seed_112 @r3d_18 model.checkpoint=none model.activation_bits=8",
    ),
    // Full-size r3d_18 (33 M parameters) on a tiny clip: model state, not activations, sets
    // the peak (the optimizer step and the checkpoint save).
    (
        "r3d_18 32 px b4, none",
        "@on_data @seed_112 @r3d_18 data.img_size=32 data.uniform_temporal_subsample_num=8 \
         model.checkpoint=none",
    ),
    (
        "r3d_18 32 px b2, adam f32",
        "@on_data @r3d_state train.optimizer_state=f32",
    ),
    (
        "r3d_18 32 px b2, adam bf16",
        "@on_data @r3d_state train.optimizer_state=bf16",
    ),
    (
        "r3d_18 32 px b2, adam 8bit",
        "@on_data @r3d_state train.optimizer_state=8bit",
    ),
    // The seed model on all three views at 160 px, trained 2 samples at a time and validated 16
    // at a time (issue 26's case): validation sets the peak.
    (
        "seed 160 px 3 views, validation 16",
        "--config {validation_data} data.img_size=160 data.batch_size=2 \
         data.uniform_temporal_subsample_num=8 train.video_batch_size=16 data.num_workers=0 \
         train.max_steps=2 train.k_folds=2",
    ),
    (
        "stgcn 64 frames b16, none",
        "@on_data @stgcn model.checkpoint=none",
    ),
    (
        "stgcn 64 frames b16, all",
        "@on_data @stgcn model.checkpoint=all",
    ),
    (
        "stgcn 64 frames b16, 8-bit acts",
        "@on_data @stgcn model.checkpoint=none model.activation_bits=8",
    ),
    (
        "mamba 112 px b2, none",
        "@on_data @mamba_112 model.checkpoint=none",
    ),
    (
        "mamba 112 px b2, all",
        "@on_data @mamba_112 model.checkpoint=all",
    ),
    (
        "mamba 112 px b2 bf16, none",
        "@on_data @mamba_112 model.checkpoint=none trainer.precision=bf16",
    ),
    (
        "mamba kpt 256 frames b8, none",
        "@on_data @mamba_kpt model.checkpoint=none",
    ),
    (
        "mamba kpt 256 frames b8, all",
        "@on_data @mamba_kpt model.checkpoint=all",
    ),
];

/// A case's arguments: whitespace-separated words of `template`, each `@group` replaced by the
/// group's words and each `{placeholder}` by what `substitute` gives for it (a path may hold
/// spaces: it is substituted after the split).
fn expand(template: &str, substitute: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    template
        .split_whitespace()
        .flat_map(|word| match GROUPS.iter().find(|(name, _)| *name == word) {
            Some((_, group)) => expand(group, substitute),
            None => vec![substitute(word).unwrap_or_else(|| word.to_string())],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_expands_to_plain_arguments() {
        for (name, template) in CASES {
            let args = expand(template, &|word: &str| {
                word.starts_with('{')
                    .then(|| "/some path/x.toml".to_string())
            });
            assert!(
                args.iter()
                    .all(|arg| !arg.starts_with('@') && !arg.starts_with('{')),
                "{name}: {args:?}"
            );
            assert!(
                args.iter()
                    .all(|arg| arg == "--config" || arg.contains('=') || arg.contains('/')),
                "{name}: {args:?}"
            );
        }
        let r3d = expand("@on_data @r3d_state", &|_| None);
        assert_eq!(
            r3d.iter()
                .filter(|arg| *arg == "model.backbone=3dcnn")
                .count(),
            1
        );
        assert_eq!(r3d.len(), 4 + 8); // `--config {data}`, the two short-run keys, r3d_state's eight
    }
}
