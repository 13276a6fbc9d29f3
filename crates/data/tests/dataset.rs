//! Data crate tests on a generated demo dataset: exact frames against the ffmpeg CLI, chunking,
//! selective loading (counted), keypoint reads, and every bad-input case with its outcome.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{ffmpeg_cli_frames, ffmpeg_cli_frames_filtered};
use vidtrain_config::{Config, OnBadSample};
use vidtrain_data::{
    Crop, Dataset, Error, FrameDecoder, Pipeline, ProblemKind, SpatialTransform, Transforms,
    ViewSource, decode_processes_spawned, keypoint_files_opened, probe_video, read_keypoints,
};

/// Decode and keypoint counters are process-wide, so the tests of this binary run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn scratch(name: &str) -> PathBuf {
    vidtrain_testkit::scratch!("data-tests", name)
}

/// The small demo dataset, generated once per test run.
fn demo() -> &'static Path {
    static DEMO: OnceLock<PathBuf> = OnceLock::new();
    DEMO.get_or_init(|| vidtrain_testkit::small_demo(&scratch("demo")))
}

fn config_for(root: &Path) -> Config {
    let mut config = vidtrain_testkit::demo_config(root);
    config.data.img_size = 32;
    config.data.num_workers = 1;
    config
}

/// A copy of the demo whose annotation file is replaced by `tasks`.
fn demo_with_annotations(name: &str, tasks: serde_json::Value) -> PathBuf {
    let root = scratch(name);
    std::fs::write(root.join("annotations.json"), tasks.to_string()).unwrap();
    #[cfg(unix)]
    for folder in ["videos", "keypoints"] {
        std::os::unix::fs::symlink(demo().join(folder), root.join(folder)).unwrap();
    }
    root
}

#[test]
fn decoded_frames_equal_the_ffmpeg_cli_without_seeking() {
    let _serial = serial();
    let video = demo().join("videos/front/person_02_demo.mp4");
    let info = probe_video(&video).unwrap();
    assert_eq!((info.n_frames, info.width, info.height), (240, 64, 48));
    let decoder = FrameDecoder::new(32, Duration::from_secs(30)).unwrap();
    let indices = [0, 3, 3, 37, 61, 150, 239];
    let mut ours = vec![0u8; indices.len() * decoder.frame_bytes()];
    decoder.decode(&video, &info, &indices, &mut ours).unwrap();

    let unique = [0, 3, 37, 61, 150, 239];
    let reference = ffmpeg_cli_frames(&video, &unique, 32);
    let frame = decoder.frame_bytes();
    assert_eq!(reference.len(), unique.len() * frame);
    for (slot, index) in indices.iter().enumerate() {
        let position = unique.iter().position(|u| u == index).unwrap();
        assert!(
            ours[slot * frame..][..frame] == reference[position * frame..][..frame],
            "frame {index} differs"
        );
    }

    // A seek into the middle gives the same frames as decoding from the start.
    let later = [100, 101, 180];
    let mut seeked = vec![0u8; later.len() * frame];
    decoder.decode(&video, &info, &later, &mut seeked).unwrap();
    assert!(seeked == ffmpeg_cli_frames(&video, &later, 32));
}

