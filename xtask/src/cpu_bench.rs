//! `cargo xtask bench cpu`: vidtrain and PyTorch eager side by side on this machine's CPU, the
//! same model rows (`vidtrain bench-model` and `bench/pytorch_reference.py --device cpu`), each
//! row in a fresh process on both sides so that every peak RSS is the row's own. Prints the ratio
//! table (ours / PyTorch) last and writes `target/bench/cpu.json`. Each row's achieved GFLOP/s
//! (the model's training FLOPs per sample, counted once per model by PyTorch's flop counter, times
//! samples/s) stands next to this machine's matrix-product peak, measured in the same run by
//! each side (`vidtrain bench-model --gemm-peak`, `torch.mm`).
//!
//! PyTorch comes from a cache venv (`$VIDTRAIN_TORCH_VENV`, default `~/.cache/vidtrain/torch-venv`),
//! made with `pip install torch` when it is missing. `BENCH_STEPS` (default 2) timed steps after one
//! warm-up step; `BENCH_BACKBONE=transformer|vivit|r3d|stgcn|both|all` or a comma-separated list (default both: the first two); `BENCH_ROWS=fp32 b4,lowest b4` only the rows named; `BENCH_ROW_TIMEOUT_S` (default
//! 600) per side of a row.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{report, target_dir, write_report};
use crate::{build_vidtrain, project_root, run_checked};

/// The rows of the issue, by their `bench-model` names.
const ROWS: [&str; 7] = [
    "fp32 b4",
    "bf16 b4",
    "fp16 b4",
    "fp32 b1x4",
    "bf16 b1x4",
    "bf16 b1x4 recompute",
    "lowest b4",
];

/// A model and the clip size it runs at here: the seed transformer at full size; ViViT-S at
/// 8 frames × 112 px (196 tokens), where a step takes seconds instead of minutes on two cores;
/// r3d_18 at torchvision's 16 frames × 112 px; ST-GCN on 64 frames of the 52 joints.
/// `BENCH_BACKBONE=both` (the default) runs the first two, `all` every one.
struct Model {
    backbone: &'static str,
    clip: Option<(usize, usize)>,
    in_both: bool,
}

const MODELS: [Model; 4] = [
    Model {
        backbone: "transformer",
        clip: None,
        in_both: true,
    },
    Model {
        backbone: "vivit",
        clip: Some((8, 112)),
        in_both: true,
    },
    Model {
        backbone: "r3d",
        clip: None,
        in_both: false,
    },
    Model {
        backbone: "stgcn",
        clip: None,
        in_both: false,
    },
];

