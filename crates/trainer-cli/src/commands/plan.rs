//! `vidtrain plan`: the memory plan of a config, and `--fit`.

use vidtrain_trainer::BackendChoice;

use crate::args::*;
use crate::{Failure, load_config_or_demo};

pub(crate) fn plan(args: &PlanArgs) -> Result<(), Failure> {
    let config = load_config_or_demo(&args.config)?;
    let backend = match args.device {
        Some(PlanDevice::Cpu) => BackendChoice::Cpu,
        Some(PlanDevice::Cuda) => BackendChoice::Cuda,
        Some(PlanDevice::Wgpu) => BackendChoice::Wgpu,
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

/// Runs `--fit` and returns the chosen overrides, or the reason nothing fits.
pub(super) fn fit_overrides(
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

pub(super) fn parse_size(flag: &str, text: &Option<String>) -> anyhow::Result<Option<u64>> {
    text.as_ref()
        .map(|text| {
            vidtrain_memutil::plan::parse_bytes(text).ok_or_else(|| {
                anyhow::anyhow!("{flag} {text:?} is not a size; write e.g. 4GiB, 512MiB or 8GB")
            })
        })
        .transpose()
}
