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
    Train(TrainArgs),
    /// Predict peak host and device memory from the config alone; --fit picks settings that fit.
    Plan(PlanArgs),
    /// Score a saved model on the dataset: metrics, per-sample CSV, confusion-matrix image.
    Eval(EvalArgs),
    /// Predict the class of sliding windows over long videos (CSV or JSON).
    Predict(PredictArgs),
    /// Write a trained model's weights as a PyTorch state dict (safetensors or .pth).
    Export(ExportArgs),
    /// Time the model alone on random on-device inputs, row by row (precision, batch, recompute).
    BenchModel(BenchModelArgs),
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

/// `vidtrain train` options.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Before training, choose the fastest micro-batch / recompute / precision whose planned
    /// peak fits this much GPU memory (on the CPU backend: host memory), e.g. `4GiB`.
    #[arg(long, value_name = "SIZE")]
    pub fit_vram: Option<String>,
    /// Also keep the planned host peak within this, e.g. `8GiB`.
    #[arg(long, value_name = "SIZE")]
    pub fit_ram: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `vidtrain plan` options.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// One line of JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Choose the fastest settings that fit --vram / --ram and print the overrides.
    #[arg(long)]
    pub fit: bool,
    /// GPU memory budget for --fit (on the CPU backend: host memory), e.g. `4GiB`.
    #[arg(long, value_name = "SIZE")]
    pub vram: Option<String>,
    /// Host memory budget for --fit, e.g. `8GiB`.
    #[arg(long, value_name = "SIZE")]
    pub ram: Option<String>,
    /// Plan for this backend instead of the one trainer.accelerator picks here.
    #[arg(long, value_enum)]
    pub device: Option<PlanDevice>,
    /// Plan a data-parallel run of this many ranks (`mpiexec -n N`): per-rank memory and the
    /// global batch. Default: the launcher's count when run under mpiexec/srun, else 1.
    #[arg(long, value_name = "N")]
    pub ranks: Option<usize>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `vidtrain plan --device`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PlanDevice {
    /// The CPU backend: activations in host memory.
    Cpu,
    /// A CUDA GPU: activations in device memory.
    Cuda,
    /// A GPU through wgpu (Vulkan, Metal, DirectX 12): activations in device memory.
    Wgpu,
}

/// `vidtrain bench-model` options.
#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Which model(s).
    #[arg(long, value_enum, default_value = "both")]
    pub backbone: BenchBackbone,
    /// Only the rows whose names contain one of these (comma-separated), e.g. `bf16,fp32 b4`.
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// `--rows` names whole rows (`bf16 b1x4` then excludes `bf16 b1x4 recompute`).
    #[arg(long)]
    pub exact: bool,
    /// Frames per clip of every row, instead of the model's standard size.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Frame side in pixels of every row, instead of the model's standard size.
    #[arg(long)]
    pub image: Option<usize>,
    /// Optimizer steps before timing (the first is reported alone as compile + tune time).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Tiny sizes, to check the harness on a CPU in seconds.
    #[arg(long)]
    pub tiny: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Instead of rows, measure this CPU's matrix-product peak (f32 and bf16, square products of
    /// this side) on the compute pool a run would use.
    #[arg(long, value_name = "SIDE", num_args = 0..=1, default_missing_value = "2048")]
    pub gemm_peak: Option<usize>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `vidtrain bench-model --backbone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackbone {
    /// The seed's video transformer.
    Transformer,
    /// ViViT-S.
    Vivit,
    /// VideoMamba (Ti by default).
    Mamba,
    /// torchvision's r3d_18 (`model.backbone=3dcnn`, 16 frames × 112 px).
    R3d,
    /// mmaction2's ST-GCN on 64 frames of the 52 joints (`model.backbone=stgcn`).
    Stgcn,
    /// Both.
    Both,
}

/// `vidtrain eval` options.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run folder or its checkpoints/ folder (→ the best epoch by train.monitor, in
    /// checkpoints/best/), a checkpoints/best or checkpoints/last folder, or a .mpk weights
    /// file. The run's config.toml is the base config (before --config files and overrides).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// Which samples: the validation persons of train.fold, or every sample.
    #[arg(long, value_enum, default_value = "validation")]
    pub split: Split,
    /// Output folder (default: eval-<timestamp>/ in the run folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `vidtrain eval --split`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Split {
    /// The validation persons of `train.fold`.
    Validation,
    /// Every sample of the dataset.
    All,
}

/// `vidtrain export` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run folder or its checkpoints/ folder (→ the best epoch by train.monitor), a
    /// checkpoints/best or checkpoints/last folder, or a .mpk weights file. The run's
    /// config.toml says which model it is.
    #[arg(value_name = "RUN")]
    pub checkpoint: PathBuf,
    /// File format: safetensors (`safetensors.torch.load_file`) or pth (`torch.load`).
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormatArg,
    /// Output file (default: beside the weights, model.safetensors or model.pth).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The config the model was trained with, for weights outside a run folder (on top of the
    /// run's config.toml otherwise); may repeat.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<PathBuf>,
}

/// `vidtrain export --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormatArg {
    Safetensors,
    Pth,
}

/// `vidtrain predict` options.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A run folder or its checkpoints/ folder (→ the best epoch by train.monitor), a
    /// checkpoints/best or checkpoints/last folder, or a .mpk weights file.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// Frames per window (each window is sampled to data.uniform_temporal_subsample_num frames,
    /// as a labelled segment is in training).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Frames between window starts (default: the window, i.e. no overlap).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Output file, `.csv` or `.json` (default: CSV on stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Config file (TOML or YAML) on top of the run's config.toml; may repeat.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Videos to predict (with several views: any one view's file, the others are found in the
    /// sibling view folders), and dotted KEY=VALUE overrides.
    #[arg(value_name = "VIDEO|KEY=VALUE", required = true)]
    pub inputs: Vec<String>,
}

impl PredictArgs {
    /// The positional inputs split into videos and overrides (`section.key=value`).
    pub fn videos_and_overrides(&self) -> (Vec<PathBuf>, Vec<String>) {
        let is_override = |input: &str| {
            input.split_once('=').is_some_and(|(key, _)| {
                key.contains('.')
                    && !key.contains('/')
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            })
        };
        let (overrides, videos): (Vec<&String>, Vec<&String>) =
            self.inputs.iter().partition(|input| is_override(input));
        (
            videos.into_iter().map(PathBuf::from).collect(),
            overrides.into_iter().cloned().collect(),
        )
    }
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
    /// Share of segments labelled `front` (an imbalanced dataset, like real driver-gaze data);
    /// the other classes share the rest equally. Default: all nine classes equally likely.
    #[arg(long, value_name = "SHARE")]
    pub front_share: Option<f64>,
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
            front_share: self.front_share,
        })
    }
}
