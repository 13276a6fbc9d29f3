//! Decoding exactly the sampled frames of a sample's videos with one ffmpeg process: input seek,
//! `select` of the wanted indices, scaling inside ffmpeg, rgb24 straight into the caller's
//! buffer; a sample's views are the inputs of one process ([`FrameDecoder::decode_views`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ffmpeg_sidecar::command::FfmpegCommand;

use crate::probe::{VideoInfo, find_tool, in_own_process_group, kill_process_group};
use crate::{Error, Result};

static DECODE_PROCESSES: AtomicUsize = AtomicUsize::new(0);

/// How many ffmpeg decode processes this process has started (for tests and `data bench`).
pub fn decode_processes_spawned() -> usize {
    DECODE_PROCESSES.load(Ordering::Relaxed)
}

/// A crop window as shares of the frame: left, top, width, height (each in 0..=1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    /// Left edge, share of the width.
    pub x: f64,
    /// Top edge, share of the height.
    pub y: f64,
    /// Width, share of the width.
    pub width: f64,
    /// Height, share of the height.
    pub height: f64,
}

impl Crop {
    /// The centred window whose sides are `share` of the frame's.
    pub fn centre(share: f64) -> Self {
        let margin = (1.0 - share) / 2.0;
        Crop {
            x: margin,
            y: margin,
            width: share,
            height: share,
        }
    }

    /// ffmpeg's `crop` filter for this window (expressions of the input size, so one filter
    /// serves views of any resolution).
    pub(crate) fn ffmpeg_filter(&self) -> String {
        format!(
            "crop=iw*{:.6}:ih*{:.6}:iw*{:.6}:ih*{:.6}",
            self.width, self.height, self.x, self.y
        )
    }
}

/// What ffmpeg does to every frame of one sample besides sampling and scaling.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SpatialTransform {
    /// Crop before scaling (`None`: the whole frame).
    pub crop: Option<Crop>,
    /// Mirror left to right after scaling (ffmpeg's `hflip`).
    pub hflip: bool,
}

/// Decodes sampled frames, scaled to `img_size × img_size`, as rgb24 bytes.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    ffmpeg: PathBuf,
    img_size: usize,
    timeout: Duration,
    /// Views [`FrameDecoder::decode_views`] gives one ffmpeg process (`data.views_per_decoder`).
    views_per_process: usize,
}

impl FrameDecoder {
    /// A decoder using the `ffmpeg` on PATH; fails with install instructions if there is none.
    pub fn new(img_size: usize, timeout: Duration) -> Result<Self> {
        Ok(Self {
            ffmpeg: find_tool("ffmpeg")?,
            img_size,
            timeout,
            views_per_process: 3,
        })
    }

    /// The decoder with `views` views of a sample to one ffmpeg process (at least 1).
    pub fn with_views_per_process(self, views: usize) -> Self {
        Self {
            views_per_process: views.max(1),
            ..self
        }
    }

    /// Bytes of one decoded frame.
    pub fn frame_bytes(&self) -> usize {
        self.img_size * self.img_size * 3
    }

    /// Decodes `frame_indices` (non-decreasing; repeats allowed) of `path` into `out`, which must
    /// hold `frame_indices.len() × frame_bytes()` bytes, frame after frame in `[h, w, 3]` order.
    pub fn decode(
        &self,
        path: &Path,
        info: &VideoInfo,
        frame_indices: &[usize],
        out: &mut [u8],
    ) -> Result<()> {
        self.decode_transformed(path, info, frame_indices, SpatialTransform::default(), out)
    }

