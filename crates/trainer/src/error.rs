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
    /// A file in the run directory could not be written.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Training was stopped on request (Ctrl-C) after saving a checkpoint.
    #[error("interrupted; checkpoint saved in {} (continue with train.resume={})", .checkpoint.display(), .checkpoint.display())]
    Interrupted { checkpoint: PathBuf },
    /// The GPU ran out of memory (checkpoints already written are whole: each is written to a
    /// temporary name and renamed).
    #[error("the GPU ran out of memory: {message}\n{advice}")]
    DeviceOutOfMemory { message: String, advice: String },
    /// A checkpoint could not be written or read.
    #[error("checkpoint {}: {message}", .path.display())]
    Checkpoint { path: PathBuf, message: String },
}

/// Result of training operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