/// A sample's three views decoded by one ffmpeg process (three inputs, one concatenated stream)
/// equal each view decoded alone, byte for byte: repeated frames, a seek past the start, a crop
/// and a flip. A view that cannot be decoded fails the sample naming its file, as alone.
#[test]
fn a_samples_views_decode_in_one_ffmpeg_to_the_bytes_of_each_view_alone() {
    let _serial = serial();
    let decoder = FrameDecoder::new(32, Duration::from_secs(30)).unwrap();
    let root = demo_with_copied_videos("views-together");
    let paths: Vec<PathBuf> = ["front", "left", "right"]
        .iter()
        .map(|view| root.join("videos").join(view).join("person_01_demo.mp4"))
        .collect();
    let infos: Vec<_> = paths
        .iter()
        .map(|path| probe_video(path).unwrap())
        .collect();
    let views: Vec<ViewSource<'_>> = paths
        .iter()
        .zip(&infos)
        .map(|(path, info)| ViewSource { path, info })
        .collect();
    let mirrored_crop = SpatialTransform {
        crop: Some(Crop::centre(0.8)),
        hflip: true,
    };
    for (indices, spatial) in [
        (
            vec![0, 3, 3, 9, 20, 20, 20, 31],
            SpatialTransform::default(),
        ),
        (vec![150, 155, 160, 165, 170, 175, 180, 239], mirrored_crop),
    ] {
        let view_bytes = indices.len() * decoder.frame_bytes();
        let mut alone = vec![0u8; views.len() * view_bytes];
        for (view, out) in views.iter().zip(alone.chunks_mut(view_bytes)) {
            decoder
                .decode_transformed(view.path, view.info, &indices, spatial, out)
                .unwrap();
        }
        // `data.views_per_decoder` 3 (the default), 2 and 1: one, two and three processes.
        for (per_process, processes) in [(3, 1), (2, 2), (1, 3)] {
            let decoder = decoder.clone().with_views_per_process(per_process);
            let before = decode_processes_spawned();
            let mut together = vec![0u8; views.len() * view_bytes];
            decoder
                .decode_views(&views, &indices, spatial, &mut together)
                .unwrap();
            assert_eq!(
                decode_processes_spawned() - before,
                processes,
                "{indices:?}, {per_process} views per process"
            );
            for (view, (alone, together)) in alone
                .chunks(view_bytes)
                .zip(together.chunks(view_bytes))
                .enumerate()
            {
                assert!(
                    alone == together,
                    "view {view} of {indices:?} differs, {per_process} views per process"
                );
            }
        }
    }

    // The left view cut to 40 % of its bytes: the joint run fails, the views are decoded one
    // at a time, and the error names the cut file.
    let bytes = std::fs::read(&paths[1]).unwrap();
    std::fs::write(&paths[1], &bytes[..bytes.len() * 4 / 10]).unwrap();
    let indices = [200, 230];
    let mut out = vec![0u8; views.len() * indices.len() * decoder.frame_bytes()];
    let error = decoder
        .decode_views(&views, &indices, SpatialTransform::default(), &mut out)
        .unwrap_err();
    assert!(
        matches!(error, Error::ShortRead { .. } | Error::Decode { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("left/person_01_demo.mp4"),
        "{error}"
    );
}

#[test]
fn chunks_cut_ranges_and_every_sample_stays_in_its_chunk() {
    let _serial = serial();
    let mut config = config_for(demo());
    let whole = Dataset::open(&config).unwrap();
    let annotations: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo().join("annotations.json")).unwrap())
            .unwrap();
    let ranges: usize = annotations
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["videoLabels"].as_array().unwrap().len())
        .sum();
    assert_eq!(whole.index.recordings.len(), 2);
    assert_eq!(
        whole.len(),
        ranges,
        "one sample per range when chunks are long"
    );

    config.data.max_video_frames = 50;
    let chunked = Dataset::open(&config).unwrap();
    assert_eq!(chunked.chunks.chunks_per_recording, vec![5, 5]);
    assert!(chunked.len() > ranges);
    for sample in &chunked.chunks.samples {
        let chunk_start = sample.chunk * 50;
        assert!(sample.start >= chunk_start && sample.end < chunk_start + 50);
        assert_eq!(
            sample.frame_indices.len(),
            config.data.uniform_temporal_subsample_num
        );
    }
}

fn load_all(config: &Config) -> (usize, usize) {
    let dataset = Arc::new(Dataset::open(config).unwrap());
    let ids: Vec<usize> = (0..dataset.len()).collect();
    let pipeline = Pipeline::builder()
        .workers(config.data.num_workers)
        .batch_size(4)
        .build(dataset, ids.clone());
    let mut samples = 0;
    for batch in pipeline {
        samples += batch.unwrap().len();
    }
    (samples, ids.len())
}

