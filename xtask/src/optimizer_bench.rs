//! `cargo xtask bench optimizer`: torchvision's r3d_18 (33 M parameters) trained 4 steps on a
//! tiny clip with Adam, its state in each `train.optimizer_state`, next to PyTorch's
//! `torch.optim.Adam` and bitsandbytes' `Adam8bit` on the same model and input, on this CPU:
//! the state's bytes (vidtrain: its plan and the checkpoint's `optimizer.mpk`; PyTorch: every
//! state tensor and `torch.save` of the state dict), the peak RSS and the step time.

use std::process::Command;

use anyhow::Context;
use serde_json::{Value, json};

use crate::bench::{
    BenchFolder, bench_dataset, json_line, report, target_dir, train_summary, write_report,
};
use crate::cpu_bench::torch_python;
use crate::project_root;

const STEPS: &str = "4";

pub fn optimizer() -> anyhow::Result<()> {
    let BenchFolder { vidtrain, runs, .. } = BenchFolder::prepare("optimizer", "")?;
    // `bench plan`'s dataset: the same data, generated once.
    let data = bench_dataset(&vidtrain, &target_dir().join("bench/plan"))?;
    let data = data.to_str().context("UTF-8 path")?.to_string();
    let model = [
        "--config",
        data.as_str(),
        "model.backbone=3dcnn",
        "model.resnet_depth=18",
        "data.img_size=32",
        "data.batch_size=2",
        "data.uniform_temporal_subsample_num=8",
        "train.view=single",
        "train.video_batch_size=2",
        "train.k_folds=2",
        "data.num_workers=0",
    ];
    let mut rows = Vec::new();
    for state in ["f32", "bf16", "8bit"] {
        let format = format!("train.optimizer_state={state}");
        let mut plan_args = vec!["plan", "--json", "--device", "cpu"];
        plan_args.extend(model);
        plan_args.push(&format);
        let plan = json_line(&vidtrain, &plan_args)?;
        let planned_state = plan["host"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|component| {
                component["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("optimizer state"))
            })
            .and_then(|component| component["bytes"].as_f64())
            .unwrap_or(f64::NAN);
        let experiment = format!("experiment=adam-{state}");
        let run_dir = format!("paths.run_dir={}", runs.display());
        let max_steps = format!("train.max_steps={STEPS}");
        let mut args: Vec<&str> = vec!["train"];
        args.extend(model);
        args.extend([
            format.as_str(),
            max_steps.as_str(),
            experiment.as_str(),
            run_dir.as_str(),
        ]);
        let summary = train_summary(&vidtrain, &args, &runs.join(format!("adam-{state}")))?;
        let run = summary["run_dir"].as_str().context("run_dir")?;
        let saved =
            std::fs::metadata(std::path::Path::new(run).join("checkpoints/last/optimizer.mpk"))
                .map(|metadata| metadata.len() as f64)
                .unwrap_or(f64::NAN);
        rows.push(json!({
            "name": format!("vidtrain adam, state {state}"),
            "state_bytes": planned_state,
            "saved_state_bytes": saved,
            "peak_rss_bytes": summary["peak_host_rss_bytes"],
            "seconds_per_step": summary["samples_per_s"]
                .as_f64()
                .map(|rate| 2.0 / rate),
        }));
    }
    let python = torch_python()?;
    let has_bitsandbytes = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", "import bitsandbytes"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !has_bitsandbytes(&python) {
        eprintln!("installing bitsandbytes into the torch venv");
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "bitsandbytes"])
            .status();
    }
    let script = project_root().join("bench/optimizer_state_reference.py");
    for optimizer in ["adam", "adam8bit"] {
        if optimizer == "adam8bit" && !has_bitsandbytes(&python) {
            eprintln!("bitsandbytes does not install here: its row is left out");
            continue;
        }
        let script = script.to_string_lossy();
        let args = [
            script.as_ref(),
            optimizer,
            "--classes",
            "9",
            "--size",
            "32",
            "--frames",
            "8",
            "--batch",
            "2",
            "--steps",
            STEPS,
        ];
        let mut row = match json_line(&python, &args) {
            Ok(row) => row,
            Err(error) => {
                eprintln!("PyTorch {optimizer}: {error}");
                continue;
            }
        };
        row["name"] = json!(format!("PyTorch {optimizer}"));
        rows.push(row);
    }
    println!("r3d_18 (33 M parameters), Adam, 32 px × 8 frames, batch 2, {STEPS} steps, CPU");
    println!(
        "  {:<28} {:>12} {:>12} {:>10} {:>8}",
        "optimizer", "state", "saved", "peak RSS", "s/step"
    );
    let mib = |value: &Value| value.as_f64().unwrap_or(f64::NAN) / 1048576.0;
    for row in &rows {
        println!(
            "  {:<28} {:>8.1} MiB {:>8.1} MiB {:>6.0} MiB {:>8.2}",
            row["name"].as_str().unwrap_or(""),
            mib(&row["state_bytes"]),
            mib(&row["saved_state_bytes"]),
            mib(&row["peak_rss_bytes"]),
            row["seconds_per_step"].as_f64().unwrap_or(f64::NAN)
        );
    }
    write_report("optimizer", &report(json!({ "rows": rows })))
}