pub fn cpu() -> anyhow::Result<()> {
    build_vidtrain("")?;
    let vidtrain = target_dir().join("release/vidtrain");
    let python = torch_python()?;
    let folder = target_dir().join("bench/cpu");
    std::fs::create_dir_all(&folder)?;
    let steps = std::env::var("BENCH_STEPS").unwrap_or_else(|_| "2".into());
    let only = std::env::var("BENCH_BACKBONE").unwrap_or_else(|_| "both".into());
    // `BENCH_ROWS=fp32 b4,lowest b4` runs only the rows named.
    let named: Vec<String> = std::env::var("BENCH_ROWS")
        .map(|names| names.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let models: Vec<&Model> = MODELS
        .iter()
        .filter(|model| {
            only == "all"
                || (only == "both" && model.in_both)
                || only.split(',').any(|name| name == model.backbone)
        })
        .collect();
    let (flops_per_sample, gemm_peak) =
        count_flops_and_peaks(&vidtrain, &python, &models, &folder)?;
    let mut rows = Vec::new();
    for model in models {
        for row in ROWS
            .into_iter()
            .filter(|row| named.is_empty() || named.iter().any(|name| name == row))
        {
            let mut common: Vec<String> = [
                "--backbone",
                model.backbone,
                "--rows",
                row,
                "--exact",
                "--warmup",
                "1",
                "--steps",
                &steps,
            ]
            .map(String::from)
            .to_vec();
            if let Some((frames, image)) = model.clip {
                common.extend([
                    "--frames".into(),
                    frames.to_string(),
                    "--image".into(),
                    image.to_string(),
                ]);
            }
            let file = folder.join(format!("{}-{}", model.backbone, row.replace(' ', "_")));
            let ours_file = file.with_extension("ours.json");
            let mut ours = Command::new(&vidtrain);
            ours.arg("bench-model")
                .args(&common)
                .arg("--out")
                .arg(&ours_file)
                .arg("trainer.accelerator=cpu");
            let ours = run_row(ours, &ours_file);
            let torch_file = file.with_extension("pytorch.json");
            let mut torch = Command::new(&python);
            torch
                .arg(project_root().join("bench/pytorch_reference.py"))
                .args(&common)
                .args(["--device", "cpu", "--out"])
                .arg(&torch_file);
            let torch = run_row(torch, &torch_file);
            rows.push(
                json!({"backbone": model.backbone, "row": row, "clip": model.clip,
                             "ours": ours, "pytorch": torch}),
            );
        }
    }
    let report = report(json!({
        "warmup_steps": 1,
        "timed_steps": steps,
        "torch": torch_version(&python),
        "flops_per_sample": flops_per_sample,
        "gemm_peak_gflops": gemm_peak,
        "rows": rows,
    }));
    println!("\n{}", ratio_table(&report));
    write_report("cpu", &report)
}

/// Each model's training FLOPs per sample (PyTorch's flop counter on the same model and clip:
/// forward and backward of matrix products and convolutions, fp32, no recompute) and both sides'
/// matrix-product peaks, `{"ours": {f32, bf16}, "pytorch": {f32, bf16}}` in GFLOP/s.
fn count_flops_and_peaks(
    vidtrain: &Path,
    python: &Path,
    models: &[&Model],
    folder: &Path,
) -> anyhow::Result<(Value, Value)> {
    let peak_file = folder.join("gemm-peak.ours.json");
    run_checked(
        Command::new(vidtrain)
            .args(["bench-model", "--gemm-peak", "--out"])
            .arg(&peak_file)
            .arg("trainer.accelerator=cpu"),
        "vidtrain bench-model --gemm-peak",
    )?;
    let ours: Value = serde_json::from_str(&std::fs::read_to_string(&peak_file)?)?;
    let mut flops = serde_json::Map::new();
    let mut torch_peak = Value::Null;
    for (index, model) in models.iter().enumerate() {
        let file = folder.join(format!("{}-flops.pytorch.json", model.backbone));
        let mut command = Command::new(python);
        command
            .arg(project_root().join("bench/pytorch_reference.py"))
            .args(["--backbone", model.backbone, "--rows", "fp32 b4", "--exact"])
            .args(["--device", "cpu", "--flops", "--out"])
            .arg(&file);
        if let Some((frames, image)) = model.clip {
            command.args([
                "--frames",
                &frames.to_string(),
                "--image",
                &image.to_string(),
            ]);
        }
        if index == 0 {
            command.arg("--gemm-peak");
        }
        run_checked(&mut command, "bench/pytorch_reference.py --flops")?;
        let counted: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        flops.insert(
            model.backbone.to_string(),
            counted["flops_per_sample"][model.backbone].clone(),
        );
        if index == 0 {
            torch_peak = counted["gemm_peak_gflops"].clone();
        }
    }
    let peaks = json!({
        "ours": {"f32": ours["f32_gflops"], "bf16": ours["bf16_gflops"], "bf16_route": ours["bf16_route"]},
        "pytorch": torch_peak,
    });
    Ok((Value::Object(flops), peaks))
}

/// Runs one side of one row and returns its JSON result (or the failure as `{"error": ...}`, so
/// that a failing row is reported and the others still run). A row that runs longer than
/// `BENCH_ROW_TIMEOUT_S` (default 600) is killed and reported as timed out: PyTorch's fp16
/// convolutions on some CPUs take many minutes a step.
fn run_row(mut command: Command, out: &Path) -> Value {
    eprintln!("$ {command:?}");
    let _ = std::fs::remove_file(out);
    let limit = std::env::var("BENCH_ROW_TIMEOUT_S")
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(600);
    let failure = match command
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
    {
        Err(error) => Some(error.to_string()),
        Ok(mut child) => {
            let stderr = child.stderr.take();
            let last_line = std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut stderr) = stderr {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                }
                text.lines().last().unwrap_or("").to_string()
            });
            let deadline = Instant::now() + Duration::from_secs(limit);
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(format!("timed out after {limit} s (BENCH_ROW_TIMEOUT_S)"));
                    }
                    Err(error) => break Err(error.to_string()),
                }
            };
            let last_line = last_line.join().unwrap_or_default();
            match status {
                Ok(status) if status.success() => None,
                Ok(status) => Some(format!("exit {status}: {last_line}")),
                Err(error) => Some(error),
            }
        }
    };
    let parsed = std::fs::read_to_string(out)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|value| value.as_array().and_then(|rows| rows.first().cloned()));
    match (parsed, failure) {
        (Some(value), None) => value,
        (Some(value), Some(_)) if value["error"].is_string() => value,
        (_, failure) => json!({"error": failure.unwrap_or_else(|| "no result written".into())}),
    }
}