#[test]
fn load_rgb_false_spawns_no_ffmpeg_and_load_kpt_false_opens_no_keypoint_file() {
    let _serial = serial();
    let mut config = config_for(demo());
    config.data.load_rgb = false;
    config.data.load_kpt = true;
    let decodes = decode_processes_spawned();
    let opens = keypoint_files_opened();
    let (loaded, total) = load_all(&config);
    assert_eq!(loaded, total);
    assert_eq!(
        decode_processes_spawned(),
        decodes,
        "load_rgb=false decoded video"
    );
    assert_eq!(
        keypoint_files_opened() - opens,
        total * 3,
        "one keypoint file per sample and view"
    );

    config.data.load_rgb = true;
    config.data.load_kpt = false;
    let decodes = decode_processes_spawned();
    let opens = keypoint_files_opened();
    let (loaded, total) = load_all(&config);
    assert_eq!(loaded, total);
    assert_eq!(
        keypoint_files_opened(),
        opens,
        "load_kpt=false opened keypoints"
    );
    assert_eq!(
        decode_processes_spawned() - decodes,
        total,
        "one ffmpeg per sample, its three views its inputs"
    );
}

#[test]
fn keypoints_are_read_for_the_sampled_frames_only_and_missing_frames_are_zero() {
    let _serial = serial();
    let path = demo().join("keypoints/left/person_01_demo.npy");
    let all: Vec<f32> = npyz::NpyFile::new(std::fs::File::open(&path).unwrap())
        .unwrap()
        .into_vec()
        .unwrap();
    let joints = [0, 5, 69];
    let frames = [7, 7, 100, 239, 240, 5000];
    let mut out = vec![0f32; frames.len() * joints.len() * 3];
    let report = read_keypoints(&path, &frames, &joints, &mut out).unwrap();
    assert_eq!(report.missing_frames, 2);
    for (slot, &frame) in frames.iter().enumerate() {
        for (position, &joint) in joints.iter().enumerate() {
            let got = &out[(slot * joints.len() + position) * 3..][..3];
            if frame < 240 {
                assert_eq!(
                    got,
                    &all[(frame * 70 + joint) * 3..][..3],
                    "frame {frame} joint {joint}"
                );
            } else {
                assert_eq!(got, &[0.0; 3]);
            }
        }
    }
    // A missing file is all zeros, counted, not an error.
    let report = read_keypoints(
        &demo().join("keypoints/left/nope.npy"),
        &frames,
        &joints,
        &mut out,
    )
    .unwrap();
    assert_eq!(report.missing_frames, frames.len());
    assert!(out.iter().all(|&value| value == 0.0));
}

