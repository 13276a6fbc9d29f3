//! `vidtrain`: the command line. Parses arguments, resolves the config, calls the library
//! crates, prints results. No training or data logic lives here.
//!
//! Exit codes: 0 success; 1 the run failed (data, I/O, non-finite loss); 2 bad command line or
//! config (nothing was started); 130 interrupted by Ctrl-C (a checkpoint was saved first).

mod args;
mod demo;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use args::{
    BenchBackbone, BenchModelArgs, Cli, Command, ConfigArgs, ConfigCommand, DataCommand, EvalArgs,
    ExportArgs, ExportFormatArg, PlanArgs, PlanDevice, PredictArgs, Split, TrainArgs,
};
use vidtrain_trainer::BackendChoice;

/// Tensor-sized blocks are reused instead of mapped, zeroed and unmapped on every op
/// (decision 0008); the cached bytes are resident, counted and bounded.
#[global_allocator]
static ALLOCATOR: vidtrain_memutil::reuse_pool::ReusePool = vidtrain_memutil::reuse_pool::ReusePool;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    bound_allocator_retention();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// An error and the exit code it maps to.
struct Failure {
    error: anyhow::Error,
    code: u8,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let interrupted = error.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<vidtrain_trainer::Error>(),
                Some(
                    vidtrain_trainer::Error::Interrupted { .. }
                        | vidtrain_trainer::Error::Data(vidtrain_data::Error::Stopped { .. })
                )
            ) || matches!(
                cause.downcast_ref::<vidtrain_data::Error>(),
                Some(vidtrain_data::Error::Stopped { .. })
            )
        });
        let code = if interrupted {
            130
        } else if is_usage_error(&error) {
            2
        } else {
            1
        };
        Failure { error, code }
    }
}

/// Config and "unsupported setting" errors are the user's to fix before anything runs: exit 2;
/// an interrupted run exits 130 like any program stopped by Ctrl-C.
fn is_usage_error(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<vidtrain_config::Error>().is_some()
            || matches!(
                cause.downcast_ref::<vidtrain_trainer::Error>(),
                Some(
                    vidtrain_trainer::Error::Config(_)
                        | vidtrain_trainer::Error::Unsupported { .. }
                        | vidtrain_trainer::Error::Setting { .. }
                        | vidtrain_trainer::Error::ExceedsMachineMemory { .. }
                )
            )
    })
}

