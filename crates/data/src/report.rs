//! A readable account of a dataset (for `vidtrain data inspect`): videos, views, frames, chunks,
//! segments per class and the problems found while indexing.

use std::fmt;

use serde::Serialize;

use crate::Dataset;

/// What a dataset holds, computed from the index and plan (no decoding).
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// Recordings (one per annotated video name).
    pub recordings: usize,
    /// Persons (cross-validation groups).
    pub persons: usize,
    /// Views per recording.
    pub views: Vec<String>,
    /// Video files (recordings × views).
    pub video_files: usize,
    /// Usable frames over all recordings (shortest view of each).
    pub frames: usize,
    /// Chunks over all recordings.
    pub chunks: usize,
    /// Samples (segments) over all chunks.
    pub segments: usize,
    /// `(class name, segments)` in class-id order.
    pub segments_per_class: Vec<(String, usize)>,
    /// How each annotated recording was resolved: `video field → view: file, ...`.
    pub resolved: Vec<String>,
    /// Problems found while indexing, counted by kind.
    pub problem_counts: std::collections::BTreeMap<String, usize>,
    /// Problems found while indexing, as `kind: file: message`.
    pub problems: Vec<String>,
}

impl DatasetReport {
    /// The report of `dataset`.
    pub fn new(dataset: &Dataset) -> Self {
        let index = &dataset.index;
        let mut per_class = vec![0usize; index.class_names.len()];
        for sample in &dataset.chunks.samples {
            per_class[sample.class] += 1;
        }
        Self {
            recordings: index.recordings.len(),
            persons: index.persons().len(),
            views: index
                .recordings
                .first()
                .map(|recording| {
                    recording
                        .views
                        .iter()
                        .map(|video| video.view.clone())
                        .collect()
                })
                .unwrap_or_default(),
            video_files: index
                .recordings
                .iter()
                .map(|recording| recording.views.len())
                .sum(),
            frames: index
                .recordings
                .iter()
                .map(|recording| recording.n_frames)
                .sum(),
            chunks: dataset.chunks.chunks_per_recording.iter().sum(),
            segments: dataset.len(),
            segments_per_class: index.class_names.iter().cloned().zip(per_class).collect(),
            resolved: index
                .recordings
                .iter()
                .map(|recording| {
                    let views: Vec<String> = recording
                        .views
                        .iter()
                        .map(|video| {
                            let keypoints =
                                video.keypoints.as_ref().map_or_else(String::new, |k| {
                                    format!(" (keypoints {})", k.display())
                                });
                            format!("{}: {}{keypoints}", video.view, video.path.display())
                        })
                        .collect();
                    format!(
                        "{} → person {}{}; {}",
                        recording.video,
                        recording.person,
                        recording
                            .env
                            .as_ref()
                            .map_or_else(String::new, |env| format!(", env {env}")),
                        views.join(", ")
                    )
                })
                .collect(),
            problem_counts: index
                .problem_counts()
                .into_iter()
                .map(|(kind, count)| (kind.name().to_string(), count))
                .collect(),
            problems: index
                .problems
                .iter()
                .map(|problem| {
                    format!(
                        "{}: {}: {}",
                        problem.kind.name(),
                        problem.path.display(),
                        problem.message
                    )
                })
                .collect(),
        }
    }
}

impl fmt::Display for DatasetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "recordings   {} ({} persons)",
            self.recordings, self.persons
        )?;
        writeln!(f, "views        {}", self.views.join(", "))?;
        writeln!(f, "video files  {}", self.video_files)?;
        writeln!(f, "frames       {}", self.frames)?;
        writeln!(f, "chunks       {}", self.chunks)?;
        writeln!(f, "segments     {}", self.segments)?;
        for (name, count) in &self.segments_per_class {
            writeln!(f, "  {name:<12} {count}")?;
        }
        writeln!(f, "resolved")?;
        for line in &self.resolved {
            writeln!(f, "  {line}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "problems     none")
        } else {
            let counts: Vec<String> = self
                .problem_counts
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            writeln!(
                f,
                "problems     {} ({})",
                self.problems.len(),
                counts.join(", ")
            )?;
            for problem in &self.problems {
                writeln!(f, "  {problem}")?;
            }
            Ok(())
        }
    }
}
