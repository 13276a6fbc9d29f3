//! Locating ffmpeg/ffprobe and probing a video's stream once (frame count, frame rate, size).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Stream facts of a video, read by ffprobe without decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    /// Frames in the first video stream.
    pub n_frames: usize,
    /// Frames per second (the stream's `r_frame_rate`; constant frame rate is assumed for seeks).
    pub fps: f64,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

/// Finds `program` on PATH (or the path in `VIDTRAIN_FFMPEG` / `VIDTRAIN_FFPROBE`), so that a
/// missing ffmpeg is reported once with install instructions instead of as a spawn error.
pub fn find_tool(program: &str) -> Result<PathBuf> {
    let env_key = format!("VIDTRAIN_{}", program.to_ascii_uppercase());
    if let Some(path) = std::env::var_os(&env_key).filter(|path| !path.is_empty()) {
        // A setting that names nothing usable is an error, not a reason to run whatever
        // `program` PATH holds: the user asked for that one.
        let path = PathBuf::from(path);
        let problem = match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => return Ok(path),
            Ok(metadata) if metadata.is_dir() => "a folder",
            Ok(_) => "not a regular file",
            Err(_) => "missing",
        };
        return Err(Error::ToolOverride {
            variable: env_key,
            program: program.to_string(),
            path,
            problem,
        });
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::ToolMissing {
            program: program.to_string(),
        })
}

/// How long [`probe_video`] lets ffprobe run (training uses `data.decode_timeout_s`).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Probes the first video stream of `path`, giving ffprobe [`DEFAULT_PROBE_TIMEOUT`].
pub fn probe_video(path: &Path) -> Result<VideoInfo> {
    probe_video_within(path, DEFAULT_PROBE_TIMEOUT)
}

/// Probes the first video stream of `path`; an ffprobe still running after `timeout` (a file on
/// a hung network mount, a pathological stream) is killed and reported, never waited on forever.
pub fn probe_video_within(path: &Path, timeout: Duration) -> Result<VideoInfo> {
    let ffprobe = find_tool("ffprobe")?;
    let probe_error = |message: String| Error::Probe {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(probe_error("file does not exist".into()));
    }
    let run = |count_packets: bool| -> Result<serde_json::Value> {
        let mut command = Command::new(&ffprobe);
        command.args(["-v", "error", "-select_streams", "v:0"]);
        if count_packets {
            command.arg("-count_packets");
        }
        command.args([
            "-show_entries",
            "stream=width,height,nb_frames,nb_read_packets,r_frame_rate",
            "-of",
            "json",
        ]);
        command.arg(path);
        in_own_process_group(&mut command);
        let output = output_within(&mut command, timeout)
            .map_err(|error| probe_error(format!("cannot run ffprobe: {error}")))?
            .ok_or_else(|| Error::ProbeTimeout {
                path: path.to_path_buf(),
                seconds: timeout.as_secs(),
            })?;
        if !output.status.success() {
            return Err(probe_error(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|error| probe_error(format!("unreadable ffprobe output: {error}")))
    };
    let json = run(false)?;
    let stream = json
        .get("streams")
        .and_then(|streams| streams.get(0))
        .cloned()
        .ok_or_else(|| probe_error("no video stream".into()))?;
    let number = |value: &serde_json::Value, key: &str| -> Option<usize> {
        let field = value.get(key)?;
        field
            .as_u64()
            .map(|n| n as usize)
            .or_else(|| field.as_str()?.parse().ok())
    };
    let width = number(&stream, "width").ok_or_else(|| probe_error("no width".into()))?;
    let height = number(&stream, "height").ok_or_else(|| probe_error("no height".into()))?;
    let fps = stream
        .get("r_frame_rate")
        .and_then(|rate| rate.as_str())
        .and_then(parse_rate)
        .ok_or_else(|| probe_error("no frame rate".into()))?;
    // MP4 headers carry the frame count; other containers need the packets counted.
    let n_frames = match number(&stream, "nb_frames") {
        Some(n) if n > 0 => n,
        _ => {
            let counted = run(true)?;
            counted
                .get("streams")
                .and_then(|streams| streams.get(0))
                .and_then(|stream| number(stream, "nb_read_packets"))
                .ok_or_else(|| probe_error("cannot count frames".into()))?
        }
    };
    Ok(VideoInfo {
        n_frames,
        fps,
        width,
        height,
    })
}

/// Runs `command` to completion like [`Command::output`], or kills it after `timeout` and returns
/// `None`. Its output is drained on threads so a full pipe never stalls it.
fn output_within(
    command: &mut Command,
    timeout: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            kill_process_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(status.map(|status| std::process::Output {
        status,
        stdout,
        stderr,
    }))
}

fn parse_rate(text: &str) -> Option<f64> {
    let (numerator, denominator) = text.split_once('/').unwrap_or((text, "1"));
    let rate = numerator.parse::<f64>().ok()? / denominator.parse::<f64>().ok()?;
    (rate.is_finite() && rate > 0.0).then_some(rate)
}

/// Starts the child in a process group of its own. A terminal's Ctrl-C (SIGINT to the
/// foreground process group) then reaches vidtrain alone, which finishes the decodes in flight,
/// saves a checkpoint and stops; otherwise the decoders die with it and the samples they were
/// loading fail as if their files were bad.
pub(crate) fn in_own_process_group(command: &mut std::process::Command) {
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(command, 0);
    #[cfg(not(unix))]
    let _ = command;
}

/// Kills every process in the group that the child `pid` leads ([`in_own_process_group`]): a
/// tool that is a wrapper script (or a probe stuck on a hung mount) may have children of its own
/// that hold our pipes open; killing the direct child alone then waits forever for end-of-file.
pub(crate) fn kill_process_group(pid: u32) {
    #[cfg(unix)]
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hanging_tool_is_killed_at_the_timeout() {
        // A child of the probe that keeps the pipes open must not keep us waiting either:
        // `sleep` replaces the shell, so killing it closes the pipes.
        let started = Instant::now();
        let output = output_within(
            Command::new("sh").args(["-c", "exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(output.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
        // Nor one whose shell stays and waits for its own child holding the pipes (a wrapper
        // script without `exec`): the whole process group goes, not just the shell.
        let started = Instant::now();
        let mut wrapper = Command::new("sh");
        wrapper.args(["-c", "sleep 30; true"]);
        in_own_process_group(&mut wrapper);
        let output = output_within(&mut wrapper, Duration::from_millis(300)).unwrap();
        assert!(output.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let output = output_within(Command::new("true").arg("x"), Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert!(output.status.success());
    }

    #[test]
    fn rates_parse_as_fractions() {
        assert_eq!(parse_rate("30/1"), Some(30.0));
        assert!((parse_rate("30000/1001").unwrap() - 29.97).abs() < 0.01);
        assert_eq!(parse_rate("0/0"), None);
    }
}
