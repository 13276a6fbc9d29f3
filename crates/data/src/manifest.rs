//! `paths.manifest`: where each annotated video's views live, for datasets that are not laid out
//! as `<video_path>/<view>/<name>` (e.g. `<env>/<person>/<view>.mp4`). A CSV with the columns
//! `video,view,path` and optional `person`, `env` and `keypoints`, or a JSON list of objects with
//! the same keys. `video` is the annotation's video field as exported, or its file name; relative
//! paths are taken from the manifest's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// One recording's files, as the manifest lists them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManifestEntry {
    /// Video file per view.
    pub views: BTreeMap<String, PathBuf>,
    /// Keypoint array per view, where given.
    pub keypoints: BTreeMap<String, PathBuf>,
    /// The person filmed (cross-validation folds group by it), where given.
    pub person: Option<String>,
    /// The recording environment, where given (shown by `data inspect`).
    pub env: Option<String>,
}

/// The manifest, keyed by its `video` column.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    entries: BTreeMap<String, ManifestEntry>,
}

#[derive(Debug, Deserialize)]
struct Row {
    video: String,
    view: String,
    path: PathBuf,
    #[serde(default)]
    person: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    keypoints: Option<PathBuf>,
}

impl Manifest {
    /// Reads the manifest at `path` (`.json`, otherwise CSV with a header row).
    pub fn read(path: &Path) -> Result<Self> {
        let manifest_error = |message: String| Error::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let text = crate::index::read_user_file(
            path,
            "set paths.manifest to a CSV (video,view,path) or JSON file",
            manifest_error,
        )?;
        let rows: Vec<Row> = if path.extension().is_some_and(|ext| ext == "json") {
            serde_json::from_str(&text).map_err(|error| {
                manifest_error(format!(
                    "expected a JSON list of {{\"video\", \"view\", \"path\"}} objects: {error}"
                ))
            })?
        } else {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            reader
                .deserialize()
                .enumerate()
                .map(|(line, row)| {
                    row.map_err(|error| {
                        manifest_error(format!(
                            "row {}: {error} (columns: video,view,path and optionally \
                             person,env,keypoints)",
                            line + 2
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        let folder = path.parent().unwrap_or(Path::new(""));
        let absolute = |file: PathBuf| {
            if file.is_absolute() {
                file
            } else {
                folder.join(file)
            }
        };
        let mut entries: BTreeMap<String, ManifestEntry> = BTreeMap::new();
        for (line, row) in rows.into_iter().enumerate() {
            let entry = entries.entry(row.video.clone()).or_default();
            if entry.views.contains_key(&row.view) {
                return Err(manifest_error(format!(
                    "row {}: video \"{}\" lists view \"{}\" twice",
                    line + 2,
                    row.video,
                    row.view
                )));
            }
            entry.views.insert(row.view.clone(), absolute(row.path));
            if let Some(keypoints) = row.keypoints.filter(|path| !path.as_os_str().is_empty()) {
                entry.keypoints.insert(row.view, absolute(keypoints));
            }
            for (field, value) in [(&mut entry.person, row.person), (&mut entry.env, row.env)] {
                if let Some(value) = value.filter(|value| !value.is_empty()) {
                    *field = Some(value);
                }
            }
        }
        Ok(Self { entries })
    }

    /// The entry of an annotation's video field: listed as exported, by its file name, or by
    /// the file name without the `1a2b3c4d-` prefix Label Studio gives uploads.
    pub fn lookup(&self, video: &str, file_name: &str) -> Option<&ManifestEntry> {
        let upload_name = without_upload_prefix(file_name);
        self.entries
            .get(video)
            .or_else(|| self.entries.get(file_name))
            .or_else(|| upload_name.and_then(|name| self.entries.get(name)))
    }

    /// Recordings listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `x.mp4` from `0a1b2c3d-x.mp4`: the file name without the 8-hex-digit prefix Label Studio
/// gives uploads (`None` when there is no such prefix).
pub(crate) fn without_upload_prefix(name: &str) -> Option<&str> {
    let (prefix, rest) = name.split_once('-')?;
    (prefix.len() == 8 && prefix.chars().all(|c| c.is_ascii_hexdigit())).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let folder = std::env::temp_dir().join(format!("vidtrain-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn csv_and_json_manifests_read_the_same() {
        let csv = write(
            "m.csv",
            "video,view,path,person,env\n\
             a.mp4,front,day/p1/front.mp4,p1,day\n\
             a.mp4, left ,day/p1/left.mp4,,\n\
             \"/data/local-files/?d=x/b.mp4\",front,/abs/b.mp4,,\n",
        );
        let json = write(
            "m.json",
            r#"[{"video": "a.mp4", "view": "front", "path": "day/p1/front.mp4", "person": "p1", "env": "day"},
                {"video": "a.mp4", "view": "left", "path": "day/p1/left.mp4"},
                {"video": "/data/local-files/?d=x/b.mp4", "view": "front", "path": "/abs/b.mp4"}]"#,
        );
        for path in [csv, json] {
            let manifest = Manifest::read(&path).unwrap();
            assert_eq!(manifest.len(), 2);
            let a = manifest.lookup("/data/upload/3/a.mp4", "a.mp4").unwrap();
            let uploaded = manifest.lookup("/data/upload/3/0a1b2c3d-a.mp4", "0a1b2c3d-a.mp4");
            assert_eq!(uploaded, Some(a));
            let folder = path.parent().unwrap();
            assert_eq!(a.views["front"], folder.join("day/p1/front.mp4"));
            assert_eq!(a.views["left"], folder.join("day/p1/left.mp4"));
            assert_eq!(a.person.as_deref(), Some("p1"));
            assert_eq!(a.env.as_deref(), Some("day"));
            let b = manifest
                .lookup("/data/local-files/?d=x/b.mp4", "b.mp4")
                .unwrap();
            assert_eq!(b.views["front"], PathBuf::from("/abs/b.mp4"));
        }
    }

    #[test]
    fn a_bad_manifest_names_the_row() {
        let path = write(
            "bad.csv",
            "video,view,path\na.mp4,front,x.mp4\na.mp4,front,y.mp4\n",
        );
        let error = Manifest::read(&path).unwrap_err().to_string();
        assert!(
            error.contains("row 3") && error.contains("twice"),
            "{error}"
        );
        let path = write("short.csv", "video,view\na.mp4,front\n");
        let error = Manifest::read(&path).unwrap_err().to_string();
        assert!(
            error.contains("bad.csv") || error.contains("short.csv"),
            "{error}"
        );
        assert!(error.contains("path"), "{error}");
    }
}
