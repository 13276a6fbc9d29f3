//! Datasets as users have them: another folder layout named by a manifest, Label Studio upload
//! and local-files names, and every kind of problem planted once — listed by `data inspect`,
//! counted in `summary.json`, and trained around.

use std::path::Path;

use serde_json::json;

use crate::train::{TINY_MODEL, only_run_dir, read_json, small_dataset};
use crate::{stderr, stdout, vidtrain};

const VIEWS: [&str; 3] = ["front", "left", "right"];

/// Writes a float32 `[frames, joints, 3]` keypoint array.
fn write_keypoints(path: &Path, frames: usize, joints: usize, value: impl Fn(usize) -> f32) {
    let file = std::fs::File::create(path).unwrap();
    let shape = [frames as u64, joints as u64, 3];
    use npyz::WriterBuilder;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    writer.extend((0..frames * joints * 3).map(value)).unwrap();
    writer.finish().unwrap();
}

/// Copies the demo recording `person` to `<root>/<env>/<new_person>/<view>.mp4|.npy` and returns
/// the manifest rows for it (`views` only).
fn place(dir: &Path, person: usize, env: &str, new_person: &str, views: &[&str]) -> Vec<String> {
    let folder = dir.join("layout").join(env).join(new_person);
    std::fs::create_dir_all(&folder).unwrap();
    let mut rows = Vec::new();
    for view in views {
        let source = format!("person_{person:02}_demo");
        std::fs::copy(
            dir.join(format!("data/videos/{view}/{source}.mp4")),
            folder.join(format!("{view}.mp4")),
        )
        .unwrap();
        std::fs::copy(
            dir.join(format!("data/keypoints/{view}/{source}.npy")),
            folder.join(format!("{view}.npy")),
        )
        .unwrap();
        rows.push(format!(
            "{new_person}.mp4,{view},{env}/{new_person}/{view}.mp4,{new_person},{env}"
        ));
    }
    rows
}

