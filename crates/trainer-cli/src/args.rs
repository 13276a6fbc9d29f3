//! Command-line arguments as typed values (validation only, no I/O).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Train video action-recognition models in whatever memory you have.
#[derive(Debug, Parser)]
#[command(name = "vidtrain", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (the bundled demo when no dataset is configured).
    Train(ConfigArgs),
    /// Inspect the resolved configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Generate a small synthetic dataset in the real dataset's layout.
    DemoData(DemoDataArgs),
    /// Look at the dataset without training.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Videos, views, frames, chunks, segments per class, problems found (decodes nothing).
    Inspect(ConfigArgs),
    /// Run the loading pipeline alone; the last line of stdout is one line of JSON.
    Bench(DataBenchArgs),
}

/// `vidtrain data bench` options.
#[derive(Debug, Args)]
pub struct DataBenchArgs {
    /// Batches to load.
    #[arg(long, default_value_t = 20)]
    pub batches: usize,
    /// Afterwards, decode the same samples with plain `ffmpeg ... -f null -` for comparison.
    #[arg(long)]
    pub ffmpeg_baseline: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the fully resolved config as TOML.
    Show(ConfigArgs),
}

/// Where the config comes from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Config file (TOML or YAML); may repeat, later files win.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Dotted overrides, Hydra style: `data.batch_size=1 trainer.precision=16`.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `vidtrain demo-data` options.
#[derive(Debug, Args)]
pub struct DemoDataArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Persons (one three-view recording each).
    #[arg(long, default_value_t = 5)]
    pub persons: usize,
    /// Frames per video (30 fps).
    #[arg(long, default_value_t = 1800)]
    pub frames: usize,
    /// Video size, WIDTHxHEIGHT.
    #[arg(long, default_value = "64x64")]
    pub size: String,
    /// Seed of the generated timelines.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DemoDataArgs {
    /// The generator spec these arguments describe.
    pub fn to_spec(&self) -> anyhow::Result<vidtrain_data::demo::DemoSpec> {
        let parse = || -> Option<(usize, usize)> {
            let (width, height) = self.size.split_once(['x', 'X'])?;
            Some((width.parse().ok()?, height.parse().ok()?))
        };
        let (width, height) = parse().ok_or_else(|| {
            anyhow::anyhow!("--size {:?} is not WIDTHxHEIGHT (e.g. 64x64)", self.size)
        })?;
        Ok(vidtrain_data::demo::DemoSpec {
            out: self.out.clone(),
            persons: self.persons,
            frames: self.frames,
            width,
            height,
            seed: self.seed,
        })
    }
}