#[test]
fn a_truncated_video_is_a_short_read_naming_the_file_or_a_counted_skip() {
    let _serial = serial();
    let root = demo_with_copied_videos("truncated");
    // Cut person 1's front view to 40 % of its bytes (the MP4 index stays at the front).
    let victim = root.join("videos/front/person_01_demo.mp4");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() * 4 / 10]).unwrap();

    let mut config = config_for(&root);
    let info = probe_video(&victim).unwrap();
    let decoder = FrameDecoder::new(32, Duration::from_secs(30)).unwrap();
    let mut out = vec![0u8; 2 * decoder.frame_bytes()];
    let error = decoder
        .decode(&victim, &info, &[200, 230], &mut out)
        .unwrap_err();
    assert!(
        matches!(error, Error::ShortRead { .. } | Error::Decode { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("person_01_demo.mp4"), "{error}");

    // In a pipeline with skip, the bad samples are left out and counted, the rest load.
    config.data.on_bad_sample = OnBadSample::Skip;
    let dataset = Arc::new(Dataset::open(&config).unwrap());
    let ids: Vec<usize> = (0..dataset.len()).collect();
    let mut pipeline = Pipeline::builder()
        .workers(2)
        .batch_size(3)
        .build(Arc::clone(&dataset), ids.clone());
    let loaded: usize = (&mut pipeline).map(|batch| batch.unwrap().len()).sum();
    assert!(pipeline.skipped() > 0);
    assert_eq!(loaded + pipeline.skipped(), ids.len());

    // With `error`, the first bad sample stops the pipeline with the file's name.
    let mut pipeline = Pipeline::builder()
        .workers(2)
        .batch_size(3)
        .skip_bad_samples(false)
        .build(dataset, ids);
    let first_error = pipeline.find_map(|batch| batch.err()).expect("an error");
    assert!(first_error.to_string().contains("person_01_demo.mp4"));
    assert!(
        pipeline.next().is_none(),
        "the pipeline stops after an error"
    );
}

#[test]
fn missing_videos_ranges_past_the_end_and_unknown_labels_are_reported() {
    let _serial = serial();
    let tasks = serde_json::json!([
        {"video": "/data/upload/1/person_01_demo.mp4", "videoLabels": [
            {"timelinelabels": ["left"], "ranges": [{"start": 10, "end": 40}]},
            {"timelinelabels": ["sideways"], "ranges": [{"start": 50, "end": 60}]},
            {"timelinelabels": ["up"], "ranges": [{"start": 500, "end": 600}]},
            {"timelinelabels": ["down"], "ranges": [{"start": 230, "end": 400}]}
        ]},
        {"video": "/data/upload/1/person_09_demo.mp4", "videoLabels": [
            {"timelinelabels": ["left"], "ranges": [{"start": 0, "end": 10}]}
        ]}
    ]);
    let root = demo_with_annotations("bad-annotations", tasks);
    let mut config = config_for(&root);
    let dataset = Dataset::open(&config).unwrap();
    assert_eq!(
        dataset.index.recordings.len(),
        1,
        "the missing recording is skipped"
    );
    let ranges = &dataset.index.recordings[0].ranges;
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(
        (ranges[1].start, ranges[1].end),
        (230, 239),
        "clipped to the video's end"
    );
    let problems: Vec<&str> = dataset
        .index
        .problems
        .iter()
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("no video for view front"))
    );
    assert!(problems.iter().any(|p| p.contains("500..=600")));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("230..=400") && p.contains("clipped to 230..=239"))
    );
    assert!(problems.iter().any(|p| p.contains("\"sideways\" ×1")));

    config.data.on_bad_sample = OnBadSample::Error;
    let error = Dataset::open(&config).unwrap_err();
    assert!(
        error.to_string().contains("person_01_demo.mp4") || error.to_string().contains("person_09"),
        "{error}"
    );
}

/// The first problem of `kind` the index found.
fn problem_of(dataset: &Dataset, kind: ProblemKind) -> &vidtrain_data::Problem {
    dataset
        .index
        .problems
        .iter()
        .find(|problem| problem.kind == kind)
        .unwrap_or_else(|| panic!("no {} problem", kind.name()))
}

