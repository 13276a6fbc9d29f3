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

use args::{Cli, Command, ConfigArgs, ConfigCommand, DataCommand};

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
                Some(vidtrain_trainer::Error::Interrupted { .. })
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
                )
            )
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIDTRAIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
                "{} batches ({} samples) in {:.1} s: {:.0} frames/s, peak RSS {} (baseline {}), \
                 {} ffmpeg processes, {} skipped",
                bench.batches,
                bench.samples,
                bench.wall_s,
                bench.frames_per_s,
                bytes(bench.peak_rss_bytes),
                bytes(bench.baseline_rss_bytes),
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

fn train(args: &ConfigArgs) -> Result<(), Failure> {
    let config = load_config_or_demo(args)?;
    // First Ctrl-C: finish the current optimizer step, save a checkpoint, exit 130.
    // A second Ctrl-C stops at once (the last complete checkpoint stays intact).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler_stop = std::sync::Arc::clone(&stop);
    let handler = ctrlc::set_handler(move || {
        if handler_stop.swap(true, std::sync::atomic::Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current step (Ctrl-C again to stop now) ...");
    });
    if let Err(error) = handler {
        tracing::warn!("Ctrl-C will not save a checkpoint: {error}");
    }
    let options = vidtrain_trainer::TrainOptions {
        progress_bar: std::io::stderr().is_terminal(),
        stop: Some(stop),
    };
    if config.train.fold == vidtrain_config::Fold::All {
        let summary = vidtrain_trainer::train_all_folds(&config, &options)
            .context("cross-validation failed")?;
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
    let summary = vidtrain_trainer::train(&config, &options).context("training failed")?;
    print_summary(&summary);
    Ok(())
}

fn print_summary(summary: &vidtrain_trainer::RunSummary) {
    let bytes = |value: Option<u64>| {
        value.map_or_else(|| "n/a".to_string(), vidtrain_memutil::format_bytes)
    };
    let rows = [
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
            format!("{} / {}", summary.epochs, summary.steps),
        ),
        (
            "train / val samples",
            format!("{} / {}", summary.train_size, summary.val_size),
        ),
        ("samples_per_s", format!("{:.1}", summary.samples_per_s)),
        ("wall_s", format!("{:.1}", summary.wall_s)),
        ("peak_host_rss", bytes(summary.peak_host_rss_bytes)),
        ("peak_device", bytes(summary.peak_device_bytes)),
        (
            "backend / precision",
            format!("{} / {}", summary.backend, summary.precision),
        ),
        (
            "skipped sample loads",
            summary.skipped_sample_loads.to_string(),
        ),
    ];
    println!();
    for (name, value) in rows {
        println!("  {name:<22} {value}");
    }
    println!("\nrun directory: {}", summary.run_dir.display());
}