/// The ratio table: samples/s and peak RSS of both sides and ours / PyTorch, the loss, and each
/// side's achieved GFLOP/s (ours also as a share of our peak in the row's product dtype: bf16
/// for bf16 rows, f32 for the others, which multiply in f32).
fn ratio_table(report: &Value) -> String {
    let mib = |value: &Value| {
        value
            .as_f64()
            .map_or("n/a".to_string(), |b| format!("{:.0}M", b / 1048576.0))
    };
    let number = |value: &Value, digits: usize| {
        value
            .as_f64()
            .map_or("n/a".to_string(), |v| format!("{v:.digits$}"))
    };
    let mut text = format!(
        "vidtrain / PyTorch {} eager on the CPU ({}), {} timed steps after 1 warm-up\n",
        report["torch"].as_str().unwrap_or("?"),
        report["host"]["cpu"].as_str().unwrap_or("?"),
        report["timed_steps"].as_str().unwrap_or("?"),
    );
    let peaks = &report["gemm_peak_gflops"];
    text += &format!(
        "matrix-product peak, GFLOP/s (2048³): vidtrain f32 {} bf16 {}, PyTorch f32 {} bf16 {}\n",
        number(&peaks["ours"]["f32"], 0),
        number(&peaks["ours"]["bf16"], 0),
        number(&peaks["pytorch"]["f32"], 0),
        number(&peaks["pytorch"]["bf16"], 0),
    );
    text += &format!(
        "{:<12} {:<20} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}\n",
        "model",
        "row",
        "ours s/s",
        "pt s/s",
        "speed",
        "ours RSS",
        "pt RSS",
        "RSS",
        "ours L",
        "pt L",
        "kernel",
        "ours GF/s",
        "pt GF/s",
        "of peak"
    );
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    };
    for row in report["rows"].as_array().into_iter().flatten() {
        let (ours, torch) = (&row["ours"], &row["pytorch"]);
        let model = match row["clip"].as_array() {
            Some(clip) => format!(
                "{} {}x{}",
                row["backbone"].as_str().unwrap_or(""),
                clip[0],
                clip[1]
            ),
            None => row["backbone"].as_str().unwrap_or("").to_string(),
        };
        let flops = report["flops_per_sample"][row["backbone"].as_str().unwrap_or("")].as_f64();
        let gflops = |side: &Value| match (flops, side["samples_per_s"].as_f64()) {
            (Some(flops), Some(rate)) => Some(flops * rate / 1e9),
            _ => None,
        };
        // bf16 rows multiply in f32 where the CPU has no bf16 dot product (the peak's bf16
        // figure is then the portable kernel's, which no row runs).
        let bf16_products = !peaks["ours"]["bf16_route"]
            .as_str()
            .unwrap_or("")
            .starts_with("portable");
        let product_dtype = if bf16_products && row["row"].as_str().unwrap_or("").contains("bf16") {
            "bf16"
        } else {
            "f32"
        };
        let of_peak = match (gflops(ours), peaks["ours"][product_dtype].as_f64()) {
            (Some(achieved), Some(peak)) => format!("{:.0}%", 100.0 * achieved / peak),
            _ => "n/a".to_string(),
        };
        let shown = |value: Option<f64>| value.map_or("n/a".to_string(), |v| format!("{v:.0}"));
        text += &format!(
            "{:<12} {:<20} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}",
            model,
            row["row"].as_str().unwrap_or(""),
            number(&ours["samples_per_s"], 3),
            number(&torch["samples_per_s"], 3),
            ratio(&ours["samples_per_s"], &torch["samples_per_s"]),
            mib(&ours["peak_host_rss_bytes"]),
            mib(&torch["peak_host_rss_bytes"]),
            ratio(&ours["peak_host_rss_bytes"], &torch["peak_host_rss_bytes"]),
            number(&ours["final_loss"], 4),
            number(&torch["final_loss"], 4),
            // vidtrain's share of CPU time in the kernel over the timed steps.
            ours["kernel_share"]
                .as_f64()
                .map_or("n/a".to_string(), |share| format!("{:.1}%", share * 100.0)),
            shown(gflops(ours)),
            shown(gflops(torch)),
            of_peak,
        );
        for (side, result) in [("ours", ours), ("pytorch", torch)] {
            if let Some(error) = result["error"].as_str() {
                text += &format!("  ({side}: {error})");
            }
        }
        text += "\n";
    }
    text
}

/// A Python with torch, torchvision and tensorboard (whose event reader checks vidtrain's
/// TensorBoard files): the cache venv, made or completed with pip when something is missing.
pub(crate) fn torch_python() -> anyhow::Result<PathBuf> {
    let venv = std::env::var_os("VIDTRAIN_TORCH_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/vidtrain/torch-venv"))
        })
        .context("neither VIDTRAIN_TORCH_VENV nor HOME is set")?;
    let python = venv.join("bin/python");
    let has_torch = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import torch, torchvision, safetensors, numpy, tensorboard",
            ])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if has_torch(&python) {
        return Ok(python);
    }
    eprintln!(
        "installing torch, torchvision and tensorboard into {} (a few minutes)",
        venv.display()
    );
    run_checked(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "torch",
            "torchvision",
            "safetensors",
            "numpy",
            "tensorboard",
        ])
        .status()
        .context("running pip")?;
    if !installed.success() || !has_torch(&python) {
        bail!("pip install torch into {} failed", venv.display());
    }
    Ok(python)
}

fn torch_version(python: &Path) -> Option<String> {
    let output = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
