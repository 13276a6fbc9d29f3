//! The dataset index: Label Studio timeline annotations joined with the video files of each view,
//! each video probed once. Building it decodes no frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vidtrain_config::{Config, MissingView, OnBadSample};

use crate::keypoints::inspect_keypoints;
use crate::manifest::Manifest;
use crate::probe::{VideoInfo, probe_video_within};
use crate::{Error, Result};

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

/// The view that limits a recording's frames: the shortest.
fn shortest_view(views: &[ViewVideo]) -> Option<&ViewVideo> {
    views.iter().min_by_key(|video| video.info.n_frames)
}

/// Frames usable in every view of a recording: the shortest view wins.
fn usable_frames(views: &[ViewVideo]) -> usize {
    shortest_view(views).map_or(0, |video| video.info.n_frames)
}

/// `front 30 fps, left 15 fps` / `front 600, left 300`, for messages about views that disagree.
fn per_view(views: &[ViewVideo], fact: impl Fn(&VideoInfo) -> String) -> String {
    views
        .iter()
        .map(|video| format!("{} {}", video.view, fact(&video.info)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Views whose frame rates differ (by more than 0.5 %): a frame number is then a different
/// moment in each view, and every range would pair unrelated frames. The file named is the
/// first view that differs from the first view.
fn frame_rate_mismatch(views: &[ViewVideo]) -> Option<(PathBuf, String)> {
    let first = views.first()?;
    let odd = views
        .iter()
        .find(|video| (video.info.fps - first.info.fps).abs() > 0.005 * first.info.fps)?;
    Some((
        odd.path.clone(),
        format!(
            "the views disagree in frame rate ({}): frame numbers name different moments in              each view, so the views would go out of step; re-encode them at one frame rate",
            per_view(views, |info| format!("{:.3} fps", info.fps))
        ),
    ))
}

/// Views whose lengths differ by more than a second of frames (a few frames between cameras
/// is normal): only the shortest view's frames are used, and if the cameras did not start
/// together the views are out of step. The file named is the shortest view.
fn length_mismatch(views: &[ViewVideo]) -> Option<(PathBuf, String)> {
    let shortest = shortest_view(views)?;
    let longest = views.iter().map(|video| video.info.n_frames).max()?;
    let second = (shortest.info.fps.round() as usize).max(1);
    (longest - shortest.info.n_frames > second).then(|| {
        (
            shortest.path.clone(),
            format!(
                "the views differ in length ({} frames): only frames 0..={} (view {}, the \
                 shortest) are used; if the cameras did not start together, the views are out \
                 of step",
                per_view(views, |info| info.n_frames.to_string()),
                shortest.info.n_frames.saturating_sub(1),
                shortest.view
            ),
        )
    })
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

/// Label names that mark the usable part of a video instead of a class.
const MARKER_LABELS: [&str; 3] = ["start", "mid", "end"];

/// Collects problems: logged and kept when skipping, the first one an error otherwise.
struct Problems {
    skip: bool,
    found: Vec<Problem>,
}

impl Problems {
    /// Records a problem the config says how to handle (e.g. `data.missing_view = "use_present"`):
    /// listed and counted, never an error.
    fn note(&mut self, kind: ProblemKind, path: &Path, message: String) {
        self.found.push(Problem {
            kind,
            path: path.to_path_buf(),
            message,
        });
    }

    fn report(&mut self, kind: ProblemKind, path: &Path, message: String) -> Result<()> {
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

/// Where the files of one task's recording are, before probing.
struct Located {
    name: String,
    person: String,
    env: Option<String>,
    /// `(view, video, keypoint source)` per active view that was found.
    views: Vec<(String, PathBuf, Option<PathBuf>)>,
    /// `(view, where it was looked for, why it is missing)` per active view that was not found.
    missing: Vec<(String, PathBuf, String)>,
    /// Whether `person` is the file name because the name holds no `person_<id>`.
    person_from_file_name: bool,
}

impl Located {
    /// What is missing, for the problem list.
    fn missing_message(&self, video: &str) -> String {
        let (view, _, reason) = &self.missing[0];
        let found: Vec<&str> = self.views.iter().map(|(v, ..)| v.as_str()).collect();
        format!(
            "recording {video}: no video for view {view} ({reason}){}",
            if found.is_empty() {
                String::new()
            } else {
                format!(", only {} found", found.join(", "))
            }
        )
    }
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

/// One task of a Label Studio export, in either the JSON-MIN shape (`video`, `videoLabels`) or
/// the full shape (`data.video`, `annotations[].result[].value`).
#[derive(Debug)]
struct Task {
    video: String,
    labels: Vec<TimelineLabel>,
    /// What reading it left out and why (cancelled annotations, other annotators'), to list.
    notes: Vec<(ProblemKind, String)>,
}

#[derive(Debug, Clone, Deserialize)]
struct TimelineLabel {
    #[serde(default)]
    timelinelabels: Vec<String>,
    #[serde(default)]
    ranges: Vec<FrameRange>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct FrameRange {
    start: usize,
    #[serde(default)]
    end: Option<usize>,
}

fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    let annotation_error = |message: String| Error::Annotation {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|error| {
        annotation_error(format!(
            "cannot read it ({error}); set paths.annotation_path to a Label Studio JSON export"
        ))
    })?;
    // Windows tools (Notepad, PowerShell's `Out-File`) start UTF-8 files with a byte-order mark,
    // which JSON parsers refuse.
    let json: serde_json::Value = serde_json::from_str(without_bom(&text))
        .map_err(|error| annotation_error(format!("not valid JSON: {error}")))?;
    let list = json
        .as_array()
        .ok_or_else(|| annotation_error("expected a JSON list of tasks".into()))?;
    let mut tasks = Vec::with_capacity(list.len());
    for (position, task) in list.iter().enumerate() {
        let video = task
            .get("video")
            .or_else(|| task.get("data").and_then(|data| data.get("video")))
            .and_then(|video| video.as_str())
            .ok_or_else(|| {
                annotation_error(format!(
                    "task {position} has no \"video\" (or data.video) path"
                ))
            })?
            .to_string();
        let mut labels: Vec<TimelineLabel> = Vec::new();
        let mut notes = Vec::new();
        if let Some(video_labels) = task.get("videoLabels") {
            labels = serde_json::from_value(video_labels.clone()).map_err(|error| {
                annotation_error(format!("task {position} ({video}): videoLabels: {error}"))
            })?;
        } else if let Some(annotations) = task.get("annotations").and_then(|a| a.as_array()) {
            let (cancelled, kept): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = annotations
                .iter()
                .partition(|annotation| annotation["was_cancelled"].as_bool() == Some(true));
            if !cancelled.is_empty() {
                notes.push((
                    ProblemKind::CancelledAnnotation,
                    format!(
                        "task {position} ({video}): {} cancelled annotation(s) (was_cancelled) \
                         ignored",
                        cancelled.len()
                    ),
                ));
            }
            let chosen = chosen_annotation(&kept);
            if let Some((index, why)) = chosen.filter(|_| kept.len() > 1) {
                let others: Vec<String> = kept
                    .iter()
                    .enumerate()
                    .filter(|(at, _)| *at != index)
                    .map(|(_, annotation)| annotation_name(annotation))
                    .collect();
                notes.push((
                    ProblemKind::SeveralAnnotations,
                    format!(
                        "task {position} ({video}) has {} annotations; used {} ({why}), ignored \
                         {} (annotators' ranges are not merged: they would mix two readings)",
                        kept.len(),
                        annotation_name(kept[index]),
                        others.join(", ")
                    ),
                ));
            }
            if let Some(annotation) = chosen.map(|(index, _)| kept[index]) {
                let results = annotation.get("result").and_then(|r| r.as_array());
                for result in results.into_iter().flatten() {
                    if let Some(value) = result.get("value") {
                        let label: TimelineLabel =
                            serde_json::from_value(value.clone()).map_err(|error| {
                                annotation_error(format!(
                                    "task {position} ({video}): result value: {error}"
                                ))
                            })?;
                        labels.push(label);
                    }
                }
            }
        }
        tasks.push(Task {
            video,
            labels,
            notes,
        });
    }
    Ok(tasks)
}

/// Which of a task's (not cancelled) annotations to train on, and why: the one marked
/// `ground_truth`, else the most recently updated (Label Studio's ISO timestamps compare as
/// text), else the last listed.
fn chosen_annotation(annotations: &[&serde_json::Value]) -> Option<(usize, &'static str)> {
    if annotations.is_empty() {
        return None;
    }
    if let Some(index) = annotations
        .iter()
        .position(|annotation| annotation["ground_truth"].as_bool() == Some(true))
    {
        return Some((index, "marked ground_truth"));
    }
    let updated = |annotation: &serde_json::Value| {
        annotation["updated_at"]
            .as_str()
            .or_else(|| annotation["created_at"].as_str())
            .map(str::to_string)
    };
    let latest = (0..annotations.len())
        .rev()
        .max_by_key(|&at| updated(annotations[at]));
    match latest {
        Some(index) if updated(annotations[index]).is_some() => {
            Some((index, "the most recently updated"))
        }
        _ => Some((annotations.len() - 1, "the last listed")),
    }
}

/// `annotation 12 by 3` / `annotation 12 by ann@example.com`, for messages.
fn annotation_name(annotation: &serde_json::Value) -> String {
    let id = annotation["id"]
        .as_u64()
        .map_or_else(|| "?".to_string(), |id| id.to_string());
    let by = &annotation["completed_by"];
    let by = by
        .as_u64()
        .map(|id| id.to_string())
        .or_else(|| by["email"].as_str().map(str::to_string))
        .or_else(|| by["id"].as_u64().map(|id| id.to_string()));
    match by {
        Some(by) => format!("annotation {id} by {by}"),
        None => format!("annotation {id}"),
    }
}

/// A task's labels: class ranges (conflicts removed) and usable-part markers.
struct TaskLabels {
    ranges: Vec<LabelledRange>,
    /// Class label names met, known or not (a task with none has no labels at all).
    class_label_names: usize,
    marker_starts: Vec<usize>,
    marker_ends: Vec<usize>,
}

/// Reads one task's timeline labels. Markers bound the usable part of the video; everything else
/// must be a class. A range given twice with one class is kept once; a range carrying two classes
/// is dropped as a problem.
fn task_labels(
    task: &Task,
    task_number: usize,
    class_names: &[String],
    annotation_path: &Path,
    unknown_labels: &mut BTreeMap<String, usize>,
    problems: &mut Problems,
) -> Result<TaskLabels> {
    let mut labels = TaskLabels {
        ranges: Vec::new(),
        class_label_names: 0,
        marker_starts: Vec::new(),
        marker_ends: Vec::new(),
    };
    let mut classes_of: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    let mut empty_entries = 0usize;
    for label in &task.labels {
        if label.timelinelabels.is_empty() {
            empty_entries += 1;
            continue;
        }
        for name in &label.timelinelabels {
            for range in &label.ranges {
                let end = range.end.unwrap_or(range.start);
                match name.as_str() {
                    "start" => labels.marker_starts.push(range.start),
                    "end" => labels.marker_ends.push(end),
                    marker if MARKER_LABELS.contains(&marker) => {}
                    _ => {
                        labels.class_label_names += 1;
                        let Some(class) = class_names.iter().position(|class| class == name) else {
                            *unknown_labels.entry(name.clone()).or_default() += 1;
                            continue;
                        };
                        if end < range.start {
                            problems.report(
                                ProblemKind::BadRange,
                                annotation_path,
                                format!(
                                    "range {}..={end} of \"{name}\" in task {task_number} ({}) \
                                     ends before it starts; ignored",
                                    range.start, task.video
                                ),
                            )?;
                            continue;
                        }
                        let classes = classes_of.entry((range.start, end)).or_default();
                        if !classes.contains(&class) {
                            classes.push(class);
                        }
                    }
                }
            }
        }
    }
    if empty_entries > 0 {
        problems.report(
            ProblemKind::EmptyLabel,
            annotation_path,
            format!(
                "task {task_number} ({}) has {empty_entries} label entries without a label name; \
                 ignored",
                task.video
            ),
        )?;
    }
    for ((start, end), classes) in classes_of {
        if let [class] = classes[..] {
            labels.ranges.push(LabelledRange { class, start, end });
            continue;
        }
        let names: Vec<&str> = classes.iter().map(|&c| class_names[c].as_str()).collect();
        problems.report(
            ProblemKind::ConflictingLabels,
            annotation_path,
            format!(
                "range {start}..={end} in task {task_number} ({}) is labelled {}; ignored",
                task.video,
                names.join(" and ")
            ),
        )?;
    }
    if let Some(message) = overlapping_classes(&labels.ranges, class_names) {
        problems.note(
            ProblemKind::OverlappingLabels,
            annotation_path,
            format!("task {task_number} ({}): {message}", task.video),
        );
    }
    Ok(labels)
}

/// Ranges of different classes sharing frames (ranges sorted by start): samples cut there are
/// taken for both classes. The first pair, and how many pairs in all.
fn overlapping_classes(ranges: &[LabelledRange], class_names: &[String]) -> Option<String> {
    let mut pairs = Vec::new();
    for (at, first) in ranges.iter().enumerate() {
        for second in &ranges[at + 1..] {
            if second.start > first.end {
                break;
            }
            if second.class != first.class {
                pairs.push((first, second));
            }
        }
    }
    let (first, second) = pairs.first()?;
    let shared = first.end.min(second.end) + 1 - second.start;
    Some(format!(
        "ranges {}..={} \"{}\" and {}..={} \"{}\" overlap by {shared} frame(s){}; samples there \
         are taken for both classes (fix the export if that is not meant)",
        first.start,
        first.end,
        class_names[first.class],
        second.start,
        second.end,
        class_names[second.class],
        match pairs.len() {
            1 => String::new(),
            more => format!(" ({more} overlapping pairs in all)"),
        }
    ))
}

/// Finds the video (and keypoint source) of every active view of a task's recording, from the
/// manifest when there is one, else from `<video_path>/<view>/<name>`; views not found are
/// listed in `missing`. `Err` when the manifest does not list the video at all.
fn locate(
    config: &Config,
    manifest: Option<&Manifest>,
    video: &str,
) -> std::result::Result<Located, (PathBuf, String)> {
    let views = config.active_views();
    let relative = annotation_relative_path(video);
    let name = file_name_of(&relative);
    let mut located = Located {
        person: person_of(&relative),
        name: name.clone(),
        env: None,
        views: Vec::with_capacity(views.len()),
        missing: Vec::new(),
        person_from_file_name: person_in(&relative).is_none(),
    };
    let mut missing = Vec::new();
    if let Some(manifest) = manifest {
        let Some(entry) = manifest.lookup(video, &name) else {
            let path = config.paths.resolve(&config.paths.manifest);
            return Err((
                path,
                format!("the manifest does not list the video {video}; recording skipped"),
            ));
        };
        if let Some(person) = &entry.person {
            located.person.clone_from(person);
            located.person_from_file_name = false;
        }
        located.env.clone_from(&entry.env);
        for view in &views {
            match entry.views.get(view).filter(|path| path.is_file()) {
                Some(path) => {
                    let keypoints = config.data.load_kpt.then(|| {
                        entry.keypoints.get(view).cloned().unwrap_or_else(|| {
                            let keypoint_root = config.paths.resolve(&config.paths.keypoint_path);
                            keypoint_source(&keypoint_root.join(view), &name, path)
                        })
                    });
                    located.views.push((view.clone(), path.clone(), keypoints));
                }
                None => match entry.views.get(view) {
                    Some(path) => missing.push((
                        view.clone(),
                        path.clone(),
                        format!("{} not found", path.display()),
                    )),
                    // A row whose view is not in data.views (a typo, another camera name) used
                    // to be dropped without a word, and this message showed an empty path.
                    None => missing.push((
                        view.clone(),
                        config.paths.resolve(&config.paths.manifest),
                        format!(
                            "the manifest has no row for view {view} of this video; its rows \
                             name the views {} (data.views = {})",
                            entry.views.keys().cloned().collect::<Vec<_>>().join(", "),
                            views.join(", ")
                        ),
                    )),
                },
            }
        }
    } else {
        let video_root = config.paths.resolve(&config.paths.video_path);
        let keypoint_root = config.paths.resolve(&config.paths.keypoint_path);
        for view in &views {
            let folder = video_root.join(view);
            match find_video(&folder, &relative) {
                Some(path) => {
                    let keypoints = config
                        .data
                        .load_kpt
                        .then(|| keypoint_source(&keypoint_root.join(view), &name, &path));
                    located.views.push((view.clone(), path, keypoints));
                }
                None => {
                    let path = folder.join(&name);
                    let reason = format!("{} not found", path.display());
                    missing.push((view.clone(), path, reason));
                }
            }
        }
    }
    located.missing = missing;
    Ok(located)
}

/// Probes each located view and checks its keypoint source; `None` when a problem skipped the
/// recording.
fn probe_views(
    config: &Config,
    located: &Located,
    problems: &mut Problems,
) -> Result<Option<Vec<ViewVideo>>> {
    let timeout = std::time::Duration::from_secs(config.data.decode_timeout_s);
    let needed_joints = config
        .data
        .keypoint_indices
        .iter()
        .max()
        .map_or(0, |joint| joint + 1);
    let mut views = Vec::with_capacity(located.views.len());
    for (view, path, keypoints) in &located.views {
        let info = match probe_video_within(path, timeout) {
            Ok(info) => info,
            Err(error) if error.ends_the_run() => return Err(error),
            Err(error) => {
                problems.report(
                    ProblemKind::UnreadableVideo,
                    path,
                    format!("{error}; recording skipped"),
                )?;
                return Ok(None);
            }
        };
        if let Some(source) = keypoints {
            let facts = match inspect_keypoints(source) {
                Ok(Some(facts)) => facts,
                Ok(None) => {
                    problems.report(
                        ProblemKind::MissingKeypoints,
                        source,
                        format!(
                            "no keypoints for view {view} of {} (data.load_kpt is on; expected \
                             this .npy array or a per-frame folder); recording skipped",
                            located.name
                        ),
                    )?;
                    return Ok(None);
                }
                Err(error) => {
                    problems.report(
                        ProblemKind::BadKeypointFile,
                        source,
                        format!("{error}; recording skipped"),
                    )?;
                    return Ok(None);
                }
            };
            if facts.joints < needed_joints {
                problems.report(
                    ProblemKind::KeypointJoints,
                    source,
                    format!(
                        "{} joints per frame, but data.keypoint_indices uses joint {}; \
                         recording skipped (fix data.keypoint_indices for this layout)",
                        facts.joints,
                        needed_joints - 1
                    ),
                )?;
                return Ok(None);
            }
            if let (Some(count), Some(frame)) =
                (facts.non_finite_values, facts.first_non_finite_frame)
                && count > 0
            {
                problems.report(
                    ProblemKind::NonFiniteKeypoints,
                    source,
                    format!(
                        "{count} NaN/Inf values (first in frame {frame}); they are read as 0, \
                         like missing keypoints"
                    ),
                )?;
            }
        }
        views.push(ViewVideo {
            view: view.clone(),
            path: path.clone(),
            info,
            keypoints: keypoints.clone(),
        });
    }
    Ok(Some(views))
}

/// The path a task's video field names, relative to wherever the files are: the `d=` path of a
/// Label Studio local-files URL (`/data/local-files/?d=drivers/front/a.mp4`, percent-decoded,
/// sub-folders kept), else the last component of an upload path or URL (`/data/upload/3/x.mp4`).
fn annotation_relative_path(video: &str) -> String {
    if let Some((_, query)) = video.split_once('?') {
        let local_file = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("d="))
            .map(percent_decode);
        if let Some(path) = local_file.filter(|path| !path.is_empty()) {
            return path.trim_start_matches('/').to_string();
        }
    }
    // Upload names are percent-encoded like local-files paths (`person%2007.mp4`).
    let without_query = video.split(['?', '#']).next().unwrap_or(video);
    percent_decode(&file_name_of(without_query))
}

/// The last component of a path or URL.
fn file_name_of(path: &str) -> String {
    path.rsplit(['/', '\\']).next().unwrap_or(path).to_string()
}

/// `%2F` → `/`, `+` left as is (Label Studio encodes paths with `%20` for spaces).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut position = 0;
    while position < bytes.len() {
        let hex = bytes
            .get(position + 1..position + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[position], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                position += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                position += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Finds the video at `relative` (a file name, or a local-files path with sub-folders) in a view
/// folder: the whole relative path, then its file name, each also without the `1a2b3c4d-` prefix
/// Label Studio adds to uploads.
fn find_video(folder: &Path, relative: &str) -> Option<PathBuf> {
    let name = file_name_of(relative);
    let mut candidates = vec![folder.join(relative), folder.join(&name)];
    candidates.extend(crate::manifest::without_upload_prefix(&name).map(|rest| folder.join(rest)));
    candidates.into_iter().find(|path| path.is_file())
}

/// `<folder>/<stem>.npy` when it exists, else the per-frame folder `<folder>/<stem>/`, else an
/// `.npy` beside the video itself (manifest layouts: `p1/front.mp4` + `p1/front.npy`); when none
/// exists, the first (the index reports it missing). The stem is tried by the rules that found the
/// video: the annotation's name, the found video's own name, and the name without the
/// `1a2b3c4d-` prefix Label Studio adds to uploads.
fn keypoint_source(folder: &Path, video_name: &str, video: &Path) -> PathBuf {
    let mut names = vec![video_name.to_string()];
    names.extend(
        video
            .file_name()
            .map(|name| name.to_string_lossy().into_owned()),
    );
    names.extend(crate::manifest::without_upload_prefix(video_name).map(str::to_string));
    names.dedup();
    let mut candidates = Vec::new();
    for name in &names {
        candidates.push(folder.join(Path::new(name).with_extension("npy")));
        candidates.push(folder.join(Path::new(name).with_extension("")));
    }
    candidates.push(video.with_extension("npy"));
    let first = candidates[0].clone();
    candidates
        .into_iter()
        .find(|candidate| candidate.exists())
        .unwrap_or(first)
}

/// The person of a video path: the first `person_<id>` among its components
/// (`day/person_07/front.mp4`, `person_07_night_high.mp4` → `person_07`); otherwise the file
/// stem.
fn person_of(path: &str) -> String {
    person_in(path).unwrap_or_else(|| {
        let components: Vec<&str> = path.split(['/', '\\']).collect();
        Path::new(components.last().copied().unwrap_or(path))
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// The `person_<id>` a path names (last component first), in lower case: `Person_07` and
/// `person_07` are one driver, who must not land in both splits.
fn person_in(path: &str) -> Option<String> {
    let components: Vec<&str> = path.split(['/', '\\']).collect();
    components.iter().rev().find_map(|component| {
        let stem = Path::new(component)
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parts: Vec<&str> = stem.split(['_', '-']).collect();
        let at = parts
            .iter()
            .position(|part| part.eq_ignore_ascii_case("person"))?;
        let id = parts.get(at + 1).filter(|id| !id.is_empty())?;
        Some(format!("person_{}", id.to_lowercase()))
    })
}

/// Two views of one recording naming the same file (a manifest copy-paste, a symlink farm gone
/// wrong): the model would see one camera twice and train as if it had two.
fn one_file_for_two_views(views: &[(String, PathBuf, Option<PathBuf>)]) -> Option<String> {
    // Each path once, resolved (links, `..`); as given where it cannot be.
    let files: Vec<PathBuf> = views
        .iter()
        .map(|(_, path, _)| std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()))
        .collect();
    views.iter().enumerate().find_map(|(at, (view, path, _))| {
        views[at + 1..]
            .iter()
            .zip(&files[at + 1..])
            .find(|(_, other)| **other == files[at])
            .map(|((other_view, ..), _)| {
                format!(
                    "views {view} and {other_view} are the same file {}",
                    path.display()
                )
            })
    })
}

/// `text` without a leading UTF-8 byte-order mark.
pub(crate) fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_paths_come_from_uploads_urls_and_local_files() {
        assert_eq!(annotation_relative_path("/data/upload/1/a.mp4"), "a.mp4");
        assert_eq!(annotation_relative_path("http://x/y/b.mp4#t=1"), "b.mp4");
        assert_eq!(annotation_relative_path("c.mp4"), "c.mp4");
        assert_eq!(
            annotation_relative_path("/data/local-files/?d=drivers/day/person_3.mp4"),
            "drivers/day/person_3.mp4"
        );
        assert_eq!(
            annotation_relative_path("/data/local-files/?d=drivers%2Fnight%20shift%2Fp.mp4"),
            "drivers/night shift/p.mp4"
        );
    }

    #[test]
    fn keypoints_of_an_upload_resolve_by_the_rules_of_its_video() {
        // The video `5e6f7a8b-person_07_morning.mp4` (a Label Studio upload) was found as
        // `person_07_morning.mp4`; its keypoints used to be looked up only under the prefixed
        // name and were reported missing.
        let root = std::env::temp_dir().join(format!("vidtrain-kpt-{}", std::process::id()));
        let keypoints = root.join("keypoints/front");
        let videos = root.join("videos/front");
        std::fs::create_dir_all(&keypoints).unwrap();
        std::fs::create_dir_all(&videos).unwrap();
        std::fs::write(keypoints.join("person_07_morning.npy"), b"").unwrap();
        let video = videos.join("person_07_morning.mp4");
        std::fs::write(&video, b"").unwrap();
        let relative = annotation_relative_path("/data/upload/3/5e6f7a8b-person_07_morning.mp4");
        assert_eq!(find_video(&videos, &relative), Some(video.clone()));
        assert_eq!(
            keypoint_source(&keypoints, &file_name_of(&relative), &video),
            keypoints.join("person_07_morning.npy")
        );
        // A name with the prefix on disk still wins when it is there.
        std::fs::write(keypoints.join("5e6f7a8b-person_07_morning.npy"), b"").unwrap();
        assert_eq!(
            keypoint_source(&keypoints, &file_name_of(&relative), &video),
            keypoints.join("5e6f7a8b-person_07_morning.npy")
        );
        std::fs::remove_dir_all(&root).unwrap();
        // Upload names are percent-decoded like local-files paths.
        assert_eq!(
            annotation_relative_path("/data/upload/3/5e6f7a8b-person%2007%20night.mp4"),
            "5e6f7a8b-person 07 night.mp4"
        );
    }

    #[test]
    fn persons_are_parsed_from_file_names() {
        assert_eq!(person_of("person_07_night_high_h265.mp4"), "person_07");
        assert_eq!(person_of("ab12cd34-person_3_day.mp4"), "person_3");
        assert_eq!(person_of("clip.mp4"), "clip");
        assert_eq!(person_of("day/person_12/front.mp4"), "person_12");
    }
}
