//! `cargo xtask bench data`: the data pipeline's memory and speed on long 720p videos, measured
//! by the release `vidtrain data bench`, written to `target/bench/data.json` and printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{build_vidtrain, project_root, run_checked};

/// Frames of the short and the long video (1 and 10 minutes at 30 fps).
const SHORT_FRAMES: usize = 1800;
const LONG_FRAMES: usize = 18_000;

pub fn data() -> anyhow::Result<()> {
    build_vidtrain("")?;
    let target = target_dir();
    let vidtrain = target.join("release/vidtrain");
    let folder = target.join("bench/data");
    std::fs::create_dir_all(&folder)?;
    let short = dataset(&folder, "short", SHORT_FRAMES, &["front"])?;
    let long = dataset(&folder, "long", LONG_FRAMES, &["front"])?;
    // The short video in three views, for one or three views per ffmpeg process.
    let three_views = dataset(&folder, "short-3-views", SHORT_FRAMES, &THREE_VIEWS)?;

    // Each dataset's config names its views.
    let settings = [
        "data.img_size=224",
        "data.batch_size=4",
        "data.uniform_temporal_subsample_num=8",
        "data.max_video_frames=500",
        "data.prefetch_depth=2",
    ];
    let run = |config: &Path, workers: usize, extra: &[&str]| -> anyhow::Result<Value> {
        let workers = format!("data.num_workers={workers}");
        let mut args: Vec<&str> = vec!["data", "bench", "--batches", "12", "--config"];
        let config = config.to_str().context("UTF-8 path")?;
        args.push(config);
        args.extend(extra);
        args.extend(settings);
        args.push(&workers);
        eprintln!("$ vidtrain {}", args.join(" "));
        json_line(&vidtrain, &args)
    };

    let short_run = run(&short, 2, &[])?;
    let long_run = run(&long, 2, &[])?;
    let throughput = run(&long, 1, &["--ffmpeg-baseline"])?;
    let mut by_workers = Vec::new();
    for workers in [0, 1, 2, 4] {
        let result = run(&long, workers, &[])?;
        by_workers.push(json!({"num_workers": workers, "peak_rss_bytes": result["peak_rss_bytes"], "peak_process_tree_rss_bytes": result["peak_process_tree_rss_bytes"], "frames_per_s": result["frames_per_s"], "batch_bytes": result["batch_bytes"]}));
    }
    let mut by_views_per_decoder = Vec::new();
    for views in [1, 3] {
        let per_decoder = format!("data.views_per_decoder={views}");
        let result = run(&three_views, 2, &[per_decoder.as_str()])?;
        by_views_per_decoder.push(json!({"views_per_decoder": views, "peak_rss_bytes": result["peak_rss_bytes"], "peak_process_tree_rss_bytes": result["peak_process_tree_rss_bytes"], "frames_per_s": result["frames_per_s"], "decode_processes": result["decode_processes"]}));
    }

    let peak = |value: &Value| value["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN);
    let rss_ratio = peak(&long_run) / peak(&short_run);
    let speed_ratio = throughput["frames_per_s"].as_f64().unwrap_or(f64::NAN)
        / throughput["ffmpeg_null_frames_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
    let report = json!({
        "host": host(),
        "git_revision": git_revision(),
        "settings": settings,
        "short_video_frames": SHORT_FRAMES,
        "long_video_frames": LONG_FRAMES,
        "peak_rss_short_bytes": short_run["peak_rss_bytes"],
        "peak_rss_long_bytes": long_run["peak_rss_bytes"],
        "peak_process_tree_rss_short_bytes": short_run["peak_process_tree_rss_bytes"],
        "peak_process_tree_rss_long_bytes": long_run["peak_process_tree_rss_bytes"],
        "rss_long_over_short": rss_ratio,
        "pipeline_frames_per_s_1_worker": throughput["frames_per_s"],
        "ffmpeg_null_frames_per_s": throughput["ffmpeg_null_frames_per_s"],
        "pipeline_over_ffmpeg_null": speed_ratio,
        "by_workers": by_workers,
        "three_views_by_views_per_decoder": by_views_per_decoder,
    });
    let out = target.join("bench/data.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;

    let mib = |value: &Value| value.as_f64().unwrap_or(f64::NAN) / 1048576.0;
    println!("data pipeline, 720p H.264, {}", settings.join(" "));
    println!(
        "  peak RSS, 1-minute video   {:8.1} MiB (with the ffmpeg decoders {:.1} MiB)",
        mib(&short_run["peak_rss_bytes"]),
        mib(&short_run["peak_process_tree_rss_bytes"])
    );
    println!(
        "  peak RSS, 10-minute video  {:8.1} MiB (with the ffmpeg decoders {:.1} MiB)   ratio {:.3} (target <= 1.1)",
        mib(&long_run["peak_rss_bytes"]),
        mib(&long_run["peak_process_tree_rss_bytes"]),
        rss_ratio
    );
    println!(
        "  frames/s, pipeline (1 worker) {:.1} vs ffmpeg -f null {:.1}: {:.2}x (target >= 0.8)",
        throughput["frames_per_s"].as_f64().unwrap_or(f64::NAN),
        throughput["ffmpeg_null_frames_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN),
        speed_ratio
    );
    println!("  num_workers  peak RSS (MiB)  with decoders (MiB)  frames/s");
    for row in report["by_workers"].as_array().into_iter().flatten() {
        println!(
            "  {:>11}  {:>14.1}  {:>19.1}  {:>8.1}",
            row["num_workers"],
            mib(&row["peak_rss_bytes"]),
            mib(&row["peak_process_tree_rss_bytes"]),
            row["frames_per_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  three views, 2 workers: views_per_decoder  peak RSS (MiB)  with decoders (MiB)  frames/s  ffmpeg processes"
    );
    for row in report["three_views_by_views_per_decoder"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  {:>40}  {:>14.1}  {:>19.1}  {:>8.1}  {:>16}",
            row["views_per_decoder"],
            mib(&row["peak_rss_bytes"]),
            mib(&row["peak_process_tree_rss_bytes"]),
            row["frames_per_s"].as_f64().unwrap_or(f64::NAN),
            row["decode_processes"]
        );
    }
    println!("written to {}", out.display());
    Ok(())
}

/// The views of the seed's recordings.
const THREE_VIEWS: [&str; 3] = ["front", "left", "right"];

/// A dataset of one 720p test-pattern video in `views` (the same video in each) labelled in
/// consecutive 30-frame ranges; returns its config file, which names the views. The video is
/// reused when already there.
fn dataset(folder: &Path, name: &str, frames: usize, views: &[&str]) -> anyhow::Result<PathBuf> {
    let root = folder.join(name);
    let video_folder = root.join("videos").join(views[0]);
    std::fs::create_dir_all(&video_folder)?;
    let video = video_folder.join(format!("person_01_{name}.mp4"));
    if !video.is_file() {
        eprintln!("encoding {} ({frames} frames of 1280x720)", video.display());
        let partial = video.with_extension("partial.mp4");
        run_checked(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
                .arg(format!(
                    "testsrc2=size=1280x720:rate=30:duration={}",
                    frames / 30
                ))
                .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "60"])
                .args(["-pix_fmt", "yuv420p", "-movflags", "+faststart"])
                .arg(&partial),
            "ffmpeg (install it: apt-get install -y ffmpeg)",
        )
        .with_context(|| format!("encoding {}", video.display()))?;
        std::fs::rename(&partial, &video)?;
    }
    // The other views show the same video (decoding costs the same).
    for view in &views[1..] {
        let folder = root.join("videos").join(view);
        std::fs::create_dir_all(&folder)?;
        let copy = folder.join(format!("person_01_{name}.mp4"));
        if !copy.is_file() {
            std::fs::copy(&video, &copy)
                .with_context(|| format!("copying {} to {}", video.display(), copy.display()))?;
        }
    }
    let classes = ["left", "right", "down", "up", "front"];
    // One labelled second after another: 60 segments in the short video, 600 in the long one,
    // so both deliver the same number of batches.
    let labels: Vec<Value> = (0..frames / 30)
        .map(|i| {
            json!({"timelinelabels": [classes[i % classes.len()]],
                   "ranges": [{"start": i * 30, "end": i * 30 + 29}]})
        })
        .collect();
    let tasks = json!([{"video": format!("person_01_{name}.mp4"), "videoLabels": labels}]);
    std::fs::write(root.join("annotations.json"), tasks.to_string())?;
    let config = root.join("vidtrain.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nroot_path = \"{}\"\nannotation_path = \"annotations.json\"\nvideo_path = \"videos\"\n\n[data]\nviews = {:?}\n",
            root.display(),
            views
        ),
    )?;
    Ok(config)
}

/// A benchmark's release binary and its folder, `target/bench/NAME`, with its runs in `runs/`.
pub(crate) struct BenchFolder {
    pub vidtrain: PathBuf,
    pub folder: PathBuf,
    pub runs: PathBuf,
}

impl BenchFolder {
    /// Builds the release `vidtrain` with `features` (`""` for none) and names the folder.
    pub fn prepare(name: &str, features: &str) -> anyhow::Result<Self> {
        build_vidtrain(features)?;
        let target = target_dir();
        let folder = target.join("bench").join(name);
        // Each benchmark's runs are its own: earlier ones' checkpoints (r3d_18's are 400 MiB a
        // run) had filled 45 GiB of disk by stop 42, and a full disk failed a run mid-bench.
        let runs = folder.join("runs");
        if runs.exists() {
            std::fs::remove_dir_all(&runs)
                .with_context(|| format!("clearing the earlier runs in {}", runs.display()))?;
        }
        Ok(Self {
            vidtrain: target.join("release/vidtrain"),
            runs,
            folder,
        })
    }

    /// The small benchmark dataset in this folder ([`bench_dataset`]).
    pub fn dataset(&self) -> anyhow::Result<PathBuf> {
        bench_dataset(&self.vidtrain, &self.folder)
    }
}

/// The small benchmark dataset (2 persons, 300 frames of 64×64 in three views) in
/// `folder/data`, generated once; returns its config file.
pub(crate) fn bench_dataset(vidtrain: &Path, folder: &Path) -> anyhow::Result<PathBuf> {
    demo_dataset(vidtrain, &folder.join("data"), 2)
}

/// `vidtrain demo-data` of `persons` persons (300 frames of 64×64 in three views) in `data`,
/// generated once; returns its config file.
pub(crate) fn demo_dataset(
    vidtrain: &Path,
    data: &Path,
    persons: usize,
) -> anyhow::Result<PathBuf> {
    if !data.join("vidtrain.toml").is_file() {
        run_checked(
            Command::new(vidtrain)
                .args(["demo-data", "--frames", "300", "--size", "64x64"])
                .args(["--persons", &persons.to_string(), "--out"])
                .arg(data),
            "vidtrain demo-data",
        )?;
    }
    Ok(data.join("vidtrain.toml"))
}

/// A benchmark's report: `fields` with the machine and the revision.
pub(crate) fn report(fields: Value) -> Value {
    let mut report = json!({"host": host(), "git_revision": git_revision()});
    if let (Some(report), Value::Object(fields)) = (report.as_object_mut(), fields) {
        report.extend(fields);
    }
    report
}

/// Writes `report` to `target/bench/NAME.json` and says where.
pub(crate) fn write_report(name: &str, report: &Value) -> anyhow::Result<()> {
    let out = target_dir().join(format!("bench/{name}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(report)?)?;
    println!("written to {}", out.display());
    Ok(())
}

/// Runs `program args` and parses the last line of its stdout as JSON (the `--json` line of a
/// vidtrain command, a reference script's result).
pub(crate) fn json_line<S: AsRef<std::ffi::OsStr>>(
    program: &Path,
    args: &[S],
) -> anyhow::Result<Value> {
    let output = Command::new(program).args(args).output()?;
    if !output.status.success() {
        let shown: Vec<_> = args
            .iter()
            .map(|arg| arg.as_ref().to_string_lossy())
            .collect();
        bail!(
            "{} {} failed: {}",
            program.display(),
            shown.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

/// Runs `vidtrain <args>` (a `train` command) and returns the `summary.json` of the newest run
/// in `experiment` (the folder its `experiment=` and `paths.run_dir=` name).
pub(crate) fn train_summary<S: AsRef<std::ffi::OsStr> + std::fmt::Display>(
    vidtrain: &Path,
    args: &[S],
    experiment: &Path,
) -> anyhow::Result<Value> {
    let shown: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let mut command = Command::new(vidtrain);
    command.args(args);
    run_summary(
        command,
        &format!("vidtrain {}", shown.join(" ")),
        experiment,
    )
}

/// Runs `command` (shown as `shown`), a training run under any launcher, and returns the
/// `summary.json` of the newest run in `experiment`.
pub(crate) fn run_summary(
    mut command: Command,
    shown: &str,
    experiment: &Path,
) -> anyhow::Result<Value> {
    eprintln!("$ {shown}");
    let output = command
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let run = latest_run(experiment)?;
    Ok(serde_json::from_str(&std::fs::read_to_string(
        run.join("summary.json"),
    )?)?)
}

/// The newest run folder of an experiment folder.
fn latest_run(experiment: &Path) -> anyhow::Result<PathBuf> {
    let mut stamps: Vec<PathBuf> = std::fs::read_dir(experiment)?
        .flatten()
        .map(|entry| entry.path())
        .collect();
    stamps.sort();
    stamps.pop().context("no run folder")
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

pub(crate) fn host() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        });
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).ok()})
}

pub(crate) fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(project_root())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `cargo xtask bench recompute`: peak host RSS and speed of training steps of the seed's model
/// (224 px, T 8, batch 4, D 256, 4 layers, one view) on the CPU backend — where activations live
/// in host memory — for each `model.checkpoint` mode, of ViViT at the same size, and of
/// VideoMamba (D 192, 6 blocks, 112 px, batch 2: 196 tokens a clip). `BENCH_CASES=mamba` runs
/// only the named backbones.
pub fn recompute() -> anyhow::Result<()> {
    let bench = BenchFolder::prepare("recompute", "")?;
    let config = bench.dataset()?;
    let mut rows = Vec::new();
    let only = bench_cases();
    let cases = ["none", "encoder", "stem", "all"]
        .map(|mode| ("transformer", mode))
        .into_iter()
        .chain(["none", "all"].map(|mode| ("vivit", mode)))
        .chain(["none", "all"].map(|mode| ("mamba", mode)))
        .filter(|(backbone, _)| only.is_empty() || only.iter().any(|word| backbone.contains(word)));
    // VideoMamba's scan states make it the heaviest per token: a smaller clip keeps `none` near
    // 1.5 GiB.
    let mamba_size = [
        "data.img_size=112",
        "data.batch_size=2",
        "model.mamba_layers=6",
    ];
    for (backbone, mode) in cases {
        let experiment = format!("experiment=recompute-{backbone}-{mode}");
        let checkpoint = format!("model.checkpoint={mode}");
        let backbone_key = format!("model.backbone={backbone}");
        let run_dir = format!("paths.run_dir={}", bench.runs.display());
        let mut args = vec![
            "train",
            "--config",
            config.to_str().context("UTF-8 path")?,
            "data.img_size=224",
            "data.batch_size=4",
            "data.uniform_temporal_subsample_num=8",
            "train.view=single",
            "model.transformer_dim=256",
            "model.transformer_layers=4",
            "model.transformer_heads=4",
            "model.transformer_ff_dim=1024",
            "train.max_steps=3",
            "train.k_folds=2",
            "train.video_batch_size=1",
            "data.num_workers=0",
            "data.prefetch_depth=1",
            &experiment,
            &checkpoint,
            &backbone_key,
            &run_dir,
        ];
        if backbone == "mamba" {
            args.extend(mamba_size);
        }
        let summary = train_summary(
            &bench.vidtrain,
            &args,
            &bench.runs.join(format!("recompute-{backbone}-{mode}")),
        )?;
        rows.push(json!({
            "backbone": backbone,
            "mode": mode,
            "peak_host_rss_bytes": summary["peak_host_rss_bytes"],
            "samples_per_s": summary["samples_per_s"],
            "steps": summary["steps"],
        }));
    }
    println!(
        "224 px, T 8, batch 4, D 256, 4 layers, 4 heads, one view, CPU backend, 3 optimizer steps \
         (transformer: the seed's model; vivit: 2×16×16 tubelets, 784 tokens; mamba: VideoMamba \
         D 192, state 16, 6 blocks, 112 px, batch 2, 196 tokens)"
    );
    println!("  backbone     model.checkpoint  peak host RSS  vs none  samples/s  slowdown");
    let baselines: Vec<(String, f64, f64)> = rows
        .iter()
        .filter(|row| row["mode"] == "none")
        .map(|row| {
            (
                row["backbone"].as_str().unwrap_or("").to_string(),
                row["peak_host_rss_bytes"].as_f64().unwrap_or(f64::NAN),
                row["samples_per_s"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    for row in &mut rows {
        let backbone = row["backbone"].as_str().unwrap_or("").to_string();
        let Some((_, base_rss, base_speed)) =
            baselines.iter().find(|(name, _, _)| *name == backbone)
        else {
            continue;
        };
        let rss = row["peak_host_rss_bytes"].as_f64().unwrap_or(f64::NAN);
        let speed = row["samples_per_s"].as_f64().unwrap_or(f64::NAN);
        row["rss_vs_none"] = json!(rss / base_rss);
        row["slowdown_vs_none"] = json!(base_speed / speed);
        println!(
            "  {:<11}  {:<16}  {:>9.0} MiB  {:>7.2}  {:>9.2}  {:>7.2}x",
            backbone,
            row["mode"].as_str().unwrap_or(""),
            rss / 1048576.0,
            rss / base_rss,
            speed,
            base_speed / speed
        );
    }
    write_report("recompute", &report(json!({ "rows": rows })))
}

/// `BENCH_CASES=a,b`: the words naming the cases to run (all when unset).
fn bench_cases() -> Vec<String> {
    std::env::var("BENCH_CASES")
        .map(|words| words.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

/// `cargo xtask bench tokens`: how time and peak memory of a training step grow with the
/// sequence, VideoMamba (linear scan) beside ViViT (quadratic attention) at the same width and
/// depth (D 192, 4 blocks; ViViT with 3 heads and FF 768), 112 px, batch 2, one view, f32, no
/// recompute, on the CPU backend: 8, 16 and 32 frames, i.e. 196, 392 and 784 tokens a clip.
pub fn tokens() -> anyhow::Result<()> {
    let bench = BenchFolder::prepare("tokens", "")?;
    let config = bench.dataset()?;
    let mut rows = Vec::new();
    for backbone in ["mamba", "vivit"] {
        for frames in [8, 16, 32] {
            let name = format!("tokens-{backbone}-{frames}");
            let args = [
                "train".to_string(),
                "--config".into(),
                config.to_str().context("UTF-8 path")?.into(),
                format!("model.backbone={backbone}"),
                format!("data.uniform_temporal_subsample_num={frames}"),
                "data.img_size=112".into(),
                "data.batch_size=2".into(),
                "train.view=single".into(),
                "model.mamba_layers=4".into(),
                "model.transformer_dim=192".into(),
                "model.transformer_layers=4".into(),
                "model.transformer_heads=3".into(),
                "model.transformer_ff_dim=768".into(),
                "model.transformer_dropout=0".into(),
                "model.checkpoint=none".into(),
                "train.max_steps=3".into(),
                "train.k_folds=2".into(),
                "train.video_batch_size=1".into(),
                "data.num_workers=0".into(),
                "data.prefetch_depth=1".into(),
                format!("experiment={name}"),
                format!("paths.run_dir={}", bench.runs.display()),
            ];
            let summary = train_summary(&bench.vidtrain, &args, &bench.runs.join(&name))?;
            rows.push(json!({
                "backbone": backbone,
                "frames": frames,
                "tokens": frames / 2 * 49,
                "peak_host_rss_bytes": summary["peak_host_rss_bytes"],
                "samples_per_s": summary["samples_per_s"],
            }));
        }
    }
    println!(
        "112 px, batch 2, one view, D 192, 4 blocks, f32, no recompute, CPU backend, 3 optimizer \
         steps; cost relative to each model's 196 tokens"
    );
    println!("  backbone  tokens  s/sample  vs 1x  peak host RSS  vs 1x");
    for backbone in ["mamba", "vivit"] {
        let of: Vec<&Value> = rows
            .iter()
            .filter(|row| row["backbone"] == backbone)
            .collect();
        let seconds = |row: &Value| 1.0 / row["samples_per_s"].as_f64().unwrap_or(f64::NAN);
        let rss = |row: &Value| row["peak_host_rss_bytes"].as_f64().unwrap_or(f64::NAN);
        let (base_seconds, base_rss) = (seconds(of[0]), rss(of[0]));
        for row in of {
            println!(
                "  {:<8}  {:>6}  {:>8.2}  {:>5.2}  {:>9.0} MiB  {:>5.2}",
                backbone,
                row["tokens"],
                seconds(row),
                seconds(row) / base_seconds,
                rss(row) / 1048576.0,
                rss(row) / base_rss
            );
        }
    }
    write_report("tokens", &report(json!({ "rows": rows })))
}

/// `cargo xtask bench gpu`: builds the CUDA binary, strips it into `bench/gpu/bin/vidtrain`
/// (ignored by git, carried to a GPU machine), then runs `bench/gpu/run.sh` when this machine
/// has a GPU, or says how to run it on one.
pub fn gpu() -> anyhow::Result<()> {
    build_vidtrain("cuda")?;
    let folder = project_root().join("bench/gpu/bin");
    std::fs::create_dir_all(&folder)?;
    let binary = folder.join("vidtrain");
    std::fs::copy(target_dir().join("release/vidtrain"), &binary)?;
    let stripped = Command::new("strip").arg(&binary).status();
    if !stripped.is_ok_and(|status| status.success()) {
        eprintln!("warning: strip failed; the binary is larger than it needs to be");
    }
    let size = std::fs::metadata(&binary)?.len();
    println!("{} ({:.1} MiB)", binary.display(), size as f64 / 1048576.0);
    let has_gpu = Command::new("nvidia-smi")
        .output()
        .is_ok_and(|output| output.status.success());
    if has_gpu {
        run_checked(
            Command::new("bash")
                .arg("bench/gpu/run.sh")
                .current_dir(project_root()),
            "bench/gpu/run.sh",
        )?;
    } else {
        println!(
            "no GPU here. On a GPU machine with PyTorch, from the repository root, with \
             bench/gpu/bin carried along:\n  OUT=<folder> bash bench/gpu/run.sh\n\
             (results and compare.txt land in OUT; see docs/benchmarks.md)"
        );
    }
    Ok(())
}
