//! `vidtrain eval`, `vidtrain predict` and `vidtrain export` on a model trained here.

use crate::train::{only_run_dir, read_json, small_dataset, train_tiny};
use crate::{assert_clean_failure, scratch, stderr, vidtrain};

#[test]
fn eval_reproduces_training_validation_and_predict_covers_every_window() {
    let dir = scratch("inference");
    let config = small_dataset(&dir);
    train_tiny(&dir, &config, &["train.max_epochs=1", "experiment=infer"]);
    let run = only_run_dir(&dir.join("runs"));
    let summary = read_json(&run.join("summary.json"));
    assert!(run.join("confusion.svg").is_file());

    // One epoch: the best model is the last one, so eval on the validation persons must give
    // exactly what training measured.
    let run_arg = run.to_str().unwrap();
    let output = vidtrain(&dir, &["eval", "--checkpoint", run_arg, "--out", "eval"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = read_json(&dir.join("eval/metrics.json"));
    assert_eq!(report["samples"], summary["val_size"]);
    assert_eq!(report["metrics"]["confusion"], summary["val_confusion"]);
    let accuracy = report["metrics"]["accuracy"].as_f64().unwrap();
    assert!((accuracy - summary["val_accuracy"].as_f64().unwrap()).abs() < 1e-9);
    let csv = std::fs::read_to_string(dir.join("eval/predictions.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + summary["val_size"].as_u64().unwrap() as usize
    );
    assert!(csv.lines().next().unwrap().ends_with(",p_front"));
    assert!(
        std::fs::read_to_string(dir.join("eval/confusion.svg"))
            .unwrap()
            .starts_with("<svg")
    );

    // 200 frames in windows of 64 every 64: starts 0, 64, 128 and a last one flush with the end.
    let video = "data/videos/left/person_02_demo.mp4";
    let output = vidtrain(
        &dir,
        &[
            "predict",
            "--checkpoint",
            run_arg,
            "--window",
            "64",
            video,
            "--out",
            "p.csv",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let csv = std::fs::read_to_string(dir.join("p.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|line| line.split(',').collect())
        .collect();
    let spans: Vec<(&str, &str)> = rows.iter().map(|row| (row[2], row[3])).collect();
    assert_eq!(
        spans,
        [("0", "63"), ("64", "127"), ("128", "191"), ("136", "199")]
    );
    for row in &rows {
        assert_eq!(row[0], video);
        let probabilities: Vec<f64> = row[5..].iter().map(|p| p.parse().unwrap()).collect();
        assert_eq!(probabilities.len(), 9);
        assert!(
            (probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-4,
            "{row:?}"
        );
    }

    // JSON output, overlapping windows, sub-batches of one window, an override among the videos.
    let output = vidtrain(
        &dir,
        &[
            "predict",
            "--checkpoint",
            run_arg,
            "--window",
            "100",
            "--stride",
            "50",
            video,
            "train.video_batch_size=1",
            "--out",
            "p.json",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let windows = read_json(&dir.join("p.json"));
    let starts: Vec<u64> = windows
        .as_array()
        .unwrap()
        .iter()
        .map(|window| window["start_frame"].as_u64().unwrap())
        .collect();
    assert_eq!(starts, [0, 50, 100]);

    // A multi-view model needs the view folders; a missing video is named.
    std::fs::copy(dir.join(video), dir.join("loose.mp4")).unwrap();
    let output = vidtrain(&dir, &["predict", "--checkpoint", run_arg, "loose.mp4"]);
    assert_clean_failure(&output, 1);
    assert!(
        stderr(&output).contains("not inside a view folder"),
        "{}",
        stderr(&output)
    );
    let output = vidtrain(
        &dir,
        &[
            "predict",
            "--checkpoint",
            run_arg,
            "data/videos/left/nobody.mp4",
        ],
    );
    assert_clean_failure(&output, 1);
    assert!(
        stderr(&output).contains("nobody.mp4"),
        "{}",
        stderr(&output)
    );

    // The trained model out as PyTorch files (beside the weights by default), and back in
    // through model.pretrained: a model trained here is deployable and fine-tunable.
    let output = vidtrain(&dir, &["export", run_arg]);
    assert!(output.status.success(), "{}", stderr(&output));
    let exported = run.join("checkpoints/best/model.safetensors");
    assert!(
        exported.is_file(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = vidtrain(
        &dir,
        &["export", run_arg, "--format", "pth", "--out", "model.pth"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let pth = dir.join("model.pth");
    let pretrained = format!("model.pretrained={:?}", pth.to_str().unwrap());
    train_tiny(
        &dir,
        &config,
        &["train.max_epochs=1", "experiment=from_export", &pretrained],
    );
    let output = vidtrain(&dir, &["export", dir.join("data").to_str().unwrap()]);
    assert_clean_failure(&output, 1);
    assert!(
        stderr(&output).contains("not inside a run folder"),
        "{}",
        stderr(&output)
    );
    let output = vidtrain(&dir, &["export", run.join("tensorboard").to_str().unwrap()]);
    assert_clean_failure(&output, 1);
    assert!(
        stderr(&output).contains("no model weights here"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn eval_refuses_a_validation_split_that_moved_since_training() {
    let dir = scratch("eval-moved-split");
    let config = small_dataset(&dir);
    train_tiny(&dir, &config, &["train.max_epochs=1", "experiment=moved"]);
    let run = only_run_dir(&dir.join("runs"));
    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["val_persons"], serde_json::json!(["person_01"]));
    assert_eq!(
        summary["train_persons"],
        serde_json::json!(["person_02", "person_03"])
    );
    let run_arg = run.to_str().unwrap();
    let eval = |out: &str| {
        vidtrain(
            &dir,
            &[
                "eval",
                "--checkpoint",
                run_arg,
                "--split",
                "validation",
                "--out",
                out,
            ],
        )
    };
    let output = eval("eval-before");
    assert!(output.status.success(), "{}", stderr(&output));

    // person_01's left view goes missing: its recording is skipped. Folds used to be recomputed
    // from the persons left, so fold 0 became person_02 — a training person — and eval printed
    // its accuracy with exit 0.
    std::fs::remove_file(dir.join("data/videos/left/person_01_demo.mp4")).unwrap();
    let output = eval("eval-after");
    assert_clean_failure(&output, 2);
    let text = stderr(&output);
    assert!(
        text.contains("the run validated person_01") && text.contains("--split all"),
        "{text}"
    );
    // Every sample can still be scored, on request.
    let output = vidtrain(
        &dir,
        &[
            "eval",
            "--checkpoint",
            run_arg,
            "--split",
            "all",
            "--out",
            "eval-all",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}
