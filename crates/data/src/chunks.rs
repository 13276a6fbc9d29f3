//! The chunk plan: videos cut into chunks of at most `data.max_video_frames`, labelled ranges cut
//! at chunk borders into segments, each segment sampled to `T` frame indices. Pure arithmetic.

use crate::index::Index;

/// One training sample: `T` frame indices of one labelled segment, decoded in every view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Index into [`Index::recordings`].
    pub recording: usize,
    /// Chunk number within the recording.
    pub chunk: usize,
    /// Class id.
    pub class: usize,
    /// First frame of the segment.
    pub start: usize,
    /// Last frame of the segment (inclusive).
    pub end: usize,
    /// The `T` frames to decode, non-decreasing (short segments repeat frames).
    pub frame_indices: Vec<usize>,
}

impl Sample {
    /// Frames `start..=end` of chunk `chunk` of `recording`, sampled to `frames` indices.
    fn spanning(
        recording: usize,
        chunk: usize,
        class: usize,
        [start, end]: [usize; 2],
        frames: usize,
    ) -> Self {
        Self {
            recording,
            chunk,
            class,
            start,
            end,
            frame_indices: uniform_temporal_subsample(start, end, frames),
        }
    }
}

/// All samples of an index, in recording/time order.
#[derive(Debug, Clone)]
pub struct ChunkPlan {
    /// Samples in recording and time order.
    pub samples: Vec<Sample>,
    /// Chunks per recording.
    pub chunks_per_recording: Vec<usize>,
}

impl ChunkPlan {
    /// Plans every recording of `index`.
    pub fn build(index: &Index, max_video_frames: usize, frames_per_sample: usize) -> Self {
        let mut samples = Vec::new();
        let mut chunks_per_recording = Vec::with_capacity(index.recordings.len());
        for (recording_id, recording) in index.recordings.iter().enumerate() {
            let n_chunks = recording.n_frames.div_ceil(max_video_frames).max(1);
            chunks_per_recording.push(n_chunks);
            for range in &recording.ranges {
                let first_chunk = range.start / max_video_frames;
                let last_chunk = range.end / max_video_frames;
                for chunk in first_chunk..=last_chunk {
                    let chunk_start = chunk * max_video_frames;
                    let chunk_end = chunk_start + max_video_frames - 1;
                    let start = range.start.max(chunk_start);
                    let end = range.end.min(chunk_end);
                    samples.push(Sample::spanning(
                        recording_id,
                        chunk,
                        range.class,
                        [start, end],
                        frames_per_sample,
                    ));
                }
            }
        }
        ChunkPlan {
            samples,
            chunks_per_recording,
        }
    }

    /// Sliding windows over every recording of `index`, for prediction: `window` frames every
    /// `stride` frames (the last window ends at the last frame, so the tail is covered), each
    /// sampled to `frames_per_sample` frames. Windows carry class 0; they have no label.
    pub fn windows(index: &Index, window: usize, stride: usize, frames_per_sample: usize) -> Self {
        let (window, stride) = (window.max(1), stride.max(1));
        let mut samples = Vec::new();
        let mut chunks_per_recording = Vec::with_capacity(index.recordings.len());
        for (recording_id, recording) in index.recordings.iter().enumerate() {
            let frames = recording.n_frames;
            let mut starts: Vec<usize> = (0..frames.saturating_sub(window) + 1)
                .step_by(stride)
                .collect();
            let last_start = frames.saturating_sub(window);
            if frames > 0 && starts.last() != Some(&last_start) {
                starts.push(last_start);
            }
            if frames == 0 {
                starts.clear();
            }
            chunks_per_recording.push(starts.len());
            for (number, start) in starts.into_iter().enumerate() {
                let end = (start + window).min(frames) - 1;
                samples.push(Sample::spanning(
                    recording_id,
                    number,
                    0,
                    [start, end],
                    frames_per_sample,
                ));
            }
        }
        ChunkPlan {
            samples,
            chunks_per_recording,
        }
    }

    /// Sample ids whose person falls in (`holdout`) or out of (`!holdout`) fold `fold` of `k_folds`
    /// ([`Index::person_folds`]).
    pub fn fold_samples(
        &self,
        index: &Index,
        fold: usize,
        k_folds: usize,
        holdout: bool,
    ) -> Vec<usize> {
        let folds = index.person_folds(k_folds);
        self.samples
            .iter()
            .enumerate()
            .filter(|(_, sample)| {
                let person = &index.recordings[sample.recording].person;
                (folds.get(person) == Some(&fold)) == holdout
            })
            .map(|(id, _)| id)
            .collect()
    }
}

