//! A dataset ready for loading: the index, its chunk plan, the decoder, and the per-sample loader
//! that fills caller-provided u8 frame and f32 keypoint buffers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vidtrain_config::Config;

use crate::Result;
use crate::decode::FrameDecoder;
use crate::index::Index;
use crate::keypoints::read_keypoints;
use crate::plan::ChunkPlan;

/// Sizes of one sample, shared by every sample of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleShape {
    /// Views per sample.
    pub views: usize,
    /// Frames per view (`T`).
    pub frames: usize,
    /// Frame side in pixels.
    pub img_size: usize,
    /// Joints per frame (0 when keypoints are not loaded).
    pub joints: usize,
    /// Whether RGB frames are loaded.
    pub rgb: bool,
}

impl SampleShape {
    /// u8 bytes of one sample's frames, `[views, frames, img, img, 3]`.
    pub fn video_bytes(&self) -> usize {
        if self.rgb {
            self.views * self.frames * self.img_size * self.img_size * 3
        } else {
            0
        }
    }

    /// f32 values of one sample's keypoints, `[views, frames, joints, 3]`.
    pub fn keypoint_values(&self) -> usize {
        self.views * self.frames * self.joints * 3
    }
}

/// An indexed, planned dataset that loads samples on demand.
#[derive(Debug)]
pub struct Dataset {
    /// Recordings and classes.
    pub index: Index,
    /// Every sample of every recording.
    pub plan: ChunkPlan,
    shape: SampleShape,
    decoder: Option<FrameDecoder>,
    joint_indices: Vec<usize>,
    cache: Option<DecodedCache>,
    missing_keypoint_frames: AtomicUsize,
    non_finite_keypoint_values: AtomicUsize,
}

impl Dataset {
    /// Indexes and plans the dataset named by `config.paths` (probing videos, decoding nothing).
    pub fn open(config: &Config) -> Result<Self> {
        let index = Index::build(config)?;
        let plan = ChunkPlan::build(
            &index,
            config.data.max_video_frames,
            config.data.uniform_temporal_subsample_num,
        );
        Self::from_plan(config, index, plan)
    }

    /// Sliding windows (`window` frames every `stride`) over unlabelled `videos`, for prediction
    /// (see [`Index::for_prediction`] and [`ChunkPlan::windows`]).
    pub fn windows(
        config: &Config,
        videos: &[std::path::PathBuf],
        window: usize,
        stride: usize,
    ) -> Result<Self> {
        let index = Index::for_prediction(config, videos)?;
        let plan = ChunkPlan::windows(
            &index,
            window,
            stride,
            config.data.uniform_temporal_subsample_num,
        );
        Self::from_plan(config, index, plan)
    }

    fn from_plan(config: &Config, index: Index, plan: ChunkPlan) -> Result<Self> {
        let decoder = if config.data.load_rgb {
            Some(FrameDecoder::new(
                config.data.img_size,
                Duration::from_secs(config.data.decode_timeout_s),
            )?)
        } else {
            None
        };
        let joint_indices = if config.data.load_kpt {
            config.data.keypoint_indices.clone()
        } else {
            Vec::new()
        };
        let shape = SampleShape {
            views: config.active_views().len(),
            frames: config.data.uniform_temporal_subsample_num,
            img_size: config.data.img_size,
            joints: joint_indices.len(),
            rgb: config.data.load_rgb,
        };
        let cache = (config.data.cache_decoded_mib > 0).then(|| DecodedCache {
            budget_bytes: config.data.cache_decoded_mib << 20,
            used_bytes: AtomicUsize::new(0),
            samples: Mutex::new(HashMap::new()),
        });
        Ok(Self {
            index,
            plan,
            shape,
            decoder,
            joint_indices,
            cache,
            missing_keypoint_frames: AtomicUsize::new(0),
            non_finite_keypoint_values: AtomicUsize::new(0),
        })
    }

    /// Sizes of one sample with every active view (the largest a sample can be).
    pub fn sample_shape(&self) -> SampleShape {
        self.shape
    }

    /// Sizes of sample `sample_id`: fewer views than [`Dataset::sample_shape`] when its recording
    /// lacks a view and `data.missing_view = "use_present"`.
    pub fn shape_of(&self, sample_id: usize) -> SampleShape {
        let recording = &self.index.recordings[self.plan.samples[sample_id].recording];
        SampleShape {
            views: recording.views.len(),
            ..self.shape
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.plan.samples.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.plan.samples.is_empty()
    }

    /// Keypoint frames that were missing and became zeros so far.
    pub fn missing_keypoint_frames(&self) -> usize {
        self.missing_keypoint_frames.load(Ordering::Relaxed)
    }

    /// NaN/Inf keypoint values read so far (each became 0).
    pub fn non_finite_keypoint_values(&self) -> usize {
        self.non_finite_keypoint_values.load(Ordering::Relaxed)
    }

    /// Loads sample `sample_id` into `video` (`shape_of(sample_id).video_bytes()` bytes) and
    /// `keypoints` (`shape_of(sample_id).keypoint_values()` values).
    pub fn load(&self, sample_id: usize, video: &mut [u8], keypoints: &mut [f32]) -> Result<()> {
        let sample = &self.plan.samples[sample_id];
        let recording = &self.index.recordings[sample.recording];
        if let Some(decoder) = &self.decoder {
            let cached = self.cache.as_ref().and_then(|cache| cache.get(sample_id));
            if let Some(bytes) = cached {
                video.copy_from_slice(&bytes);
            } else {
                let view_bytes = video.len() / recording.views.len();
                for (view, out) in recording.views.iter().zip(video.chunks_mut(view_bytes)) {
                    decoder.decode(&view.path, &view.info, &sample.frame_indices, out)?;
                }
                if let Some(cache) = &self.cache {
                    cache.put(sample_id, video);
                }
            }
        }
        if !self.joint_indices.is_empty() {
            let view_values = keypoints.len() / recording.views.len();
            for (view, out) in recording
                .views
                .iter()
                .zip(keypoints.chunks_mut(view_values))
            {
                let Some(path) = &view.keypoints else {
                    continue;
                };
                let report = read_keypoints(path, &sample.frame_indices, &self.joint_indices, out)?;
                self.non_finite_keypoint_values
                    .fetch_add(report.non_finite_values, Ordering::Relaxed);
                if report.missing_frames > 0 {
                    self.missing_keypoint_frames
                        .fetch_add(report.missing_frames, Ordering::Relaxed);
                    tracing::debug!(
                        path = %path.display(),
                        "{} keypoint frames missing, filled with zeros",
                        report.missing_frames
                    );
                }
            }
        }
        Ok(())
    }
}

/// Decoded samples kept for later epochs, up to a byte budget (`data.cache_decoded_mib`).
#[derive(Debug)]
struct DecodedCache {
    budget_bytes: usize,
    used_bytes: AtomicUsize,
    samples: Mutex<HashMap<usize, Arc<[u8]>>>,
}

impl DecodedCache {
    fn get(&self, sample_id: usize) -> Option<Arc<[u8]>> {
        self.samples.lock().ok()?.get(&sample_id).cloned()
    }

    fn put(&self, sample_id: usize, bytes: &[u8]) {
        let used = self.used_bytes.load(Ordering::Relaxed);
        if used + bytes.len() > self.budget_bytes {
            return;
        }
        if let Ok(mut samples) = self.samples.lock()
            && samples.insert(sample_id, Arc::from(bytes)).is_none()
        {
            self.used_bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        }
    }
}
