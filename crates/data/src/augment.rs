//! Training augmentation and evaluation cropping, drawn per sample before it is loaded: a crop
//! and a horizontal flip that ffmpeg applies in the same decode (crop before scale, so host
//! memory holds only `img_size` frames), colour jitter on the decoded u8 frames, TSN-style
//! temporal jitter of the sampled frame indices, and what a flip means for this task (labels,
//! camera views and keypoint joints exchanged).
//!
//! Every draw comes from a generator seeded by the run's seed, the epoch and the sample id, so a
//! resumed run draws exactly what the uninterrupted run drew.

use vidtrain_config::Config;

use crate::chunks::{Sample, uniform_temporal_subsample};
use crate::decode::{Crop, SpatialTransform};
use crate::rng::SplitMix64;

/// Colour jitter factors of one sample, torchvision's `adjust_brightness/contrast/saturation`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorFactors {
    /// Multiplies every channel.
    pub brightness: f32,
    /// Blends with the frame's mean grey level.
    pub contrast: f32,
    /// Blends with each pixel's grey level.
    pub saturation: f32,
}

/// Everything drawn for one sample in one epoch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampleTransform {
    /// Crop and flip, applied by ffmpeg.
    pub spatial: SpatialTransform,
    /// Colour jitter on the decoded frames.
    pub color: Option<ColorFactors>,
    /// Frames to decode instead of the plan's uniform subsample.
    pub frame_indices: Option<Vec<usize>>,
}

impl SampleTransform {
    /// Whether the decoded frames differ from the plan's plain decode (so no cache applies).
    pub fn changes_decode(&self) -> bool {
        self.spatial != SpatialTransform::default() || self.frame_indices.is_some()
    }
}

/// The augmentation keys of a config, resolved to class ids, views and joint positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation {
    hflip_prob: f64,
    crop_scale: [f64; 2],
    crop_ratio: [f64; 2],
    color_jitter: [f64; 3],
    temporal_jitter: bool,
    eval_crop: f64,
    /// Class id → class id after a flip.
    flipped_class: Vec<usize>,
    /// View pairs a flip exchanges.
    flipped_views: Vec<[String; 2]>,
    /// Joint position → joint position after a flip.
    flipped_joint: Vec<usize>,
    keypoint_flip_width: f32,
}

impl Augmentation {
    /// Resolves `data.*`'s augmentation keys (validated by the config).
    pub fn from_config(config: &Config) -> Self {
        let data = &config.data;
        let class_id = |name: &str| data.class_names.iter().position(|known| known == name);
        let mut flipped_class: Vec<usize> = (0..config.model.model_class_num).collect();
        for [a, b] in &data.flip_label_pairs {
            if let (Some(a), Some(b)) = (class_id(a), class_id(b))
                && a < flipped_class.len()
                && b < flipped_class.len()
            {
                flipped_class.swap(a, b);
            }
        }
        let mut flipped_joint: Vec<usize> = (0..data.keypoint_indices.len()).collect();
        for [a, b] in config.flip_joint_positions() {
            flipped_joint.swap(a, b);
        }
        Self {
            hflip_prob: data.hflip_prob,
            crop_scale: data.crop_scale,
            crop_ratio: data.crop_ratio,
            color_jitter: data.color_jitter,
            temporal_jitter: data.temporal_jitter,
            eval_crop: data.eval_crop,
            flipped_class,
            flipped_views: data.flip_view_pairs.clone(),
            flipped_joint,
            keypoint_flip_width: data.keypoint_flip_width as f32,
        }
    }

