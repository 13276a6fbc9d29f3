//! Locating ffmpeg/ffprobe and probing a video's stream once (frame count, frame rate, size).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::stop::stop_requested;
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
    if stop_requested() {
        return Err(Error::Stopped {
            path: path.to_path_buf(),
        });
    }
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
        let output = match output_within(&mut command, timeout, stop_requested)
            .map_err(|error| probe_error(format!("cannot run ffprobe: {error}")))?
        {
            Ended::Exited(output) => output,
            Ended::TimedOut => {
                return Err(Error::ProbeTimeout {
                    path: path.to_path_buf(),
                    seconds: timeout.as_secs(),
                });
            }
            Ended::Stopped => {
                return Err(Error::Stopped {
                    path: path.to_path_buf(),
                });
            }
        };
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

/// How [`output_within`] ended.
enum Ended {
    /// The command exited.
    Exited(std::process::Output),
    /// It ran past the timeout and was killed (with its process group).
    TimedOut,
    /// `stop` said so; it was killed (with its process group).
    Stopped,
}

/// Runs `command` to completion like [`Command::output`], or kills it after `timeout` or as soon
/// as `stop` says so. Its output is drained on threads so a full pipe never stalls it.
fn output_within(
    command: &mut Command,
    timeout: Duration,
    stop: impl Fn() -> bool,
) -> std::io::Result<Ended> {
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
    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break Ok(status);
        }
        let cut_short = if started.elapsed() >= timeout {
            Some(Ended::TimedOut)
        } else if stop() {
            Some(Ended::Stopped)
        } else {
            None
        };
        if let Some(cut_short) = cut_short {
            kill_process_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            break Err(cut_short);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(match ended {
        Ok(status) => Ended::Exited(std::process::Output {
            status,
            stdout,
            stderr,
        }),
        Err(cut_short) => cut_short,
    })
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
        let never = || false;
        // A child of the probe that keeps the pipes open must not keep us waiting either:
        // `sleep` replaces the shell, so killing it closes the pipes.
        let started = Instant::now();
        let ended = output_within(
            Command::new("sh").args(["-c", "exec sleep 30"]),
            Duration::from_millis(300),
            never,
        )
        .unwrap();
        assert!(matches!(ended, Ended::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Nor one whose shell stays and waits for its own child holding the pipes (a wrapper
        // script without `exec`): the whole process group goes, not just the shell.
        let started = Instant::now();
        let mut wrapper = Command::new("sh");
        wrapper.args(["-c", "sleep 30; true"]);
        in_own_process_group(&mut wrapper);
        let ended = output_within(&mut wrapper, Duration::from_millis(300), never).unwrap();
        assert!(matches!(ended, Ended::TimedOut));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let ended =
            output_within(Command::new("true").arg("x"), Duration::from_secs(5), never).unwrap();
        assert!(matches!(ended, Ended::Exited(output) if output.status.success()));
    }

    #[test]
    fn a_stop_request_ends_a_probe_at_once_not_at_its_timeout() {
        // Issue 29 item 8: SIGTERM during indexing used to wait out the whole probe timeout.
        let started = Instant::now();
        let mut wrapper = Command::new("sh");
        wrapper.args(["-c", "sleep 30; true"]);
        in_own_process_group(&mut wrapper);
        let asked = Instant::now() + Duration::from_millis(200);
        let ended = output_within(&mut wrapper, Duration::from_secs(60), || {
            Instant::now() >= asked
        })
        .unwrap();
        assert!(matches!(ended, Ended::Stopped));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn rates_parse_as_fractions() {
        assert_eq!(parse_rate("30/1"), Some(30.0));
        assert!((parse_rate("30000/1001").unwrap() - 29.97).abs() < 0.01);
        assert_eq!(parse_rate("0/0"), None);
    }
}
