//! The data pipeline measured alone (`vidtrain data bench`): throughput, peak RSS, ffmpeg
//! processes, skips — no model, no training.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use vidtrain_config::Config;
use vidtrain_data::{Dataset, FrameDecoder, Pipeline, decode_processes_spawned, shuffled};

use crate::Result;

/// What one pipeline run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineBench {
    /// Batches delivered.
    pub batches: usize,
    /// Samples delivered.
    pub samples: usize,
    /// Decoded frames delivered per second (samples × views × T / wall time).
    pub frames_per_s: f64,
    /// Peak RSS of the process while the pipeline ran (the kernel's mark, reset at the start).
    pub peak_rss_bytes: Option<u64>,
    /// Peak RSS of the process tree while the pipeline ran: vidtrain plus its ffmpeg decoders,
    /// summed at each sample (every 10 ms).
    pub peak_process_tree_rss_bytes: Option<u64>,
    /// RSS before the pipeline started (index and binary).
    pub baseline_rss_bytes: Option<u64>,
    /// ffmpeg processes started.
    pub decode_processes: usize,
    /// Samples that failed and were skipped.
    pub skipped: usize,
    /// Bytes of one micro-batch (u8 frames + f32 keypoints).
    pub batch_bytes: usize,
    /// Wall time of the pipeline run, seconds.
    pub wall_s: f64,
    /// Frames per second of plain `ffmpeg ... -f null -` runs with the same seek, select and
    /// scale over the same samples, one after another (when asked for).
    pub ffmpeg_null_frames_per_s: Option<f64>,
}

/// Runs the training pipeline of `config` for up to `batches` batches of shuffled samples; with
/// `ffmpeg_baseline`, then decodes the same samples with ffmpeg's null output for comparison.
pub fn bench_pipeline(
    config: &Config,
    batches: usize,
    ffmpeg_baseline: bool,
) -> Result<PipelineBench> {
    let dataset = Arc::new(Dataset::open(config)?);
    let reference = Arc::clone(&dataset);
    let ids: Vec<usize> = (0..dataset.len()).collect();
    let order = shuffled(&ids, config.train.seed);
    let shape = dataset.sample_shape();
    let baseline_rss_bytes = vidtrain_memutil::current_rss_bytes();
    vidtrain_memutil::reset_peak_rss();
    let decodes_before = decode_processes_spawned();
    let sampler = vidtrain_memutil::MemorySampler::start(Duration::from_millis(10));
    let started = Instant::now();
    let mut pipeline = Pipeline::builder_for(&config.data).build(dataset, order);
    let mut delivered = 0;
    let mut sample_ids = Vec::new();
    for batch in pipeline.by_ref().take(batches) {
        sample_ids.extend(batch?.sample_ids);
        delivered += 1;
    }
    let samples = sample_ids.len();
    let skipped = pipeline.skipped();
    drop(pipeline);
    let wall_s = started.elapsed().as_secs_f64();
    let peak_rss_bytes = vidtrain_memutil::peak_rss_bytes();
    let tree = sampler.finish().peak_process_tree_rss_bytes;
    let peak_process_tree_rss_bytes = (tree > 0).then_some(tree);
    let decode_processes = decode_processes_spawned() - decodes_before;
    let frames = (samples * shape.views * shape.frames) as f64;
    let ffmpeg_null_frames_per_s = if ffmpeg_baseline && shape.rgb {
        let decoder = FrameDecoder::new(
            config.data.img_size,
            Duration::from_secs(config.data.decode_timeout_s),
        )?;
        let baseline_started = Instant::now();
        for &id in &sample_ids {
            let sample = &reference.chunks.samples[id];
            for video in &reference.index.recordings[sample.recording].views {
                decoder.decode_discarding(&video.path, &video.info, &sample.frame_indices)?;
            }
        }
        Some(frames / baseline_started.elapsed().as_secs_f64().max(1e-9))
    } else {
        None
    };
    Ok(PipelineBench {
        batches: delivered,
        samples,
        frames_per_s: frames / wall_s.max(1e-9),
        peak_rss_bytes,
        peak_process_tree_rss_bytes,
        baseline_rss_bytes,
        decode_processes,
        skipped,
        batch_bytes: config.data.batch_size * (shape.video_bytes() + 4 * shape.keypoint_values()),
        wall_s,
        ffmpeg_null_frames_per_s,
    })
}
