//! The device code paths on Burn's wgpu backend (`--features wgpu`), run in CI on lavapipe, Mesa's
//! software Vulkan driver: f32 losses equal to the CPU backend's, device memory in the summary and
//! in `vidtrain plan`, recompute, checkpoints that cross between the device and the CPU, eval and
//! predict on the device, and a device out-of-memory that ends with advice.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::train::{TINY_MODEL, read_json, runs_of, small_dataset, step_losses};
use crate::{assert_clean_failure, assert_stderr_contains, scratch, stderr, stdout, vidtrain_with};

/// Mesa's lavapipe ICD, where Debian's `mesa-vulkan-drivers` puts it.
const LAVAPIPE_ICD: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

/// Relative tolerance between the CPU's and the device's f32 losses: the same arithmetic in
/// another order (cubecl's matmul tiles and reductions against gemm's).
const DEVICE_TOLERANCE: f64 = 1e-4;

/// `vidtrain args...` with the Vulkan loader pointed at lavapipe unless the caller's environment
/// already chose a driver (a machine with a real GPU keeps its own).
fn vidtrain_on_device(dir: &Path, args: &[&str]) -> Output {
    vidtrain_with(dir, args, |command| {
        if std::env::var_os("VK_ICD_FILENAMES").is_none() && Path::new(LAVAPIPE_ICD).is_file() {
            command.env("VK_ICD_FILENAMES", LAVAPIPE_ICD);
        }
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            // Mesa's shader cache and the loader look here; a CI container often has none.
            command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
        }
    })
}

/// The tiny model without dropout: the device draws its dropout masks from its own generator,
/// so only a run without dropout can equal the CPU's step for step.
fn tiny_args<'a>(config: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--config", config, "model.transformer_dropout=0"];
    args.extend(TINY_MODEL);
    args.extend_from_slice(extra);
    args
}

/// `vidtrain train <options> <tiny model> <extra>`, whatever its outcome.
fn train_output(dir: &Path, options: &[&str], config: &str, extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend_from_slice(options);
    args.extend(tiny_args(config, extra));
    vidtrain_on_device(dir, &args)
}

