//! The bounded prefetch pipeline: worker threads load batches in a fixed order and hand them to
//! the trainer through bounded crossbeam channels, so host memory holds at most
//! `prefetch_depth + num_workers + 1` batches whatever the video length.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::dataset::{Dataset, SampleShape, Transforms};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One micro-batch of u8 frames and f32 keypoints, as loaded (nothing converted yet).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Sample ids (into the dataset's plan), in batch order.
    pub sample_ids: Vec<usize>,
    /// Each sample's position in the order the pipeline was built with.
    pub positions: Vec<usize>,
    /// Class id per sample, as loaded (a flipped sample carries the flipped class).
    pub labels: Vec<usize>,
    /// `[batch, views, frames, img, img, 3]` rgb24 bytes (empty without RGB).
    pub video: Vec<u8>,
    /// `[batch, views, frames, joints, 3]` keypoints (empty without keypoints).
    pub keypoints: Vec<f32>,
    /// Sizes of each sample.
    pub shape: SampleShape,
}

impl Batch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no sample (every sample was skipped).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `samples` samples of `shape` with random frames, keypoints in 0..1 and labels below
    /// `classes`, fixed by `seed`: a batch in the loader's layout without a dataset (the model
    /// benchmark trains on these).
    pub fn random(shape: SampleShape, samples: usize, classes: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut video = vec![0u8; samples * shape.video_bytes()];
        for bytes in video.chunks_mut(8) {
            bytes.copy_from_slice(&rng.next().to_le_bytes()[..bytes.len()]);
        }
        Batch {
            sample_ids: (0..samples).collect(),
            positions: (0..samples).collect(),
            labels: (0..samples)
                .map(|_| rng.below(classes as u64) as usize)
                .collect(),
            video,
            keypoints: (0..samples * shape.keypoint_values())
                .map(|_| rng.unit() as f32)
                .collect(),
            shape,
        }
    }

    /// Host bytes held by the batch's buffers.
    pub fn host_bytes(&self) -> usize {
        self.video.len() + self.keypoints.len() * 4
    }
}

/// Configures a [`Pipeline`].
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    workers: usize,
    prefetch_depth: usize,
    batch_size: usize,
    skip_bad_samples: bool,
    transforms: Transforms,
}

impl PipelineBuilder {
    /// Transforms of the samples (none by default).
    pub fn transforms(mut self, transforms: Transforms) -> Self {
        self.transforms = transforms;
        self
    }

    /// Worker threads (0 = load on the consuming thread).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Ready batches queued between workers and consumer (at least one per worker).
    pub fn prefetch_depth(mut self, prefetch_depth: usize) -> Self {
        self.prefetch_depth = prefetch_depth.max(1);
        self
    }

    /// Samples per batch.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Log, count and leave out samples that fail to load instead of stopping.
    pub fn skip_bad_samples(mut self, skip: bool) -> Self {
        self.skip_bad_samples = skip;
        self
    }

    /// Starts loading `order` (sample ids) in batches, in exactly that order.
    pub fn build(self, dataset: Arc<Dataset>, order: Vec<usize>) -> Pipeline {
        // Each planned batch as (position in `order`, sample id) pairs.
        let positioned: Vec<(usize, usize)> = order.into_iter().enumerate().collect();
        let batches: Vec<Vec<(usize, usize)>> = positioned
            .chunks(self.batch_size)
            .map(<[(usize, usize)]>::to_vec)
            .collect();
        let n_batches = batches.len();
        let skipped = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let loader = BatchLoader {
            dataset,
            skip_bad_samples: self.skip_bad_samples,
            skipped: Arc::clone(&skipped),
            transforms: self.transforms,
        };
        if self.workers == 0 {
            return Pipeline::started(Mode::Inline { loader, batches }, n_batches, skipped, stop);
        }
        let per_worker_depth = self.prefetch_depth.div_ceil(self.workers).max(1);
        let mut receivers = Vec::with_capacity(self.workers);
        let mut threads = Vec::with_capacity(self.workers);
        for worker in 0..self.workers {
            let (sender, receiver) = bounded(per_worker_depth);
            receivers.push(receiver);
            let mine: Vec<Vec<(usize, usize)>> = batches
                .iter()
                .skip(worker)
                .step_by(self.workers)
                .cloned()
                .collect();
            let loader = loader.clone();
            let stop = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name(format!("vidtrain-decode-{worker}"))
                .spawn(move || run_worker(loader, mine, sender, stop))
                .expect("spawning a decode worker thread");
            threads.push(thread);
        }
        Pipeline::started(
            Mode::Threads { receivers, threads },
            n_batches,
            skipped,
            stop,
        )
    }
}

/// Batches in a deterministic order, loaded ahead by worker threads; an iterator of `Result<Batch>`.
/// Dropping it stops the workers (after their current sample) and joins them.
#[derive(Debug)]
pub struct Pipeline {
    mode: Mode,
    next_batch: usize,
    n_batches: usize,
    skipped: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    failed: bool,
    /// Batches of a planned batch not handed out yet (it split by view count).
    pending: std::collections::VecDeque<Batch>,
}

#[derive(Debug)]
enum Mode {
    Inline {
        loader: BatchLoader,
        batches: Vec<Vec<(usize, usize)>>,
    },
    Threads {
        receivers: Vec<Receiver<Result<Vec<Batch>>>>,
        threads: Vec<JoinHandle<()>>,
    },
}

impl Pipeline {
    /// A pipeline about to hand out its first batch.
    fn started(
        mode: Mode,
        n_batches: usize,
        skipped: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Pipeline {
            mode,
            next_batch: 0,
            n_batches,
            skipped,
            stop,
            failed: false,
            pending: Default::default(),
        }
    }

