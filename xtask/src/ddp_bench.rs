//! `cargo xtask bench ddp`: training throughput of the bundled demo with one process and with two
//! ranks under `mpiexec` on this machine's cores (each configuration uses every core once), and
//! the share of the training time the ranks spent in collectives.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::bench::{BenchFolder, git_revision, host, run_summary};
use crate::require_mpi;

/// One measured configuration.
struct Case {
    name: &'static str,
    ranks: usize,
    batch_size: usize,
}

pub fn ddp() -> anyhow::Result<()> {
    require_mpi()?;
    let BenchFolder {
        vidtrain,
        folder,
        runs,
    } = BenchFolder::prepare("ddp", "mpi")?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let epochs: usize = std::env::var("BENCH_EPOCHS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3);
    // The demo's batch of 8 on one rank, the same global batch over two ranks, and two ranks of
    // 8 (twice the samples per step).
    let cases = [
        Case {
            name: "1 rank × batch 8",
            ranks: 1,
            batch_size: 8,
        },
        Case {
            name: "2 ranks × batch 4",
            ranks: 2,
            batch_size: 4,
        },
        Case {
            name: "2 ranks × batch 8",
            ranks: 2,
            batch_size: 8,
        },
    ];
    let mut rows = Vec::new();
    for case in &cases {
        let threads = (cores / case.ranks).max(1);
        let experiment = format!("ddp-{}x{}", case.ranks, case.batch_size);
        let args = [
            "train".to_string(),
            format!("experiment={experiment}"),
            format!("paths.run_dir={}", runs.display()),
            format!("train.max_epochs={epochs}"),
            format!("data.batch_size={}", case.batch_size),
            format!("trainer.compute_threads={threads}"),
            "trainer.tensorboard=false".to_string(),
        ];
        let summary = mpiexec_train(&vidtrain, case.ranks, &args, &runs.join(&experiment))?;
        let number = |key: &str| summary[key].as_f64().unwrap_or(f64::NAN);
        let samples_per_s = number("samples_per_s");
        let train_s = number("train_samples_this_run") / samples_per_s;
        let collective_share = number("collective_s") / train_s;
        let gradient_share = number("gradient_sync_s") / train_s;
        eprintln!(
            "{}: {samples_per_s:.1} samples/s, {:.1} % of the training time in collectives, \
             val_accuracy {:.3}",
            case.name,
            collective_share * 100.0,
            number("val_accuracy")
        );
        rows.push(json!({
            "case": case.name,
            "ranks": case.ranks,
            "batch_size": case.batch_size,
            "global_batch": summary["global_batch"],
            "compute_threads_per_rank": threads,
            "samples_per_s": samples_per_s,
            "train_s": train_s,
            "collective_s": summary["collective_s"],
            "collective_share": collective_share,
            "gradient_sync_s": summary["gradient_sync_s"],
            "gradient_sync_share": gradient_share,
            "val_accuracy": summary["val_accuracy"],
            "peak_host_rss_bytes_per_rank": summary["peak_host_rss_bytes_per_rank"],
        }));
    }
    let baseline = rows[0]["samples_per_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{:<20} {:>10} {:>9} {:>12} {:>14} {:>8}",
        "case", "samples/s", "× 1 rank", "collectives", "gradient sum", "val_acc"
    );
    for row in &rows {
        let speed = row["samples_per_s"].as_f64().unwrap_or(f64::NAN);
        let percent = |key: &str| row[key].as_f64().unwrap_or(f64::NAN) * 100.0;
        println!(
            "{:<20} {:>10.1} {:>9.2} {:>11.1}% {:>13.1}% {:>8.3}",
            row["case"].as_str().unwrap_or_default(),
            speed,
            speed / baseline,
            percent("collective_share"),
            percent("gradient_sync_share"),
            row["val_accuracy"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let report = json!({
        "bench": "ddp",
        "host": host(),
        "revision": git_revision(),
        "epochs": epochs,
        "rows": rows,
    });
    std::fs::create_dir_all(&folder)?;
    let path = folder.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\n{}", path.display());
    Ok(())
}

/// `mpiexec -n <ranks> vidtrain <args>`; the summary of the newest run in `experiment`.
fn mpiexec_train(
    vidtrain: &Path,
    ranks: usize,
    args: &[String],
    experiment: &Path,
) -> anyhow::Result<Value> {
    let mut command = Command::new("mpiexec");
    command
        .arg("-n")
        .arg(ranks.to_string())
        .arg(vidtrain)
        .args(args);
    let shown = format!("mpiexec -n {ranks} vidtrain {}", args.join(" "));
    run_summary(command, &shown, experiment)
}