#[test]
fn a_manifest_layout_with_upload_names_trains_and_inspect_lists_every_planted_problem() {
    let dir = scratch_dataset();
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("data/annotations.json")).unwrap())
            .unwrap();
    let labels_of = |person: usize| demo[person - 1]["videoLabels"].clone();

    // Three good recordings in <env>/<person>/<view>.mp4, and planted problems.
    let mut rows = vec!["video,view,path,person,env".to_string()];
    rows.extend(place(&dir, 1, "day", "driver_a", &VIEWS));
    rows.extend(place(&dir, 2, "day", "driver_b", &VIEWS));
    rows.extend(place(&dir, 3, "night", "driver_c", &VIEWS));
    // missing_view: no right camera.
    rows.extend(place(&dir, 1, "night", "driver_d", &["front", "left"]));
    // no_labels: a task without any label.
    rows.extend(place(&dir, 2, "night", "driver_e", &VIEWS));
    // keypoint_joints: COCO-17 keypoints where 70 SAM-3D-body joints are expected.
    rows.extend(place(&dir, 3, "day", "driver_f", &VIEWS));
    write_keypoints(&dir.join("layout/day/driver_f/left.npy"), 200, 17, |_| 0.5);
    // missing_keypoints: one view without keypoints.
    rows.extend(place(&dir, 1, "day", "driver_g", &VIEWS));
    std::fs::remove_file(dir.join("layout/day/driver_g/right.npy")).unwrap();
    // non_finite_keypoints: joint 0 of every frame is NaN in one view of a good recording.
    write_keypoints(&dir.join("layout/night/driver_c/front.npy"), 200, 70, |i| {
        if i % (70 * 3) < 3 { f32::NAN } else { 0.25 }
    });
    std::fs::write(dir.join("layout/manifest.csv"), rows.join("\n") + "\n").unwrap();

    let mut good_a = labels_of(1);
    // empty_label, conflicting_labels, unknown_label inside good recordings.
    good_a
        .as_array_mut()
        .unwrap()
        .push(json!({"timelinelabels": [], "ranges": [{"start": 3, "end": 9}]}));
    let mut good_b = labels_of(2);
    good_b
        .as_array_mut()
        .unwrap()
        .push(json!({"timelinelabels": ["left", "right"], "ranges": [{"start": 10, "end": 30}]}));
    good_b
        .as_array_mut()
        .unwrap()
        .push(json!({"timelinelabels": ["sideways"], "ranges": [{"start": 40, "end": 60}]}));
    // clipped_range: past the 200-frame video's end.
    let mut good_c = labels_of(3);
    good_c
        .as_array_mut()
        .unwrap()
        .push(json!({"timelinelabels": ["front"], "ranges": [{"start": 195, "end": 400}]}));
    let tasks = json!([
        {"video": "/data/upload/3/0a1b2c3d-driver_a.mp4", "videoLabels": good_a},
        {"data": {"video": "/data/upload/3/9f8e7d6c-driver_b.mp4"},
         "annotations": [{"result": good_b.as_array().unwrap().iter()
             .map(|value| json!({"value": value})).collect::<Vec<_>>()}]},
        {"video": "/data/local-files/?d=night%2Fdriver_c.mp4", "videoLabels": good_c},
        {"video": "/data/upload/3/11223344-driver_d.mp4", "videoLabels": labels_of(1)},
        {"video": "/data/upload/3/55667788-driver_e.mp4", "videoLabels": []},
        {"video": "/data/upload/3/99aabbcc-driver_f.mp4", "videoLabels": labels_of(3)},
        {"video": "/data/upload/3/ddeeff00-driver_g.mp4", "videoLabels": labels_of(1)},
        // duplicate_task: driver_a annotated twice.
        {"video": "/data/upload/3/0a1b2c3d-driver_a.mp4", "videoLabels": labels_of(2)},
    ]);
    let report = inspect_layout(&dir, &tasks, "[data]\nload_kpt = true\n");
    for kind in [
        "missing_view",
        "duplicate_task",
        "no_labels",
        "empty_label",
        "unknown_label",
        "conflicting_labels",
        "clipped_range",
        "missing_keypoints",
        "keypoint_joints",
        "non_finite_keypoints",
    ] {
        assert!(
            report.contains(&format!("{kind}: ")),
            "{kind} missing:\n{report}"
        );
    }
    assert!(report.contains("recordings   3 (3 persons)"), "{report}");
    // How each entry resolved: upload name and local-files path through the manifest.
    assert!(
        report.contains("/data/upload/3/0a1b2c3d-driver_a.mp4 → person driver_a, env day; front: "),
        "{report}"
    );
    assert!(
        report.contains("layout/night/driver_c/right.mp4"),
        "{report}"
    );

    let mut args = vec![
        "train",
        "--config",
        "layout/dataset.toml",
        "train.max_epochs=1",
        "experiment=layout",
    ];
    args.extend(TINY_MODEL);
    args.push("model.input_type=rgb_kpt");
    let output = vidtrain(&dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stderr(&output);
    // Warned once per kind at the start, not once per sample.
    assert_eq!(text.matches("× duplicate_task").count(), 1, "{text}");
    let run = only_run_dir(&dir.join("runs"));
    let summary = read_json(&run.join("summary.json"));
    let problems = summary["data_problems"].as_object().unwrap();
    assert_eq!(problems.len(), 10, "{problems:?}");
    assert!(summary["non_finite_keypoint_values"].as_u64().unwrap() > 0);
    assert!(summary["val_loss"].as_f64().unwrap().is_finite());
}

