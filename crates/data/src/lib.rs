//! vidtrain's data loading: a Label Studio index of multi-view videos, a chunk plan that turns
//! labelled ranges into fixed-length samples, ffmpeg decoding of only the sampled frames (scaled
//! by ffmpeg, as u8), keypoints read frame by frame, and a bounded prefetch pipeline.
//!
//! Host memory is bounded by the pipeline (`prefetch_depth + num_workers + 1` batches), never by
//! the length of a video.

mod augment;
mod chunks;
mod dataset;
mod decode;
pub mod demo;
mod error;
mod index;
mod keypoints;
mod manifest;
mod pipeline;
mod probe;
mod report;
mod rng;
mod stop;

pub use augment::{Augmentation, ColorFactors, SampleTransform, apply_color};
pub use chunks::{ChunkPlan, Sample, uniform_temporal_subsample};
pub use dataset::{Dataset, SampleShape, Transforms};
pub use decode::{Crop, FrameDecoder, SpatialTransform, ViewSource, decode_processes_spawned};
pub use error::{Error, Result};
pub use index::{Index, LabelledRange, Problem, ProblemKind, Recording, ViewVideo};
pub use keypoints::{
    KeypointFacts, KeypointReport, inspect_keypoints, keypoint_files_opened, read_keypoints,
};
pub use manifest::{Manifest, ManifestEntry};
pub use pipeline::{Batch, Pipeline, PipelineBuilder};
pub use probe::{DEFAULT_PROBE_TIMEOUT, VideoInfo, find_tool, probe_video, probe_video_within};
pub use report::DatasetReport;
pub use rng::{class_balanced, shuffled};
pub use stop::watch_stop_flag;
