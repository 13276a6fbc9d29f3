//! Locating ffmpeg/ffprobe and probing a video's stream once (frame count, frame rate, size).

use std::path::{Path, PathBuf};
use std::process::Command;

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
    if let Some(path) = std::env::var_os(&env_key) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
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

/// Probes the first video stream of `path`.
pub fn probe_video(path: &Path) -> Result<VideoInfo> {
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
        let output = command
            .output()
            .map_err(|error| probe_error(format!("cannot run ffprobe: {error}")))?;
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

fn parse_rate(text: &str) -> Option<f64> {
    let (numerator, denominator) = text.split_once('/').unwrap_or((text, "1"));
    let rate = numerator.parse::<f64>().ok()? / denominator.parse::<f64>().ok()?;
    (rate.is_finite() && rate > 0.0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_fractions() {
        assert_eq!(parse_rate("30/1"), Some(30.0));
        assert!((parse_rate("30000/1001").unwrap() - 29.97).abs() < 0.01);
        assert_eq!(parse_rate("0/0"), None);
    }
}
