//! `vidtrain eval`, `vidtrain predict` and `vidtrain export`: a saved model scored, run over long
//! videos, or written out for PyTorch.

use anyhow::Context;

use crate::args::*;
use crate::{Failure, load_checkpoint_config};

pub(crate) fn eval(args: &EvalArgs) -> Result<(), Failure> {
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
    if let Err(error) = vidtrain_trainer::inference::write_evaluation(&out, &config, &report) {
        if created {
            let _ = std::fs::remove_dir_all(&out);
        }
        return Err(anyhow::Error::from(error)
            .context("writing the evaluation")
            .into());
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

pub(crate) fn export(args: &ExportArgs) -> Result<(), Failure> {
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

pub(crate) fn predict(args: &PredictArgs) -> Result<(), Failure> {
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
    let text = vidtrain_trainer::inference::windows_text(&config, &windows, json)
        .context("formatting the predictions")?;
    match &args.out {
        Some(out) => {
            vidtrain_trainer::write_atomically(out, &text)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("{} windows written to {}", windows.len(), out.display());
        }
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&text)
                .context("writing the predictions to stdout")?;
        }
    }
    Ok(())
}
