//! Data-parallel training under `mpiexec` (builds with the `mpi` feature): two ranks train the
//! same model as one rank with their combined batch, resume exactly, and a dead or hung rank
//! ends the run with an error instead of hanging it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::train::{TINY_MODEL, runs_of, small_dataset, step_losses};
use crate::{in_test_setting, scratch, stderr, vidtrain};

/// The keypoint model (no BatchNorm), no dropout, f32: nothing differs between a batch of 4
/// and two of 2 except the order of float sums.
const KEYPOINT_MODEL: [&str; 5] = [
    "model.input_type=kpt",
    "data.load_kpt=true",
    "data.load_rgb=false",
    "model.transformer_dropout=0",
    "trainer.compute_threads=1",
];

/// `mpiexec -n <ranks> vidtrain <args>` in `dir`, as [`vidtrain`] runs one process.
fn mpiexec(dir: &Path, ranks: usize, args: &[&str]) -> Command {
    let mut command = Command::new("mpiexec");
    command
        .arg("-n")
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_vidtrain"))
        .args(args);
    in_test_setting(&mut command, dir);
    command
}

fn train_args<'a>(config: &'a str, experiment: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--config", config, experiment];
    args.extend(TINY_MODEL);
    args.extend(KEYPOINT_MODEL);
    args.extend_from_slice(extra);
    args
}