/// A copy of the demo whose videos are copied (so that a test can damage or replace them), its
/// annotations too, its keypoints linked.
fn demo_with_copied_videos(name: &str) -> PathBuf {
    let root = scratch(name);
    for folder in ["videos/front", "videos/left", "videos/right"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
        for person in ["person_01_demo.mp4", "person_02_demo.mp4"] {
            std::fs::copy(
                demo().join(folder).join(person),
                root.join(folder).join(person),
            )
            .unwrap();
        }
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(demo().join("keypoints"), root.join("keypoints")).unwrap();
    std::fs::copy(
        demo().join("annotations.json"),
        root.join("annotations.json"),
    )
    .unwrap();
    root
}

/// A copy of the demo (videos copied, so they can be replaced) with `view`'s video of person 1
/// re-encoded by ffmpeg with `filter` (`-vf`).
fn demo_with_reencoded_view(name: &str, view: &str, filter: &str) -> PathBuf {
    let root = demo_with_copied_videos(name);
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(demo().join("videos").join(view).join("person_01_demo.mp4"))
        .args(["-vf", filter, "-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(root.join("videos").join(view).join("person_01_demo.mp4"))
        .status()
        .unwrap();
    assert!(status.success());
    root
}

#[test]
fn views_at_different_frame_rates_or_lengths_are_reported_naming_the_odd_file() {
    // Issue 29 item 9: a 15 fps left view went unreported, the views silently out of step, and
    // the clipping message blamed the front file with the left view's frame count.
    let _serial = serial();
    let root = demo_with_reencoded_view("half-rate-view", "left", "fps=12.5");
    let mut config = config_for(&root);
    config.data.on_bad_sample = OnBadSample::Skip;
    let dataset = Dataset::open(&config).unwrap();
    let names: Vec<&str> = dataset
        .index
        .recordings
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["person_02_demo.mp4"],
        "the out-of-step recording is skipped"
    );
    let problem = problem_of(&dataset, ProblemKind::ViewsOutOfStep);
    assert!(
        problem.path.ends_with("left/person_01_demo.mp4"),
        "{problem:?}"
    );
    assert!(
        problem.message.contains("frame rate"),
        "{}",
        problem.message
    );
    config.data.on_bad_sample = OnBadSample::Error;
    let error = Dataset::open(&config).unwrap_err().to_string();
    assert!(
        error.contains("left/person_01_demo.mp4") && error.contains("frame rate"),
        "{error}"
    );

    // Same rate, the left view 3 s shorter: listed (naming the left file), the shortest view's
    // frames used, and a range past its end blamed on it.
    let root = demo_with_reencoded_view("short-view", "left", "trim=end_frame=150");
    let config = config_for(&root);
    let dataset = Dataset::open(&config).unwrap();
    let recording = dataset
        .index
        .recordings
        .iter()
        .find(|r| r.name == "person_01_demo.mp4")
        .expect("kept");
    assert_eq!(recording.n_frames, 150);
    let lengths = problem_of(&dataset, ProblemKind::ViewLengths);
    assert!(
        lengths.path.ends_with("left/person_01_demo.mp4"),
        "{lengths:?}"
    );
    assert!(lengths.message.contains("front 240"), "{}", lengths.message);
    for problem in &dataset.index.problems {
        if matches!(
            problem.kind,
            ProblemKind::ClippedRange | ProblemKind::OutsideVideo
        ) && problem.message.contains("person_01")
        {
            assert!(
                problem.path.ends_with("left/person_01_demo.mp4"),
                "{problem:?}"
            );
        }
    }
}

#[test]
fn unknown_labels_stop_the_index_when_bad_samples_are_errors() {
    let _serial = serial();
    let tasks = serde_json::json!([
        {"video": "person_01_demo.mp4", "videoLabels": [
            {"timelinelabels": ["sideways"], "ranges": [{"start": 0, "end": 10}]}
        ]}
    ]);
    let root = demo_with_annotations("unknown-label", tasks);
    let mut config = config_for(&root);
    config.data.on_bad_sample = OnBadSample::Error;
    let error = Dataset::open(&config).unwrap_err();
    assert!(matches!(error, Error::UnknownLabels { .. }), "{error}");
    assert!(error.to_string().contains("sideways"));
}

#[test]
fn an_annotation_file_with_a_byte_order_mark_reads_like_one_without() {
    // Saved by Notepad or PowerShell: used to be refused as "not valid JSON".
    let _serial = serial();
    let text = std::fs::read_to_string(demo().join("annotations.json")).unwrap();
    let root = demo_with_annotations("bom", serde_json::json!([]));
    std::fs::write(root.join("annotations.json"), format!("\u{feff}{text}")).unwrap();
    let with_bom = Dataset::open(&config_for(&root)).unwrap();
    let without = Dataset::open(&config_for(demo())).unwrap();
    assert_eq!(with_bom.len(), without.len());
    assert!(!with_bom.is_empty());
}

#[test]
fn a_missing_annotation_file_says_which_key_to_set() {
    let _serial = serial();
    let mut config = config_for(demo());
    config.paths.annotation_path = "nope.json".into();
    let error = Dataset::open(&config).unwrap_err().to_string();
    assert!(
        error.contains("nope.json") && error.contains("paths.annotation_path"),
        "{error}"
    );
}

#[test]
fn dropping_a_pipeline_early_stops_its_workers() {
    let _serial = serial();
    let config = config_for(demo());
    let dataset = Arc::new(Dataset::open(&config).unwrap());
    let ids: Vec<usize> = (0..dataset.len()).collect();
    let mut pipeline = Pipeline::builder()
        .workers(2)
        .prefetch_depth(1)
        .batch_size(1)
        .build(dataset, ids);
    assert!(pipeline.next().unwrap().is_ok());
    let started = std::time::Instant::now();
    drop(pipeline); // joins the workers; must not wait for the whole epoch
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn pipeline_host_memory_stays_within_its_bound() {
    let _serial = serial();
    let mut config = config_for(demo());
    config.data.img_size = 224;
    config.data.num_workers = 2;
    config.data.prefetch_depth = 2;
    let batch_size = 4;
    let dataset = Arc::new(Dataset::open(&config).unwrap());
    let batch_bytes = batch_size * dataset.sample_shape().video_bytes();
    // Every sample twice; the consumer is slower than the two workers, so the queues fill.
    let ids: Vec<usize> = (0..dataset.len()).cycle().take(2 * dataset.len()).collect();
    let expected = ids.len();
    let before = status_kib("VmRSS:") * 1024;
    // Reset the kernel's high-water mark so that it measures the pipeline alone.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let pipeline = Pipeline::builder()
        .workers(2)
        .prefetch_depth(2)
        .batch_size(batch_size)
        .build(dataset, ids);
    let mut delivered = 0;
    for batch in pipeline {
        let batch = batch.unwrap();
        // A slow consumer, so that the workers fill every queue slot.
        std::thread::sleep(Duration::from_millis(300));
        delivered += batch.len();
    }
    assert_eq!(delivered, expected);
    let peak = status_kib("VmHWM:") * 1024;
    let bound = (2 + 2 + 1) * batch_bytes as u64 + (32 << 20);
    assert!(
        peak.saturating_sub(before) <= bound,
        "pipeline grew RSS by {} MiB; bound {} MiB ({} MiB per batch)",
        (peak - before) >> 20,
        bound >> 20,
        batch_bytes >> 20
    );
}

/// The first sample of class `name` and its recording.
fn first_sample_of(dataset: &Dataset, config: &Config, name: &str) -> usize {
    let class = config
        .data
        .class_names
        .iter()
        .position(|n| n == name)
        .unwrap();
    (0..dataset.len())
        .find(|&id| dataset.chunks.samples[id].class == class)
        .unwrap_or_else(|| panic!("the demo has no `{name}` segment"))
}

#[test]
fn a_flipped_sample_carries_the_swapped_label_views_and_mirrored_keypoints() {
    let _serial = serial();
    let mut config = config_for(demo());
    config.data.load_kpt = true;
    config.data.hflip_prob = 1.0;
    config.model.skeleton = vidtrain_config::SkeletonLayout::Sam3dBody52;
    let dataset = Arc::new(Dataset::open(&config).unwrap());
    let views: Vec<String> = dataset.index.recordings[0]
        .views
        .iter()
        .map(|view| view.view.clone())
        .collect();
    assert_eq!(views, ["front", "left", "right"]);
    for (name, flipped) in [("left", "right"), ("left_up", "right_up"), ("up", "up")] {
        let id = first_sample_of(&dataset, &config, name);
        let load = |transforms| {
            Pipeline::builder()
                .transforms(transforms)
                .build(Arc::clone(&dataset), vec![id])
                .next()
                .unwrap()
                .unwrap()
        };
        let plain = load(Transforms::None);
        let flip = load(Transforms::Training { epoch_seed: 1 });
        let class_name = |class: usize| config.data.class_names[class].as_str();
        assert_eq!(class_name(plain.labels[0]), name);
        assert_eq!(class_name(flip.labels[0]), flipped);

        // Pixels: view slot i of the flip is ffmpeg's hflip of the view it was exchanged with.
        let sample = &dataset.chunks.samples[id];
        let recording = &dataset.index.recordings[sample.recording];
        let view_bytes = flip.video.len() / 3;
        for (slot, source) in [(0, "front"), (1, "right"), (2, "left")] {
            let path = &recording
                .views
                .iter()
                .find(|v| v.view == source)
                .unwrap()
                .path;
            let mut unique = sample.frame_indices.clone();
            unique.dedup();
            let reference = ffmpeg_cli_frames_filtered(path, &unique, "", 32, ",hflip");
            let frame = 32 * 32 * 3;
            for (position, index) in sample.frame_indices.iter().enumerate() {
                let at = unique.iter().position(|u| u == index).unwrap();
                assert!(
                    flip.video[slot * view_bytes + position * frame..][..frame]
                        == reference[at * frame..][..frame],
                    "{name}: slot {slot} frame {index} is not the hflip of {source}"
                );
            }
        }

        // Keypoints: the right view's, x negated, left and right joints exchanged.
        let joints = plain.shape.joints;
        let view_values = plain.keypoints.len() / 3;
        let positions = config.flip_joint_positions();
        let partner = |joint: usize| {
            positions
                .iter()
                .find_map(|&[a, b]| (a == joint).then_some(b).or((b == joint).then_some(a)))
                .unwrap_or(joint)
        };
        for frame in 0..plain.shape.frames {
            for joint in 0..joints {
                let at =
                    |view: usize, joint: usize| view * view_values + (frame * joints + joint) * 3;
                let flipped_value = &flip.keypoints[at(1, joint)..][..3];
                let source = &plain.keypoints[at(2, partner(joint))..][..3];
                assert_eq!(flipped_value, [-source[0], source[1], source[2]]);
            }
        }
    }
}

#[test]
fn evaluation_crops_and_colour_jitter_change_exactly_what_they_should() {
    let _serial = serial();
    let mut config = config_for(demo());
    config.data.eval_crop = 0.5;
    config.data.views = vec!["front".into()];
    let dataset = Arc::new(Dataset::open(&config).unwrap());
    let id = first_sample_of(&dataset, &config, "down");
    let sample = dataset.chunks.samples[id].clone();
    let recording = &dataset.index.recordings[sample.recording];
    let cropped = Pipeline::builder()
        .transforms(Transforms::Evaluation { clip: 0, clips: 1 })
        .build(Arc::clone(&dataset), vec![id])
        .next()
        .unwrap()
        .unwrap();
    let mut unique = sample.frame_indices.clone();
    unique.dedup();
    assert_eq!(
        unique, sample.frame_indices,
        "the demo's segments are long enough"
    );
    let reference = ffmpeg_cli_frames_filtered(
        &recording.views[0].path,
        &unique,
        "crop=iw*0.5:ih*0.5:iw*0.25:ih*0.25,",
        32,
        "",
    );
    assert!(
        cropped.video == reference,
        "centre crop differs from ffmpeg's"
    );

    // Colour jitter on top of the plain frames, nothing else.
    config.data.color_jitter = [0.4, 0.4, 0.4];
    config.data.eval_crop = 1.0;
    let dataset = Arc::new(Dataset::open(&config).unwrap());
    let transform = dataset.transform_for(id, Transforms::Training { epoch_seed: 3 });
    let factors = transform.color.unwrap();
    assert!(transform.frame_indices.is_none() && !transform.spatial.hflip);
    let mut video = vec![0u8; dataset.shape_of(id).video_bytes()];
    let label = dataset
        .load_transformed(id, &transform, &mut video, &mut [])
        .unwrap();
    assert_eq!(label, sample.class);
    let mut expected = ffmpeg_cli_frames(&recording.views[0].path, &unique, 32);
    vidtrain_data::apply_color(&mut expected, 32 * 32 * 3, factors);
    assert!(video == expected);
}
