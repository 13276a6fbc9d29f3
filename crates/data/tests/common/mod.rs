//! Helpers shared by the data crate's integration tests.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// `indices` of `path` decoded by the plain ffmpeg CLI from the start of the file (no seek),
/// scaled to `size`², as rgb24 bytes: the reference that vidtrain's decoder must equal.
pub fn ffmpeg_cli_frames(path: &Path, indices: &[usize], size: usize) -> Vec<u8> {
    ffmpeg_cli_frames_filtered(path, indices, "", size, "")
}

/// [`ffmpeg_cli_frames`] with filters before the scale (`"crop=…,"`) and after it (`",hflip"`).
pub fn ffmpeg_cli_frames_filtered(
    path: &Path,
    indices: &[usize],
    before_scale: &str,
    size: usize,
    after_scale: &str,
) -> Vec<u8> {
    let select = indices
        .iter()
        .map(|i| format!("eq(n\\,{i})"))
        .collect::<Vec<_>>()
        .join("+");
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-threads", "1", "-i"])
        .arg(path)
        .args([
            "-vf",
            &format!("select={select},{before_scale}scale={size}:{size}{after_scale}"),
        ])
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