fn run_ok(output: Output) {
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Largest |a − b| relative to the largest |a| of each tensor, over every parameter.
fn parameter_difference(a: &Path, b: &Path) -> f64 {
    let read = |run: &Path| {
        let config = vidtrain_config::ConfigLoader::new()
            .file(&run.join("config.toml"))
            .unwrap()
            .load()
            .unwrap();
        vidtrain_trainer::persist::weights::parameter_values(
            &config,
            &run.join("checkpoints/last/model.mpk"),
        )
        .unwrap()
    };
    let (a, b) = (read(a), read(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(name, values)| {
            let other = &b[name];
            let scale = values.iter().fold(1e-12f32, |max, v| max.max(v.abs()));
            let worst = values
                .iter()
                .zip(other)
                .fold(0f32, |max, (x, y)| max.max((x - y).abs()));
            f64::from(worst / scale)
        })
        .fold(0.0, f64::max)
}

fn assert_losses_match(one: &[(u64, f64)], other: &[(u64, f64)], tolerance: f64) {
    assert_eq!(one.len(), other.len(), "{one:?} vs {other:?}");
    for ((step, expected), (other_step, got)) in one.iter().zip(other) {
        assert_eq!(step, other_step);
        assert!(
            (expected - got).abs() <= tolerance * expected.abs(),
            "step {step}: loss {got} with two ranks, {expected} with one"
        );
    }
}

#[test]
fn two_ranks_of_two_train_the_parameters_of_one_rank_of_four() {
    assert_two_ranks_train_as_one("ddp-equal", &[], 1e-5);
}

/// With 8-bit optimizer state the ranks still step identically (each quantizes the same
/// all-reduced gradient's moments); against one rank, a sum in another order can move a value
/// across a code boundary, so parameters agree to the code's resolution times the learning
/// rate rather than to float rounding.
#[test]
fn two_ranks_with_8bit_optimizer_state_train_as_one_rank() {
    assert_two_ranks_train_as_one(
        "ddp-equal-8bit",
        &[
            "train.optimizer_state=8bit",
            "model.transformer_dim=64",
            "model.transformer_ff_dim=128",
        ],
        1e-3,
    );
}

/// Kept activations in 8 bits (`model.activation_bits`) under DDP: the forward is untouched, so
/// the first step's loss with two ranks equals one rank's; backward reads values rounded from
/// draws that hash each rank's own positions, so the parameters after five steps stand as far
/// from one rank's 8-bit run as two independent roundings do — measured against how far 8 bits
/// move one rank's parameters from 32 bits.
#[test]
fn two_ranks_with_8bit_kept_activations_train_as_close_to_one_rank_as_its_rounding() {
    let dir = scratch("ddp-8bit-activations");
    let config = small_dataset(&dir);
    let steps = "train.max_steps=5";
    for (experiment, bits) in [
        ("one-32", "model.activation_bits=32"),
        ("one-8", "model.activation_bits=8"),
    ] {
        let args = ["data.batch_size=4", steps, bits];
        run_ok(vidtrain(
            &dir,
            &train_args(&config, &format!("experiment={experiment}"), &args),
        ));
    }
    let args = ["data.batch_size=2", steps, "model.activation_bits=8"];
    run_ok(
        mpiexec(&dir, 2, &train_args(&config, "experiment=two-8", &args))
            .output()
            .unwrap(),
    );
    let run = |experiment: &str| runs_of(&dir.join("runs").join(experiment)).remove(0);
    let (one_32, one_8, two_8) = (run("one-32"), run("one-8"), run("two-8"));
    let (one_losses, two_losses) = (step_losses(&one_8), step_losses(&two_8));
    assert_eq!(two_losses.len(), 5);
    assert_losses_match(&one_losses[..1], &two_losses[..1], 1e-5);
    let rounding = parameter_difference(&one_32, &one_8);
    let ranks = parameter_difference(&one_8, &two_8);
    eprintln!("parameters: 8 vs 32 bits {rounding:e}, two ranks vs one at 8 bits {ranks:e}");
    assert!(
        rounding > 0.0,
        "8 bits changed nothing: the switch did not reach the model"
    );
    assert!(
        ranks <= 3.0 * rounding,
        "two ranks moved the parameters {ranks:e} from one rank's, 8 bits alone {rounding:e}"
    );
}

fn assert_two_ranks_train_as_one(name: &str, extra: &[&str], tolerance: f64) {
    let dir = scratch(name);
    let config = small_dataset(&dir);
    // 10 training samples: groups of 4, 4 and a short 2 (one sample per rank), then 4 and 4
    // of epoch 2.
    let steps = "train.max_steps=5";
    run_ok(vidtrain(
        &dir,
        &train_args(
            &config,
            "experiment=one",
            &[&["data.batch_size=4", steps][..], extra].concat(),
        ),
    ));
    run_ok(
        mpiexec(
            &dir,
            2,
            &train_args(
                &config,
                "experiment=two",
                &[&["data.batch_size=2", steps][..], extra].concat(),
            ),
        )
        .output()
        .unwrap(),
    );
    run_ok(
        mpiexec(
            &dir,
            2,
            &train_args(
                &config,
                "experiment=two-accumulating",
                &[
                    &[
                        "data.batch_size=1",
                        "train.accumulate_grad_batches=2",
                        steps,
                    ][..],
                    extra,
                ]
                .concat(),
            ),
        )
        .output()
        .unwrap(),
    );
    let one = &runs_of(&dir.join("runs/one"))[0];
    let one_losses = step_losses(one);
    assert_eq!(one_losses.len(), 5);
    for experiment in ["two", "two-accumulating"] {
        let runs = runs_of(&dir.join("runs").join(experiment));
        assert_eq!(runs.len(), 1, "only rank 0 makes a run folder");
        assert_losses_match(&one_losses, &step_losses(&runs[0]), tolerance);
        let difference = parameter_difference(one, &runs[0]);
        assert!(
            difference <= tolerance,
            "{experiment}: parameters differ by {difference}"
        );
        let summary = crate::train::read_json(&runs[0].join("summary.json"));
        assert_eq!(summary["world_size"], 2);
        assert_eq!(summary["global_batch"], 4);
        assert_eq!(summary["train_samples"], 18, "4 + 4 + 2, then 4 + 4");
    }
}

#[test]
fn a_two_rank_run_resumes_exactly() {
    let dir = scratch("ddp-resume");
    let config = small_dataset(&dir);
    let two = |experiment: &'static str, extra: &[&'static str]| {
        let mut all = vec!["data.batch_size=2"];
        all.extend_from_slice(extra);
        run_ok(
            mpiexec(&dir, 2, &train_args(&config, experiment, &all))
                .output()
                .unwrap(),
        );
    };
    two("experiment=straight", &["train.max_steps=5"]);
    two("experiment=resumed", &["train.max_steps=2"]);
    two(
        "experiment=resumed",
        &["train.max_steps=5", "train.resume=last"],
    );
    let straight = &runs_of(&dir.join("runs/straight"))[0];
    let resumed = runs_of(&dir.join("runs/resumed"));
    assert_eq!(resumed.len(), 2);
    let joined: Vec<(u64, f64)> = step_losses(&resumed[0])
        .into_iter()
        .chain(step_losses(&resumed[1]))
        .collect();
    assert_losses_match(&step_losses(straight), &joined, 1e-5);
    let difference = parameter_difference(straight, &resumed[1]);
    assert!(difference <= 1e-6, "parameters differ by {difference}");

    // One rank resuming the two ranks' checkpoint trains on, and says what changed.
    let output = vidtrain(
        &dir,
        &train_args(
            &config,
            "experiment=resumed",
            &[
                "data.batch_size=2",
                "train.max_steps=7",
                "train.resume=last",
            ],
        ),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("written by 2 ranks and this run has 1")
            && text.contains("averages 2 samples instead of 4"),
        "{text}"
    );
}

/// The processes started with `marker` in their environment, by `PMI_RANK`.
fn rank_pids(marker: &str) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let variables: Vec<String> = environ
            .split(|&byte| byte == 0)
            .map(|text| String::from_utf8_lossy(text).into_owned())
            .collect();
        let is_vidtrain = std::fs::read_link(entry.path().join("exe"))
            .is_ok_and(|exe| exe.file_name().is_some_and(|name| name == "vidtrain"));
        if !is_vidtrain
            || !variables
                .iter()
                .any(|v| v == &format!("VIDTRAIN_TEST_MARK={marker}"))
        {
            continue;
        }
        if let Some(rank) = variables
            .iter()
            .find_map(|v| v.strip_prefix("PMI_RANK="))
            .and_then(|rank| rank.parse().ok())
        {
            found.push((rank, pid));
        }
    }
    found
}

