//! Keypoints read for the sampled frames only: either one `.npy` array `[frames, joints, 2|3]`
//! (f32) per video and view, seeked row by row and never read whole, or a folder of per-frame
//! files `{frame:06}_*.npy|npz` each holding one `[joints, 2|3]` array.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};

static KEYPOINT_FILE_OPENS: AtomicUsize = AtomicUsize::new(0);

/// How many keypoint files this process has opened (for tests that prove `load_kpt=false`).
pub fn keypoint_files_opened() -> usize {
    KEYPOINT_FILE_OPENS.load(Ordering::Relaxed)
}

/// What [`read_keypoints`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeypointReport {
    /// Requested frames that were missing (file absent or frame past its end) and became zeros.
    pub missing_frames: usize,
    /// NaN or infinite values read, each replaced by 0 (what a missing keypoint reads as).
    pub non_finite_values: usize,
}

/// What the index learns of a keypoint source without reading samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeypointFacts {
    /// Joints per frame.
    pub joints: usize,
    /// Frames in the array (`None` for a per-frame folder).
    pub frames: Option<usize>,
    /// NaN or infinite values in the whole array (`None` for a per-frame folder: not scanned).
    pub non_finite_values: Option<usize>,
    /// The first frame holding one.
    pub first_non_finite_frame: Option<usize>,
}

/// Reads the shape of the keypoint source at `path` (an `.npy` array or a per-frame folder) and,
/// for an array, scans every value for NaN/Inf in fixed-size pieces (memory does not grow with
/// the file). `Ok(None)` when there is no such file or folder.
pub fn inspect_keypoints(path: &Path) -> Result<Option<KeypointFacts>> {
    let keypoint_error = |message: String| Error::Keypoints {
        path: path.to_path_buf(),
        message,
    };
    if path.is_dir() {
        let first = std::fs::read_dir(path)
            .map_err(|error| Error::io(path, error))?
            .flatten()
            .map(|entry| entry.path())
            .filter(|file| {
                file.extension()
                    .is_some_and(|ext| ext == "npy" || ext == "npz")
            })
            .min();
        let Some(first) = first else {
            return Ok(None);
        };
        let (shape, _) = read_frame_file(&first)?;
        let (joints, _) = frame_array_dims(&shape, &first)?;
        return Ok(Some(KeypointFacts {
            joints,
            frames: None,
            non_finite_values: None,
            first_non_finite_frame: None,
        }));
    }
    let Some((npy, (frames, joints, channels))) = open_array(path, 1 << 20)? else {
        return Ok(None);
    };
    let values = npy
        .data::<f32>()
        .map_err(|error| keypoint_error(format!("expected float32 values: {error}")))?;
    let mut non_finite = 0usize;
    let mut first_bad = None;
    let row = (joints * channels).max(1);
    let mut read = 0usize;
    for (position, value) in values.enumerate() {
        let value = value.map_err(|error| Error::io(path, error))?;
        read += 1;
        if !value.is_finite() {
            non_finite += 1;
            first_bad.get_or_insert(position / row);
        }
    }
    if read < frames * joints * channels {
        return Err(keypoint_error(format!(
            "the file ends after {read} of {} values; it is truncated",
            frames * joints * channels
        )));
    }
    Ok(Some(KeypointFacts {
        joints,
        frames: Some(frames),
        non_finite_values: Some(non_finite),
        first_non_finite_frame: first_bad,
    }))
}

/// An opened keypoint array and its `(frames, joints, channels)`.
type OpenArray = (npyz::NpyFile<BufReader<File>>, (usize, usize, usize));

