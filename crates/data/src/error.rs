//! Data errors: each names the file (and frames or key) involved and what to do about it.

use std::path::PathBuf;

/// Why the dataset could not be indexed or a sample could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ffmpeg or ffprobe is not installed.
    #[error(
        "`{program}` was not found on PATH; vidtrain decodes videos with ffmpeg. Install it \
         (Debian/Ubuntu: `sudo apt-get install -y ffmpeg`, macOS: `brew install ffmpeg`) and retry"
    )]
    ToolMissing { program: String },
    /// `VIDTRAIN_FFMPEG` / `VIDTRAIN_FFPROBE` names something that is not a program file.
    #[error(
        "{variable} names {}, which is {problem}; point it at the {program} program (or unset it \
         to use the {program} on PATH)",
        .path.display()
    )]
    ToolOverride {
        variable: String,
        program: String,
        path: PathBuf,
        problem: &'static str,
    },
    /// The annotation export could not be read or parsed.
    #[error("annotation file {}: {message}", .path.display())]
    Annotation { path: PathBuf, message: String },
    /// The `paths.manifest` file could not be read or has a bad row.
    #[error("manifest {}: {message}", .path.display())]
    Manifest { path: PathBuf, message: String },
    /// A video named by the annotations does not exist.
    #[error("video {} (view {view}) does not exist; check paths.video_path and data.views", .path.display())]
    MissingVideo { path: PathBuf, view: String },
    /// A multi-view model was given a video outside a view folder.
    #[error(
        "{} is not inside a view folder, but the model takes the views {views}: pass a file \
         under one of them (<root>/<view>/<name>; the other views are found beside it) or set \
         train.view=single",
        .path.display()
    )]
    ViewLayout { path: PathBuf, views: String },
    /// The views of one recording cannot be used together (different frame rates).
    #[error("{}: {message}", .path.display())]
    ViewsOutOfStep { path: PathBuf, message: String },
    /// ffprobe could not read a video's stream information.
    #[error("cannot probe video {}: {message}", .path.display())]
    Probe { path: PathBuf, message: String },
    /// ffprobe took longer than `data.decode_timeout_s` and was stopped.
    #[error("probing {} took longer than {seconds} s and was stopped (is the file on a hung mount? raise data.decode_timeout_s if it is just slow)", .path.display())]
    ProbeTimeout { path: PathBuf, seconds: u64 },
    /// ffmpeg failed on a video.
    #[error("decoding {} frames {first_frame}..={last_frame} failed: {message}", .path.display())]
    Decode {
        path: PathBuf,
        first_frame: usize,
        last_frame: usize,
        message: String,
    },
    /// ffmpeg delivered fewer frames than asked for (a damaged or short file usually exits 0).
    #[error(
        "video {} delivered {got_frames} of {expected_frames} frames in {first_frame}..={last_frame}; \
         the file is damaged or shorter than its header says",
        .path.display()
    )]
    ShortRead {
        path: PathBuf,
        first_frame: usize,
        last_frame: usize,
        expected_frames: usize,
        got_frames: usize,
    },
    /// ffmpeg took longer than `data.decode_timeout_s` and was killed.
    #[error("decoding {} took longer than {seconds} s and was stopped (raise data.decode_timeout_s if the file is just slow)", .path.display())]
    DecodeTimeout { path: PathBuf, seconds: u64 },
    /// A labelled range that cannot become a sample (e.g. it starts past the end of the video).
    #[error("{}: {message}", .path.display())]
    BadRange { path: PathBuf, message: String },
    /// Labels that are not in `data.class_names`.
    #[error("annotation file {} uses labels that are not classes: {labels}; add them to data.class_names or fix the export", .path.display())]
    UnknownLabels { path: PathBuf, labels: String },
    /// A keypoint file that cannot be read.
    #[error("keypoint file {}: {message}", .path.display())]
    Keypoints { path: PathBuf, message: String },
    /// Nothing to train on.
    #[error("no samples: {0}")]
    NoSamples(String),
    /// A file system error on `path`.
    // The OS error is part of the message and deliberately not a `#[source]`: printed with its
    // causes (`{:#}`), it would otherwise appear twice.
    #[error("{}: {cause}", .path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A stop was requested (Ctrl-C, SIGTERM) while the dataset was being indexed.
    #[error("stopped by a signal while indexing the dataset (at {}); nothing was trained or saved", .path.display())]
    Stopped { path: PathBuf },
    /// The decode worker threads stopped unexpectedly.
    #[error("the data pipeline stopped: {0}")]
    Pipeline(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        let path = path.into();
        Error::Io { path, cause }
    }

    /// Whether the error ends the run whatever `data.on_bad_sample` says: no tool to run, or a
    /// stop requested. Nothing about one video or sample, so nothing to skip.
    pub fn ends_the_run(&self) -> bool {
        matches!(
            self,
            Error::ToolMissing { .. } | Error::ToolOverride { .. } | Error::Stopped { .. }
        )
    }
}

/// Result of data operations.
pub type Result<T> = std::result::Result<T, Error>;
