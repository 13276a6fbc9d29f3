//! The dataset index: Label Studio timeline annotations joined with the video files of each view,
//! each video probed once. Building it decodes no frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vidtrain_config::{Config, MissingView, OnBadSample};

use crate::manifest::Manifest;
use crate::probe::{VideoInfo, probe_video_within};
use crate::{Error, Result};

mod label_studio;
mod locate;
mod problems;
#[cfg(test)]
mod tests;

use label_studio::*;
use locate::*;
use problems::Problems;
pub use problems::{Problem, ProblemKind};

/// One recording session: the same scene seen by several synchronised cameras, with one timeline
/// of labels shared by all views.
#[derive(Debug, Clone)]
pub struct Recording {
    /// File name of the video (the same in every view folder).
    pub name: String,
    /// The annotation's video field, as exported (an upload path, a local-files URL, a name).
    pub video: String,
    /// Person filmed (the manifest's `person`, else parsed from the path: `person_07_...` →
    /// `person_07`); folds split by it.
    pub person: String,
    /// Recording environment, when the manifest names one.
    pub env: Option<String>,
    /// One entry per active view, in `data.views` order.
    pub views: Vec<ViewVideo>,
    /// Frames usable in every view (the shortest view wins).
    pub n_frames: usize,
    /// Labelled ranges, clipped to the usable part of the video.
    pub ranges: Vec<LabelledRange>,
}

/// One camera's video of a recording.
#[derive(Debug, Clone)]
pub struct ViewVideo {
    /// `front`, `left` or `right`.
    pub view: String,
    /// The video file.
    pub path: PathBuf,
    /// Probed stream facts.
    pub info: VideoInfo,
    /// The `.npy` keypoint array (or per-frame folder) of this view, when keypoints are loaded.
    pub keypoints: Option<PathBuf>,
}

/// A labelled stretch of frames, `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelledRange {
    /// Class id (index into `data.class_names`).
    pub class: usize,
    /// First frame.
    pub start: usize,
    /// Last frame (inclusive, as Label Studio writes it).
    pub end: usize,
}

/// All recordings of a dataset, ready for chunk planning.
#[derive(Debug, Clone)]
pub struct Index {
    /// Recordings in annotation order.
    pub recordings: Vec<Recording>,
    /// Class names in id order.
    pub class_names: Vec<String>,
    /// Problems found (and skipped) while indexing.
    pub problems: Vec<Problem>,
    /// The persons of every task of the export, sorted, whether or not its recording could be
    /// used: cross-validation folds are cut from these, so a person whose files go bad does not
    /// move every other person to another fold.
    pub annotated_persons: Vec<String>,
}