#[test]
fn annotator_and_manifest_mistakes_are_listed_not_merged_silently() {
    // Issue 29 item 10: cancelled annotations and several annotators' results were merged into
    // one set of labels, overlapping ranges of two classes, a manifest view outside data.views
    // (dropped, the message showing an empty path), two views naming one file, person ids
    // differing in case, names without a person id, and an empty manifest all passed without a
    // word.
    let dir = crate::scratch("datasets-mistakes");
    small_dataset(&dir);
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("data/annotations.json")).unwrap())
            .unwrap();
    let labels_of = |person: usize| demo[person - 1]["videoLabels"].clone();
    let results = |person: usize| {
        labels_of(person)
            .as_array()
            .unwrap()
            .iter()
            .map(|value| json!({"value": value}))
            .collect::<Vec<_>>()
    };
    let mut rows = vec!["video,view,path,person,env".to_string()];
    rows.extend(place(&dir, 1, "day", "driver_a", &VIEWS));
    rows.extend(place(&dir, 2, "day", "driver_b", &VIEWS));
    // A manifest typo: "rigth" is not in data.views.
    let typo = place(&dir, 3, "day", "driver_c", &VIEWS);
    rows.extend(typo.iter().map(|row| row.replace(",right,", ",rigth,")));
    // Two views naming one file.
    let same = place(&dir, 1, "night", "driver_d", &VIEWS);
    rows.extend(
        same.iter()
            .map(|row| row.replace("driver_d/left.mp4", "driver_d/front.mp4")),
    );
    // Person ids from names (no person column): one driver in two cases, and a name without
    // an id.
    for (name, person) in [
        ("Person_07_day", 1),
        ("person_07_night", 2),
        ("dashcam_0912", 3),
    ] {
        let placed = place(&dir, person, "names", name, &VIEWS);
        rows.extend(
            placed
                .iter()
                .map(|row| row.replace(&format!(",{name},names"), ",,names")),
        );
    }
    std::fs::write(dir.join("layout/manifest.csv"), rows.join("\n") + "\n").unwrap();
    let overlapping = json!([
        {"timelinelabels": ["left"], "ranges": [{"start": 100, "end": 120}]},
        {"timelinelabels": ["right"], "ranges": [{"start": 110, "end": 130}]},
    ]);
    let tasks = json!([
        {"data": {"video": "/data/upload/3/0a1b2c3d-driver_a.mp4"}, "annotations": [
            {"id": 7, "completed_by": 1, "was_cancelled": true, "result": results(3)},
            {"id": 8, "completed_by": 1, "updated_at": "2026-01-05T10:00:00Z", "result": results(2)},
            {"id": 9, "completed_by": {"id": 2, "email": "b@example.com"},
             "updated_at": "2026-02-01T09:00:00Z", "result": results(1)}
        ]},
        {"video": "/data/upload/3/9f8e7d6c-driver_b.mp4", "videoLabels": overlapping},
        {"video": "/data/upload/3/11223344-driver_c.mp4", "videoLabels": labels_of(3)},
        {"video": "/data/upload/3/55667788-driver_d.mp4", "videoLabels": labels_of(1)},
        {"video": "Person_07_day.mp4", "videoLabels": labels_of(1)},
        {"video": "person_07_night.mp4", "videoLabels": labels_of(2)},
        {"video": "dashcam_0912.mp4", "videoLabels": labels_of(3)},
    ]);
    let report = inspect_layout(&dir, &tasks, "");
    for expected in [
        "cancelled_annotation: ",
        "1 cancelled annotation(s)",
        "several_annotations: ",
        "used annotation 9 by b@example.com (the most recently updated), ignored annotation 8 by 1",
        "overlapping_labels: ",
        "100..=120 \"left\" and 110..=130 \"right\" overlap by 11 frame(s)",
        "no row for view right of this video; its rows name the views front, left, rigth",
        "same_file_for_views: ",
        "views front and left are the same file",
        "person_from_file_name: ",
        "its file name dashcam_0912 is taken as the person",
    ] {
        assert!(report.contains(expected), "{expected:?} missing:\n{report}");
    }
    // driver_a, driver_b, Person_07_day + person_07_night (one person), dashcam_0912.
    assert!(report.contains("recordings   5 (4 persons)"), "{report}");

    // A manifest with a header and no rows is refused, not an empty dataset that "passes".
    std::fs::write(
        dir.join("layout/manifest.csv"),
        "video,view,path,person,env\n",
    )
    .unwrap();
    let output = vidtrain(
        &dir,
        &["data", "inspect", "--config", "layout/dataset.toml"],
    );
    crate::assert_clean_failure(&output, 1);
    crate::assert_stderr_contains(&output, "manifest.csv");
    crate::assert_stderr_contains(&output, "lists no videos");
}