/// Who gets the signal in [`disturb`].
enum Target {
    /// `mpiexec` itself (as Ctrl-C in its terminal does).
    Launcher,
    /// The rank-1 process alone.
    Rank1,
}

/// Starts a long two-rank run, waits until it has taken a step, sends `signal` to `target`, and
/// returns how mpiexec ended, how long after the signal, and the run folder.
fn disturb(
    name: &str,
    target: Target,
    signal: &str,
    extra: &[&str],
) -> (Output, Duration, PathBuf) {
    let dir = scratch(name);
    let config = small_dataset(&dir);
    let mut args = vec!["data.batch_size=2", "train.max_epochs=1000"];
    args.extend_from_slice(extra);
    let mut command = Command::new("mpiexec");
    command.args(["-n", "2"]);
    if matches!(target, Target::Launcher) {
        // Each rank runs under a shell that records its exit code (mpiexec reports its own; see
        // the Ctrl-C test) and ignores SIGINT itself (vidtrain installs its own handler). Only
        // here: a shell that outlives a killed rank would hide the kill from mpiexec.
        let recorder = dir.join("rank.sh");
        std::fs::write(
            &recorder,
            "trap '' INT\n\"$@\"\ncode=$?\necho \"rank $PMI_RANK exit $code\" >> \"$0.exit-codes\"\n",
        )
        .unwrap();
        command.arg("sh").arg(&recorder);
    }
    command
        .arg(env!("CARGO_BIN_EXE_vidtrain"))
        .args(train_args(&config, "experiment=long", &args));
    in_test_setting(&mut command, &dir);
    let child: Child = command
        .env("VIDTRAIN_TEST_MARK", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let stepped = || {
        std::fs::read_dir(dir.join("runs/long"))
            .ok()
            .and_then(|mut runs| runs.next())
            .is_some_and(|run| {
                let run: PathBuf = run.unwrap().path();
                std::fs::read_to_string(run.join("metrics.jsonl"))
                    .is_ok_and(|text| text.contains("\"step\""))
            })
    };
    while !stepped() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no step within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = match target {
        Target::Launcher => child.id(),
        Target::Rank1 => {
            let pids = rank_pids(name);
            pids.iter()
                .find(|(rank, _)| *rank == 1)
                .unwrap_or_else(|| panic!("rank 1 not found among {pids:?}"))
                .1
        }
    };
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    let took = signalled.elapsed();
    // Nothing of the run may outlive it (a stopped rank included); the launcher's kill may
    // take a moment to be reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rank_pids(name).is_empty() {
        if Instant::now() > deadline {
            let left = rank_pids(name);
            for (_, pid) in &left {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
            panic!("rank processes outlived mpiexec: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = runs_of(&dir.join("runs/long")).remove(0);
    (output, took, run)
}

#[test]
fn a_killed_rank_ends_the_other_with_an_error() {
    let (output, took, _) = disturb("ddp-killed", Target::Rank1, "-KILL", &[]);
    assert!(!output.status.success(), "{}", stderr(&output));
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_hung_rank_times_out_and_ends_every_rank() {
    let (output, took, _) = disturb(
        "ddp-hung",
        Target::Rank1,
        "-STOP",
        &["trainer.collective_timeout_s=10"],
    );
    assert!(!output.status.success(), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("waited 10 s for the other ranks"), "{text}");
    assert!(text.contains("trainer.collective_timeout_s"), "{text}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn ctrl_c_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    let (output, took, run) = disturb("ddp-ctrl-c", Target::Launcher, "-INT", &[]);
    // Every rank exits 130. mpiexec's own code is not the ranks': MPICH 4.0's, having forwarded
    // the signal itself, reports 0 or 130 depending on timing (`srun` reports the tasks' codes).
    let codes = std::fs::read_to_string(run.join("../../../rank.sh.exit-codes")).unwrap();
    let mut codes: Vec<&str> = codes.lines().collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        ["rank 0 exit 130", "rank 1 exit 130"],
        "{}",
        stderr(&output)
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let text = stderr(&output);
    assert_eq!(
        text.matches("interrupted; checkpoint saved").count(),
        1,
        "rank 0 alone reports: {text}"
    );
    let state = crate::train::read_json(&run.join("checkpoints/last/state.json"));
    assert_eq!(state["world_size"], 2);
    assert!(state["step"].as_u64().unwrap() >= 1, "{state}");
}

#[test]
fn an_error_on_one_rank_ends_every_rank_with_its_message() {
    let dir = scratch("ddp-error");
    let config = small_dataset(&dir);
    crate::faults::truncate_video(&dir.join("data/videos/front/person_01_demo.mp4"));
    let mut args = vec!["train", "--config", &config, "experiment=error"];
    args.extend(TINY_MODEL);
    args.extend([
        "data.batch_size=2",
        "train.max_epochs=3",
        "data.on_bad_sample=error",
        "trainer.compute_threads=1",
    ]);
    let mut command = mpiexec(&dir, 2, &args);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Whichever rank loads the damaged video first fails and ends the other at once.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the run did not end within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("error: rank "), "{text}");
    assert!(text.contains("person_01_demo.mp4"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
