//! `cargo xtask bench plan`: `vidtrain plan`'s predicted host peak next to the peak RSS measured
//! by a real CPU training run of the same config, for the demo, the seed's three scenarios at
//! reduced size, and the seed model and ViViT at 224 px with and without recompute.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{bench_dataset, git_revision, host, latest_run, target_dir};
use crate::{cargo, project_root};

pub fn plan() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "trainer-cli"])?;
    let target = target_dir();
    let vidtrain = target.join("release/vidtrain");
    let folder = target.join("bench/plan");
    let data = bench_dataset(&vidtrain, &folder)?;
    let data = data.to_str().context("UTF-8 path")?.to_string();
    let configs = project_root().join("configs");
    let preset = |name: &str| configs.join(name).display().to_string();
    let runs = folder.join("runs");
    let run_dir = format!("paths.run_dir={}", runs.display());
    let short = [
        "train.max_steps=1",
        "train.k_folds=2",
        "trainer.precision_fallback=true",
    ];
    let seed_224 = [
        "data.img_size=224",
        "data.batch_size=4",
        "train.view=single",
        "train.video_batch_size=4",
        "data.num_workers=0",
    ];
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("demo, 1 epoch", vec!["train.max_epochs=1".into()]),
        (
            "scenario A at 112 px",
            strings(&[
                "--config",
                &data,
                "--config",
                &preset("scenario-a-16g-ram-8g-vram.toml"),
                "data.img_size=112",
            ])
            .into_iter()
            .chain(strings(&short))
            .collect(),
        ),
        (
            "scenario B at 112 px",
            strings(&[
                "--config",
                &data,
                "--config",
                &preset("scenario-b-8g-ram-6g-vram.toml"),
                "data.img_size=112",
            ])
            .into_iter()
            .chain(strings(&short))
            .collect(),
        ),
        (
            "scenario C (112 px)",
            strings(&[
                "--config",
                &data,
                "--config",
                &preset("scenario-c-4g-vram.toml"),
            ])
            .into_iter()
            .chain(strings(&short))
            .collect(),
        ),
        (
            "seed 224 px b4, none",
            strings(&["--config", &data, "model.checkpoint=none"])
                .into_iter()
                .chain(strings(&seed_224))
                .chain(strings(&short))
                .collect(),
        ),
        (
            "seed 224 px b4, all",
            strings(&["--config", &data, "model.checkpoint=all"])
                .into_iter()
                .chain(strings(&seed_224))
                .chain(strings(&short))
                .collect(),
        ),
        (
            "vivit 224 px b4, none",
            strings(&[
                "--config",
                &data,
                "model.backbone=vivit",
                "model.checkpoint=none",
            ])
            .into_iter()
            .chain(strings(&seed_224))
            .chain(strings(&short))
            .collect(),
        ),
        (
            "vivit 224 px b4, all",
            strings(&[
                "--config",
                &data,
                "model.backbone=vivit",
                "model.checkpoint=all",
            ])
            .into_iter()
            .chain(strings(&seed_224))
            .chain(strings(&short))
            .collect(),
        ),
    ];
    let mut rows = Vec::new();
    for (number, (name, args)) in cases.iter().enumerate() {
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
        eprintln!("$ vidtrain {}", train_args.join(" "));
        let output = Command::new(&vidtrain).args(&train_args).output()?;
        if !output.status.success() {
            bail!(
                "{name}: training failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let run = latest_run(&runs.join(format!("plan-{number}")))?;
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json"))?)?;
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
        "  {:<24} {:>12} {:>12} {:>9}",
        "case", "predicted", "measured", "ratio"
    );
    for row in &rows {
        let mib = |key: &str| row[key].as_f64().unwrap_or(f64::NAN) / 1048576.0;
        println!(
            "  {:<24} {:>8.0} MiB {:>8.0} MiB {:>9.2}",
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

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// Runs `vidtrain args` and parses the last line of stdout as JSON.
fn json_line(vidtrain: &Path, args: &[String]) -> anyhow::Result<Value> {
    let output = Command::new(vidtrain).args(args).output()?;
    if !output.status.success() {
        bail!(
            "vidtrain {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}