/// `count` indices spread evenly over `start..=end` (PyTorchVideo's `uniform_temporal_subsample`:
/// `linspace(start, end, count)` truncated to integers).
pub fn uniform_temporal_subsample(start: usize, end: usize, count: usize) -> Vec<usize> {
    if count == 1 {
        return vec![start];
    }
    let span = (end - start) as f64;
    (0..count)
        .map(|i| start + ((i as f64) * span / ((count - 1) as f64)).floor() as usize)
        .map(|index| index.min(end))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{LabelledRange, Recording, ViewVideo};
    use crate::probe::VideoInfo;

    #[test]
    fn subsampling_matches_linspace() {
        assert_eq!(
            uniform_temporal_subsample(0, 14, 8),
            vec![0, 2, 4, 6, 8, 10, 12, 14]
        );
        assert_eq!(uniform_temporal_subsample(10, 12, 4), vec![10, 10, 11, 12]);
        assert_eq!(uniform_temporal_subsample(5, 5, 3), vec![5, 5, 5]);
        assert_eq!(uniform_temporal_subsample(3, 9, 1), vec![3]);
    }

    fn recording(person: &str, n_frames: usize, ranges: &[(usize, usize, usize)]) -> Recording {
        Recording {
            name: format!("{person}.mp4"),
            video: format!("{person}.mp4"),
            person: person.to_string(),
            env: None,
            views: vec![ViewVideo {
                view: "front".into(),
                path: "x.mp4".into(),
                info: VideoInfo {
                    n_frames,
                    fps: 30.0,
                    width: 8,
                    height: 8,
                },
                keypoints: None,
            }],
            n_frames,
            ranges: ranges
                .iter()
                .map(|&(class, start, end)| LabelledRange { class, start, end })
                .collect(),
        }
    }

    #[test]
    fn windows_cover_every_frame_with_the_last_one_flush_with_the_end() {
        let index = Index {
            recordings: vec![
                recording("person_1", 100, &[]),
                recording("person_2", 20, &[]),
            ],
            class_names: vec![],
            problems: vec![],
            annotated_persons: vec![],
        };
        let plan = ChunkPlan::windows(&index, 32, 32, 4);
        let spans: Vec<_> = plan
            .samples
            .iter()
            .map(|s| (s.recording, s.start, s.end))
            .collect();
        // Every 32 frames, then 68..99 ends at the last frame so that 96..99 are covered too; a
        // short video is one short window.
        assert_eq!(
            spans,
            vec![
                (0, 0, 31),
                (0, 32, 63),
                (0, 64, 95),
                (0, 68, 99),
                (1, 0, 19)
            ]
        );
        assert_eq!(plan.chunks_per_recording, vec![4, 1]);
        assert_eq!(plan.samples[4].frame_indices, vec![0, 6, 12, 19]);
        let overlapping = ChunkPlan::windows(&index, 50, 25, 2);
        let starts: Vec<_> = overlapping.samples.iter().map(|s| s.start).collect();
        assert_eq!(starts, vec![0, 25, 50, 0]);
    }

    #[test]
    fn ranges_are_cut_at_chunk_borders() {
        let index = Index {
            recordings: vec![recording("person_1", 1000, &[(0, 0, 99), (3, 250, 620)])],
            class_names: vec![],
            problems: vec![],
            annotated_persons: vec![],
        };
        let plan = ChunkPlan::build(&index, 300, 4);
        assert_eq!(plan.chunks_per_recording, vec![4]);
        let spans: Vec<_> = plan
            .samples
            .iter()
            .map(|s| (s.chunk, s.class, s.start, s.end))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, 0, 0, 99),
                (0, 3, 250, 299),
                (1, 3, 300, 599),
                (2, 3, 600, 620)
            ]
        );
        for sample in &plan.samples {
            assert_eq!(sample.frame_indices.len(), 4);
            assert!(
                sample
                    .frame_indices
                    .iter()
                    .all(|&f| f >= sample.start && f <= sample.end)
            );
        }
    }

    #[test]
    fn folds_stay_put_when_a_persons_recordings_are_all_skipped() {
        // person_1's keypoint file went bad: its recording is skipped. The others used to move
        // to other folds, so a model validated on person_1 was scored on training persons.
        let make = |skip: bool| Index {
            recordings: (0..5)
                .filter(|&p| !(skip && p == 1))
                .map(|p| recording(&format!("person_{p}"), 100, &[(0, 0, 9)]))
                .collect(),
            class_names: vec![],
            problems: vec![],
            annotated_persons: (0..5).map(|p| format!("person_{p}")).collect(),
        };
        let (whole, dropped) = (make(false), make(true));
        for fold in 0..5 {
            let (_, val_whole) = whole.split_persons(fold, 5);
            let (train_dropped, val_dropped) = dropped.split_persons(fold, 5);
            let expected: Vec<_> = val_whole.into_iter().filter(|p| p != "person_1").collect();
            assert_eq!(val_dropped, expected, "fold {fold}");
            assert!(!train_dropped.contains(&"person_1".to_string()));
            let plan = ChunkPlan::build(&dropped, 100, 2);
            let val_persons: Vec<_> = plan
                .fold_samples(&dropped, fold, 5, true)
                .iter()
                .map(|&id| {
                    dropped.recordings[plan.samples[id].recording]
                        .person
                        .clone()
                })
                .collect();
            assert!(
                val_persons.iter().all(|p| expected.contains(p)),
                "fold {fold}"
            );
        }
        // Fold 1 (person_1's) now validates nobody.
        assert!(dropped.split_persons(1, 5).1.is_empty());
    }

    #[test]
    fn folds_split_by_person_and_cover_everything_once() {
        let index = Index {
            recordings: (0..5)
                .map(|p| recording(&format!("person_{p}"), 100, &[(0, 0, 9), (1, 10, 19)]))
                .collect(),
            class_names: vec![],
            problems: vec![],
            annotated_persons: vec![],
        };
        let plan = ChunkPlan::build(&index, 100, 2);
        let mut seen = vec![0; plan.samples.len()];
        for fold in 0..5 {
            let val = plan.fold_samples(&index, fold, 5, true);
            let train = plan.fold_samples(&index, fold, 5, false);
            assert_eq!(val.len() + train.len(), plan.samples.len());
            let val_persons: Vec<_> = val.iter().map(|&id| plan.samples[id].recording).collect();
            assert!(
                train
                    .iter()
                    .all(|id| !val_persons.contains(&plan.samples[*id].recording))
            );
            for id in val {
                seen[id] += 1;
            }
        }
        assert!(seen.iter().all(|&count| count == 1));
    }
}