/// Opens the `.npy` array at `path` and checks its header: float32-readable, C order, shape
/// `[frames, joints, 2|3]`. `Ok(None)` when the file does not exist.
fn open_array(path: &Path, buffer_bytes: usize) -> Result<Option<OpenArray>> {
    let keypoint_error = |message: String| Error::Keypoints {
        path: path.to_path_buf(),
        message,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io(path, error)),
    };
    let npy = npyz::NpyFile::new(BufReader::with_capacity(buffer_bytes, file))
        .map_err(|error| keypoint_error(format!("not a .npy file: {error}")))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 3 || !(shape[2] == 2 || shape[2] == 3) {
        return Err(keypoint_error(format!(
            "expected shape [frames, joints, 2|3], found {shape:?}"
        )));
    }
    if npy.order() != npyz::Order::C {
        return Err(keypoint_error(
            "Fortran-ordered arrays are not supported; save with numpy's default (C) order".into(),
        ));
    }
    let dims = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
    Ok(Some((npy, dims)))
}

/// `(joints, channels)` of one per-frame array (`[joints, 2|3]` or `[1, joints, 2|3]`).
fn frame_array_dims(shape: &[u64], file: &Path) -> Result<(usize, usize)> {
    match shape {
        [joints, channels] | [1, joints, channels] if *channels == 2 || *channels == 3 => {
            Ok((*joints as usize, *channels as usize))
        }
        _ => Err(Error::Keypoints {
            path: file.to_path_buf(),
            message: format!("expected a [joints, 2|3] array, found shape {shape:?}"),
        }),
    }
}

/// Replaces NaN/Inf values by 0 (a missing keypoint) and returns how many there were: one bad
/// value must not turn a whole batch's loss into NaN.
fn zero_non_finite(values: &mut [f32]) -> usize {
    let mut count = 0;
    for value in values.iter_mut().filter(|value| !value.is_finite()) {
        *value = 0.0;
        count += 1;
    }
    count
}

/// Reads `joint_indices` of `frame_indices` from the array at `path` into `out`
/// (`[frames, joints, 3]`, z = 0 for 2-D keypoints). A missing file or frame becomes zeros and is
/// counted; a file that exists but is not a float32 `[frames, joints, 2|3]` array is an error.
pub fn read_keypoints(
    path: &Path,
    frame_indices: &[usize],
    joint_indices: &[usize],
    out: &mut [f32],
) -> Result<KeypointReport> {
    assert_eq!(out.len(), frame_indices.len() * joint_indices.len() * 3);
    out.fill(0.0);
    if path.is_dir() {
        return read_frame_folder(path, frame_indices, joint_indices, out);
    }
    let keypoint_error = |message: String| Error::Keypoints {
        path: path.to_path_buf(),
        message,
    };
    // Rows are seeked one by one: a small buffer, not the whole file.
    let Some((npy, (n_frames, n_joints, channels))) = open_array(path, 8 << 10)? else {
        return Ok(KeypointReport {
            missing_frames: frame_indices.len(),
            non_finite_values: 0,
        });
    };
    KEYPOINT_FILE_OPENS.fetch_add(1, Ordering::Relaxed);
    if let Some(&joint) = joint_indices.iter().find(|&&joint| joint >= n_joints) {
        return Err(keypoint_error(format!(
            "joint {joint} requested (data.keypoint_indices) but the file has {n_joints} joints"
        )));
    }
    let mut reader = npy
        .data::<f32>()
        .map_err(|error| keypoint_error(format!("expected float32 values: {error}")))?;
    let mut report = KeypointReport::default();
    let row_len = n_joints * channels;
    let mut row = vec![0f32; row_len];
    for (slot, &frame) in frame_indices.iter().enumerate() {
        if frame >= n_frames {
            report.missing_frames += 1;
            continue;
        }
        reader
            .seek_to((frame * row_len) as u64)
            .map_err(|error| Error::io(path, error))?;
        for value in row.iter_mut() {
            *value = reader
                .next()
                .ok_or_else(|| keypoint_error(format!("file ends inside frame {frame}")))?
                .map_err(|error| Error::io(path, error))?;
        }
        let frame_out = &mut out[slot * joint_indices.len() * 3..][..joint_indices.len() * 3];
        for (position, &joint) in joint_indices.iter().enumerate() {
            let source = &row[joint * channels..][..channels];
            frame_out[position * 3..position * 3 + channels].copy_from_slice(source);
        }
    }
    report.non_finite_values = zero_non_finite(out);
    Ok(report)
}

