//! Fixtures shared by the integration tests of several crates (a dev-dependency only, never
//! part of the `vidtrain` binary): empty scratch folders under the calling crate's test folder,
//! and the small generated demo dataset with the config that reads it.

use std::path::{Path, PathBuf};

use vidtrain_config::Config;
use vidtrain_data::demo::{DemoSpec, generate};

/// An empty scratch folder `group/name` under the calling test crate's `CARGO_TARGET_TMPDIR`
/// (emptied first). A macro so that the folder is the caller's: Cargo sets that variable for
/// each crate's integration tests only.
#[macro_export]
macro_rules! scratch {
    ($group:expr, $name:expr) => {
        $crate::empty_folder(
            &::std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join($group)
                .join($name),
        )
    };
}

/// `path`, emptied (created when missing).
pub fn empty_folder(path: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    path.to_path_buf()
}

/// The small demo dataset generated afresh in `folder` (emptied first): two persons, 240 frames
/// of 64×48 per view, keypoints. Generated anew each time, so a test never reads a dataset an
/// older generator wrote; callers keep it for the process (a `OnceLock`).
pub fn small_demo(folder: &Path) -> PathBuf {
    let folder = empty_folder(folder);
    generate(&DemoSpec {
        out: folder.clone(),
        persons: 2,
        frames: 240,
        width: 64,
        height: 48,
        seed: 5,
        front_share: None,
    })
    .unwrap_or_else(|error| panic!("generating the demo in {}: {error}", folder.display()));
    folder
}

/// The default config pointed at a demo dataset generated in `root` (its annotations, videos
/// and keypoints).
pub fn demo_config(root: &Path) -> Config {
    let mut config = Config::default();
    config.paths.root_path = root.to_path_buf();
    config.paths.annotation_path = "annotations.json".into();
    config.paths.video_path = "videos".into();
    config.paths.keypoint_path = "keypoints".into();
    config
}