    /// [`FrameDecoder::decode`] with a crop (before scaling) and a horizontal flip (after it)
    /// done by ffmpeg in the same process.
    pub fn decode_transformed(
        &self,
        path: &Path,
        info: &VideoInfo,
        frame_indices: &[usize],
        spatial: SpatialTransform,
        out: &mut [u8],
    ) -> Result<()> {
        let frame_bytes = self.frame_bytes();
        assert_eq!(
            out.len(),
            frame_indices.len() * frame_bytes,
            "output buffer size"
        );
        let (Some(&first), Some(&last)) = (frame_indices.first(), frame_indices.last()) else {
            return Ok(());
        };
        if last >= info.n_frames {
            return Err(Error::BadRange {
                path: path.to_path_buf(),
                message: format!(
                    "frame {last} requested but the video has {} frames",
                    info.n_frames
                ),
            });
        }
        let mut unique: Vec<usize> = frame_indices.to_vec();
        unique.dedup();
        let wanted_bytes = unique.len() * frame_bytes;

        let decode_error = |message: String| Error::Decode {
            path: path.to_path_buf(),
            first_frame: first,
            last_frame: last,
            message,
        };
        // A Ctrl-C or SIGTERM sent to vidtrain's process group can reach an ffmpeg that is
        // still being started, before it moves to a group of its own (`in_own_process_group`),
        // and no file makes ffmpeg die of such a signal: that run is made once more instead of
        // failing the sample (with `skip`, counting it as bad) while the run is only being
        // stopped at its next step.
        let run = self.run_ffmpeg_once_more_if_stopped(
            || self.command(path, info, &unique, spatial),
            &mut out[..wanted_bytes],
            &decode_error,
        )?;
        self.check_run(run, path, [first, last], unique.len(), &decode_error)?;
        expand_repeats(frame_indices, frame_bytes, out);
        Ok(())
    }

    /// The error of a run that did not deliver exactly `expected_frames` frames (of frames
    /// `first..=last` of `path`) with exit status 0; a warning for a clean run that wrote to
    /// stderr (concealed damage).
    fn check_run(
        &self,
        run: FfmpegRun,
        path: &Path,
        [first, last]: [usize; 2],
        expected_frames: usize,
        decode_error: &impl Fn(String) -> Error,
    ) -> Result<()> {
        let FfmpegRun {
            status,
            read,
            extra,
            stderr,
            timed_out,
        } = run;
        if timed_out {
            return Err(Error::DecodeTimeout {
                path: path.to_path_buf(),
                seconds: self.timeout.as_secs(),
            });
        }
        let got = read.map_err(|error| decode_error(format!("reading frames: {error}")))?;
        let error_lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        if !status.success() {
            return Err(decode_error(format!(
                "ffmpeg exited with {status}: {}",
                error_lines.last().copied().unwrap_or("no message")
            )));
        }
        let frame_bytes = self.frame_bytes();
        if got < expected_frames * frame_bytes {
            return Err(Error::ShortRead {
                path: path.to_path_buf(),
                first_frame: first,
                last_frame: last,
                expected_frames,
                got_frames: got / frame_bytes,
            });
        }
        if extra > 0 {
            return Err(decode_error(format!(
                "ffmpeg produced {extra} bytes more than the {expected_frames} frames asked for"
            )));
        }
        if !error_lines.is_empty() {
            // Every frame arrived and ffmpeg exited 0: concealed damage, worth a warning only.
            tracing::warn!(path = %path.display(), "ffmpeg reported: {}", error_lines.join(" | "));
        }
        Ok(())
    }
}