/// Reads per-frame files `{frame:06}_*.npy|npz` (or `{frame:06}.npy|npz`) from `folder`.
fn read_frame_folder(
    folder: &Path,
    frame_indices: &[usize],
    joint_indices: &[usize],
    out: &mut [f32],
) -> Result<KeypointReport> {
    let mut wanted: Vec<usize> = frame_indices.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    // One directory scan per call, keeping only the frames asked for.
    let mut files = std::collections::HashMap::new();
    let entries = std::fs::read_dir(folder).map_err(|error| Error::io(folder, error))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_array = name.ends_with(".npy") || name.ends_with(".npz");
        let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
        let rest = &name[digits.len()..];
        if !is_array || digits.len() < 6 || !(rest.starts_with('_') || rest.starts_with('.')) {
            continue;
        }
        if let Ok(frame) = digits.parse::<usize>()
            && wanted.binary_search(&frame).is_ok()
        {
            files.entry(frame).or_insert_with(|| entry.path());
        }
    }
    let mut report = KeypointReport::default();
    let per_frame = joint_indices.len() * 3;
    for (slot, frame) in frame_indices.iter().enumerate() {
        let Some(file) = files.get(frame) else {
            report.missing_frames += 1;
            continue;
        };
        let values = match read_frame_file(file) {
            Ok(values) => values,
            Err(error) => {
                // The seed's behaviour: an unreadable frame becomes zeros, with a warning.
                tracing::warn!("keypoint frame skipped (zeros): {error}");
                report.missing_frames += 1;
                continue;
            }
        };
        let (shape, data) = values;
        let (joints, channels) = frame_array_dims(&shape, file)?;
        let frame_out = &mut out[slot * per_frame..][..per_frame];
        for (position, &joint) in joint_indices.iter().enumerate() {
            if joint >= joints {
                return Err(Error::Keypoints {
                    path: file.clone(),
                    message: format!(
                        "joint {joint} requested (data.keypoint_indices) but the file has {joints} joints"
                    ),
                });
            }
            frame_out[position * 3..position * 3 + channels]
                .copy_from_slice(&data[joint * channels..][..channels]);
        }
    }
    report.non_finite_values = zero_non_finite(out);
    Ok(report)
}

/// Shape and f32 values of a `.npy` file, or of the first array in a `.npz` archive.
fn read_frame_file(path: &Path) -> Result<(Vec<u64>, Vec<f32>)> {
    let keypoint_error = |message: String| Error::Keypoints {
        path: path.to_path_buf(),
        message,
    };
    KEYPOINT_FILE_OPENS.fetch_add(1, Ordering::Relaxed);
    if path.extension().is_some_and(|extension| extension == "npz") {
        let mut archive = npyz::npz::NpzArchive::open(path)
            .map_err(|error| keypoint_error(format!("not a .npz archive: {error}")))?;
        let name = archive
            .array_names()
            .next()
            .map(str::to_string)
            .ok_or_else(|| keypoint_error("the archive holds no array".into()))?;
        let array = archive
            .by_name(&name)
            .map_err(|error| keypoint_error(format!("array {name}: {error}")))?
            .ok_or_else(|| keypoint_error(format!("array {name} missing")))?;
        read_npy_values(Ok(array), path)
    } else {
        let file = File::open(path).map_err(|error| Error::io(path, error))?;
        read_npy_values(npyz::NpyFile::new(BufReader::new(file)), path)
    }
}

fn read_npy_values<R: std::io::Read>(
    npy: std::io::Result<npyz::NpyFile<R>>,
    path: &Path,
) -> Result<(Vec<u64>, Vec<f32>)> {
    let npy = npy.map_err(|error| Error::Keypoints {
        path: path.to_path_buf(),
        message: format!("not a .npy array: {error}"),
    })?;
    let shape = npy.shape().to_vec();
    let values = npy.into_vec::<f32>().map_err(|error| Error::Keypoints {
        path: path.to_path_buf(),
        message: format!("expected float32 values: {error}"),
    })?;
    Ok((shape, values))
}
