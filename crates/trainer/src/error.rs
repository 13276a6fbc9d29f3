//! Training errors: each says what failed and which key or file to change.

use std::path::PathBuf;

/// Why a run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config could not be resolved or validated.
    #[error(transparent)]
    Config(#[from] vidtrain_config::Error),
    /// The dataset could not be indexed or a sample could not be loaded.
    #[error(transparent)]
    Data(#[from] vidtrain_data::Error),
    /// A setting that names something that is not there (e.g. `train.resume` pointing nowhere);
    /// nothing was started.
    #[error("`{key}`: {message}")]
    Setting { key: String, message: String },
    /// The memory plan of the config exceeds the machine's memory: refused before any work.
    #[error(
        "this config needs about {} of host memory by `vidtrain plan` (largest part: {largest}), \
         but this machine has {}; lower data.img_size, data.batch_size or \
         data.uniform_temporal_subsample_num, or let `vidtrain plan --fit --ram SIZE` choose",
        vidtrain_memutil::format_bytes(*.planned_bytes),
        vidtrain_memutil::format_bytes(*.machine_bytes)
    )]
    ExceedsMachineMemory {
        planned_bytes: u64,
        machine_bytes: u64,
        largest: String,
    },
    /// A setting this build or backend cannot honour.
    #[error("`{key}`: {message}")]
    Unsupported { key: String, message: String },
    /// The loss became NaN or infinite.
    #[error(
        "the loss became {value} at optimizer step {step} (epoch {epoch}); {}. Lower train.lr or check the data",
        match .last_checkpoint { Some(path) => format!("the last good checkpoint is {}", path.display()), None => "no checkpoint was written yet".to_string() }
    )]
    NonFiniteLoss {
        value: f32,
        step: usize,
        epoch: usize,
        last_checkpoint: Option<PathBuf>,
    },
    /// Evaluation produced a NaN or infinite loss or probability (usually NaN/Inf inputs).
    #[error(
        "scoring {what} gave a non-finite loss ({loss}) or probabilities: the inputs hold NaN \
         or Inf values (run `vidtrain data inspect` to find the files) or the model diverged"
    )]
    NonFiniteScores { what: String, loss: f64 },
    /// A file in the run directory could not be written.
    // The OS error is part of the message and deliberately not a `#[source]`: printed with its
    // causes (`{:#}`), it would otherwise appear twice.
    #[error("{}: {cause}", .path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Training was stopped on request (Ctrl-C) after saving a checkpoint.
    #[error("interrupted; checkpoint saved in {} (continue with train.resume={})", .checkpoint.display(), .checkpoint.display())]
    Interrupted { checkpoint: PathBuf },
    /// The GPU ran out of memory (checkpoints already written are whole: each is written to a
    /// temporary name and renamed).
    #[error("the GPU ran out of memory: {message}\n{advice}")]
    DeviceOutOfMemory { message: String, advice: String },
    /// `train.resume` names a run that already reached `train.max_epochs` / `train.max_steps`:
    /// nothing was trained and nothing written.
    #[error(
        "the run in {} is already finished (it stopped at step {steps}; train.max_epochs = \
         {max_epochs}, train.max_steps = {max_steps}); nothing to do. To train on, raise \
         train.max_epochs or train.max_steps",
        .checkpoint.display()
    )]
    AlreadyFinished {
        checkpoint: PathBuf,
        steps: usize,
        max_epochs: usize,
        max_steps: i64,
    },
    /// A checkpoint could not be written or read.
    #[error("checkpoint {}: {message}", .path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// Data-parallel training: the ranks could not agree (rank 0's weights, the run folder).
    #[error("data-parallel training, rank {rank}: {message}")]
    Distributed { rank: usize, message: String },
}

/// Result of training operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}