impl FrameDecoder {
    /// [`FrameDecoder::decode_transformed`] of the same frames of each of `views` (a sample's),
    /// into `out` one view after the other, [`Self::with_views_per_process`] views to one
    /// ffmpeg process: each view an input of its own, their frames concatenated into one
    /// stream. Starting ffmpeg is most of a small decode's cost (Debian's links 215 shared
    /// libraries: 100 ms of CPU of the 125 that one view of the demo took), and the demo's
    /// first epoch started one per sample and view. When a joint run fails in any way, its
    /// views are decoded again one at a time, so that an error names the file at fault as a
    /// one-view decode's does.
    pub fn decode_views(
        &self,
        views: &[ViewSource<'_>],
        frame_indices: &[usize],
        spatial: SpatialTransform,
        out: &mut [u8],
    ) -> Result<()> {
        let view_bytes = frame_indices.len() * self.frame_bytes();
        assert_eq!(out.len(), views.len() * view_bytes, "output buffer size");
        let per_process = self.views_per_process;
        for (views, out) in views
            .chunks(per_process)
            .zip(out.chunks_mut((per_process * view_bytes).max(1)))
        {
            self.decode_views_together(views, frame_indices, spatial, out)?;
        }
        Ok(())
    }

    /// [`Self::decode_views`] of views that one ffmpeg process decodes.
    fn decode_views_together(
        &self,
        views: &[ViewSource<'_>],
        frame_indices: &[usize],
        spatial: SpatialTransform,
        out: &mut [u8],
    ) -> Result<()> {
        let frame_bytes = self.frame_bytes();
        let view_bytes = frame_indices.len() * frame_bytes;
        let one_at_a_time = |out: &mut [u8]| -> Result<()> {
            for (view, out) in views.iter().zip(out.chunks_mut(view_bytes.max(1))) {
                self.decode_transformed(view.path, view.info, frame_indices, spatial, out)?;
            }
            Ok(())
        };
        let Some(&last) = frame_indices.last() else {
            return Ok(());
        };
        if views.len() < 2 || views.iter().any(|view| last >= view.info.n_frames) {
            return one_at_a_time(out);
        }
        let mut unique: Vec<usize> = frame_indices.to_vec();
        unique.dedup();
        let unique_bytes = unique.len() * frame_bytes;
        // The views' files, for a warning (a failure is told by the one-view decodes).
        let names = PathBuf::from(
            views
                .iter()
                .map(|view| view.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        let decode_error = |message: String| Error::Decode {
            path: names.clone(),
            first_frame: unique[0],
            last_frame: last,
            message,
        };
        // Without repeated frames the stream is `out` as it is laid out.
        let mut joined = Vec::new();
        let stream: &mut [u8] = if unique.len() == frame_indices.len() {
            out
        } else {
            joined.resize(views.len() * unique_bytes, 0);
            &mut joined
        };
        let checked = self
            .run_ffmpeg_once_more_if_stopped(
                || self.views_command(views, &unique, spatial),
                stream,
                &decode_error,
            )
            .and_then(|run| {
                let frames = views.len() * unique.len();
                self.check_run(run, &names, [unique[0], last], frames, &decode_error)
            });
        if let Err(error) = checked {
            tracing::debug!("decoding the views together failed ({error}); one at a time");
            return one_at_a_time(out);
        }
        if !joined.is_empty() {
            for (decoded, out) in joined.chunks(unique_bytes).zip(out.chunks_mut(view_bytes)) {
                out[..unique_bytes].copy_from_slice(decoded);
                expand_repeats(frame_indices, frame_bytes, out);
            }
        }
        Ok(())
    }
}

/// What one ffmpeg run of a decode left: its exit status, how many bytes of frames it wrote,
/// the bytes it wrote past those, its stderr, and whether the watchdog killed it.
struct FfmpegRun {
    status: std::process::ExitStatus,
    read: std::io::Result<usize>,
    extra: u64,
    stderr: String,
    timed_out: bool,
}

impl FrameDecoder {
    /// [`Self::run_ffmpeg`] of `command()`, run once more when ffmpeg was stopped by a signal
    /// from outside (see [`FrameDecoder::decode_transformed`]).
    fn run_ffmpeg_once_more_if_stopped(
        &self,
        command: impl Fn() -> FfmpegCommand,
        out: &mut [u8],
        decode_error: &impl Fn(String) -> Error,
    ) -> Result<FfmpegRun> {
        let run = self.run_ffmpeg(command(), out, decode_error)?;
        if !run.timed_out && stopped_from_outside(&run.status) {
            tracing::debug!("ffmpeg was stopped by {}; decoding again", run.status);
            return self.run_ffmpeg(command(), out, decode_error);
        }
        Ok(run)
    }

    /// Runs `command` (a decode up to its output) once, its rgb24 frames into `out`: always
    /// waited for, stderr drained on a thread of its own, killed with its process group past
    /// the timeout. Failing to start or wait for it is `decode_error`'s (a missing program its
    /// own error).
    fn run_ffmpeg(
        &self,
        mut command: FfmpegCommand,
        out: &mut [u8],
        decode_error: &impl Fn(String) -> Error,
    ) -> Result<FfmpegRun> {
        command.args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
        let mut child = command.spawn().map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                Error::ToolMissing {
                    program: "ffmpeg".into(),
                }
            } else {
                decode_error(format!("cannot start ffmpeg: {error}"))
            }
        })?;
        DECODE_PROCESSES.fetch_add(1, Ordering::Relaxed);
        let mut stdout = child.take_stdout().expect("stdout is piped");
        let stderr = child.take_stderr().expect("stderr is piped");
        // Drain stderr on its own thread so a chatty ffmpeg never blocks on a full pipe.
        let stderr_thread = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        let child = Arc::new(Mutex::new(child));
        let (done_sender, done_receiver) = crossbeam_channel::bounded::<()>(0);
        let watchdog = {
            let child = Arc::clone(&child);
            let timeout = self.timeout;
            std::thread::spawn(move || {
                if done_receiver.recv_timeout(timeout)
                    == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    let _ = child.lock().map(|mut child| {
                        // The whole group: a wrapper's children hold the pipes open too.
                        kill_process_group(child.as_inner().id());
                        child.kill()
                    });
                    return true;
                }
                false
            })
        };

        let read = read_full(&mut stdout, out);
        // Anything past the expected bytes means the select went wrong; drain it so ffmpeg exits.
        let extra = std::io::copy(&mut stdout, &mut std::io::sink()).unwrap_or(0);
        drop(done_sender);
        let timed_out = watchdog.join().unwrap_or(false);
        let status = child
            .lock()
            .map_err(|_| decode_error("ffmpeg handle poisoned".into()))?
            .wait()
            .map_err(|error| decode_error(format!("waiting for ffmpeg: {error}")))?;
        let stderr = stderr_thread.join().unwrap_or_default();
        Ok(FfmpegRun {
            status,
            read,
            extra,
            stderr,
            timed_out,
        })
    }
}

