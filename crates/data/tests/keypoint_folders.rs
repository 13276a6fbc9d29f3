//! Per-frame keypoint folders (`{frame:06}_*.npy|npz`, the original system's layout) and the
//! converter script in `tools/` (run with the Python and numpy that CI installs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use npyz::WriterBuilder;
use vidtrain_data::read_keypoints;

fn scratch(name: &str) -> PathBuf {
    vidtrain_testkit::scratch!("keypoint-tests", name)
}

fn write_npy(path: &Path, shape: &[u64], values: &[f32]) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    writer.extend(values.iter().copied()).unwrap();
    writer.finish().unwrap();
}

fn python(script: &str, args: &[&Path]) {
    let status = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .status()
        .expect("python3 (CI installs it with numpy)");
    assert!(
        status.success(),
        "python3 -c {script:?} failed (is numpy installed?)"
    );
}

#[test]
fn per_frame_npy_and_npz_files_are_read_and_gaps_are_zero() {
    let folder = scratch("frames");
    // Frame f, joint j, channel c holds f·1000 + j·10 + c; 4 joints of 3 values.
    let frame_values = |frame: usize| -> Vec<f32> {
        (0..4)
            .flat_map(|joint| (0..3).map(move |c| (frame * 1000 + joint * 10 + c) as f32))
            .collect()
    };
    write_npy(
        &folder.join("000002_sam3d_body.npy"),
        &[4, 3],
        &frame_values(2),
    );
    write_npy(&folder.join("000007.npy"), &[1, 4, 3], &frame_values(7));
    python(
        "import sys, numpy as np; np.savez(sys.argv[1], pred=(np.arange(4)[:, None] * 10 + np.arange(3)[None, :] + 9000).astype(np.float32))",
        &[&folder.join("000009_sam3d_body.npz")],
    );
    std::fs::write(folder.join("notes.txt"), "ignored").unwrap();

    let frames = [2, 3, 7, 9, 9];
    let joints = [3, 0];
    let mut out = vec![0f32; frames.len() * joints.len() * 3];
    let report = read_keypoints(&folder, &frames, &joints, &mut out).unwrap();
    assert_eq!(report.missing_frames, 1, "frame 3 has no file");
    for (slot, &frame) in frames.iter().enumerate() {
        for (position, &joint) in joints.iter().enumerate() {
            let got = &out[(slot * joints.len() + position) * 3..][..3];
            let expected: Vec<f32> = if frame == 3 {
                vec![0.0; 3]
            } else {
                (0..3)
                    .map(|c| (frame * 1000 + joint * 10 + c) as f32)
                    .collect()
            };
            assert_eq!(got, expected.as_slice(), "frame {frame} joint {joint}");
        }
    }
}

#[test]
fn a_per_frame_file_with_too_few_joints_is_an_error_naming_it() {
    let folder = scratch("few-joints");
    write_npy(&folder.join("000000_x.npy"), &[2, 3], &[0.0; 6]);
    let mut out = vec![0f32; 3];
    let error = read_keypoints(&folder, &[0], &[5], &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("000000_x.npy") && error.contains("joint 5"),
        "{error}"
    );
}

#[test]
fn the_converter_script_passes_its_self_test() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/convert_keypoints.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg("--self-test")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
