//! A small synthetic dataset in the real dataset's layout, rendered with ffmpeg, so that training
//! runs on a fresh machine: per person three synchronised views (H.264 MP4), a Label Studio
//! timeline export, per-view keypoint arrays, and a `vidtrain.toml` pointing at them.
//!
//! Content is learnable and the same in every view: in each labelled range one object moves in
//! the labelled direction (or stays still for `front`). Its colour encodes its position (red grows
//! to the right, green grows downwards), so features pooled over space still carry where it is;
//! views differ in background, object shape and size. Keypoints follow the object.

use std::io::Write;
use std::path::{Path, PathBuf};

use ffmpeg_sidecar::command::FfmpegCommand;
use npyz::WriterBuilder;
use serde_json::json;

use crate::probe::find_tool;
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// Output folder (created).
    pub out: PathBuf,
    /// Persons (one recording each).
    pub persons: usize,
    /// Frames per video.
    pub frames: usize,
    /// Video width in pixels.
    pub width: usize,
    /// Video height in pixels.
    pub height: usize,
    /// Seed of the timeline and trajectories.
    pub seed: u64,
    /// Share of segments labelled `front` (`None`: every class equally likely).
    pub front_share: Option<f64>,
}

impl Default for DemoSpec {
    fn default() -> Self {
        Self {
            out: PathBuf::from("demo-data"),
            persons: 5,
            frames: 1800,
            width: 64,
            height: 64,
            seed: 0,
            front_share: None,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The generated `vidtrain.toml` (its `[paths]` point at the dataset).
    pub config_path: PathBuf,
    /// Video files written (persons × views).
    pub videos: usize,
    /// Labelled ranges over all persons.
    pub ranges: usize,
}

/// The demo's classes, in the seed's class-id order, with their motion directions (x right, y down).
pub const DEMO_CLASSES: [(&str, f64, f64); 9] = [
    ("left", -1.0, 0.0),
    ("right", 1.0, 0.0),
    ("down", 0.0, 1.0),
    ("up", 0.0, -1.0),
    ("right_up", 1.0, -1.0),
    ("right_down", 1.0, 1.0),
    ("left_down", -1.0, 1.0),
    ("left_up", -1.0, -1.0),
    ("front", 0.0, 0.0),
];

const VIEWS: [&str; 3] = ["front", "left", "right"];
const FPS: u32 = 30;
const KEYPOINT_JOINTS: usize = 70;

/// Writes the dataset described by `spec`; deterministic for a given spec.
pub fn generate(spec: &DemoSpec) -> Result<DemoSummary> {
    let ffmpeg = find_tool("ffmpeg")?;
    if spec
        .front_share
        .is_some_and(|share| !(0.0..=1.0).contains(&share))
    {
        return Err(Error::NoSamples(format!(
            "the share of `front` segments must be in 0..=1, got {:?}",
            spec.front_share
        )));
    }
    if spec.persons == 0 || spec.frames < 64 || spec.width < 16 || spec.height < 16 {
        return Err(Error::NoSamples(format!(
            "demo needs at least 1 person, 64 frames and 16×16 pixels (got {} persons, {} frames, {}×{})",
            spec.persons, spec.frames, spec.width, spec.height
        )));
    }
    let out = std::path::absolute(&spec.out).map_err(|error| Error::io(&spec.out, error))?;
    for folder in ["videos", "keypoints"] {
        for view in VIEWS {
            let path = out.join(folder).join(view);
            std::fs::create_dir_all(&path).map_err(|error| Error::io(&path, error))?;
        }
    }

    let mut tasks = Vec::new();
    let mut n_ranges = 0;
    for person in 0..spec.persons {
        let name = format!("person_{:02}_demo.mp4", person + 1);
        let mut rng = SplitMix64::new(spec.seed ^ ((person as u64 + 1) * 0x9E37_79B9));
        let timeline = Timeline::random(&mut rng, spec.frames, spec.front_share);
        n_ranges += timeline.ranges.len();
        for (view_number, view) in VIEWS.iter().enumerate() {
            let style = ViewStyle::new(view_number, person, spec.width);
            let video_path = out.join("videos").join(view).join(&name);
            render_video(&ffmpeg, &video_path, spec, &timeline, &style)?;
            let keypoint_path = out
                .join("keypoints")
                .join(view)
                .join(Path::new(&name).with_extension("npy"));
            write_keypoints(&keypoint_path, &timeline, view_number)?;
        }
        let labels: Vec<_> = timeline
            .ranges
            .iter()
            .map(|range| {
                json!({
                    "timelinelabels": [DEMO_CLASSES[range.class].0],
                    "ranges": [{"start": range.start, "end": range.end}],
                })
            })
            .collect();
        tasks.push(json!({
            "id": person + 1,
            "video": format!("/data/upload/1/{name}"),
            "videoLabels": labels,
        }));
    }
    let annotation_path = out.join("annotations.json");
    write_file(
        &annotation_path,
        serde_json::to_string_pretty(&tasks)
            .expect("JSON values serialise")
            .as_bytes(),
    )?;
    let config_path = out.join("vidtrain.toml");
    let root = out.display().to_string().replace('\\', "/");
    let config_text = format!(
        "# Generated by `vidtrain demo-data`: {persons} persons, {frames} frames of {w}x{h} per view, seed {seed}.\n\
         [paths]\nroot_path = \"{root}\"\nannotation_path = \"annotations.json\"\n\
         video_path = \"videos\"\nkeypoint_path = \"keypoints\"\n",
        persons = spec.persons,
        frames = spec.frames,
        w = spec.width,
        h = spec.height,
        seed = spec.seed,
    );
    write_file(&config_path, config_text.as_bytes())?;
    Ok(DemoSummary {
        config_path,
        videos: spec.persons * VIEWS.len(),
        ranges: n_ranges,
    })
}

/// Writes `bytes` to a temporary file and renames it, so a crash never leaves half a file.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, bytes).map_err(|error| Error::io(&temporary, error))?;
    std::fs::rename(&temporary, path).map_err(|error| Error::io(path, error))
}

#[derive(Debug, Clone, Copy)]
struct DemoRange {
    class: usize,
    start: usize,
    end: usize,
}

/// Object centre per frame (normalised 0..1) and the labelled ranges.
struct Timeline {
    ranges: Vec<DemoRange>,
    centres: Vec<(f64, f64)>,
}

impl Timeline {
    fn random(rng: &mut SplitMix64, frames: usize, front_share: Option<f64>) -> Self {
        let mut ranges = Vec::new();
        let mut centres = Vec::with_capacity(frames);
        let mut position = (0.5, 0.5);
        let margin = 0.15;
        while centres.len() < frames {
            // An unlabelled gap (background) of 0–7 frames: the object rests.
            let gap = rng.below(8) as usize;
            for _ in 0..gap.min(frames - centres.len()) {
                centres.push(position);
            }
            let remaining = frames - centres.len();
            if remaining < 16 {
                centres.extend(std::iter::repeat_n(position, remaining));
                break;
            }
            let length = (24 + rng.below(25) as usize).min(remaining);
            let front = DEMO_CLASSES.len() - 1;
            let class = match front_share {
                None => rng.below(DEMO_CLASSES.len() as u64) as usize,
                Some(share) if rng.unit() < share => front,
                Some(_) => rng.below(front as u64) as usize,
            };
            let (_, dx, dy) = DEMO_CLASSES[class];
            let norm = (dx * dx + dy * dy).sqrt().max(1.0);
            let (dx, dy) = (dx / norm, dy / norm);
            let travel = 0.3 + 0.25 * rng.unit();
            // Pick a mid-point that keeps the whole path inside the margins.
            let span_x = (1.0 - 2.0 * margin - dx.abs() * travel).max(0.0);
            let span_y = (1.0 - 2.0 * margin - dy.abs() * travel).max(0.0);
            let mid = (
                margin + dx.abs() * travel / 2.0 + rng.unit() * span_x,
                margin + dy.abs() * travel / 2.0 + rng.unit() * span_y,
            );
            let start = centres.len();
            for step in 0..length {
                let progress = step as f64 / (length - 1) as f64 - 0.5;
                position = (
                    mid.0 + dx * travel * progress,
                    mid.1 + dy * travel * progress,
                );
                centres.push(position);
            }
            ranges.push(DemoRange {
                class,
                start,
                end: start + length - 1,
            });
        }
        Timeline { ranges, centres }
    }
}

/// How one camera draws the scene.
struct ViewStyle {
    background: [u8; 3],
    half_size: f64,
    round: bool,
}

impl ViewStyle {
    fn new(view_number: usize, person: usize, width: usize) -> Self {
        let base = 10 + 20 * view_number as u8 + 5 * (person % 4) as u8;
        Self {
            background: [base, base, base.saturating_add(10 * view_number as u8)],
            half_size: width as f64 * [0.16, 0.15, 0.19][view_number],
            round: view_number == 1,
        }
    }
}

fn render_video(
    ffmpeg: &Path,
    path: &Path,
    spec: &DemoSpec,
    timeline: &Timeline,
    style: &ViewStyle,
) -> Result<()> {
    let (width, height) = (spec.width, spec.height);
    let partial = path.with_extension("partial.mp4");
    let mut command = FfmpegCommand::new_with_path(ffmpeg);
    command.args(["-nostdin", "-hide_banner", "-loglevel", "level+error", "-y"]);
    command.args([
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        &format!("{width}x{height}"),
        "-r",
        &FPS.to_string(),
        "-i",
        "-",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "18",
        "-g",
        "30",
        "-threads",
        "1",
        "-pix_fmt",
        "yuv420p",
        // Index at the front, as in streamable files: a file cut short still probes.
        "-movflags",
        "+faststart",
    ]);
    command.arg(&partial);
    let encode_error = |message: String| Error::Decode {
        path: path.to_path_buf(),
        first_frame: 0,
        last_frame: spec.frames.saturating_sub(1),
        message,
    };
    let mut child = command
        .spawn()
        .map_err(|error| encode_error(format!("cannot start ffmpeg: {error}")))?;
    let stderr = child.take_stderr().expect("stderr is piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut text);
        text
    });
    let mut stdin = child.take_stdin().expect("stdin is piped");
    let mut frame = vec![0u8; width * height * 3];
    let mut write_result = Ok(());
    for &(cx, cy) in &timeline.centres {
        draw_frame(&mut frame, width, height, cx, cy, style);
        write_result = stdin.write_all(&frame);
        if write_result.is_err() {
            break;
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .map_err(|error| encode_error(format!("waiting for ffmpeg: {error}")))?;
    let stderr_text = stderr_thread.join().unwrap_or_default();
    if !status.success() || write_result.is_err() {
        let _ = std::fs::remove_file(&partial);
        return Err(encode_error(format!(
            "encoding failed ({status}): {}",
            stderr_text.trim()
        )));
    }
    std::fs::rename(&partial, path).map_err(|error| Error::io(path, error))
}

fn draw_frame(frame: &mut [u8], width: usize, height: usize, cx: f64, cy: f64, style: &ViewStyle) {
    let colour = [(cx * 255.0) as u8, (cy * 255.0) as u8, 230];
    let (px, py) = (cx * width as f64, cy * height as f64);
    for y in 0..height {
        for x in 0..width {
            let (dx, dy) = (x as f64 + 0.5 - px, y as f64 + 0.5 - py);
            let inside = if style.round {
                dx * dx + dy * dy <= style.half_size * style.half_size
            } else {
                dx.abs() <= style.half_size && dy.abs() <= style.half_size
            };
            let pixel = &mut frame[(y * width + x) * 3..][..3];
            pixel.copy_from_slice(if inside { &colour } else { &style.background });
        }
    }
}

fn write_keypoints(path: &Path, timeline: &Timeline, view_number: usize) -> Result<()> {
    // A fixed "skeleton" of joints around the object, the same in every frame.
    let mut pattern_rng = SplitMix64::new(7);
    let offsets: Vec<(f64, f64)> = (0..KEYPOINT_JOINTS)
        .map(|_| {
            (
                pattern_rng.unit() * 0.1 - 0.05,
                pattern_rng.unit() * 0.1 - 0.05,
            )
        })
        .collect();
    let mut values = Vec::with_capacity(timeline.centres.len() * KEYPOINT_JOINTS * 3);
    for &(cx, cy) in &timeline.centres {
        for &(ox, oy) in &offsets {
            values.extend([(cx + ox) as f32, (cy + oy) as f32, 0.1 * view_number as f32]);
        }
    }
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(|error| Error::io(&partial, error))?;
    let shape = [timeline.centres.len() as u64, KEYPOINT_JOINTS as u64, 3];
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(|error| Error::io(&partial, error))?;
    writer
        .extend(values)
        .map_err(|error| Error::io(&partial, error))?;
    writer
        .finish()
        .map_err(|error| Error::io(&partial, error))?;
    std::fs::rename(&partial, path).map_err(|error| Error::io(path, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_front_share_makes_that_share_of_segments_front() {
        let front = DEMO_CLASSES.len() - 1;
        let share_of_front = |front_share: Option<f64>| {
            let (mut fronts, mut total) = (0, 0);
            for person in 0..20u64 {
                let mut rng = SplitMix64::new(person);
                let timeline = Timeline::random(&mut rng, 1800, front_share);
                fronts += timeline.ranges.iter().filter(|r| r.class == front).count();
                total += timeline.ranges.len();
            }
            fronts as f64 / total as f64
        };
        let imbalanced = share_of_front(Some(0.6));
        assert!((0.55..0.65).contains(&imbalanced), "{imbalanced}");
        let uniform = share_of_front(None);
        assert!((0.07..0.16).contains(&uniform), "{uniform}");
    }
}
