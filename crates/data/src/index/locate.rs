//! Where a task's recording is: its video per view (annotation paths, the manifest, the view
//! folders), its keypoint source, its person, and the probe of each view.

use std::path::{Path, PathBuf};

use vidtrain_config::Config;

use super::problems::*;
use super::*;
use crate::Result;
use crate::keypoints::inspect_keypoints;
use crate::manifest::Manifest;
use crate::probe::{VideoInfo, probe_video_within};

/// The view that limits a recording's frames: the shortest.
pub(super) fn shortest_view(views: &[ViewVideo]) -> Option<&ViewVideo> {
    views.iter().min_by_key(|video| video.info.n_frames)
}

/// Frames usable in every view of a recording: the shortest view wins.
pub(super) fn usable_frames(views: &[ViewVideo]) -> usize {
    shortest_view(views).map_or(0, |video| video.info.n_frames)
}

/// `front 30 fps, left 15 fps` / `front 600, left 300`, for messages about views that disagree.
pub(super) fn per_view(views: &[ViewVideo], fact: impl Fn(&VideoInfo) -> String) -> String {
    views
        .iter()
        .map(|video| format!("{} {}", video.view, fact(&video.info)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Views whose frame rates differ (by more than 0.5 %): a frame number is then a different
/// moment in each view, and every range would pair unrelated frames. The file named is the
/// first view that differs from the first view.
pub(super) fn frame_rate_mismatch(views: &[ViewVideo]) -> Option<(PathBuf, String)> {
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
pub(super) fn length_mismatch(views: &[ViewVideo]) -> Option<(PathBuf, String)> {
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

/// Where the files of one task's recording are, before probing.
pub(super) struct Located {
    pub(super) name: String,
    pub(super) person: String,
    pub(super) env: Option<String>,
    /// `(view, video, keypoint source)` per active view that was found.
    pub(super) views: Vec<(String, PathBuf, Option<PathBuf>)>,
    /// `(view, where it was looked for, why it is missing)` per active view that was not found.
    pub(super) missing: Vec<(String, PathBuf, String)>,
    /// Whether `person` is the file name because the name holds no `person_<id>`.
    pub(super) person_from_file_name: bool,
}

impl Located {
    /// What is missing, for the problem list.
    pub(super) fn missing_message(&self, video: &str) -> String {
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

/// Finds the video (and keypoint source) of every active view of a task's recording, from the
/// manifest when there is one, else from `<video_path>/<view>/<name>`; views not found are
/// listed in `missing`. `Err` when the manifest does not list the video at all.
pub(super) fn locate(
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
pub(super) fn probe_views(
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
pub(super) fn annotation_relative_path(video: &str) -> String {
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
pub(super) fn file_name_of(path: &str) -> String {
    path.rsplit(['/', '\\']).next().unwrap_or(path).to_string()
}

/// `%2F` → `/`, `+` left as is (Label Studio encodes paths with `%20` for spaces).
pub(super) fn percent_decode(text: &str) -> String {
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
pub(super) fn find_video(folder: &Path, relative: &str) -> Option<PathBuf> {
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
pub(super) fn keypoint_source(folder: &Path, video_name: &str, video: &Path) -> PathBuf {
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
pub(super) fn person_of(path: &str) -> String {
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
pub(super) fn person_in(path: &str) -> Option<String> {
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
pub(super) fn one_file_for_two_views(
    views: &[(String, PathBuf, Option<PathBuf>)],
) -> Option<String> {
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