/// Writes `tasks` as `layout/labels.json` and `layout/dataset.toml` (the manifest layout, plus
/// `extra` TOML), runs `vidtrain data inspect` on it and returns its report.
fn inspect_layout(dir: &Path, tasks: &serde_json::Value, extra: &str) -> String {
    std::fs::write(
        dir.join("layout/labels.json"),
        serde_json::to_string_pretty(tasks).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("layout/dataset.toml"),
        format!(
            "[paths]\nroot_path = \"{}\"\nannotation_path = \"labels.json\"\nmanifest = \
             \"manifest.csv\"\n\n{extra}",
            dir.join("layout").display()
        ),
    )
    .unwrap();
    let output = vidtrain(dir, &["data", "inspect", "--config", "layout/dataset.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

fn scratch_dataset() -> std::path::PathBuf {
    let dir = crate::scratch("datasets-manifest");
    small_dataset(&dir);
    dir
}

#[test]
fn a_recording_missing_a_view_is_skipped_or_trained_on_the_views_it_has() {
    let dir = crate::scratch("datasets-missing-view");
    let config = small_dataset(&dir);
    std::fs::remove_file(dir.join("data/videos/right/person_03_demo.mp4")).unwrap();
    let train = |experiment: &str, extra: &[&str]| {
        let experiment = format!("experiment={experiment}");
        let mut args = vec![
            "train",
            "--config",
            config.as_str(),
            "train.max_epochs=1",
            experiment.as_str(),
        ];
        args.extend(TINY_MODEL);
        args.extend_from_slice(extra);
        vidtrain(&dir, &args)
    };
    // Default: left out, and said so.
    let output = train("skip", &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no video for view right"),
        "{}",
        stderr(&output)
    );
    let skipped = read_json(&only_run_dir(&dir.join("runs")).join("summary.json"));
    assert_eq!(skipped["data_problems"]["missing_view"], 1);

    // `use_present`: its samples train and validate on the two views it has, in micro-batches
    // of their own (a mean fusion averages over the views present).
    let output = train("present", &["data.missing_view=use_present"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let run = std::fs::read_dir(dir.join("runs/present"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let present = read_json(&run.join("summary.json"));
    assert_eq!(present["data_problems"]["missing_view"], 1);
    let samples = |summary: &serde_json::Value| {
        summary["train_size"].as_u64().unwrap() + summary["val_size"].as_u64().unwrap()
    };
    assert!(
        samples(&present) > samples(&skipped),
        "{present} vs {skipped}"
    );
    assert_eq!(present["skipped_sample_loads"], 0);
    assert!(present["val_loss"].as_f64().unwrap().is_finite());
    let output = vidtrain(
        &dir,
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--split",
            "all",
            "--out",
            "eval-present",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report = read_json(&dir.join("eval-present/metrics.json"));
    assert_eq!(report["samples"].as_u64().unwrap(), samples(&present));

    // A fusion that needs every view refuses the setting before any work.
    let output = train(
        "concat",
        &[
            "data.missing_view=use_present",
            "model.fusion_mode=feature_concat",
        ],
    );
    crate::assert_clean_failure(&output, 2);
    assert!(
        stderr(&output).contains("data.missing_view"),
        "{}",
        stderr(&output)
    );
}
