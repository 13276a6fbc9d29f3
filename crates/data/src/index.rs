//! The dataset index: Label Studio timeline annotations joined with the video files of each view,
//! each video probed once. Building it decodes no frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vidtrain_config::{Config, OnBadSample};

use crate::probe::{VideoInfo, probe_video_within};
use crate::{Error, Result};

/// One recording session: the same scene seen by several synchronised cameras, with one timeline
/// of labels shared by all views.
#[derive(Debug, Clone)]
pub struct Recording {
    /// File name of the video (the same in every view folder).
    pub name: String,
    /// Person filmed, parsed from the file name (`person_07_...` → `person_07`); folds split by it.
    pub person: String,
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
    /// The `.npy` keypoint array of this view, when keypoints are loaded.
    pub keypoints: Option<PathBuf>,
}

impl ViewVideo {
    /// Probes `path` (view `view` of the recording `name`) and finds its keypoints when the
    /// config loads them.
    fn probe(
        config: &Config,
        keypoint_root: &Path,
        view: &str,
        path: PathBuf,
        name: &str,
    ) -> Result<Self> {
        let timeout = std::time::Duration::from_secs(config.data.decode_timeout_s);
        let info = probe_video_within(&path, timeout)?;
        let keypoints = config
            .data
            .load_kpt
            .then(|| keypoint_source(&keypoint_root.join(view), name));
        Ok(ViewVideo {
            view: view.to_string(),
            path,
            info,
            keypoints,
        })
    }
}

