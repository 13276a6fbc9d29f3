//! `data.*`: what is loaded and how (views, frames, size, keypoints, the loader).

use serde::{Deserialize, Serialize};

use crate::controls::{AugmentPreset, Sampler};

/// `data.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Samples (labelled segments) per micro-batch. Lower it, and raise
    /// `train.accumulate_grad_batches`, to cut activation memory at the same effective batch.
    pub batch_size: usize,
    /// Decoder worker threads (0 = decode on the training thread). Each worker holds one sample
    /// in flight, so host memory grows with this number.
    pub num_workers: usize,
    /// Side of the square frames fed to the model, in pixels; ffmpeg scales to it while decoding.
    pub img_size: usize,
    /// Frames sampled uniformly from each labelled segment (the model's `T`).
    pub uniform_temporal_subsample_num: usize,
    /// Longest stretch of a video treated as one chunk; a longer video is cut into chunks and only
    /// the sampled frames of one chunk's segments are decoded at a time.
    pub max_video_frames: usize,
    /// Load and decode RGB frames. `false` spawns no ffmpeg at all.
    pub load_rgb: bool,
    /// Load body keypoints. `false` opens no keypoint file at all.
    pub load_kpt: bool,
    /// Ready micro-batches queued between the decoders and the trainer (bounded channel).
    pub prefetch_depth: usize,
    /// Views of a sample one ffmpeg process decodes (its inputs, their frames concatenated).
    /// Starting ffmpeg costs about 100 ms of CPU, most of a small video's decode: 3 decodes the
    /// seed's three views with one start. `1` starts one per view and holds the least memory
    /// while decoding: each process holds its inputs' reference frames (1080p H.264: 64 MiB
    /// for one view, 90 MiB for three).
    pub views_per_decoder: usize,
    /// Camera views used, any subset of `front`, `left`, `right`.
    pub views: Vec<String>,
    /// What to do with a bad sample (unreadable video, range past the end, unknown label):
    /// `skip` logs it, counts it and carries on; `error` stops the run.
    pub on_bad_sample: OnBadSample,
    /// A recording that lacks one of several views: `skip` leaves it out (listed by `data
    /// inspect`); `use_present` trains and evaluates it on the views it has, which the mean
    /// fusions (`logit_mean`, `prob_mean`, `feature_mean`) allow: its samples go through the
    /// model in micro-batches of their own view count.
    pub missing_view: MissingView,
    /// Joints kept from each keypoint frame (the seed keeps 52 of 70).
    pub keypoint_indices: Vec<usize>,
    /// Longest time one ffmpeg decode (or one ffprobe of a video) may take before it is killed,
    /// in seconds. A sample's views decode in one ffmpeg; when that one is killed or fails, each
    /// view is decoded again on its own, under this limit each, so that the error names the file.
    pub decode_timeout_s: u64,
    /// Timeline label names in class-id order; labels not listed are reported as unknown.
    pub class_names: Vec<String>,
    /// Keep decoded samples in host memory, up to this many MiB, so later epochs do not decode
    /// again. 0 (the default) keeps nothing: host memory stays bounded by the prefetch depth.
    pub cache_decoded_mib: usize,
    /// Augmentation preset for training (validation, `eval` and `predict` never augment):
    /// `none`, `light` (flip, temporal jitter) or `standard` (`light` plus random resized crop and
    /// colour jitter). A preset sets the augmentation keys below; any of them set explicitly (in
    /// a file, the environment or on the command line) wins over the preset.
    pub augment: AugmentPreset,
    /// Probability of flipping a training sample horizontally: frames mirrored by ffmpeg's
    /// `hflip`, labels swapped by `data.flip_label_pairs`, views by `data.flip_view_pairs`,
    /// keypoints mirrored (`data.keypoint_flip_width`, `data.flip_joint_pairs`).
    pub hflip_prob: f64,
    /// Random resized crop: the crop's share of the frame's area is drawn from this range
    /// (torchvision's `scale`); `[1.0, 1.0]` turns cropping off. ffmpeg crops before it scales to
    /// `data.img_size`, in the same decode.
    pub crop_scale: [f64; 2],
    /// Random resized crop: range of the crop's aspect ratio, width / height (torchvision's
    /// `ratio`), drawn log-uniformly.
    pub crop_ratio: [f64; 2],
    /// Colour jitter strengths `[brightness, contrast, saturation]`: each factor is drawn from
    /// `[1 − s, 1 + s]` per sample (the same for all its frames and views), applied to the
    /// decoded u8 frames as torchvision's `adjust_*`. `[0, 0, 0]` turns it off.
    pub color_jitter: [f64; 3],
    /// Draw each sampled frame at a random position within its share of the segment (TSN
    /// segment sampling) instead of the fixed uniform subsample. Training only.
    pub temporal_jitter: bool,
    /// Centre crop for validation, `eval` and `predict`: the crop's side as a share of the
    /// width and height (1.0 = the whole frame, the default).
    pub eval_crop: f64,
    /// Class pairs a horizontal flip exchanges (a `left` gaze seen mirrored is a `right` gaze).
    pub flip_label_pairs: Vec<[String; 2]>,
    /// Camera views a horizontal flip exchanges (the left camera's mirror image is the right's).
    pub flip_view_pairs: Vec<[String; 2]>,
    /// Joint pairs (joint numbers of the keypoint files, as in `data.keypoint_indices`) a flip
    /// exchanges; empty uses the pairs of `model.skeleton` (SAM-3D-body / MHR70 or COCO-17).
    pub flip_joint_pairs: Vec<[usize; 2]>,
    /// A flip maps a keypoint's x to `keypoint_flip_width − x`: 0 for camera-centred 3D
    /// keypoints (SAM-3D-body), the frame width for pixel coordinates, 1 for normalised ones.
    pub keypoint_flip_width: f64,
    /// Order of training samples each epoch: `shuffle` (each sample once) or `balanced` (as many
    /// draws, with replacement, each class equally likely).
    pub sampler: Sampler,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            batch_size: 4,
            num_workers: 2,
            img_size: 224,
            uniform_temporal_subsample_num: 8,
            max_video_frames: 1000,
            load_rgb: true,
            load_kpt: false,
            prefetch_depth: 2,
            views_per_decoder: 3,
            views: vec!["front".into(), "left".into(), "right".into()],
            on_bad_sample: OnBadSample::Skip,
            missing_view: MissingView::Skip,
            keypoint_indices: seed_keypoint_indices(),
            decode_timeout_s: 120,
            class_names: seed_class_names(),
            cache_decoded_mib: 0,
            augment: AugmentPreset::None,
            hflip_prob: 0.0,
            crop_scale: [1.0, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            color_jitter: [0.0, 0.0, 0.0],
            temporal_jitter: false,
            eval_crop: 1.0,
            flip_label_pairs: seed_flip_label_pairs(),
            flip_view_pairs: vec![["left".into(), "right".into()]],
            flip_joint_pairs: Vec::new(),
            keypoint_flip_width: 0.0,
            sampler: Sampler::Shuffle,
        }
    }
}

/// The 52 of 70 SAM-3D-body joints the seed's models keep: head 0–4, shoulders 5–6,
/// both hands 21–62, acromions and neck 67–69.
pub fn seed_keypoint_indices() -> Vec<usize> {
    (0..=6).chain(21..=62).chain(67..=69).collect()
}

/// The seed's nine head-direction classes, in class-id order.
pub fn seed_class_names() -> Vec<String> {
    [
        "left",
        "right",
        "down",
        "up",
        "right_up",
        "right_down",
        "left_down",
        "left_up",
        "front",
    ]
    .map(String::from)
    .to_vec()
}

/// The seed's classes a horizontal flip exchanges.
pub fn seed_flip_label_pairs() -> Vec<[String; 2]> {
    [
        ["left", "right"],
        ["left_up", "right_up"],
        ["left_down", "right_down"],
    ]
    .map(|pair| pair.map(String::from))
    .to_vec()
}

/// `data.on_bad_sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadSample {
    /// Log the sample with the file and reason, count it, continue.
    Skip,
    /// Stop with an error naming the file.
    Error,
}

/// `data.missing_view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingView {
    /// Leave the recording out (listed as a problem).
    Skip,
    /// Use the views the recording has (mean fusions only).
    UsePresent,
}
