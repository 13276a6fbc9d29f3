//! `vidtrain train`: one fold or every fold, Ctrl-C/SIGTERM saving first, MPI ranks joined, the
//! run summary printed.

use std::io::IsTerminal;

use anyhow::Context;

use super::plan::{fit_overrides, parse_size};
use crate::args::*;
use crate::{Failure, load_config_or_demo};

/// Signals closer than this to the first one are the same Ctrl-C delivered twice.
const SAME_SIGNAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn train(args: &TrainArgs) -> Result<(), Failure> {
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
