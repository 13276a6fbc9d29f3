//! A dataset ready for loading: the index, its chunks (the sample chunk plan), the decoder, and the per-sample loader
//! that fills caller-provided u8 frame and f32 keypoint buffers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vidtrain_config::Config;

use crate::Result;
use crate::augment::{Augmentation, SampleTransform, apply_color};
use crate::chunks::ChunkPlan;
use crate::decode::{FrameDecoder, ViewSource};
use crate::index::Index;
use crate::keypoints::read_keypoints;

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
    pub chunks: ChunkPlan,
    shape: SampleShape,
    decoder: Option<FrameDecoder>,
    joint_indices: Vec<usize>,
    cache: Option<DecodedCache>,
    missing_keypoint_frames: AtomicUsize,
    non_finite_keypoint_values: AtomicUsize,
    augmentation: Augmentation,
}

/// Which transforms a pipeline's samples get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transforms {
    /// The chunks' frames, whole (validation uses [`Transforms::Evaluation`]).
    #[default]
    None,
    /// Training augmentation, drawn from the epoch's seed.
    Training {
        /// Seed of this epoch's draws.
        epoch_seed: u64,
    },
    /// The evaluation crop and clip `clip` of `clips`.
    Evaluation {
        /// This clip.
        clip: usize,
        /// Clips per segment (`eval.clips`).
        clips: usize,
    },
}

impl Dataset {
    /// Indexes and plans the dataset named by `config.paths` (probing videos, decoding nothing).
    pub fn open(config: &Config) -> Result<Self> {
        let index = Index::build(config)?;
        let chunks = ChunkPlan::build(
            &index,
            config.data.max_video_frames,
            config.data.uniform_temporal_subsample_num,
        );
        Self::from_chunks(config, index, chunks)
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
        let chunks = ChunkPlan::windows(
            &index,
            window,
            stride,
            config.data.uniform_temporal_subsample_num,
        );
        Self::from_chunks(config, index, chunks)
    }

    fn from_chunks(config: &Config, index: Index, chunks: ChunkPlan) -> Result<Self> {
        let decoder = if config.data.load_rgb {
            Some(
                FrameDecoder::new(
                    config.data.img_size,
                    Duration::from_secs(config.data.decode_timeout_s),
                )?
                .with_views_per_process(config.data.views_per_decoder),
            )
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
            chunks,
            shape,
            decoder,
            joint_indices,
            cache,
            missing_keypoint_frames: AtomicUsize::new(0),
            non_finite_keypoint_values: AtomicUsize::new(0),
            augmentation: Augmentation::from_config(config),
        })
    }

    /// Sizes of one sample with every active view (the largest a sample can be).
    pub fn sample_shape(&self) -> SampleShape {
        self.shape
    }

    /// Sizes of sample `sample_id`: fewer views than [`Dataset::sample_shape`] when its recording
    /// lacks a view and `data.missing_view = "use_present"`.
    pub fn shape_of(&self, sample_id: usize) -> SampleShape {
        let recording = &self.index.recordings[self.chunks.samples[sample_id].recording];
        SampleShape {
            views: recording.views.len(),
            ..self.shape
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.chunks.samples.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.chunks.samples.is_empty()
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
        self.load_transformed(sample_id, &SampleTransform::default(), video, keypoints)
            .map(|_| ())
    }

    /// What `transforms` draws for sample `sample_id`.
    pub fn transform_for(&self, sample_id: usize, transforms: Transforms) -> SampleTransform {
        let sample = &self.chunks.samples[sample_id];
        match transforms {
            Transforms::None => SampleTransform::default(),
            Transforms::Training { epoch_seed } => {
                let info = &self.index.recordings[sample.recording].views[0].info;
                let aspect = info.width as f64 / info.height.max(1) as f64;
                self.augmentation
                    .draw_training(epoch_seed, sample_id, sample, aspect)
            }
            Transforms::Evaluation { clip, clips } => {
                self.augmentation.evaluation(sample, clip, clips)
            }
        }
    }

    /// Loads sample `sample_id` as [`Dataset::load`] does, transformed: crop and flip by ffmpeg,
    /// colour jitter on the frames, other frame indices; a flip also exchanges the paired views
    /// and mirrors the keypoints. Returns the sample's class as seen (a flipped `left` is
    /// `right`).
    pub fn load_transformed(
        &self,
        sample_id: usize,
        transform: &SampleTransform,
        video: &mut [u8],
        keypoints: &mut [f32],
    ) -> Result<usize> {
        let sample = &self.chunks.samples[sample_id];
        let recording = &self.index.recordings[sample.recording];
        let flip = transform.spatial.hflip;
        let frame_indices = transform
            .frame_indices
            .as_deref()
            .unwrap_or(&sample.frame_indices);
        // Slot `i` holds the frames of view `sources[i]` (paired views exchanged by a flip).
        let sources: Vec<usize> = if flip {
            let names: Vec<&str> = recording
                .views
                .iter()
                .map(|view| view.view.as_str())
                .collect();
            self.augmentation.flipped_view_sources(&names)
        } else {
            (0..recording.views.len()).collect()
        };
        if let Some(decoder) = &self.decoder {
            // The cache holds plain decodes only; a crop, flip or other frames decode afresh.
            let cache = self.cache.as_ref().filter(|_| !transform.changes_decode());
            let cached = cache.and_then(|cache| cache.get(sample_id));
            if let Some(bytes) = cached {
                video.copy_from_slice(&bytes);
            } else {
                let views: Vec<ViewSource<'_>> = sources
                    .iter()
                    .map(|&source| {
                        let view = &recording.views[source];
                        ViewSource {
                            path: &view.path,
                            info: &view.info,
                        }
                    })
                    .collect();
                decoder.decode_views(&views, frame_indices, transform.spatial, video)?;
                if let Some(cache) = cache {
                    cache.put(sample_id, video);
                }
            }
            if let Some(factors) = transform.color {
                apply_color(video, decoder.frame_bytes(), factors);
            }
        }
        if !self.joint_indices.is_empty() {
            let view_values = keypoints.len() / recording.views.len();
            for (&source, out) in sources.iter().zip(keypoints.chunks_mut(view_values)) {
                let Some(path) = &recording.views[source].keypoints else {
                    continue;
                };
                let report = read_keypoints(path, frame_indices, &self.joint_indices, out)?;
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
                if flip {
                    self.augmentation
                        .flip_keypoints(out, self.joint_indices.len());
                }
            }
        }
        Ok(if flip {
            self.augmentation.flipped_class(sample.class)
        } else {
            sample.class
        })
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