/// Frames usable in every view of a recording: the shortest view wins.
fn usable_frames(views: &[ViewVideo]) -> usize {
    views
        .iter()
        .map(|video| video.info.n_frames)
        .min()
        .unwrap_or(0)
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

/// Something wrong in the dataset that was skipped (with `data.on_bad_sample = "skip"`).
#[derive(Debug, Clone)]
pub struct Problem {
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong, for the log.
    pub message: String,
}

/// All recordings of a dataset, ready for chunk planning.
#[derive(Debug, Clone)]
pub struct Index {
    /// Recordings in annotation order.
    pub recordings: Vec<Recording>,
    /// Class names in id order.
    pub class_names: Vec<String>,
    /// Problems skipped while indexing.
    pub problems: Vec<Problem>,
}

/// Label names that mark the usable part of a video instead of a class.
const MARKER_LABELS: [&str; 3] = ["start", "mid", "end"];

impl Index {
    /// Reads the annotation export and probes every video of every active view.
    pub fn build(config: &Config) -> Result<Self> {
        let paths = &config.paths;
        let annotation_path = paths.resolve(&paths.annotation_path);
        let video_root = paths.resolve(&paths.video_path);
        let keypoint_root = paths.resolve(&paths.keypoint_path);
        let tasks = read_tasks(&annotation_path)?;
        let class_names = config.data.class_names.clone();
        let views = config.active_views();
        let skip = config.data.on_bad_sample == OnBadSample::Skip;

        let mut recordings = Vec::new();
        let mut problems = Vec::new();
        let mut unknown_labels: BTreeMap<String, usize> = BTreeMap::new();
        let report = |problem: Problem, problems: &mut Vec<Problem>| -> Result<()> {
            if skip {
                tracing::warn!(path = %problem.path.display(), "skipped: {}", problem.message);
                problems.push(problem);
                Ok(())
            } else {
                Err(Error::BadRange {
                    path: problem.path,
                    message: problem.message,
                })
            }
        };

        for task in tasks {
            let name = video_file_name(&task.video);
            let mut view_videos = Vec::new();
            let mut missing = None;
            let mut unreadable = None;
            for view in &views {
                let path = find_video(&video_root.join(view), &name);
                match path {
                    Some(path) => match ViewVideo::probe(config, &keypoint_root, view, path, &name)
                    {
                        Ok(video) => view_videos.push(video),
                        Err(error) if skip && !matches!(error, Error::ToolMissing { .. }) => {
                            unreadable = Some(error);
                            break;
                        }
                        Err(error) => return Err(error),
                    },
                    None => {
                        missing = Some(video_root.join(view).join(&name));
                        break;
                    }
                }
            }
            if let Some(error) = unreadable {
                let path = match &error {
                    Error::Probe { path, .. } => path.clone(),
                    _ => video_root.join(&name),
                };
                report(
                    Problem {
                        path,
                        message: format!("{error}; recording skipped"),
                    },
                    &mut problems,
                )?;
                continue;
            }
            if let Some(path) = missing {
                let problem = Problem {
                    message: format!(
                        "video missing for view folder {}; recording skipped",
                        path.parent().unwrap_or(&video_root).display()
                    ),
                    path: path.clone(),
                };
                if !skip {
                    return Err(Error::MissingVideo {
                        view: path
                            .parent()
                            .and_then(|parent| parent.file_name())
                            .map(|view| view.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        path,
                    });
                }
                report(problem, &mut problems)?;
                continue;
            }
            let n_frames = usable_frames(&view_videos);
            let first_path = view_videos[0].path.clone();

            // Markers bound the usable part of the video; everything else must be a class.
            let mut usable = (0usize, n_frames.saturating_sub(1));
            let mut marker_starts = Vec::new();
            let mut marker_ends = Vec::new();
            let mut ranges = Vec::new();
            for label in &task.labels {
                for name in &label.timelinelabels {
                    for range in &label.ranges {
                        if MARKER_LABELS.contains(&name.as_str()) {
                            match name.as_str() {
                                "start" => marker_starts.push(range.start),
                                "end" => marker_ends.push(range.end.unwrap_or(range.start)),
                                _ => {}
                            }
                            continue;
                        }
                        let Some(class) = class_names.iter().position(|class| class == name) else {
                            *unknown_labels.entry(name.clone()).or_default() += 1;
                            continue;
                        };
                        let end = range.end.unwrap_or(range.start);
                        if end < range.start {
                            report(
                                Problem {
                                    path: annotation_path.clone(),
                                    message: format!(
                                        "range {}..={} of \"{name}\" in task {} ends before it starts",
                                        range.start, end, task.video
                                    ),
                                },
                                &mut problems,
                            )?;
                            continue;
                        }
                        ranges.push(LabelledRange {
                            class,
                            start: range.start,
                            end,
                        });
                    }
                }
            }
            if let Some(start) = marker_starts.iter().min() {
                usable.0 = *start;
            }
            if let Some(end) = marker_ends.iter().max() {
                usable.1 = usable.1.min(*end);
            }
            let mut clipped = Vec::with_capacity(ranges.len());
            for range in ranges {
                if range.start > usable.1 || range.end < usable.0 {
                    report(
                        Problem {
                            path: first_path.clone(),
                            message: format!(
                                "labelled range {}..={} lies outside the usable frames {}..={} \
                                 (the video has {n_frames} frames)",
                                range.start, range.end, usable.0, usable.1
                            ),
                        },
                        &mut problems,
                    )?;
                    continue;
                }
                clipped.push(LabelledRange {
                    class: range.class,
                    start: range.start.max(usable.0),
                    end: range.end.min(usable.1),
                });
            }
            clipped.sort_by_key(|range| (range.start, range.end));
            recordings.push(Recording {
                person: person_of(&name),
                name,
                views: view_videos,
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
            if !skip {
                return Err(Error::UnknownLabels {
                    path: annotation_path,
                    labels,
                });
            }
            report(
                Problem {
                    path: annotation_path.clone(),
                    message: format!("ranges with unknown labels skipped: {labels}"),
                },
                &mut problems,
            )?;
        }
        Ok(Index {
            recordings,
            class_names,
            problems,
        })
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
                view_videos.push(ViewVideo::probe(config, &keypoint_root, view, path, &name)?);
            }
            let n_frames = usable_frames(&view_videos);
            recordings.push(Recording {
                person: person_of(&name),
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
        })
    }

    /// Distinct persons, sorted.
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
    let json: serde_json::Value = serde_json::from_str(&text)
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
        if let Some(video_labels) = task.get("videoLabels") {
            labels = serde_json::from_value(video_labels.clone()).map_err(|error| {
                annotation_error(format!("task {position} ({video}): videoLabels: {error}"))
            })?;
        } else if let Some(annotations) = task.get("annotations").and_then(|a| a.as_array()) {
            for annotation in annotations {
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
        tasks.push(Task { video, labels });
    }
    Ok(tasks)
}

/// The file name part of a task's video reference (a path or URL).
fn video_file_name(video: &str) -> String {
    let without_query = video.split(['?', '#']).next().unwrap_or(video);
    without_query
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(without_query)
        .to_string()
}

/// Finds `name` in `folder`, also without the `1a2b3c4d-` prefix Label Studio adds to uploads.
fn find_video(folder: &Path, name: &str) -> Option<PathBuf> {
    let direct = folder.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    let (prefix, rest) = name.split_once('-')?;
    let looks_like_upload_prefix =
        prefix.len() == 8 && prefix.chars().all(|c| c.is_ascii_hexdigit());
    let stripped = folder.join(rest);
    (looks_like_upload_prefix && stripped.is_file()).then_some(stripped)
}

/// `<folder>/<stem>.npy` when it exists, else the per-frame folder `<folder>/<stem>/` when that
/// exists, else the `.npy` path (whose absence is counted as missing frames when loading).
fn keypoint_source(folder: &Path, video_name: &str) -> PathBuf {
    let array = folder.join(Path::new(video_name).with_extension("npy"));
    let frames = folder.join(Path::new(video_name).with_extension(""));
    if !array.is_file() && frames.is_dir() {
        frames
    } else {
        array
    }
}

/// `person_07_night_high.mp4` → `person_07`; otherwise the file stem.
fn person_of(name: &str) -> String {
    let stem = Path::new(name)
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parts: Vec<&str> = stem.split(['_', '-']).collect();
    match parts.iter().position(|part| *part == "person") {
        Some(at) if at + 1 < parts.len() => format!("person_{}", parts[at + 1]),
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_names_come_from_paths_and_urls() {
        assert_eq!(video_file_name("/data/upload/1/a.mp4"), "a.mp4");
        assert_eq!(video_file_name("http://x/y/b.mp4?d=1"), "b.mp4");
        assert_eq!(video_file_name("c.mp4"), "c.mp4");
    }

    #[test]
    fn persons_are_parsed_from_file_names() {
        assert_eq!(person_of("person_07_night_high_h265.mp4"), "person_07");
        assert_eq!(person_of("ab12cd34-person_3_day.mp4"), "person_3");
        assert_eq!(person_of("clip.mp4"), "clip");
    }
}