/// glibc serves allocations below a *dynamic* threshold (raised up to 32 MiB each time a larger
/// block is freed) from its heap, and keeps them after they are freed. Tensors of a few MiB then
/// pile up as retained heap: measured on the seed's model at 224 px, peak RSS 3.6 GiB instead of
/// 2.9 GiB. A fixed 1 MiB threshold maps every larger block on its own and unmaps it when freed,
/// so RSS follows the live tensors (and `vidtrain plan` can predict it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_allocator_retention() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return; // the user's own setting wins
    }
    // SAFETY: mallopt only changes allocator parameters; called before any other thread starts.
    let applied = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    if applied != 1 {
        tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused; RSS may include freed memory");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_retention() {}

fn init_logging() {
    // In a data-parallel run rank 0 tells the story; the other ranks speak up only to warn.
    let follower = vidtrain_trainer::distributed::launch_from_environment()
        .is_some_and(|launch| launch.rank > 0);
    let default_level = if follower { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIDTRAIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Show(args),
        } => {
            let config = load_config(&args, None)?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::DemoData(args) => {
            let spec = args.to_spec()?;
            let summary = vidtrain_data::demo::generate(&spec).with_context(|| {
                format!("generating the demo dataset in {}", spec.out.display())
            })?;
            println!(
                "wrote {} videos and {} labelled ranges; train on it with:\n  vidtrain train --config {}",
                summary.videos,
                summary.ranges,
                summary.config_path.display()
            );
            Ok(())
        }
        Command::Train(args) => train(&args),
        Command::Plan(args) => plan(&args),
        Command::BenchModel(args) => bench_model(&args),
        Command::Eval(args) => eval(&args),
        Command::Predict(args) => predict(&args),
        Command::Export(args) => export(&args),
        Command::Data {
            command: DataCommand::Inspect(args),
        } => {
            let config = load_config_or_demo(&args)?;
            let dataset = vidtrain_data::Dataset::open(&config).context("indexing the dataset")?;
            print!("{}", vidtrain_data::DatasetReport::new(&dataset));
            Ok(())
        }
        Command::Data {
            command: DataCommand::Bench(args),
        } => {
            let config = load_config_or_demo(&args.config)?;
            let bench =
                vidtrain_trainer::bench_pipeline(&config, args.batches, args.ffmpeg_baseline)
                    .context("running the data pipeline")?;
            let bytes = |value: Option<u64>| {
                value.map_or_else(|| "n/a".into(), vidtrain_memutil::format_bytes)
            };
            println!(
                "{} batches ({} samples) in {:.1} s: {:.0} frames/s, peak RSS {} (baseline {}; \
                 with the ffmpeg decoders {}), {} ffmpeg processes, {} skipped",
                bench.batches,
                bench.samples,
                bench.wall_s,
                bench.frames_per_s,
                bytes(bench.peak_rss_bytes),
                bytes(bench.baseline_rss_bytes),
                bytes(bench.peak_process_tree_rss_bytes),
                bench.decode_processes,
                bench.skipped
            );
            if let Some(reference) = bench.ffmpeg_null_frames_per_s {
                println!(
                    "plain ffmpeg -f null on the same samples: {reference:.0} frames/s ({:.2}x)",
                    bench.frames_per_s / reference
                );
            }
            println!(
                "{}",
                serde_json::to_string(&bench).expect("bench serialises")
            );
            Ok(())
        }
    }
}

/// Resolves the config: defaults < configs/default.toml < `preset` < --config files < env < overrides.
fn load_config(
    args: &ConfigArgs,
    preset: Option<(&str, &str, &std::path::Path)>,
) -> anyhow::Result<vidtrain_config::Config> {
    let mut loader = vidtrain_config::ConfigLoader::new();
    if let Some((name, text, dataset_file)) = preset {
        loader = loader.preset(name, text).file(dataset_file)?;
    }
    for file in &args.config {
        loader = loader.file(file)?;
    }
    let config = loader.env().overrides(&args.overrides)?.load()?;
    Ok(config)
}

/// The config, or — when it names no dataset — the bundled demo's (generated on first use).
fn load_config_or_demo(args: &ConfigArgs) -> anyhow::Result<vidtrain_config::Config> {
    let config = load_config(args, None)?;
    if config.paths.has_dataset() {
        return Ok(config);
    }
    let dataset_config = demo::ensure_demo_dataset()?;
    eprintln!(
        "no dataset configured (paths.annotation_path is empty): using the bundled demo from {}",
        dataset_config.parent().unwrap_or(&dataset_config).display()
    );
    load_config(
        args,
        Some(("configs/demo.toml", demo::DEMO_TOML, &dataset_config)),
    )
}

fn bench_model(args: &BenchModelArgs) -> Result<(), Failure> {
    let config = load_config(&args.config, None)?;
    let backend = vidtrain_trainer::resolve_backend(&config).map_err(anyhow::Error::from)?;
    let backbones: &[vidtrain_config::Backbone] = match args.backbone {
        BenchBackbone::Transformer => &[vidtrain_config::Backbone::Transformer],
        BenchBackbone::Vivit => &[vidtrain_config::Backbone::Vivit],
        BenchBackbone::Mamba => &[vidtrain_config::Backbone::Mamba],
        BenchBackbone::Both => &[
            vidtrain_config::Backbone::Transformer,
            vidtrain_config::Backbone::Vivit,
        ],
    };
    let rows: Vec<_> = backbones
        .iter()
        .flat_map(|&backbone| vidtrain_trainer::bench::model::standard_rows(backbone, args.tiny))
        .filter(|row| {
            args.rows.is_empty()
                || args.rows.iter().any(|name| {
                    if args.exact {
                        row.name == *name
                    } else {
                        row.name.contains(name.as_str())
                    }
                })
        })
        .map(|mut row| {
            row.frames = args.frames.unwrap_or(row.frames);
            row.image = args.image.unwrap_or(row.image);
            row
        })
        .collect();
    eprintln!(
        "{} rows on {:?}, {} warm-up + {} timed optimizer steps each",
        rows.len(),
        backend,
        args.warmup,
        args.steps
    );
    let mut results = Vec::new();
    println!(
        "  {:<11} {:<27} {:>10} {:>10} {:>12} {:>12} {:>10} {:>9} {:>7} {:>10}",
        "model",
        "row",
        "samples/s",
        "first s",
        "device use",
        "reserved",
        "host RSS",
        "loss",
        "kernel",
        "pool peak"
    );
    for row in rows {
        let result = vidtrain_trainer::bench::model::bench_rows(
            &config,
            std::slice::from_ref(&row),
            backend,
            args.warmup,
            args.steps,
            args.tiny,
        )
        .remove(0);
        let bytes = |value: Option<u64>| {
            value.map_or_else(|| "n/a".to_string(), vidtrain_memutil::format_bytes)
        };
        let number =
            |value: Option<f64>| value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"));
        println!(
            "  {:<11} {:<27} {:>10} {:>10} {:>12} {:>12} {:>10} {:>9} {:>7} {:>10}{}",
            format!("{:?}", row.backbone).to_lowercase(),
            row.name,
            number(result.samples_per_s),
            number(result.first_step_s),
            bytes(result.peak_device_in_use_bytes),
            bytes(result.peak_device_reserved_bytes),
            bytes(result.peak_host_rss_bytes),
            result
                .final_loss
                .map_or_else(|| "n/a".to_string(), |loss| format!("{loss:.4}")),
            result.kernel_share.map_or_else(
                || "n/a".to_string(),
                |share| format!("{:.1}%", share * 100.0)
            ),
            if result.pool.active {
                vidtrain_memutil::format_bytes(result.pool.peak_cached_bytes)
            } else {
                "off".to_string()
            },
            result
                .error
                .as_ref()
                .map_or_else(String::new, |error| format!("  ({error})"))
        );
        results.push(result);
        if let Some(out) = &args.out {
            // Rewritten after every row, so a run stopped by a time limit keeps what it measured.
            let text = serde_json::to_string_pretty(&results).expect("results serialise");
            vidtrain_trainer::write_atomically(out, text.as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(())
}

fn parse_size(flag: &str, text: &Option<String>) -> anyhow::Result<Option<u64>> {
    text.as_ref()
        .map(|text| {
            vidtrain_memutil::plan::parse_bytes(text).ok_or_else(|| {
                anyhow::anyhow!("{flag} {text:?} is not a size; write e.g. 4GiB, 512MiB or 8GB")
            })
        })
        .transpose()
}

/// Runs `--fit` and returns the chosen overrides, or the reason nothing fits.
fn fit_overrides(
    config: &vidtrain_config::Config,
    backend: BackendChoice,
    vram: Option<u64>,
    ram: Option<u64>,
) -> anyhow::Result<vidtrain_trainer::plan::Fit> {
    if vram.is_none() && ram.is_none() {
        anyhow::bail!("--fit needs a budget: --vram SIZE and/or --ram SIZE");
    }
    vidtrain_trainer::plan::fit(
        config,
        backend,
        vidtrain_trainer::plan::dataset_sizes(config),
        vram,
        ram,
    )
    .map_err(|no_fit| anyhow::anyhow!("{}", no_fit.message))
}

fn plan(args: &PlanArgs) -> Result<(), Failure> {
    let config = load_config_or_demo(&args.config)?;
    let backend = match args.device {
        Some(PlanDevice::Cpu) => BackendChoice::Cpu,
        Some(PlanDevice::Cuda) => BackendChoice::Cuda,
        None => vidtrain_trainer::accelerator_backend(&config),
    };
    if args.fit {
        let vram = parse_size("--vram", &args.vram)?;
        let ram = parse_size("--ram", &args.ram)?;
        let fit = fit_overrides(&config, backend, vram, ram)?;
        if args.json {
            println!("{}", serde_json::to_string(&fit).expect("fit serialises"));
        } else {
            print!("{}", fit.plan.table());
            println!("\nfits with: {}", fit.overrides.join(" "));
        }
        return Ok(());
    }
    let ranks = args.ranks.unwrap_or_else(|| {
        vidtrain_trainer::distributed::launch_from_environment().map_or(1, |launch| launch.size)
    });
    if ranks == 0 {
        return Err(anyhow::anyhow!("--ranks must be at least 1").into());
    }
    let plan = vidtrain_trainer::plan::plan_data_parallel(
        &config,
        backend,
        vidtrain_trainer::plan::dataset_sizes(&config),
        ranks,
    );
    if args.json {
        println!("{}", serde_json::to_string(&plan).expect("plan serialises"));
    } else {
        println!(
            "{}\n",
            vidtrain_trainer::plan::model_summary(&config).table()
        );
        print!("{}", plan.table());
    }
    Ok(())
}

fn train(args: &TrainArgs) -> Result<(), Failure> {
    let mut config = load_config_or_demo(&args.config)?;
    if args.fit_vram.is_some() || args.fit_ram.is_some() {
        let vram = parse_size("--fit-vram", &args.fit_vram)?;
        let ram = parse_size("--fit-ram", &args.fit_ram)?;
        let backend = vidtrain_trainer::accelerator_backend(&config);
        let fit = fit_overrides(&config, backend, vram, ram)?;
        tracing::info!(
            "--fit: {} (planned peak: host {}, device {})",
            fit.overrides.join(" "),
            vidtrain_memutil::format_bytes(fit.plan.host_peak_bytes),
            vidtrain_memutil::format_bytes(fit.plan.device_peak_bytes)
        );
        let mut overrides = args.config.overrides.clone();
        overrides.extend(fit.overrides);
        config = load_config_or_demo(&ConfigArgs {
            config: args.config.config.clone(),
            overrides,
        })?;
    }
    // First Ctrl-C: finish the current optimizer step, save a checkpoint, exit 130.
    // A second Ctrl-C stops at once (the last complete checkpoint stays intact).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler_stop = std::sync::Arc::clone(&stop);
    // mpiexec hands Ctrl-C to every rank; rank 0 speaks for them.
    let speaks = vidtrain_trainer::distributed::launch_from_environment()
        .is_none_or(|launch| launch.rank == 0);
    let first_signal = std::sync::OnceLock::<std::time::Instant>::new();
    let handler = ctrlc::set_handler(move || {
        let first = *first_signal.get_or_init(std::time::Instant::now);
        if !handler_stop.swap(true, std::sync::atomic::Ordering::Relaxed) {
            if speaks {
                eprintln!("\nstopping after the current step (Ctrl-C again to stop now) ...");
            }
            return;
        }
        // One Ctrl-C can arrive twice: a terminal's Ctrl-C on `timeout vidtrain ...` reaches
        // vidtrain directly and through `timeout`, which forwards it. That is not a request to
        // stop now; stopping then lost the checkpoint of the steps done.
        if first.elapsed() < SAME_SIGNAL_WINDOW {
            return;
        }
        // Stop now, but never while a checkpoint is being written: it would be cut in half.
        vidtrain_trainer::wait_for_checkpoint_writes(std::time::Duration::from_secs(120));
        if speaks {
            eprintln!(
                "stopped at once: the steps since the last checkpoint are not saved \
                 (checkpoints/last/ holds the last complete one, if any)"
            );
        }
        std::process::exit(130);
    });
    if let Err(error) = handler {
        tracing::warn!("Ctrl-C will not save a checkpoint: {error}");
    }
    // Under mpiexec/srun: join the other ranks (a build without MPI refuses to run as one of
    // several).
    let session = vidtrain_trainer::distributed::join(&config).map_err(anyhow::Error::from)?;
    let world = session.world();
    let options = vidtrain_trainer::TrainOptions {
        progress_bar: std::io::stderr().is_terminal() && world.is_leader(),
        stop: Some(stop),
        world: world.clone(),
    };
    let trained = train_with(&config, &options);
    if let Err(failure) = &trained
        && world.size() > 1
        && failure.code != 130
    {
        // A failure on one rank would leave the others waiting in a collective: report it and
        // end them all now. (A stop request ends every rank after the same step instead.)
        eprintln!("error: rank {}: {:#}", world.rank(), failure.error);
        world.abort(i32::from(failure.code));
    }
    drop(session);
    if trained.is_err() && !world.is_leader() {
        // Every rank stopped after the same step; rank 0 reports where its checkpoint is.
        std::process::exit(130);
    }
    trained
}

/// Signals closer than this to the first one are the same Ctrl-C delivered twice.
const SAME_SIGNAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// `vidtrain train` once the ranks (if several) are joined; only rank 0 prints the summary.
fn train_with(
    config: &vidtrain_config::Config,
    options: &vidtrain_trainer::TrainOptions,
) -> Result<(), Failure> {
    let leader = options.world.is_leader();
    if config.train.fold == vidtrain_config::Fold::All {
        let summary = vidtrain_trainer::train_all_folds(config, options)
            .context("cross-validation failed")?;
        if !leader {
            return Ok(());
        }
        println!("\n  fold  val_accuracy  val_macro_f1  run directory");
        for (fold, run) in summary.folds.iter().enumerate() {
            println!(
                "  {fold:>4}  {:>12.3}  {:>12.3}  {}",
                run.val_accuracy,
                run.val_macro_f1,
                run.run_dir.display()
            );
        }
        println!(
            "  mean  {:>6.3} ± {:.3}  {:>6.3} ± {:.3}\n\nsummary: {}",
            summary.val_accuracy_mean,
            summary.val_accuracy_std,
            summary.val_macro_f1_mean,
            summary.val_macro_f1_std,
            summary.summary_path.display()
        );
        return Ok(());
    }
    match vidtrain_trainer::train(config, options) {
        Ok(summary) if leader => print_summary(&summary),
        Ok(_) => {}
        // Resuming a finished run is a request already fulfilled: say so and exit 0.
        Err(finished @ vidtrain_trainer::Error::AlreadyFinished { .. }) => eprintln!("{finished}"),
        Err(error) => return Err(anyhow::Error::from(error).context("training failed").into()),
    }
    Ok(())
}

/// The config of a saved model: its run's `config.toml` (when the checkpoint lies in a run
/// folder), then `--config` files, environment and overrides.
fn load_checkpoint_config(
    checkpoint: &std::path::Path,
    files: &[std::path::PathBuf],
    overrides: &[String],
) -> anyhow::Result<vidtrain_config::Config> {
    let mut loader = vidtrain_config::ConfigLoader::new();
    match vidtrain_trainer::inference::run_folder_of(checkpoint) {
        Some(run) => loader = loader.file(&run.join("config.toml"))?,
        None if files.is_empty() => anyhow::bail!(
            "{} is not inside a run folder (no config.toml above it): pass the config the model \
             was trained with, --config FILE",
            checkpoint.display()
        ),
        None => {}
    }
    for file in files {
        loader = loader.file(file)?;
    }
    Ok(loader.env().overrides(overrides)?.load()?)
}

fn eval(args: &EvalArgs) -> Result<(), Failure> {
    let config = load_checkpoint_config(
        &args.checkpoint,
        &args.config.config,
        &args.config.overrides,
    )?;
    let split = match args.split {
        Split::Validation => vidtrain_trainer::inference::EvalSplit::Validation,
        Split::All => vidtrain_trainer::inference::EvalSplit::All,
    };
    let report = vidtrain_trainer::inference::evaluate(&config, &args.checkpoint, split)
        .context("evaluation failed")?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => vidtrain_trainer::inference::run_folder_of(&args.checkpoint)
            .unwrap_or_else(|| std::path::PathBuf::from("."))
            .join(format!("eval-{}", vidtrain_trainer::utc_timestamp())),
    };
    // A folder this command made is removed again if its files cannot all be written (a full
    // disk): a half-filled eval folder would be taken for a finished evaluation.
    let created = !out.exists();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if let Err(error) = write_evaluation(&out, &config, &report) {
        if created {
            let _ = std::fs::remove_dir_all(&out);
        }
        return Err(error.into());
    }
    println!(
        "weights {}\n{} samples{}: accuracy {:.3}, macro-F1 {:.3}, macro AUROC {}, loss {:.4}\nwritten to {}",
        report.weights.display(),
        report.samples,
        if report.skipped > 0 {
            format!(
                " ({} could not be loaded and are not counted)",
                report.skipped
            )
        } else {
            String::new()
        },
        report.metrics.accuracy,
        report.metrics.macro_f1,
        report
            .metrics
            .macro_auroc
            .map_or_else(|| "n/a".to_string(), |auroc| format!("{auroc:.3}")),
        report.loss,
        out.display()
    );
    Ok(())
}

/// `metrics.json`, `predictions.csv` and `confusion.svg` of an evaluation, each written whole.
fn write_evaluation(
    out: &std::path::Path,
    config: &vidtrain_config::Config,
    report: &vidtrain_trainer::inference::EvalReport,
) -> anyhow::Result<()> {
    let write = |name: &str, contents: &[u8]| -> anyhow::Result<()> {
        let path = out.join(name);
        vidtrain_trainer::write_atomically(&path, contents)?;
        Ok(())
    };
    write(
        "metrics.json",
        serde_json::to_string_pretty(&report)
            .expect("report serialises")
            .as_bytes(),
    )?;
    let csv = probability_csv(
        "recording,start_frame,end_frame,label,predicted",
        &config.data.class_names,
        report.predictions.iter().map(|sample| {
            (
                format!(
                    "{},{},{},{},{}",
                    csv_field(&sample.recording),
                    sample.start_frame,
                    sample.end_frame,
                    sample.label,
                    sample.predicted
                ),
                Some(sample.probabilities.as_slice()),
            )
        }),
    );
    write("predictions.csv", csv.as_bytes())?;
    write(
        "confusion.svg",
        vidtrain_trainer::report::confusion_svg::confusion_matrix_svg(
            &config.data.class_names,
            &report.metrics.confusion,
            &format!("{} ({} samples)", report.weights.display(), report.samples),
        )
        .as_bytes(),
    )?;
    Ok(())
}

fn export(args: &ExportArgs) -> Result<(), Failure> {
    use vidtrain_trainer::persist::export::ExportFormat;
    let config = load_checkpoint_config(&args.checkpoint, &args.config, &[])?;
    let format = match args.format {
        ExportFormatArg::Safetensors => ExportFormat::Safetensors,
        ExportFormatArg::Pth => ExportFormat::Pth,
    };
    let report = vidtrain_trainer::persist::export::export(
        &config,
        &args.checkpoint,
        format,
        args.out.as_deref(),
    )
    .context("export failed")?;
    println!(
        "weights {}\n{} tensors ({} values) written to {}",
        report.weights.display(),
        report.tensors,
        report.values,
        report.out.display()
    );
    Ok(())
}

fn predict(args: &PredictArgs) -> Result<(), Failure> {
    let (videos, overrides) = args.videos_and_overrides();
    if videos.is_empty() {
        return Err(
            anyhow::anyhow!("no video given: vidtrain predict --checkpoint PATH VIDEO...").into(),
        );
    }
    let config = load_checkpoint_config(&args.checkpoint, &args.config, &overrides)?;
    let stride = args.stride.unwrap_or(args.window);
    let windows = vidtrain_trainer::inference::predict(
        &config,
        &args.checkpoint,
        &videos,
        args.window,
        stride,
    )
    .context("prediction failed")?;
    let json = args
        .out
        .as_ref()
        .is_some_and(|out| out.extension().is_some_and(|ext| ext == "json"));
    let text = if json {
        serde_json::to_string_pretty(&windows).expect("predictions serialise") + "\n"
    } else {
        probability_csv(
            "video,window,start_frame,end_frame,predicted",
            &config.data.class_names,
            windows.iter().map(|window| {
                (
                    format!(
                        "{},{},{},{},{}",
                        csv_field(&window.video.display().to_string()),
                        window.window,
                        window.start_frame,
                        window.end_frame,
                        window.predicted.as_deref().unwrap_or("skipped")
                    ),
                    window.probabilities.as_deref(),
                )
            }),
        )
    };
    match &args.out {
        Some(out) => {
            vidtrain_trainer::write_atomically(out, text.as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("{} windows written to {}", windows.len(), out.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// A CSV table: `header` and one `p_<class>` column per class, then each row's leading fields
/// and its class probabilities (empty fields for a row without them: a skipped window).
fn probability_csv<'a>(
    header: &str,
    class_names: &[String],
    rows: impl Iterator<Item = (String, Option<&'a [f32]>)>,
) -> String {
    let mut csv = header.to_string();
    for class in class_names {
        csv += &format!(",p_{class}");
    }
    csv.push('\n');
    for (fields, probabilities) in rows {
        csv += &fields;
        match probabilities {
            Some(probabilities) => {
                for probability in probabilities {
                    csv += &format!(",{probability:.6}");
                }
            }
            None => csv += &",".repeat(class_names.len()),
        }
        csv.push('\n');
    }
    csv
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `name count` per class, in class-id order.
fn class_counts(summary: &vidtrain_trainer::RunSummary, counts: &[usize]) -> String {
    summary
        .class_names
        .iter()
        .zip(counts)
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_summary(summary: &vidtrain_trainer::RunSummary) {
    let bytes = |value: Option<u64>| {
        value.map_or_else(|| "n/a".to_string(), vidtrain_memutil::format_bytes)
    };
    let mut rows = vec![
        ("val_accuracy", format!("{:.3}", summary.val_accuracy)),
        ("val_macro_f1", format!("{:.3}", summary.val_macro_f1)),
        (
            "val_macro_auroc",
            summary
                .val_macro_auroc
                .map_or_else(|| "n/a".to_string(), |auroc| format!("{auroc:.3}")),
        ),
        (
            "train_loss_final",
            format!("{:.4}", summary.train_loss_final),
        ),
        (
            "epochs / steps",
            format!(
                "{} / {}{}",
                summary.epochs,
                summary.steps,
                if summary.stopped_early {
                    " (stopped early)"
                } else {
                    ""
                }
            ),
        ),
        (
            "best epoch",
            match (summary.best_epoch, summary.best_value) {
                (Some(epoch), Some(value)) => {
                    let metric = |name: &str| {
                        summary
                            .best_metrics
                            .as_ref()
                            .and_then(|metrics| metrics[name].as_f64())
                            .map_or_else(|| "n/a".to_string(), |value| format!("{value:.3}"))
                    };
                    format!(
                        "{epoch} by {} {value:.3}: accuracy {}, macro-F1 {} (checkpoints/best)",
                        summary.monitor,
                        metric("val_accuracy"),
                        metric("val_macro_f1")
                    )
                }
                _ => "n/a".to_string(),
            },
        ),
        (
            "class counts train",
            class_counts(summary, &summary.class_counts_train),
        ),
        (
            "class counts val",
            class_counts(summary, &summary.class_counts_val),
        ),
        (
            "train / val samples",
            format!("{} / {}", summary.train_size, summary.val_size),
        ),
        ("samples_per_s", format!("{:.1}", summary.samples_per_s)),
        ("wall_s", format!("{:.1}", summary.wall_s)),
        ("peak_host_rss", bytes(summary.peak_host_rss_bytes)),
        (
            "host reuse pool",
            if summary.host_allocator.active {
                format!(
                    "at most {} cached, {} hits, {} misses ({} of them resized cached blocks)",
                    vidtrain_memutil::format_bytes(summary.host_allocator.peak_cached_bytes),
                    summary.host_allocator.hits,
                    summary.host_allocator.misses,
                    summary.host_allocator.recycled
                )
            } else {
                "off".to_string()
            },
        ),
        (
            "  with decoders",
            bytes(summary.peak_process_tree_rss_bytes),
        ),
        ("peak_device in use", bytes(summary.peak_device_bytes)),
        (
            "peak_device reserved",
            bytes(summary.peak_device_reserved_bytes),
        ),
        (
            "backend / precision",
            format!("{} / {}", summary.backend, summary.precision),
        ),
        (
            "skipped sample loads",
            summary.skipped_sample_loads.to_string(),
        ),
        (
            "dataset problems",
            if summary.data_problems.is_empty() {
                "none".to_string()
            } else {
                summary
                    .data_problems
                    .iter()
                    .map(|(kind, count)| format!("{kind} {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ];
    if summary.world_size > 1 {
        let per_rank: Vec<String> = summary
            .peak_host_rss_bytes_per_rank
            .iter()
            .map(|bytes_of_rank| bytes(*bytes_of_rank))
            .collect();
        rows.extend([
            (
                "data parallel",
                format!(
                    "{} ranks, global batch {} per step",
                    summary.world_size, summary.global_batch
                ),
            ),
            ("peak_host_rss by rank", per_rank.join(", ")),
            (
                "collectives (rank 0)",
                format!(
                    "{:.1} s, of which gradient all-reduce {:.1} s",
                    summary.collective_s, summary.gradient_sync_s
                ),
            ),
        ]);
    }
    println!();
    for (name, value) in rows {
        println!("  {name:<22} {value}");
    }
    println!("\nrun directory: {}", summary.run_dir.display());
}
