//! Label Studio exports: tasks (JSON-MIN or full shape), the annotation chosen per task, and a
//! task's timeline labels as class ranges and usable-part markers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::problems::*;
use super::*;
use crate::{Error, Result};

/// Label names that mark the usable part of a video instead of a class.
pub(super) const MARKER_LABELS: [&str; 3] = ["start", "mid", "end"];

/// One task of a Label Studio export, in either the JSON-MIN shape (`video`, `videoLabels`) or
/// the full shape (`data.video`, `annotations[].result[].value`).
#[derive(Debug)]
pub(super) struct Task {
    pub(super) video: String,
    pub(super) labels: Vec<TimelineLabel>,
    /// What reading it left out and why (cancelled annotations, other annotators'), to list.
    pub(super) notes: Vec<(ProblemKind, String)>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct TimelineLabel {
    #[serde(default)]
    pub(super) timelinelabels: Vec<String>,
    #[serde(default)]
    pub(super) ranges: Vec<FrameRange>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) struct FrameRange {
    pub(super) start: usize,
    #[serde(default)]
    pub(super) end: Option<usize>,
}

pub(super) fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    let annotation_error = |message: String| Error::Annotation {
        path: path.to_path_buf(),
        message,
    };
    let text = read_user_file(
        path,
        "set paths.annotation_path to a Label Studio JSON export",
        annotation_error,
    )?;
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
pub(super) fn chosen_annotation(
    annotations: &[&serde_json::Value],
) -> Option<(usize, &'static str)> {
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
pub(super) fn annotation_name(annotation: &serde_json::Value) -> String {
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
pub(super) struct TaskLabels {
    pub(super) ranges: Vec<LabelledRange>,
    /// Class label names met, known or not (a task with none has no labels at all).
    pub(super) class_label_names: usize,
    pub(super) marker_starts: Vec<usize>,
    pub(super) marker_ends: Vec<usize>,
}

/// Reads one task's timeline labels. Markers bound the usable part of the video; everything else
/// must be a class. A range given twice with one class is kept once; a range carrying two classes
/// is dropped as a problem.
pub(super) fn task_labels(
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
pub(super) fn overlapping_classes(
    ranges: &[LabelledRange],
    class_names: &[String],
) -> Option<String> {
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