/// One view of a sample to decode: its video file and what probing it found.
#[derive(Debug, Clone, Copy)]
pub struct ViewSource<'a> {
    /// The view's video file.
    pub path: &'a Path,
    /// Its frame rate and frame count, as probed.
    pub info: &'a VideoInfo,
}

/// Adds `path` as an input decoded on one thread, sought to half a frame before frame `first`:
/// `n` in `select` counts from the seek point, and rounding the seek time up past the frame's
/// timestamp would drop it.
fn add_input(command: &mut FfmpegCommand, path: &Path, info: &VideoInfo, first: usize) {
    command.args(["-threads", "1"]);
    if first > 0 {
        command.args(["-ss", &format!("{:.6}", (first as f64 - 0.5) / info.fps)]);
    }
    command.arg("-i").arg(path);
}

/// Whether ffmpeg ended on a signal that asks a process to stop (SIGINT, SIGTERM, SIGHUP,
/// SIGQUIT) rather than failing on its input. vidtrain's own kills (the decode watchdog) are
/// SIGKILL and are reported as timeouts before this is asked.
fn stopped_from_outside(status: &std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        // SIGHUP, SIGINT, SIGQUIT, SIGTERM (the same numbers on every Unix vidtrain runs on).
        matches!(status.signal(), Some(1 | 2 | 3 | 15))
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        false
    }
}

impl FrameDecoder {
    /// The ffmpeg command for `unique` (sorted, distinct) frames, up to the output options:
    /// input seek half a frame before the first frame (rounding the seek time up past its
    /// timestamp would drop it), `select` with `n` counted from the seek point, scaling in ffmpeg.
    fn command(
        &self,
        path: &Path,
        info: &VideoInfo,
        unique: &[usize],
        spatial: SpatialTransform,
    ) -> FfmpegCommand {
        let mut command = self.quiet_ffmpeg();
        add_input(&mut command, path, info, unique[0]);
        command.args([
            "-vf",
            &self.frame_filters(unique, spatial),
            "-fps_mode",
            "passthrough",
            "-frames:v",
            &unique.len().to_string(),
            "-an",
        ]);
        command
    }

