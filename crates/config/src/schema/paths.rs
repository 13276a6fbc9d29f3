//! `paths.*`: where the dataset and runs are.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `paths.*` keys. Relative dataset paths are resolved against `paths.root_path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Base folder of the dataset; relative `annotation_path`, `video_path` and `keypoint_path`
    /// are taken inside it. Empty means the current directory.
    pub root_path: PathBuf,
    /// Label Studio video-timeline JSON export. Empty means "no dataset configured": `vidtrain
    /// train` then generates and trains the bundled demo.
    pub annotation_path: PathBuf,
    /// Folder with one sub-folder per view (`front/`, `left/`, `right/`) holding the videos.
    pub video_path: PathBuf,
    /// Folder with one sub-folder per view holding `<video stem>.npy` keypoint arrays.
    pub keypoint_path: PathBuf,
    /// Optional CSV (`video,view,path[,person,env,keypoints]`) or JSON list naming each
    /// annotated video's file per view, for layouts other than `<video_path>/<view>/<name>`.
    /// Empty: no manifest.
    pub manifest: PathBuf,
    /// Where run directories are written (`<run_dir>/<experiment>/<timestamp>/`).
    pub run_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            root_path: PathBuf::new(),
            annotation_path: PathBuf::new(),
            video_path: PathBuf::new(),
            keypoint_path: PathBuf::new(),
            manifest: PathBuf::new(),
            run_dir: PathBuf::from("runs"),
        }
    }
}

impl PathsConfig {
    /// Whether a dataset is configured (an annotation file is named).
    pub fn has_dataset(&self) -> bool {
        !self.annotation_path.as_os_str().is_empty()
    }

    /// `path` resolved against `root_path` when relative.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || self.root_path.as_os_str().is_empty() {
            path.to_path_buf()
        } else {
            self.root_path.join(path)
        }
    }
}