/// `vidtrain train` with the tiny model and `extra`, which must succeed; returns the run folder.
fn train(dir: &Path, config: &str, experiment: &str, extra: &[&str]) -> PathBuf {
    let experiment_setting = format!("experiment={experiment}");
    let output = train_output(dir, &[], config, &[extra, &[&experiment_setting]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    let runs = runs_of(&dir.join("runs").join(experiment));
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn assert_losses_equal(expected: &[(u64, f64)], got: &[(u64, f64)], what: &str) {
    assert_eq!(
        expected.iter().map(|(step, _)| step).collect::<Vec<_>>(),
        got.iter().map(|(step, _)| step).collect::<Vec<_>>(),
        "{what}"
    );
    for ((step, expected), (_, got)) in expected.iter().zip(got) {
        assert!(
            (expected - got).abs() <= DEVICE_TOLERANCE * expected.abs(),
            "{what}, step {step}: {expected} vs {got}"
        );
    }
}

fn steps_from(losses: &[(u64, f64)], first: u64) -> Vec<(u64, f64)> {
    losses
        .iter()
        .copied()
        .filter(|(step, _)| *step >= first)
        .collect()
}

#[test]
fn the_device_trains_as_the_cpu_and_checkpoints_cross_between_them() {
    let dir = scratch("device");
    let config = small_dataset(&dir);
    let wgpu = "trainer.accelerator=wgpu";

    // Initialisation draws from the device's generator, so both backends continue one CPU run.
    let base = train(&dir, &config, "base", &["train.max_steps=2"]);
    let resume_base = format!("train.resume={}", base.display());
    let cpu = train(
        &dir,
        &config,
        "cpu",
        &[&resume_base, "train.max_steps=7", "trainer.accelerator=cpu"],
    );
    let device = train(
        &dir,
        &config,
        "device",
        &[&resume_base, "train.max_steps=5", wgpu],
    );
    let cpu_losses = step_losses(&cpu);
    assert_eq!(cpu_losses.len(), 5, "{cpu_losses:?}");
    assert_losses_equal(
        &cpu_losses[..3],
        &step_losses(&device),
        "the device's steps against the CPU's",
    );

    // The summary reports the device's memory, and the plan's device peak is within 25 % of it.
    let summary = read_json(&device.join("summary.json"));
    assert_eq!(summary["backend"], "wgpu", "{summary}");
    let in_use = summary["peak_device_bytes"].as_u64().expect("device bytes");
    let reserved = summary["peak_device_reserved_bytes"]
        .as_u64()
        .expect("device reserved bytes");
    assert!(in_use > 0 && reserved >= in_use, "{summary}");
    assert_device_plan_within_25_percent(&dir, &config, &[], in_use);

    // fp16 on the device (where the adapter has shader-f16, as lavapipe does): the losses track
    // f32's and the device holds less.
    if half_precision_on_device(&dir, &config) {
        let half = train(
            &dir,
            &config,
            "device-fp16",
            &[
                &resume_base,
                "train.max_steps=5",
                wgpu,
                "trainer.precision=16",
            ],
        );
        for ((step, full), (_, half)) in cpu_losses.iter().zip(step_losses(&half)) {
            assert!(
                (full - half).abs() <= 1e-3 * full.abs(),
                "fp16 on the device, step {step}: {full} in f32 vs {half}"
            );
        }
        let half_in_use = read_json(&half.join("summary.json"))["peak_device_bytes"]
            .as_u64()
            .expect("device bytes");
        assert!(
            (half_in_use as f64) < 0.75 * in_use as f64,
            "fp16 {half_in_use} B in use against f32's {in_use} B"
        );
        assert_device_plan_within_25_percent(&dir, &config, &["trainer.precision=16"], half_in_use);
    }

    // Recompute leaves the device's run unchanged.
    let recomputed = train(
        &dir,
        &config,
        "device-recompute",
        &[
            &resume_base,
            "train.max_steps=5",
            wgpu,
            "model.checkpoint=all",
        ],
    );
    assert_losses_equal(
        &step_losses(&device),
        &step_losses(&recomputed),
        "recompute on the device",
    );

    // The device's checkpoint continues on the CPU as the CPU's own run did.
    let resume_device = format!("train.resume={}", device.display());
    let back = train(
        &dir,
        &config,
        "back-on-cpu",
        &[
            &resume_device,
            "train.max_steps=7",
            "trainer.accelerator=cpu",
        ],
    );
    assert_losses_equal(
        &steps_from(&cpu_losses, 6),
        &step_losses(&back),
        "the CPU continuing the device's checkpoint",
    );

    // Eval and predict on the device score as on the CPU.
    let run = device.to_str().unwrap();
    let mut evaluated = Vec::new();
    for (out, accelerator) in [
        ("eval-cpu", "trainer.accelerator=cpu"),
        ("eval-device", wgpu),
    ] {
        let output = vidtrain_on_device(
            &dir,
            &["eval", "--checkpoint", run, "--out", out, accelerator],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        evaluated.push(read_json(&dir.join(out).join("metrics.json")));
    }
    assert_eq!(
        evaluated[0]["metrics"]["confusion"],
        evaluated[1]["metrics"]["confusion"]
    );
    let mut predicted = Vec::new();
    for (out, accelerator) in [("cpu.csv", "trainer.accelerator=cpu"), ("device.csv", wgpu)] {
        let output = vidtrain_on_device(
            &dir,
            &[
                "predict",
                "--checkpoint",
                run,
                "--window",
                "64",
                "data/videos/left/person_02_demo.mp4",
                "--out",
                out,
                accelerator,
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        predicted.push(probabilities(&dir.join(out)));
    }
    assert_eq!(predicted[0].len(), predicted[1].len());
    for (cpu, device) in predicted[0].iter().zip(&predicted[1]) {
        assert!((cpu - device).abs() <= 1e-4, "{cpu} vs {device}");
    }
}

/// `vidtrain plan --device wgpu` of the tiny model with `extra` must be within 25 % of `in_use`,
/// the device peak a run measured.
fn assert_device_plan_within_25_percent(dir: &Path, config: &str, extra: &[&str], in_use: u64) {
    let mut args = vec!["plan", "--json", "--device", "wgpu"];
    args.extend(tiny_args(config, extra));
    let output = vidtrain_on_device(dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let planned = plan["device_peak_bytes"].as_u64().expect("device peak");
    let ratio = planned as f64 / in_use as f64;
    eprintln!("device plan {extra:?}: {planned} B, measured {in_use} B in use, ratio {ratio:.3}");
    assert!(
        (0.75..=1.25).contains(&ratio),
        "{extra:?}: plan {planned} B, measured {in_use} B"
    );
}

/// The precision `vidtrain config show` resolves for `precision` on wgpu with the fallback on
/// (32 where the adapter lacks it), and the command's output.
fn precision_on_device(dir: &Path, config: &str, precision: &str) -> (String, Output) {
    let precision = format!("trainer.precision={precision}");
    let output = vidtrain_on_device(
        dir,
        &[
            "config",
            "show",
            "--config",
            config,
            "trainer.accelerator=wgpu",
            &precision,
            "trainer.precision_fallback=true",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: toml::Table = toml::from_str(&stdout(&output)).unwrap();
    let resolved = shown["trainer"]["precision"].as_str().unwrap().to_string();
    (resolved, output)
}

/// Whether the adapter computes f16.
fn half_precision_on_device(dir: &Path, config: &str) -> bool {
    let half = precision_on_device(dir, config, "16").0 == "16-mixed";
    if !half {
        eprintln!("this wgpu adapter has no f16: fp16 on the device not tested");
    }
    half
}

/// Every class probability of a `vidtrain predict` CSV, row after row.
fn probabilities(csv: &Path) -> Vec<f64> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|line| {
            line.split(',')
                .skip(5)
                .map(|p| p.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_device_out_of_memory_ends_cleanly_naming_what_to_turn() {
    let dir = scratch("device-oom");
    let config = small_dataset(&dir);
    // 512 px: the stem's first buffer (288 MiB) is more than lavapipe hands out in one piece.
    let output = train_output(
        &dir,
        &[],
        &config,
        &[
            "trainer.accelerator=wgpu",
            "data.img_size=512",
            "experiment=oom",
        ],
    );
    assert_clean_failure(&output, 1);
    let text = stderr(&output);
    assert!(
        text.contains("ran out of memory") && text.contains("to lower it"),
        "{text}"
    );
    assert!(text.contains("model.checkpoint=all"), "{text}");
    assert!(
        !dir.join("runs/oom").exists() || runs_of(&dir.join("runs/oom")).is_empty(),
        "a failed run leaves no run folder"
    );
}

#[test]
fn half_precision_the_adapter_lacks_is_refused_or_falls_back_when_asked() {
    let dir = scratch("device-precision");
    let config = small_dataset(&dir);
    // WGSL has no bf16: refused before any work, naming the key.
    let output = train_output(
        &dir,
        &[],
        &config,
        &["trainer.accelerator=wgpu", "trainer.precision=bf16"],
    );
    assert_clean_failure(&output, 2);
    let text = stderr(&output);
    assert!(text.contains("trainer.precision"), "{text}");
    assert!(text.contains("wgpu adapter"), "{text}");
    assert!(!dir.join("runs").exists(), "refused before any work");

    // With the fallback on, 32-bit is what the run would use.
    let (resolved, output) = precision_on_device(&dir, &config, "bf16");
    assert_eq!(resolved, "32");
    assert_stderr_contains(&output, "training in 32-bit");
}

#[test]
fn fit_vram_on_the_device_keeps_the_measured_peak_within_the_budget() {
    let dir = scratch("device-fit");
    let config = small_dataset(&dir);
    // The tiny model at batch 4 is planned at 7.5 MiB on the device; 6 MiB needs a smaller
    // micro-batch (or recompute) with the same effective batch.
    const BUDGET: u64 = 6 << 20;
    let output = train_output(
        &dir,
        &["--fit-vram", "6MiB"],
        &config,
        &[
            "trainer.accelerator=wgpu",
            "train.max_steps=2",
            "experiment=fit",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_stderr_contains(&output, "--fit: ");
    let run = &runs_of(&dir.join("runs/fit"))[0];
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    let batch = saved["data"]["batch_size"].as_integer().unwrap();
    let accumulate = saved["train"]["accumulate_grad_batches"]
        .as_integer()
        .unwrap();
    assert_eq!(
        batch * accumulate,
        4,
        "the effective batch stays: {saved:?}"
    );
    let in_use = read_json(&run.join("summary.json"))["peak_device_bytes"]
        .as_u64()
        .expect("device bytes");
    assert!(
        in_use <= BUDGET,
        "{in_use} B in use against a budget of {BUDGET} B"
    );
}
