//! `vidtrain`: the command line. Parses arguments, resolves the config, calls the library
//! crates, prints results. No training or data logic lives here.
//!
//! Exit codes: 0 success; 1 the run failed (data, I/O, non-finite loss); 2 bad command line or
//! config (nothing was started); 130 interrupted by Ctrl-C (a checkpoint was saved first).

mod args;
mod commands;
mod demo;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use args::{Cli, Command, ConfigArgs, ConfigCommand, DataCommand};

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
///
/// Below that threshold glibc gives the free top of a heap back to the kernel once it exceeds
/// `M_TRIM_THRESHOLD` (128 KiB by default): gemm's packing buffers (under 1 MiB, one per matrix
/// product) were then mapped, zeroed and faulted in again product after product — 36 % of the
/// seed model's page faults in a steady fp32 step. Two megabytes of free heap top kept per
/// arena (a few arenas, one per thread that allocates) stop that, and stay inside every RSS
/// figure the program prints.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn bound_allocator_retention() {
    // The user's own settings win.
    let settings = [
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 1 << 20),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 2 << 20),
    ];
    for (variable, parameter, value) in settings {
        if std::env::var_os(variable).is_some() {
            continue;
        }
        // SAFETY: mallopt only changes allocator parameters; called before any other thread
        // starts.
        let applied = unsafe { libc::mallopt(parameter, value) };
        if applied != 1 {
            tracing::debug!("mallopt({variable}) was refused; RSS may include freed memory");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_retention() {}

fn init_logging() {
    // In a data-parallel run rank 0 tells the story; the other ranks speak up only to warn.
    let follower = vidtrain_trainer::distributed::launch_from_environment()
        .is_some_and(|launch| launch.rank > 0);
    let default_level = if follower { "warn" } else { "info" };
    // The GPU runtimes narrate at info (each kernel tuned, the adapter's whole description) and
    // warn once per queued task after a failure that vidtrain reports itself (an out-of-memory
    // became thousands of "Task failed" lines on lavapipe); VIDTRAIN_LOG=debug shows them all.
    let quiet_runtimes = "cubecl_runtime=warn,cubecl_wgpu=warn,cubecl_common=error,\
                          wgpu_core=warn,wgpu_hal=warn,naga=warn";
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIDTRAIN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},{quiet_runtimes}"))
    });
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
        Command::Train(args) => commands::train(&args),
        Command::Plan(args) => commands::plan(&args),
        Command::BenchModel(args) => commands::bench_model(&args),
        Command::Eval(args) => commands::eval(&args),
        Command::Predict(args) => commands::predict(&args),
        Command::Export(args) => commands::export(&args),
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
    let mut config = loader.env().overrides(&args.overrides)?.load()?;
    vidtrain_trainer::apply_precision_fallback(&mut config);
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