    /// The training draw for `sample_id` in the epoch whose seed is `epoch_seed`. `aspect` is
    /// the video's width / height (the crop's aspect ratio is drawn in pixels, as torchvision's).
    pub fn draw_training(
        &self,
        epoch_seed: u64,
        sample_id: usize,
        sample: &Sample,
        aspect: f64,
    ) -> SampleTransform {
        let mut rng = SplitMix64::new(
            epoch_seed ^ (sample_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xa06e,
        );
        // Draw in a fixed order whatever is switched on, so toggling one augmentation does not
        // change the draws of the others.
        let flip_draw = rng.unit();
        let crop = self.random_resized_crop(&mut rng, aspect);
        let color_draws = [rng.unit(), rng.unit(), rng.unit()];
        let frames = sample.frame_indices.len();
        let offsets: Vec<f64> = (0..frames).map(|_| rng.unit()).collect();

        let factor = |strength: f64, draw: f64| (1.0 - strength + 2.0 * strength * draw) as f32;
        let [b, c, s] = self.color_jitter;
        let color =
            (self.color_jitter.iter().any(|&strength| strength > 0.0)).then(|| ColorFactors {
                brightness: factor(b, color_draws[0]),
                contrast: factor(c, color_draws[1]),
                saturation: factor(s, color_draws[2]),
            });
        let frame_indices = self
            .temporal_jitter
            .then(|| jittered_indices(sample.start, sample.end, frames, &offsets));
        SampleTransform {
            spatial: SpatialTransform {
                crop: crop.or_else(|| self.evaluation_crop()),
                hflip: flip_draw < self.hflip_prob,
            },
            color,
            frame_indices,
        }
    }

    /// Validation, `eval` and `predict`: the centre crop, and clip `clip` of `clips` (each frame
    /// at (clip + ½)/clips of its share of the segment; one clip keeps the uniform subsample).
    pub fn evaluation(&self, sample: &Sample, clip: usize, clips: usize) -> SampleTransform {
        let frame_indices = (clips > 1).then(|| {
            let offset = (clip as f64 + 0.5) / clips as f64;
            let frames = sample.frame_indices.len();
            jittered_indices(sample.start, sample.end, frames, &vec![offset; frames])
        });
        SampleTransform {
            spatial: SpatialTransform {
                crop: self.evaluation_crop(),
                hflip: false,
            },
            color: None,
            frame_indices,
        }
    }

    fn evaluation_crop(&self) -> Option<Crop> {
        (self.eval_crop < 1.0).then(|| Crop::centre(self.eval_crop))
    }

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at an area share and a
    /// log-uniform aspect ratio that fit the frame, then the whole frame.
    fn random_resized_crop(&self, rng: &mut SplitMix64, aspect: f64) -> Option<Crop> {
        let [low, high] = self.crop_scale;
        let mut draws = [(0.0, 0.0, 0.0, 0.0); 10];
        for draw in &mut draws {
            *draw = (rng.unit(), rng.unit(), rng.unit(), rng.unit());
        }
        if low >= 1.0 {
            return None;
        }
        let (log_low, log_high) = (self.crop_ratio[0].ln(), self.crop_ratio[1].ln());
        for (area_draw, ratio_draw, x_draw, y_draw) in draws {
            let area = low + (high - low) * area_draw;
            let ratio = (log_low + (log_high - log_low) * ratio_draw).exp();
            // Shares of width and height: (w/W)·(h/H) = area and (w/h) = ratio, W/H = aspect.
            let width = (area * ratio / aspect).sqrt();
            let height = (area * aspect / ratio).sqrt();
            if width <= 1.0 && height <= 1.0 {
                return Some(Crop {
                    x: (1.0 - width) * x_draw,
                    y: (1.0 - height) * y_draw,
                    width,
                    height,
                });
            }
        }
        None
    }

    /// The class a flipped sample of class `class` shows.
    pub fn flipped_class(&self, class: usize) -> usize {
        self.flipped_class.get(class).copied().unwrap_or(class)
    }

    /// For a flipped sample of a recording with `views` (in slot order), the view whose frames
    /// fill each slot: a pair's partner when the recording has both, else the view itself.
    pub fn flipped_view_sources(&self, views: &[&str]) -> Vec<usize> {
        let slot_of = |name: &str| views.iter().position(|view| *view == name);
        let mut sources: Vec<usize> = (0..views.len()).collect();
        for [a, b] in &self.flipped_views {
            if let (Some(a), Some(b)) = (slot_of(a), slot_of(b)) {
                sources.swap(a, b);
            }
        }
        sources
    }

    /// Mirrors one view's keypoints `[frames, joints, 3]` in place: x ↦ width − x, left and
    /// right joints exchanged.
    pub fn flip_keypoints(&self, values: &mut [f32], joints: usize) {
        let mut original = vec![0.0; joints * 3];
        for frame in values.chunks_mut(joints * 3) {
            original.copy_from_slice(frame);
            for (position, &source) in self.flipped_joint.iter().enumerate().take(joints) {
                let from = &original[source * 3..source * 3 + 3];
                let to = &mut frame[position * 3..position * 3 + 3];
                to[0] = self.keypoint_flip_width - from[0];
                to[1] = from[1];
                to[2] = from[2];
            }
        }
    }
}

/// `frames` indices over `start..=end`, frame i at `offsets[i]` of its equal share of the
/// segment (TSN's segment sampling; offsets of ½ give the shares' centres).
fn jittered_indices(start: usize, end: usize, frames: usize, offsets: &[f64]) -> Vec<usize> {
    if frames == 0 {
        return Vec::new();
    }
    let length = (end - start + 1) as f64;
    if length < frames as f64 {
        // Shorter than T: the plan's subsample repeats frames; keep it.
        return uniform_temporal_subsample(start, end, frames);
    }
    (0..frames)
        .map(|i| {
            let position = (i as f64 + offsets[i].clamp(0.0, 0.999_999)) * length / frames as f64;
            (start + position.floor() as usize).min(end)
        })
        .collect()
}

/// Applies colour factors to rgb24 frames of `frame_bytes` each, per frame (torchvision's order:
/// brightness, contrast, saturation; grey is 0.299 R + 0.587 G + 0.114 B).
pub fn apply_color(frames: &mut [u8], frame_bytes: usize, factors: ColorFactors) {
    let grey = |pixel: &[f32]| 0.299 * pixel[0] + 0.587 * pixel[1] + 0.114 * pixel[2];
    let mut values: Vec<f32> = Vec::with_capacity(frame_bytes);
    for frame in frames.chunks_mut(frame_bytes) {
        values.clear();
        values.extend(
            frame
                .iter()
                .map(|&byte| (f32::from(byte) * factors.brightness).clamp(0.0, 255.0)),
        );
        let pixels = (values.len() / 3).max(1) as f32;
        let mean = values.chunks(3).map(grey).sum::<f32>() / pixels;
        for value in values.iter_mut() {
            *value =
                (factors.contrast * *value + (1.0 - factors.contrast) * mean).clamp(0.0, 255.0);
        }
        for pixel in values.chunks_mut(3) {
            let level = grey(pixel);
            for value in pixel.iter_mut() {
                *value = (factors.saturation * *value + (1.0 - factors.saturation) * level)
                    .clamp(0.0, 255.0);
            }
        }
        for (byte, value) in frame.iter_mut().zip(&values) {
            *byte = value.round() as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: usize, end: usize, frames: usize) -> Sample {
        Sample {
            recording: 0,
            chunk: 0,
            class: 0,
            start,
            end,
            frame_indices: uniform_temporal_subsample(start, end, frames),
        }
    }

    fn config(overrides: &[&str]) -> Config {
        vidtrain_config::ConfigLoader::with_overrides(overrides).unwrap()
    }

    #[test]
    fn temporal_jitter_keeps_one_frame_per_share_of_the_segment_and_varies_by_epoch() {
        let augmentation = Augmentation::from_config(&config(&["data.temporal_jitter=true"]));
        let segment = sample(100, 179, 8);
        let first = augmentation.draw_training(1, 5, &segment, 1.0);
        let indices = first.frame_indices.clone().unwrap();
        for (i, &index) in indices.iter().enumerate() {
            assert!(
                (100 + i * 10..100 + (i + 1) * 10).contains(&index),
                "{indices:?}"
            );
        }
        assert_eq!(first, augmentation.draw_training(1, 5, &segment, 1.0));
        assert_ne!(
            indices,
            augmentation
                .draw_training(2, 5, &segment, 1.0)
                .frame_indices
                .unwrap()
        );
        // Off: the plan's frames.
        let off = Augmentation::from_config(&config(&[]));
        assert_eq!(
            off.draw_training(1, 5, &segment, 1.0),
            SampleTransform::default()
        );
    }

    #[test]
    fn evaluation_clips_sit_at_the_centres_of_their_shares() {
        let augmentation = Augmentation::from_config(&config(&[]));
        let segment = sample(0, 79, 8);
        assert_eq!(augmentation.evaluation(&segment, 0, 1).frame_indices, None);
        let clips: Vec<Vec<usize>> = (0..2)
            .map(|clip| {
                augmentation
                    .evaluation(&segment, clip, 2)
                    .frame_indices
                    .unwrap()
            })
            .collect();
        assert_eq!(clips[0], vec![2, 12, 22, 32, 42, 52, 62, 72]);
        assert_eq!(clips[1], vec![7, 17, 27, 37, 47, 57, 67, 77]);
        let cropped = Augmentation::from_config(&config(&["data.eval_crop=0.5"]));
        assert_eq!(
            cropped.evaluation(&segment, 0, 1).spatial.crop,
            Some(Crop::centre(0.5))
        );
    }

    #[test]
    fn random_resized_crops_stay_inside_the_frame_with_the_drawn_area() {
        let augmentation = Augmentation::from_config(&config(&[
            "data.crop_scale=[0.3,0.6]",
            "data.crop_ratio=[0.5,2.0]",
        ]));
        let segment = sample(0, 79, 8);
        let mut distinct = std::collections::HashSet::new();
        for sample_id in 0..200 {
            let crop = augmentation
                .draw_training(7, sample_id, &segment, 16.0 / 9.0)
                .spatial
                .crop
                .unwrap();
            assert!(crop.x >= 0.0 && crop.y >= 0.0);
            assert!(crop.x + crop.width <= 1.0 + 1e-9 && crop.y + crop.height <= 1.0 + 1e-9);
            let area = crop.width * crop.height;
            assert!((0.3 - 1e-9..=0.6 + 1e-9).contains(&area), "{area}");
            let pixel_ratio = crop.width * 16.0 / (crop.height * 9.0);
            assert!((0.5 - 1e-9..=2.0 + 1e-9).contains(&pixel_ratio));
            distinct.insert(format!("{crop:?}"));
        }
        assert!(distinct.len() > 190);
    }

    #[test]
    fn flips_follow_the_probability_and_swap_classes_views_and_joints() {
        let config = config(&["data.hflip_prob=0.5"]);
        let augmentation = Augmentation::from_config(&config);
        let segment = sample(0, 79, 8);
        let flips = (0..1000)
            .filter(|&id| {
                augmentation
                    .draw_training(3, id, &segment, 1.0)
                    .spatial
                    .hflip
            })
            .count();
        assert!((430..570).contains(&flips), "{flips}");
        let class = |name: &str| {
            config
                .data
                .class_names
                .iter()
                .position(|n| n == name)
                .unwrap()
        };
        for (a, b) in [
            ("left", "right"),
            ("left_up", "right_up"),
            ("right_down", "left_down"),
        ] {
            assert_eq!(augmentation.flipped_class(class(a)), class(b));
        }
        for unchanged in ["up", "down", "front"] {
            assert_eq!(
                augmentation.flipped_class(class(unchanged)),
                class(unchanged)
            );
        }
        assert_eq!(
            augmentation.flipped_view_sources(&["front", "left", "right"]),
            vec![0, 2, 1]
        );
        // Without its partner a view stays where it is.
        assert_eq!(
            augmentation.flipped_view_sources(&["front", "left"]),
            vec![0, 1]
        );
    }

    #[test]
    fn flipped_keypoints_are_mirrored_with_left_and_right_joints_exchanged() {
        let config = config(&[
            "data.keypoint_indices=[0,5,6]",
            "model.skeleton=custom",
            "data.flip_joint_pairs=[[5,6]]",
            "data.keypoint_flip_width=10",
            "model.skeleton_edges=[[0,1],[0,2]]",
        ]);
        let augmentation = Augmentation::from_config(&config);
        // One frame: nose (5, 1, 0.9), left shoulder (2, 3, 0.8), right shoulder (8, 3, 0.7).
        let mut values = vec![5.0, 1.0, 0.9, 2.0, 3.0, 0.8, 8.0, 3.0, 0.7];
        augmentation.flip_keypoints(&mut values, 3);
        assert_eq!(values, vec![5.0, 1.0, 0.9, 2.0, 3.0, 0.7, 8.0, 3.0, 0.8]);
    }

    #[test]
    fn colour_factors_of_one_keep_the_frame_and_match_torchvision_formulas() {
        let frame: Vec<u8> = vec![10, 200, 30, 250, 0, 128];
        let mut same = frame.clone();
        let identity = ColorFactors {
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
        };
        apply_color(&mut same, 6, identity);
        assert_eq!(same, frame);
        let mut brighter = frame.clone();
        apply_color(
            &mut brighter,
            6,
            ColorFactors {
                brightness: 1.5,
                ..identity
            },
        );
        assert_eq!(brighter, vec![15, 255, 45, 255, 0, 192]);
        let mut grey = frame.clone();
        apply_color(
            &mut grey,
            6,
            ColorFactors {
                saturation: 0.0,
                ..identity
            },
        );
        // Pixel 1: 0.299·10 + 0.587·200 + 0.114·30 = 123.81.
        assert_eq!(&grey[..3], &[124, 124, 124]);
        let mut flat = frame.clone();
        apply_color(
            &mut flat,
            6,
            ColorFactors {
                contrast: 0.0,
                ..identity
            },
        );
        let mean = (123.81f32 + (0.299 * 250.0 + 0.114 * 128.0)) / 2.0;
        assert!(
            flat.iter().all(|&byte| byte == mean.round() as u8),
            "{flat:?}"
        );
    }
}
