//! What indexing found wrong: each problem's kind, file and message, noted or reported per
//! `data.on_bad_sample`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, Result};

/// What is wrong with a part of the dataset (what `data inspect` lists, training warns about
/// once and `summary.json` counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A view's video was not found: the recording is skipped.
    MissingView,
    /// ffprobe could not read a video: the recording is skipped.
    UnreadableVideo,
    /// A second task for a video already annotated: ignored (it would double the samples).
    DuplicateTask,
    /// A task without any class label: nothing to train from it.
    NoLabels,
    /// A label entry with no label name: ignored.
    EmptyLabel,
    /// Labels that are not in `data.class_names`: their ranges are ignored.
    UnknownLabel,
    /// One range carrying two or more classes: ignored (either sample would be wrong).
    ConflictingLabels,
    /// A range that ends before it starts: ignored.
    BadRange,
    /// A range entirely outside the usable frames: ignored.
    OutsideVideo,
    /// A range running past the end of the video: clipped to it.
    ClippedRange,
    /// No keypoint file for a view while keypoints are loaded: the recording is skipped.
    MissingKeypoints,
    /// A keypoint file with fewer joints than `data.keypoint_indices` needs: skipped.
    KeypointJoints,
    /// A keypoint file that cannot be read: the recording is skipped.
    BadKeypointFile,
    /// NaN or infinite keypoint values: read as 0, like a missing keypoint.
    NonFiniteKeypoints,
    /// Views of one recording at different frame rates: the recording is skipped.
    ViewsOutOfStep,
    /// Views of one recording more than a second apart in length: the shortest is used.
    ViewLengths,
    /// Two views of one recording are the same file: the recording is skipped.
    SameFileForViews,
    /// No `person_<id>` in a recording's name: its file name is taken as the person.
    PersonFromFileName,
    /// Label Studio annotations marked `was_cancelled`: ignored.
    CancelledAnnotation,
    /// A task annotated by several annotators: one annotation is used, the others ignored.
    SeveralAnnotations,
    /// Ranges of different classes that overlap: frames there are samples of both classes.
    OverlappingLabels,
}

impl ProblemKind {
    /// The kind's name as in `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::MissingView => "missing_view",
            Self::UnreadableVideo => "unreadable_video",
            Self::DuplicateTask => "duplicate_task",
            Self::NoLabels => "no_labels",
            Self::EmptyLabel => "empty_label",
            Self::UnknownLabel => "unknown_label",
            Self::ConflictingLabels => "conflicting_labels",
            Self::BadRange => "bad_range",
            Self::OutsideVideo => "outside_video",
            Self::ClippedRange => "clipped_range",
            Self::MissingKeypoints => "missing_keypoints",
            Self::KeypointJoints => "keypoint_joints",
            Self::BadKeypointFile => "bad_keypoint_file",
            Self::NonFiniteKeypoints => "non_finite_keypoints",
            Self::ViewsOutOfStep => "views_out_of_step",
            Self::ViewLengths => "view_lengths",
            Self::SameFileForViews => "same_file_for_views",
            Self::PersonFromFileName => "person_from_file_name",
            Self::CancelledAnnotation => "cancelled_annotation",
            Self::SeveralAnnotations => "several_annotations",
            Self::OverlappingLabels => "overlapping_labels",
        }
    }
}

/// Something wrong in the dataset, found while indexing (with `data.on_bad_sample = "skip"`;
/// with `"error"` the first one stops the index).
#[derive(Debug, Clone)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong and what was done about it.
    pub message: String,
}

/// Collects problems: logged and kept when skipping, the first one an error otherwise.
pub(super) struct Problems {
    pub(super) skip: bool,
    pub(super) found: Vec<Problem>,
}

impl Problems {
    /// Records a problem the config says how to handle (e.g. `data.missing_view = "use_present"`):
    /// listed and counted, never an error.
    pub(super) fn note(&mut self, kind: ProblemKind, path: &Path, message: String) {
        self.found.push(Problem {
            kind,
            path: path.to_path_buf(),
            message,
        });
    }

    pub(super) fn report(&mut self, kind: ProblemKind, path: &Path, message: String) -> Result<()> {
        if !self.skip {
            return Err(Error::BadRange {
                path: path.to_path_buf(),
                message: format!(
                    "{message} (data.on_bad_sample = \"skip\" would list it and carry on)"
                ),
            });
        }
        tracing::debug!(path = %path.display(), "{}: {message}", kind.name());
        self.found.push(Problem {
            kind,
            path: path.to_path_buf(),
            message,
        });
        Ok(())
    }
}
