//! `cargo xtask bench plan`: `vidtrain plan`'s predicted host peak next to the peak RSS measured
//! by a real CPU training run of the same config, for the demo, the seed's three scenarios at
//! reduced size (in their fp16), the seed model and ViViT at 224 px with and without recompute,
//! in f32 and in half precision, and torchvision's r3d_18 (112 px, 16 frames) and ST-GCN (64
//! frames) with and without recompute, and VideoMamba (112 px) and the keypoint Mamba (256
//! frames) likewise, r3d_18's model state in each `train.optimizer_state`, and a peak set by
//! validation (the seed model, 3 views at 160 px, validated 16 samples at a time).
//! `BENCH_CASES=r3d,stgcn` runs only the named cases.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::json;

use crate::bench::{bench_dataset, git_revision, host, json_line, target_dir, train_summary};
use crate::{build_vidtrain, project_root};

pub fn plan() -> anyhow::Result<()> {
    build_vidtrain("")?;
    let target = target_dir();
    let vidtrain = target.join("release/vidtrain");
    let folder = target.join("bench/plan");
    let data = bench_dataset(&vidtrain, &folder)?;
    let data = data.to_str().context("UTF-8 path")?.to_string();
    let validation_data = validation_dataset(&vidtrain, &folder)?;
    let configs = project_root().join("configs");
    let preset = |name: &str| configs.join(name).display().to_string();
    let runs = folder.join("runs");
    let run_dir = format!("paths.run_dir={}", runs.display());
    // The scenario presets ask for `trainer.precision=16`, which the CPU backend runs as it is.
    let short = ["train.max_steps=1", "train.k_folds=2"];
    let seed_224 = [
        "data.img_size=224",
        "data.batch_size=4",
        "train.view=single",
        "train.video_batch_size=4",
        "data.num_workers=0",
    ];
    let seed_112 = [
        "data.img_size=112",
        "data.batch_size=4",
        "train.view=single",
        "train.video_batch_size=4",
        "data.num_workers=0",
        "data.uniform_temporal_subsample_num=16",
    ];
    let r3d_18 = ["model.backbone=3dcnn", "model.resnet_depth=18"];
    let stgcn = [
        "model.backbone=stgcn",
        "model.input_type=kpt",
        "data.load_kpt=true",
        "data.load_rgb=false",
        "data.batch_size=16",
        "train.view=single",
        "data.uniform_temporal_subsample_num=64",
        "data.num_workers=0",
    ];
    // VideoMamba (D 192, state 16, expand 2, chunks of 16) with 4 blocks: 196 tokens a clip.
    let mamba_112 = [
        "model.backbone=mamba",
        "model.mamba_layers=4",
        "data.img_size=112",
        "data.batch_size=2",
        "train.view=single",
        "train.video_batch_size=2",
        "data.num_workers=0",
        "data.uniform_temporal_subsample_num=8",
    ];
    // The keypoint Mamba over 256 frames of the 52 joints.
    let mamba_kpt = [
        "model.backbone=mamba",
        "model.mamba_layers=4",
        "model.input_type=kpt",
        "data.load_kpt=true",
        "data.load_rgb=false",
        "data.batch_size=8",
        "train.view=single",
        "data.uniform_temporal_subsample_num=256",
        "data.num_workers=0",
    ];
    // Each case: its name and the argument groups it joins (every run adds `short`).
    let case = |name: &'static str, groups: &[&[&str]]| {
        let args: Vec<String> = groups
            .iter()
            .flat_map(|group| group.iter())
            .chain(short.iter())
            .map(|arg| arg.to_string())
            .collect();
        (name, args)
    };
    let (scenario_a, scenario_b, scenario_c) = (
        preset("scenario-a-16g-ram-8g-vram.toml"),
        preset("scenario-b-8g-ram-6g-vram.toml"),
        preset("scenario-c-4g-vram.toml"),
    );
    let on_data = ["--config", data.as_str()];
    // The seed model on all three views at 160 px, trained 2 samples at a time and validated 16
    // at a time (issue 26's case): validation sets the peak.
    let validation_16 = [
        "--config",
        validation_data.as_str(),
        "data.img_size=160",
        "data.batch_size=2",
        "data.uniform_temporal_subsample_num=8",
        "train.video_batch_size=16",
        "data.num_workers=0",
    ];
    // r3d_18's state (33 M parameters) on a tiny clip, in each `train.optimizer_state`.
    let r3d_state = [
        "data.img_size=32",
        "data.batch_size=2",
        "data.uniform_temporal_subsample_num=8",
        "train.view=single",
        "train.video_batch_size=2",
        "data.num_workers=0",
        "model.backbone=3dcnn",
        "model.resnet_depth=18",
    ];
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("demo, 1 epoch", vec!["train.max_epochs=1".into()]),
        case(
            "scenario A at 112 px",
            &[&on_data, &["--config", &scenario_a, "data.img_size=112"]],
        ),
        case(
            "scenario B at 112 px",
            &[&on_data, &["--config", &scenario_b, "data.img_size=112"]],
        ),
        case(
            "scenario C (112 px)",
            &[&on_data, &["--config", &scenario_c]],
        ),
        case(
            "seed 224 px b4, none",
            &[&on_data, &seed_224, &["model.checkpoint=none"]],
        ),
        case(
            "seed 224 px b4, all",
            &[&on_data, &seed_224, &["model.checkpoint=all"]],
        ),
        case(
            "seed 224 px b4 bf16, none",
            &[
                &on_data,
                &seed_224,
                &["model.checkpoint=none", "trainer.precision=bf16"],
            ],
        ),
        case(
            "seed 224 px b4 16, all",
            &[
                &on_data,
                &seed_224,
                &["model.checkpoint=all", "trainer.precision=16"],
            ],
        ),
        case(
            "vivit 224 px b4, none",
            &[
                &on_data,
                &seed_224,
                &["model.backbone=vivit", "model.checkpoint=none"],
            ],
        ),
        case(
            "vivit 224 px b4, all",
            &[
                &on_data,
                &seed_224,
                &["model.backbone=vivit", "model.checkpoint=all"],
            ],
        ),
        case(
            "vivit 224 px b4 bf16, all",
            &[
                &on_data,
                &seed_224,
                &[
                    "model.backbone=vivit",
                    "model.checkpoint=all",
                    "trainer.precision=bf16",
                ],
            ],
        ),
        case(
            "r3d_18 112 px b4, none",
            &[&on_data, &seed_112, &r3d_18, &["model.checkpoint=none"]],
        ),
        case(
            "r3d_18 112 px b4, all",
            &[&on_data, &seed_112, &r3d_18, &["model.checkpoint=all"]],
        ),
        // Full-size r3d_18 (33 M parameters) on a tiny clip: model state, not activations, sets
        // the peak (the optimizer step and the checkpoint save).
        case(
            "r3d_18 32 px b4, none",
            &[
                &on_data,
                &seed_112,
                &r3d_18,
                &[
                    "data.img_size=32",
                    "data.uniform_temporal_subsample_num=8",
                    "model.checkpoint=none",
                ],
            ],
        ),
        case(
            "r3d_18 32 px b2, adam f32",
            &[&on_data, &r3d_state, &["train.optimizer_state=f32"]],
        ),
        case(
            "r3d_18 32 px b2, adam bf16",
            &[&on_data, &r3d_state, &["train.optimizer_state=bf16"]],
        ),
        case(
            "r3d_18 32 px b2, adam 8bit",
            &[&on_data, &r3d_state, &["train.optimizer_state=8bit"]],
        ),
        case("seed 160 px 3 views, validation 16", &[&validation_16]),
        case(
            "stgcn 64 frames b16, none",
            &[&on_data, &stgcn, &["model.checkpoint=none"]],
        ),
        case(
            "stgcn 64 frames b16, all",
            &[&on_data, &stgcn, &["model.checkpoint=all"]],
        ),
        case(
            "mamba 112 px b2, none",
            &[&on_data, &mamba_112, &["model.checkpoint=none"]],
        ),
        case(
            "mamba 112 px b2, all",
            &[&on_data, &mamba_112, &["model.checkpoint=all"]],
        ),
        case(
            "mamba 112 px b2 bf16, none",
            &[
                &on_data,
                &mamba_112,
                &["model.checkpoint=none", "trainer.precision=bf16"],
            ],
        ),
        case(
            "mamba kpt 256 frames b8, none",
            &[&on_data, &mamba_kpt, &["model.checkpoint=none"]],
        ),
        case(
            "mamba kpt 256 frames b8, all",
            &[&on_data, &mamba_kpt, &["model.checkpoint=all"]],
        ),
    ];
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
        let planned = json_line(&vidtrain, &plan_args)?;
        let mut train_args = vec!["train".to_string()];
        train_args.extend(args.iter().cloned());
        train_args.extend([experiment, run_dir.clone()]);
        let summary = train_summary(&vidtrain, &train_args, &runs.join(format!("plan-{number}")))
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
    let report = json!({"host": host(), "git_revision": git_revision(), "rows": rows});
    let out = target.join("bench/plan.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", out.display());
    Ok(())
}

/// A demo dataset of 6 persons (47 labelled ranges): with `train.k_folds=2` its validation split
/// holds more than 16 samples.
fn validation_dataset(vidtrain: &Path, folder: &Path) -> anyhow::Result<String> {
    let data = folder.join("data-validation");
    if !data.join("vidtrain.toml").is_file() {
        let status = Command::new(vidtrain)
            .args([
                "demo-data",
                "--persons",
                "6",
                "--frames",
                "300",
                "--size",
                "64x64",
            ])
            .arg("--out")
            .arg(&data)
            .status()?;
        if !status.success() {
            bail!("generating the validation benchmark data failed");
        }
    }
    Ok(data
        .join("vidtrain.toml")
        .to_str()
        .context("UTF-8 path")?
        .to_string())
}
