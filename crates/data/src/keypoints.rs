//! Keypoints read for the sampled frames only: `.npy` arrays `[frames, joints, 2|3]` (f32),
//! seeked row by row, never read whole.

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
    let keypoint_error = |message: String| Error::Keypoints {
        path: path.to_path_buf(),
        message,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KeypointReport {
                missing_frames: frame_indices.len(),
            });
        }
        Err(error) => return Err(Error::io(path, error)),
    };
    KEYPOINT_FILE_OPENS.fetch_add(1, Ordering::Relaxed);
    let npy = npyz::NpyFile::new(BufReader::new(file))
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
    let (n_frames, n_joints, channels) = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
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
    Ok(report)
}