    /// The ffmpeg command for `unique` frames of each of `views`, up to the output options: one
    /// input per view (its own seek), each through [`Self::frame_filters`], the views' frames
    /// then concatenated into one stream in order.
    fn views_command(
        &self,
        views: &[ViewSource<'_>],
        unique: &[usize],
        spatial: SpatialTransform,
    ) -> FfmpegCommand {
        let mut command = self.quiet_ffmpeg();
        for view in views {
            add_input(&mut command, view.path, view.info, unique[0]);
        }
        let filters = self.frame_filters(unique, spatial);
        // `setsar=1`: `concat` refuses inputs whose sample aspect ratios differ, and the scale to
        // a square of pixels keeps each input's.
        let mut graph: Vec<String> = (0..views.len())
            .map(|view| format!("[{view}:v:0]{filters},setsar=1[view{view}]"))
            .collect();
        let labels: String = (0..views.len())
            .map(|view| format!("[view{view}]"))
            .collect();
        graph.push(format!("{labels}concat=n={}:v=1:a=0[frames]", views.len()));
        command.args([
            "-filter_complex",
            &graph.join(";"),
            "-map",
            "[frames]",
            "-fps_mode",
            "passthrough",
            "-frames:v",
            &(views.len() * unique.len()).to_string(),
            "-an",
        ]);
        command
    }

    /// ffmpeg with no prompt, banner or log below errors, in a process group of its own.
    fn quiet_ffmpeg(&self) -> FfmpegCommand {
        let mut command = FfmpegCommand::new_with_path(&self.ffmpeg);
        in_own_process_group(command.as_inner_mut());
        command.args(["-nostdin", "-hide_banner", "-loglevel", "level+error"]);
        command
    }

    /// `select` of `unique` (sorted, distinct) frames counted from the input's seek point to
    /// its first, then the crop, the scale to `img_size` and the flip. `trim` ends the input's
    /// stream after its last wanted frame: `-frames:v` ends a one-view run there, but `concat`
    /// moves to its next input only at the end of a stream, and without `trim` each view was
    /// decoded to the end of its file (a 720p view sought 10 s into 20 s: 1.05 s of CPU for
    /// three views against 0.48 s with it).
    fn frame_filters(&self, unique: &[usize], spatial: SpatialTransform) -> String {
        let first = unique[0];
        let frames = unique[unique.len() - 1] - first + 1;
        let select = unique
            .iter()
            .map(|index| format!("eq(n\\,{})", index - first))
            .collect::<Vec<_>>()
            .join("+");
        let crop = spatial
            .crop
            .map(|crop| format!("{},", crop.ffmpeg_filter()))
            .unwrap_or_default();
        let flip = if spatial.hflip { ",hflip" } else { "" };
        format!(
            "trim=end_frame={frames},select={select},{crop}scale={0}:{0}{flip}",
            self.img_size
        )
    }

    /// Runs the same seek, select and scale as [`FrameDecoder::decode`] with ffmpeg's null
    /// output (`-f null -`): the cost of decoding alone, the reference for pipeline benchmarks.
    pub fn decode_discarding(
        &self,
        path: &Path,
        info: &VideoInfo,
        frame_indices: &[usize],
    ) -> Result<()> {
        let mut unique: Vec<usize> = frame_indices.to_vec();
        unique.dedup();
        if unique.is_empty() {
            return Ok(());
        }
        let mut command = self.command(path, info, &unique, SpatialTransform::default());
        command.args(["-f", "null", "-"]);
        let output = command
            .as_inner_mut()
            .output()
            .map_err(|error| Error::Decode {
                path: path.to_path_buf(),
                first_frame: unique[0],
                last_frame: unique[unique.len() - 1],
                message: format!("cannot run ffmpeg: {error}"),
            })?;
        if !output.status.success() {
            return Err(Error::Decode {
                path: path.to_path_buf(),
                first_frame: unique[0],
                last_frame: unique[unique.len() - 1],
                message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// Reads until `buffer` is full or the stream ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The decoded unique frames sit at the front of `out`; spread them to their positions in
/// `frame_indices` (which repeats frames for short segments), back to front so nothing is
/// overwritten before it is copied.
fn expand_repeats(frame_indices: &[usize], frame_bytes: usize, out: &mut [u8]) {
    let mut unique_position = Vec::with_capacity(frame_indices.len());
    let mut position = 0usize;
    for (i, index) in frame_indices.iter().enumerate() {
        if i > 0 && frame_indices[i - 1] != *index {
            position += 1;
        }
        unique_position.push(position);
    }
    for (slot, &source) in unique_position.iter().enumerate().rev() {
        if slot != source {
            out.copy_within(
                source * frame_bytes..(source + 1) * frame_bytes,
                slot * frame_bytes,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_spread_in_place() {
        // Unique frames 7, 8, 9 decoded as bytes 1, 2, 3 at the front.
        let mut out = vec![1, 2, 3, 0, 0, 0];
        expand_repeats(&[7, 7, 8, 8, 8, 9], 1, &mut out);
        assert_eq!(out, vec![1, 1, 2, 2, 2, 3]);
    }
}