impl Index {
    /// Reads the annotation export and probes every video of every active view. Everything
    /// that cannot become a correct sample is found here, before any decoding: missing views or
    /// keypoints, duplicate tasks, conflicting or missing labels, ranges past the end, keypoint
    /// files that do not fit `data.keypoint_indices` or hold NaN/Inf.
    pub fn build(config: &Config) -> Result<Self> {
        let paths = &config.paths;
        let annotation_path = paths.resolve(&paths.annotation_path);
        let tasks = read_tasks(&annotation_path)?;
        let manifest = if paths.manifest.as_os_str().is_empty() {
            None
        } else {
            let path = paths.resolve(&paths.manifest);
            let manifest = Manifest::read(&path)?;
            if manifest.is_empty() {
                return Err(Error::Manifest {
                    path,
                    message: "lists no videos; add rows (video,view,path) or unset paths.manifest"
                        .into(),
                });
            }
            Some(manifest)
        };
        let class_names = config.data.class_names.clone();
        let mut problems = Problems {
            skip: config.data.on_bad_sample == OnBadSample::Skip,
            found: Vec::new(),
        };
        let mut recordings = Vec::new();
        let mut unknown_labels: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut annotated_persons = Vec::new();

        for (task_number, task) in tasks.iter().enumerate() {
            for (kind, message) in &task.notes {
                problems.note(*kind, &annotation_path, message.clone());
            }
            let mut located = match locate(config, manifest.as_ref(), &task.video) {
                Ok(located) => located,
                Err((path, message)) => {
                    annotated_persons.push(person_of(&annotation_relative_path(&task.video)));
                    problems.report(ProblemKind::MissingView, &path, message)?;
                    continue;
                }
            };
            annotated_persons.push(located.person.clone());
            if !located.missing.is_empty() {
                let path = located.missing[0].1.clone();
                let message = located.missing_message(&task.video);
                if config.data.missing_view == MissingView::UsePresent && !located.views.is_empty()
                {
                    problems.note(
                        ProblemKind::MissingView,
                        &path,
                        format!("{message}; trained on the views present (data.missing_view)"),
                    );
                    located.missing.clear();
                } else {
                    problems.report(
                        ProblemKind::MissingView,
                        &path,
                        format!("{message}; recording skipped"),
                    )?;
                    continue;
                }
            }
            if let Some(message) = one_file_for_two_views(&located.views) {
                problems.report(
                    ProblemKind::SameFileForViews,
                    &located.views[0].1,
                    format!("recording {}: {message}; recording skipped", task.video),
                )?;
                continue;
            }
            if located.person_from_file_name {
                problems.note(
                    ProblemKind::PersonFromFileName,
                    &located.views[0].1,
                    format!(
                        "recording {}: no person_<id> in its name, so its file name {} is taken \
                         as the person; cross-validation cannot keep one person's recordings in \
                         one split (name files person_<id>_…, or give the manifest a person \
                         column)",
                        task.video, located.person
                    ),
                );
            }
            let first_path = located.views[0].1.clone();
            if let Some(first) = seen.get(&first_path) {
                problems.report(
                    ProblemKind::DuplicateTask,
                    &annotation_path,
                    format!(
                        "task {task_number} annotates {} again (first in task {first}); ignored, \
                         or its samples would count twice",
                        task.video
                    ),
                )?;
                continue;
            }
            seen.insert(first_path.clone(), task_number);

            let labels = task_labels(
                task,
                task_number,
                &class_names,
                &annotation_path,
                &mut unknown_labels,
                &mut problems,
            )?;
            if labels.ranges.is_empty() && labels.class_label_names > 0 {
                // Its labels were unknown, conflicting or bad: reported above, nothing left.
                continue;
            }
            if labels.ranges.is_empty() {
                problems.report(
                    ProblemKind::NoLabels,
                    &annotation_path,
                    format!(
                        "task {task_number} ({}) has no class label; not used",
                        task.video
                    ),
                )?;
                continue;
            }

            let Some(views) = probe_views(config, &located, &mut problems)? else {
                continue;
            };
            if let Some((path, message)) = frame_rate_mismatch(&views) {
                problems.report(
                    ProblemKind::ViewsOutOfStep,
                    &path,
                    format!("recording {}: {message}; recording skipped", task.video),
                )?;
                continue;
            }
            if let Some((path, message)) = length_mismatch(&views) {
                problems.note(
                    ProblemKind::ViewLengths,
                    &path,
                    format!("recording {}: {message}", task.video),
                );
            }
            let n_frames = usable_frames(&views);
            // Ranges are checked against the shortest view, so that is the file to blame.
            let limiting = shortest_view(&views).map_or(first_path.clone(), |v| v.path.clone());
            let mut usable = (0usize, n_frames.saturating_sub(1));
            if let Some(start) = labels.marker_starts.iter().min() {
                usable.0 = *start;
            }
            if let Some(end) = labels.marker_ends.iter().max() {
                usable.1 = usable.1.min(*end);
            }
            let mut clipped = Vec::with_capacity(labels.ranges.len());
            for range in labels.ranges {
                let name = &class_names[range.class];
                if range.start > usable.1 || range.end < usable.0 {
                    problems.report(
                        ProblemKind::OutsideVideo,
                        &limiting,
                        format!(
                            "range {}..={} of \"{name}\" lies outside the usable frames {}..={} \
                             ({} has {n_frames} frames); ignored",
                            range.start,
                            range.end,
                            usable.0,
                            usable.1,
                            limiting.display()
                        ),
                    )?;
                    continue;
                }
                let kept = LabelledRange {
                    class: range.class,
                    start: range.start.max(usable.0),
                    end: range.end.min(usable.1),
                };
                if kept.end < range.end && range.end >= n_frames {
                    problems.report(
                        ProblemKind::ClippedRange,
                        &limiting,
                        format!(
                            "range {}..={} of \"{name}\" runs past the last frame {} of {}; \
                             clipped to {}..={}",
                            range.start,
                            range.end,
                            n_frames.saturating_sub(1),
                            limiting.display(),
                            kept.start,
                            kept.end
                        ),
                    )?;
                }
                clipped.push(kept);
            }
            clipped.sort_by_key(|range| (range.start, range.end));
            recordings.push(Recording {
                name: located.name,
                video: task.video.clone(),
                person: located.person,
                env: located.env,
                views,
                n_frames,
                ranges: clipped,
            });
        }

        if !unknown_labels.is_empty() {
            let labels = unknown_labels
                .iter()
                .map(|(name, count)| format!("\"{name}\" ×{count}"))
                .collect::<Vec<_>>()
                .join(", ");
            if !problems.skip {
                return Err(Error::UnknownLabels {
                    path: annotation_path,
                    labels,
                });
            }
            problems.report(
                ProblemKind::UnknownLabel,
                &annotation_path,
                format!("ranges with unknown labels skipped: {labels}"),
            )?;
        }
        annotated_persons.sort();
        annotated_persons.dedup();
        Ok(Index {
            recordings,
            class_names,
            problems: problems.found,
            annotated_persons,
        })
    }

