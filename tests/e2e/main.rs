//! End-to-end tests: the real `vidtrain` binary on generated data, one module per theme, all
//! through [`vidtrain`].

mod backbones;
mod config;
mod controls;
mod datasets;
#[cfg(feature = "mpi")]
mod ddp;
#[cfg(feature = "wgpu")]
mod device;
mod faults;
mod inference;
mod plan;
mod train;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch folder for one test, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    vidtrain_testkit::scratch!("e2e", name)
}

/// Runs `vidtrain args...` in `dir` with the demo cache inside the target folder.
pub fn vidtrain(dir: &Path, args: &[&str]) -> Output {
    vidtrain_with(dir, args, |_| {})
}

/// Like [`vidtrain`], with a hook to adjust the command (environment, PATH).
pub fn vidtrain_with(dir: &Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vidtrain"));
    command.args(args);
    in_test_setting(&mut command, dir);
    adjust(&mut command);
    command.output().expect("running vidtrain")
}

/// Runs `command` in `dir` with the demo cache inside the target folder and default logging.
pub fn in_test_setting(command: &mut Command, dir: &Path) {
    command
        .current_dir(dir)
        .env(
            "VIDTRAIN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("vidtrain-cache"),
        )
        .env_remove("VIDTRAIN_LOG");
}

/// Stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr of `output` must hold `text`.
pub fn assert_stderr_contains(output: &Output, text: &str) {
    let stderr = stderr(output);
    assert!(stderr.contains(text), "expected {text:?} in:\n{stderr}");
}

/// A failure must be a message, never a panic or a backtrace.
pub fn assert_clean_failure(output: &Output, code: i32) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {text}");
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{text}"
    );
    assert!(
        text.starts_with("error: ") || text.contains("\nerror: "),
        "{text}"
    );
}