    /// A builder with one worker, prefetch depth 2, batch size 1, skipping bad samples.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder {
            workers: 1,
            prefetch_depth: 2,
            batch_size: 1,
            skip_bad_samples: true,
            transforms: Transforms::None,
        }
    }

    /// A builder set from `data.*`: workers, prefetch depth, batch size, bad-sample policy.
    pub fn builder_for(data: &vidtrain_config::DataConfig) -> PipelineBuilder {
        Self::builder()
            .workers(data.num_workers)
            .prefetch_depth(data.prefetch_depth)
            .batch_size(data.batch_size)
            .skip_bad_samples(data.on_bad_sample == vidtrain_config::OnBadSample::Skip)
    }

    /// Planned batches (before skips; one whose samples have different view counts is delivered
    /// as one batch per count).
    pub fn n_batches(&self) -> usize {
        self.n_batches
    }

    /// Samples skipped so far because they failed to load.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Iterator for Pipeline {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            if self.failed || self.next_batch >= self.n_batches {
                return None;
            }
            let batch_number = self.next_batch;
            self.next_batch += 1;
            let result = match &mut self.mode {
                Mode::Inline { loader, batches } => loader.load(&batches[batch_number]),
                Mode::Threads { receivers, .. } => {
                    let receiver = &receivers[batch_number % receivers.len()];
                    receiver.recv().unwrap_or_else(|_| {
                        Err(Error::Pipeline("a decode worker stopped early".into()))
                    })
                }
            };
            match result {
                Ok(batches) => {
                    self.pending
                        .extend(batches.into_iter().filter(|batch| !batch.is_empty()));
                }
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Mode::Threads { receivers, threads } = &mut self.mode {
            // Dropping the receivers makes a blocked `send` fail, so every worker exits.
            receivers.clear();
            for thread in threads.drain(..) {
                let _ = thread.join();
            }
        }
    }
}

#[derive(Debug, Clone)]
struct BatchLoader {
    dataset: Arc<Dataset>,
    skip_bad_samples: bool,
    skipped: Arc<AtomicUsize>,
    transforms: Transforms,
}

impl BatchLoader {
    /// Loads the samples of one planned batch. Samples whose recordings have fewer views
    /// (`data.missing_view = "use_present"`) cannot share a tensor with the others: each view
    /// count becomes a batch of its own, in order of first appearance.
    fn load(&self, planned: &[(usize, usize)]) -> Result<Vec<Batch>> {
        let mut by_views: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
        for &(position, sample_id) in planned {
            let views = self.dataset.shape_of(sample_id).views;
            match by_views.iter_mut().find(|(count, _)| *count == views) {
                Some((_, members)) => members.push((position, sample_id)),
                None => by_views.push((views, vec![(position, sample_id)])),
            }
        }
        by_views
            .into_iter()
            .map(|(_, members)| self.load_alike(&members))
            .collect()
    }

    /// Loads samples that share one shape into one batch.
    fn load_alike(&self, planned: &[(usize, usize)]) -> Result<Batch> {
        let shape = self.dataset.shape_of(planned[0].1);
        let mut video = vec![0u8; planned.len() * shape.video_bytes()];
        let mut keypoints = vec![0f32; planned.len() * shape.keypoint_values()];
        let mut kept = Vec::with_capacity(planned.len());
        let mut positions = Vec::with_capacity(planned.len());
        let mut labels = Vec::with_capacity(planned.len());
        for &(position, sample_id) in planned {
            let slot = kept.len();
            let video_out = &mut video[slot * shape.video_bytes()..][..shape.video_bytes()];
            let keypoint_out =
                &mut keypoints[slot * shape.keypoint_values()..][..shape.keypoint_values()];
            let transform = self.dataset.transform_for(sample_id, self.transforms);
            match self
                .dataset
                .load_transformed(sample_id, &transform, video_out, keypoint_out)
            {
                Ok(label) => {
                    kept.push(sample_id);
                    positions.push(position);
                    labels.push(label);
                }
                Err(error) if self.skip_bad_samples && !error.ends_the_run() => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("sample {sample_id} skipped: {error}");
                }
                Err(error) => return Err(error),
            }
        }
        video.truncate(kept.len() * shape.video_bytes());
        keypoints.truncate(kept.len() * shape.keypoint_values());
        Ok(Batch {
            sample_ids: kept,
            positions,
            labels,
            video,
            keypoints,
            shape,
        })
    }
}

fn run_worker(
    loader: BatchLoader,
    batches: Vec<Vec<(usize, usize)>>,
    sender: Sender<Result<Vec<Batch>>>,
    stop: Arc<AtomicBool>,
) {
    for planned in batches {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let result = loader.load(&planned);
        let failed = result.is_err();
        if sender.send(result).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_batch_has_the_loaders_layout_and_is_fixed_by_its_seed() {
        let shape = SampleShape {
            views: 2,
            frames: 3,
            img_size: 5,
            joints: 4,
            rgb: true,
        };
        let batch = Batch::random(shape, 3, 9, 7);
        assert_eq!(batch.video.len(), 3 * 2 * 3 * 5 * 5 * 3);
        assert_eq!(batch.keypoints.len(), 3 * 2 * 3 * 4 * 3);
        assert!(batch.labels.iter().all(|&label| label < 9));
        assert!(batch.keypoints.iter().all(|v| (0.0..1.0).contains(v)));
        assert_eq!(batch.video, Batch::random(shape, 3, 9, 7).video);
        assert_ne!(batch.video, Batch::random(shape, 3, 9, 8).video);
    }
}
