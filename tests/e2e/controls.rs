//! The training controls of issue 15 as a user runs them: augmentation presets, optimizers,
//! warm-up, class weights, the balanced sampler, model selection by `train.monitor` with early
//! stopping, `eval` on the best checkpoint, multi-clip evaluation, curves and TensorBoard files
//! (read back with TensorBoard's own reader where `cargo xtask ci` provides it).

use std::path::Path;

use crate::train::{only_run_dir, read_json, small_dataset, train_tiny};
use crate::{scratch, stderr, stdout, vidtrain};

fn lines(run: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["event"] == event)
        .collect()
}

/// `vidtrain eval --checkpoint RUN --out OUT <overrides>`, which must succeed; returns OUT.
fn eval_run(dir: &Path, run: &Path, out: &str, overrides: &[&str]) -> std::path::PathBuf {
    let mut args = vec!["eval", "--checkpoint", run.to_str().unwrap(), "--out", out];
    args.extend_from_slice(overrides);
    let output = vidtrain(dir, &args);
    assert!(output.status.success(), "{}", stderr(&output));
    dir.join(out)
}

#[test]
fn a_run_with_every_control_selects_stops_and_reports_as_configured() {
    let dir = scratch("controls-all");
    let config = small_dataset(&dir);
    let args = [
        "experiment=controls",
        "train.max_epochs=6",
        "data.augment=standard",
        "train.optimizer=adamw",
        "train.weight_decay=0.05",
        "train.warmup_steps=4",
        "train.label_smoothing=0.1",
        "train.class_weights=balanced",
        "data.sampler=balanced",
        "eval.clips=2",
        "data.eval_crop=0.9",
        // Larger training loss "better": the best epoch is an early one and patience 1 must
        // stop the run right after the first epoch that does not beat it.
        "train.monitor=train_loss",
        "train.monitor_mode=max",
        "train.early_stopping_patience=1",
    ];
    let output = train_tiny(&dir, &config, &args);
    let run = only_run_dir(&dir.join("runs"));
    let summary = read_json(&run.join("summary.json"));
    let epochs = lines(&run, "epoch");
    let best_epoch = summary["best_epoch"].as_u64().unwrap() as usize;
    assert_eq!(summary["monitor"], "train_loss");
    assert_eq!(summary["stopped_early"], true, "{summary}");
    assert_eq!(summary["epochs"].as_u64().unwrap() as usize, best_epoch + 1);
    assert_eq!(epochs.len(), best_epoch + 1);
    let losses: Vec<f64> = epochs
        .iter()
        .map(|line| line["train_loss"].as_f64().unwrap())
        .collect();
    let highest = losses.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(losses[best_epoch - 1], highest, "{losses:?}");
    assert_eq!(
        summary["best_value"].as_f64().unwrap(),
        highest,
        "{summary}"
    );
    // Every epoch up to the best one beat its predecessors (else the run had stopped); the
    // last did not.
    for (index, line) in epochs.iter().enumerate() {
        assert_eq!(line["is_best"], index < best_epoch, "epoch {}", index + 1);
    }
    let best = read_json(&run.join("checkpoints/best/metrics.json"));
    assert_eq!(best["epoch"].as_u64().unwrap() as usize, best_epoch);

    // Warm-up: 1/4, 2/4, 3/4 of train.lr, then the constant rate.
    let rates: Vec<f64> = lines(&run, "step")
        .iter()
        .map(|line| line["lr"].as_f64().unwrap())
        .collect();
    for (step, expected) in [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3].iter().enumerate() {
        assert!((rates[step] - expected).abs() < 1e-12, "{rates:?}");
    }

    // Class counts in the summary cover the splits.
    let counted = |key: &str| -> u64 {
        summary[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|count| count.as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        counted("class_counts_train"),
        summary["train_size"].as_u64().unwrap()
    );
    assert_eq!(
        counted("class_counts_val"),
        summary["val_size"].as_u64().unwrap()
    );
    assert!(
        stdout(&output).contains("class counts train"),
        "{}",
        stdout(&output)
    );

    // Pictures and TensorBoard files beside metrics.jsonl.
    let curves = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(curves.starts_with("<svg") && curves.contains("val macro-F1"));
    assert_eq!(curves.matches("<circle").count(), 4 * epochs.len());
    let events: Vec<_> = std::fs::read_dir(run.join("tensorboard"))
        .unwrap()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents")
        })
        .collect();
    assert_eq!(events.len(), 1);

    // `eval` on the run folder scores the best epoch's model, with two clips per segment.
    let report = read_json(&eval_run(&dir, &run, "eval", &[]).join("metrics.json"));
    assert!(
        report["weights"]
            .as_str()
            .unwrap()
            .ends_with("checkpoints/best/model.mpk"),
        "{report}"
    );
}

#[test]
fn several_clips_average_what_single_clips_at_those_offsets_score() {
    let dir = scratch("controls-clips");
    let config = small_dataset(&dir);
    train_tiny(
        &dir,
        &config,
        &["train.max_epochs=1", "trainer.tensorboard=false"],
    );
    let run = only_run_dir(&dir.join("runs"));
    assert!(!run.join("tensorboard").exists());
    let eval = |out: &str, clips: &str| {
        std::fs::read_to_string(eval_run(&dir, &run, out, &[clips]).join("predictions.csv"))
            .unwrap()
    };
    let one = eval("one", "eval.clips=1");
    let two = eval("two", "eval.clips=2");
    assert_eq!(one.lines().count(), two.lines().count());
    assert_ne!(
        one, two,
        "two clips score other frames than the uniform subsample"
    );
}

#[test]
#[ignore = "needs Python with tensorboard: run through `cargo xtask ci`"]
fn tensorboard_reads_the_runs_scalars() {
    let python =
        std::env::var("VIDTRAIN_PYTHON").expect("VIDTRAIN_PYTHON is set by cargo xtask ci");
    let dir = scratch("controls-tensorboard");
    let config = small_dataset(&dir);
    train_tiny(&dir, &config, &["train.max_epochs=2"]);
    let run = only_run_dir(&dir.join("runs"));
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
events.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in events.Scalars(tag)]
                  for tag in events.Tags()["scalars"]}))
"#;
    let read = std::process::Command::new(python)
        .args(["-c", script])
        .arg(run.join("tensorboard"))
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let scalars: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    let series = |tag: &str| -> Vec<(u64, f64)> {
        scalars[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {scalars}"))
            .iter()
            .map(|pair| (pair[0].as_u64().unwrap(), pair[1].as_f64().unwrap()))
            .collect()
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    let steps = lines(&run, "step");
    let tb_loss = series("train/loss_step");
    assert_eq!(tb_loss.len(), steps.len());
    for ((step, value), line) in tb_loss.iter().zip(&steps) {
        assert_eq!(*step, line["step"].as_u64().unwrap());
        assert!(close(*value, line["loss"].as_f64().unwrap()));
    }
    let epochs = lines(&run, "epoch");
    for (tag, key) in [
        ("val/accuracy", "val_accuracy"),
        ("val/macro_f1", "val_macro_f1"),
        ("val/loss", "val_loss"),
        ("train/loss_epoch", "train_loss"),
    ] {
        let values = series(tag);
        assert_eq!(values.len(), epochs.len(), "{tag}");
        for ((step, value), line) in values.iter().zip(&epochs) {
            assert_eq!(*step, line["step"].as_u64().unwrap(), "{tag}");
            assert!(close(*value, line[key].as_f64().unwrap()), "{tag}");
        }
    }
    assert_eq!(series("train/lr").len(), steps.len());
    assert!(!series("memory/peak_host_rss_mib").is_empty());
}
