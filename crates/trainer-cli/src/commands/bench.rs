//! `vidtrain bench-model`: the training step alone, row by row.

use anyhow::Context;

use crate::args::*;
use crate::{Failure, load_config};

pub(crate) fn bench_model(args: &BenchModelArgs) -> Result<(), Failure> {
    let config = load_config(&args.config, None)?;
    if let Some(size) = args.gemm_peak {
        return gemm_peak(&config, size, args.out.as_deref());
    }
    let backend = vidtrain_trainer::resolve_backend(&config).map_err(anyhow::Error::from)?;
    let backbones: &[vidtrain_config::Backbone] = match args.backbone {
        BenchBackbone::Transformer => &[vidtrain_config::Backbone::Transformer],
        BenchBackbone::Vivit => &[vidtrain_config::Backbone::Vivit],
        BenchBackbone::Mamba => &[vidtrain_config::Backbone::Mamba],
        BenchBackbone::R3d => &[vidtrain_config::Backbone::Resnet3d],
        BenchBackbone::Stgcn => &[vidtrain_config::Backbone::Stgcn],
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
        "{} rows on {}, {} warm-up + {} timed optimizer steps each",
        rows.len(),
        backend.name(),
        args.warmup,
        args.steps
    );
    if backend == vidtrain_trainer::BackendChoice::Cpu {
        let routes = [
            (
                "bf16",
                vidtrain_trainer::Bf16ProductPath::describe_cpu_route(),
            ),
            (
                "fp16",
                vidtrain_trainer::F32ProductPath::describe_fp16_cpu_route(),
            ),
            (
                "fp32",
                vidtrain_trainer::F32ProductPath::describe_cpu_route().to_string(),
            ),
        ];
        for (precision, route) in routes {
            if rows.iter().any(|row| row.name.contains(precision)) {
                eprintln!("{route}");
            }
        }
    }
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

/// `bench-model --gemm-peak`: the CPU's matrix-product peak, printed and written as JSON.
fn gemm_peak(
    config: &vidtrain_config::Config,
    size: usize,
    out: Option<&std::path::Path>,
) -> Result<(), Failure> {
    let threads = vidtrain_trainer::configure_compute_threads(config);
    let peak = vidtrain_trainer::bench::gemm::gemm_peak(size);
    println!(
        "matrix-product peak ({size}³, {threads} threads): f32 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s \
         on {}",
        peak.f32_gflops, peak.bf16_gflops, peak.bf16_route
    );
    if let Some(out) = out {
        let text = serde_json::to_string_pretty(&peak).expect("the peak serialises");
        vidtrain_trainer::write_atomically(out, text.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