    /// Problems found while indexing, counted by kind.
    pub fn problem_counts(&self) -> BTreeMap<ProblemKind, usize> {
        let mut counts = BTreeMap::new();
        for problem in &self.problems {
            *counts.entry(problem.kind).or_default() += 1;
        }
        counts
    }

    /// Unlabelled recordings for prediction, one per video in `videos`. With several active
    /// views, `videos` may name any one view's file (`<root>/<view>/<name>`): the other views are
    /// the same name in the sibling view folders. Keypoints are found as in training
    /// (`paths.keypoint_path/<view>/<stem>.npy` or a per-frame folder). A missing or unreadable
    /// video is an error naming it.
    pub fn for_prediction(config: &Config, videos: &[PathBuf]) -> Result<Self> {
        let keypoint_root = config.paths.resolve(&config.paths.keypoint_path);
        let views = config.active_views();
        let mut recordings = Vec::with_capacity(videos.len());
        for video in videos {
            let name = video
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parent = video.parent().unwrap_or(Path::new("."));
            let in_view_folder = parent
                .file_name()
                .is_some_and(|folder| views.iter().any(|view| folder == view.as_str()));
            let mut view_videos = Vec::with_capacity(views.len());
            for view in &views {
                let path = if views.len() == 1 {
                    video.clone()
                } else if in_view_folder {
                    parent.with_file_name(view).join(&name)
                } else {
                    return Err(Error::ViewLayout {
                        path: video.clone(),
                        views: views.join(", "),
                    });
                };
                if !path.is_file() {
                    return Err(Error::MissingVideo {
                        view: view.clone(),
                        path,
                    });
                }
                let keypoints = config
                    .data
                    .load_kpt
                    .then(|| keypoint_source(&keypoint_root.join(view), &name, &path));
                let timeout = std::time::Duration::from_secs(config.data.decode_timeout_s);
                view_videos.push(ViewVideo {
                    view: view.clone(),
                    info: probe_video_within(&path, timeout)?,
                    path,
                    keypoints,
                });
            }
            if let Some((path, message)) = frame_rate_mismatch(&view_videos) {
                return Err(Error::ViewsOutOfStep { path, message });
            }
            if let Some((path, message)) = length_mismatch(&view_videos) {
                tracing::warn!("{}: {message}", path.display());
            }
            let n_frames = usable_frames(&view_videos);
            recordings.push(Recording {
                person: person_of(&name),
                video: video.display().to_string(),
                env: None,
                name,
                views: view_videos,
                n_frames,
                ranges: Vec::new(),
            });
        }
        Ok(Self {
            recordings,
            class_names: config.data.class_names.clone(),
            problems: Vec::new(),
            // Videos to predict on are not split into folds.
            annotated_persons: Vec::new(),
        })
    }

    /// The persons folds are cut from: every annotated person (even one whose recordings were
    /// all skipped), or the recordings' persons when the index was made without an export.
    pub fn fold_persons(&self) -> Vec<String> {
        let mut persons = self.annotated_persons.clone();
        persons.extend(self.persons());
        persons.sort();
        persons.dedup();
        persons
    }

    /// The fold of every person of [`Index::fold_persons`] among `k_folds`: sorted persons dealt
    /// round-robin, so a split never mixes one person's recordings between training and
    /// validation.
    pub fn person_folds(&self, k_folds: usize) -> BTreeMap<String, usize> {
        self.fold_persons()
            .into_iter()
            .enumerate()
            .map(|(position, person)| (person, position % k_folds))
            .collect()
    }

    /// The persons of each split of `fold` of `k_folds`: `(training, validation)`, each sorted;
    /// persons with no usable recording are left out.
    pub fn split_persons(&self, fold: usize, k_folds: usize) -> (Vec<String>, Vec<String>) {
        let folds = self.person_folds(k_folds);
        self.persons()
            .into_iter()
            .partition(|person| folds.get(person) != Some(&fold))
    }

    /// Distinct persons of the usable recordings, sorted.
    pub fn persons(&self) -> Vec<String> {
        let mut persons: Vec<String> = self
            .recordings
            .iter()
            .map(|recording| recording.person.clone())
            .collect();
        persons.sort();
        persons.dedup();
        persons
    }
}

/// The text of a file the user points a key at (an annotation export, a manifest), without a
/// leading UTF-8 byte-order mark: Windows tools (Notepad, PowerShell's `Out-File`) start UTF-8
/// files with one, which JSON parsers refuse. A file that cannot be read is `error` of a message
/// that says what to do (`fix`).
pub(crate) fn read_user_file(
    path: &Path,
    fix: &str,
    error: impl Fn(String) -> crate::Error,
) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|cause| error(format!("cannot read it ({cause}); {fix}")))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}
