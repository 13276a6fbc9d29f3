//! Memory measurement for vidtrain: current and peak resident set size (RSS) read from procfs, a
//! sampler thread that records a timeline with named marks and per-phase peaks (data wait,
//! forward, backward, optimizer step, validation), device readings fed in by the trainer, an SVG
//! plot of it all, and the memory plan ([`plan`]).
//!
//! On CUDA the device numbers come from the trainer (which knows the runtime); this crate only
//! records them.
//!
//! On systems without procfs every reading is `None`; callers print "n/a" rather than a guess.

pub mod plan;
pub mod reuse_pool;
mod svg;

pub use svg::{PlotArea, document_start as svg_document_start, escape as svg_escape};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Current resident set size of this process, in bytes (`VmRSS`).
pub fn current_rss_bytes() -> Option<u64> {
    read_status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size of this process since start or the last [`reset_peak_rss`] (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    read_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// CPU time this process has spent so far, every thread together: `(user, system)` seconds from
/// `/proc/self/stat` (Linux reports them in USER_HZ = 100 ticks per second). System time is the
/// kernel working for vidtrain: mapping, zeroing and unmapping memory, page faults, I/O.
pub fn process_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // fixed: state is field 3, utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    const USER_HZ: f64 = 100.0;
    Some((ticks(11)? as f64 / USER_HZ, ticks(12)? as f64 / USER_HZ))
}

/// Resets the kernel's peak RSS mark to the current RSS (Linux `clear_refs` 5), so that the next
/// [`peak_rss_bytes`] measures one phase alone. Returns whether the reset took effect.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Resident set size of this process plus every process it started, recursively (the ffmpeg
/// decoders), in bytes: what the machine really spends on a run. Children are found through
/// `/proc/<pid>/task/<tid>/children`; `None` without procfs.
pub fn process_tree_rss_bytes() -> Option<u64> {
    Some(current_rss_bytes()? + descendants_rss_bytes())
}

/// Resident set size of every process this one started, recursively (0 without procfs).
pub fn descendants_rss_bytes() -> u64 {
    let mut total = 0;
    let own_program = std::fs::read_link("/proc/self/exe").ok();
    let mut pending = children_of(std::process::id());
    let mut seen = 0usize;
    while let Some(pid) = pending.pop() {
        // A guard against a pathological tree; vidtrain starts a handful of processes.
        seen += 1;
        if seen > 10_000 {
            break;
        }
        // A child between fork and exec still maps our pages and shows our RSS as its own:
        // counting it would double vidtrain. It is counted once it runs its own program.
        let program = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if program.is_some() && program == own_program {
            continue;
        }
        if let Some(kib) = read_status_kib_of(pid, "VmRSS:") {
            total += kib * 1024;
        }
        pending.extend(children_of(pid));
    }
    total
}

/// Direct children of `pid` (of all its threads: each decode worker thread starts its own).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn read_status_kib_of(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

/// Physical memory of the machine, in bytes (`MemTotal` of `/proc/meminfo`).
pub fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line["MemTotal:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn read_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// One reading of the timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemorySample {
    /// Seconds since the sampler started.
    pub t_s: f64,
    /// Host RSS in bytes.
    pub host_rss_bytes: u64,
    /// RSS of the process tree (vidtrain and its ffmpeg decoders), bytes.
    pub process_tree_rss_bytes: u64,
}

/// What the training loop is doing; the sampler keeps the highest RSS seen in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Anything else (start-up, checkpoints).
    Other = 0,
    /// Waiting for the loading pipeline's next batch.
    DataWait = 1,
    /// Forward pass (graph being built).
    Forward = 2,
    /// Backward pass.
    Backward = 3,
    /// Forward and backward interleaved (activation recompute).
    ForwardBackward = 4,
    /// The optimizer step.
    OptimizerStep = 5,
    /// Validation.
    Validation = 6,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Other,
        Phase::DataWait,
        Phase::Forward,
        Phase::Backward,
        Phase::ForwardBackward,
        Phase::OptimizerStep,
        Phase::Validation,
    ];

    /// The name used in `memory.json`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Other => "other",
            Phase::DataWait => "data_wait",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::ForwardBackward => "forward_backward_recompute",
            Phase::OptimizerStep => "optimizer_step",
            Phase::Validation => "validation",
        }
    }
}

/// A device reading (bytes in use, reserved), taken by the trainer at a phase boundary.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DeviceSample {
    /// Seconds since the sampler started.
    pub t_s: f64,
    /// Bytes held by live tensors.
    pub in_use_bytes: u64,
    /// Bytes reserved by the memory pools.
    pub reserved_bytes: u64,
    /// The driver's used bytes on the whole device, when known.
    pub driver_used_bytes: Option<u64>,
}

/// A named moment (a phase boundary such as `epoch 1 validation`).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryMark {
    /// Seconds since the sampler started.
    pub t_s: f64,
    /// What starts here.
    pub label: String,
    /// Host RSS in bytes at that moment.
    pub host_rss_bytes: u64,
}

/// Everything the sampler saw; written to `memory.json`.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// Highest host RSS seen by the kernel (`VmHWM`), in bytes.
    pub peak_host_rss_bytes: Option<u64>,
    /// Highest host RSS among the samples, in bytes.
    pub peak_sampled_host_rss_bytes: u64,
    /// Highest RSS of the process tree among the samples (vidtrain plus its ffmpeg decoders,
    /// summed at each sample), in bytes.
    pub peak_process_tree_rss_bytes: u64,
    /// Sampling interval in milliseconds.
    pub interval_ms: u64,
    /// Readings over time (thinned to at most a few thousand points).
    pub timeline: Vec<MemorySample>,
    /// Phase marks.
    pub marks: Vec<MemoryMark>,
    /// Highest host RSS seen in each phase (samples and boundaries), by phase name.
    pub phase_peak_host_rss_bytes: std::collections::BTreeMap<String, u64>,
    /// Device readings (empty on the CPU backend).
    pub device_timeline: Vec<DeviceSample>,
    /// Highest device bytes in use among the readings.
    pub peak_device_in_use_bytes: Option<u64>,
    /// Highest device bytes reserved among the readings.
    pub peak_device_reserved_bytes: Option<u64>,
    /// Highest driver-reported used bytes on the device among the readings.
    pub peak_device_driver_used_bytes: Option<u64>,
}

impl MemoryReport {
    /// The timeline as an SVG plot: host RSS (and device memory when measured) over time, with
    /// validation phases shaded and the marks labelled.
    pub fn svg(&self) -> String {
        svg::timeline_svg(self)
    }
}

/// Samples host RSS on a background thread every `interval` until [`MemorySampler::finish`].
#[derive(Debug)]
pub struct MemorySampler {
    started: Instant,
    interval: Duration,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    tree_peak: Arc<AtomicU64>,
    timeline: Arc<Mutex<Vec<MemorySample>>>,
    marks: Mutex<Vec<MemoryMark>>,
    phase: Arc<AtomicU64>,
    phase_peaks: Arc<[AtomicU64; 7]>,
    device: Mutex<Vec<DeviceSample>>,
    thread: Option<JoinHandle<()>>,
}

const MAX_TIMELINE_POINTS: usize = 4000;

impl MemorySampler {
    /// Starts sampling.
    pub fn start(interval: Duration) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let tree_peak = Arc::new(AtomicU64::new(0));
        let timeline = Arc::new(Mutex::new(Vec::new()));
        let phase = Arc::new(AtomicU64::new(Phase::Other as u64));
        let phase_peaks: Arc<[AtomicU64; 7]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let thread = {
            let (stop, peak, timeline) =
                (Arc::clone(&stop), Arc::clone(&peak), Arc::clone(&timeline));
            let (phase, phase_peaks) = (Arc::clone(&phase), Arc::clone(&phase_peaks));
            let tree_peak = Arc::clone(&tree_peak);
            std::thread::Builder::new()
                .name("vidtrain-memory".into())
                .spawn(move || {
                    let mut every = 1usize;
                    let mut tick = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(rss) = current_rss_bytes() {
                            peak.fetch_max(rss, Ordering::Relaxed);
                            let tree = rss + descendants_rss_bytes();
                            tree_peak.fetch_max(tree, Ordering::Relaxed);
                            let current = phase.load(Ordering::Relaxed) as usize;
                            phase_peaks[current.min(6)].fetch_max(rss, Ordering::Relaxed);
                            if tick.is_multiple_of(every)
                                && let Ok(mut timeline) = timeline.lock()
                            {
                                timeline.push(MemorySample {
                                    t_s: started.elapsed().as_secs_f64(),
                                    host_rss_bytes: rss,
                                    process_tree_rss_bytes: tree,
                                });
                                // Keep long runs bounded: halve the resolution when full.
                                if timeline.len() >= MAX_TIMELINE_POINTS {
                                    let thinned: Vec<_> =
                                        timeline.iter().step_by(2).copied().collect();
                                    *timeline = thinned;
                                    every *= 2;
                                }
                            }
                        }
                        tick += 1;
                        std::thread::sleep(interval);
                    }
                })
                .ok()
        };
        Self {
            started,
            interval,
            stop,
            peak,
            tree_peak,
            timeline,
            marks: Mutex::new(Vec::new()),
            phase,
            phase_peaks,
            device: Mutex::new(Vec::new()),
            thread,
        }
    }

    /// Enters `phase`: the RSS at the boundary counts for the phase that ends and the one that
    /// starts (one procfs read, a few microseconds).
    pub fn phase(&self, phase: Phase) {
        if let Some(rss) = current_rss_bytes() {
            self.peak.fetch_max(rss, Ordering::Relaxed);
            let ending = self.phase.load(Ordering::Relaxed) as usize;
            self.phase_peaks[ending.min(6)].fetch_max(rss, Ordering::Relaxed);
            self.phase_peaks[phase as usize].fetch_max(rss, Ordering::Relaxed);
        }
        self.phase.store(phase as u64, Ordering::Relaxed);
    }

    /// Records a device reading (taken by the caller, which knows the device).
    pub fn device_sample(
        &self,
        in_use_bytes: u64,
        reserved_bytes: u64,
        driver_used_bytes: Option<u64>,
    ) {
        if let Ok(mut device) = self.device.lock() {
            // Bounded like the host timeline: keep every other reading when full.
            if device.len() >= MAX_TIMELINE_POINTS {
                let peak = device
                    .iter()
                    .copied()
                    .max_by_key(|sample| sample.in_use_bytes);
                let mut thinned: Vec<_> = device.iter().step_by(2).copied().collect();
                thinned.extend(peak);
                thinned.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
                *device = thinned;
            }
            device.push(DeviceSample {
                t_s: self.started.elapsed().as_secs_f64(),
                in_use_bytes,
                reserved_bytes,
                driver_used_bytes,
            });
        }
    }

    /// Records a phase boundary.
    pub fn mark(&self, label: impl Into<String>) {
        let rss = current_rss_bytes().unwrap_or(0);
        self.peak.fetch_max(rss, Ordering::Relaxed);
        if let Ok(mut marks) = self.marks.lock() {
            marks.push(MemoryMark {
                t_s: self.started.elapsed().as_secs_f64(),
                label: label.into(),
                host_rss_bytes: rss,
            });
        }
    }

    /// Highest process-tree RSS (vidtrain plus its decoders) sampled so far.
    pub fn peak_process_tree(&self) -> u64 {
        self.tree_peak.load(Ordering::Relaxed)
    }

    /// Highest RSS sampled so far.
    pub fn peak_sampled(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling and returns the report.
    pub fn finish(mut self) -> MemoryReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let timeline = self.timeline.lock().map(|t| t.clone()).unwrap_or_default();
        let marks = self.marks.lock().map(|m| m.clone()).unwrap_or_default();
        let device_timeline = self.device.lock().map(|d| d.clone()).unwrap_or_default();
        let phase_peak_host_rss_bytes = Phase::ALL
            .iter()
            .map(|phase| {
                (
                    phase.name().to_string(),
                    self.phase_peaks[*phase as usize].load(Ordering::Relaxed),
                )
            })
            .filter(|(_, peak)| *peak > 0)
            .collect();
        MemoryReport {
            peak_host_rss_bytes: peak_rss_bytes(),
            peak_sampled_host_rss_bytes: self.peak.load(Ordering::Relaxed),
            peak_process_tree_rss_bytes: self.tree_peak.load(Ordering::Relaxed),
            interval_ms: self.interval.as_millis() as u64,
            timeline,
            marks,
            phase_peak_host_rss_bytes,
            peak_device_in_use_bytes: device_timeline.iter().map(|s| s.in_use_bytes).max(),
            peak_device_reserved_bytes: device_timeline.iter().map(|s| s.reserved_bytes).max(),
            peak_device_driver_used_bytes: device_timeline
                .iter()
                .filter_map(|s| s.driver_used_bytes)
                .max(),
            device_timeline,
        }
    }
}

/// `1536 MiB`-style text for a byte count.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests measure the whole process, so they must not run alongside each other, nor
    /// alongside the reuse pool's test, which maps and touches blocks of several MiB.
    pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn rss_grows_when_memory_is_touched() {
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = current_rss_bytes().expect("procfs on Linux");
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = current_rss_bytes().unwrap();
        assert!(
            after >= before + (60 << 20),
            "before {before}, after {after}"
        );
        assert!(peak_rss_bytes().unwrap() >= after);
        drop(block);
    }

    #[test]
    fn the_process_tree_includes_child_processes() {
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A child holding 80 MiB, like an ffmpeg decoder holds its frames.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, time; b = bytearray(80 << 20); print(flush=True); time.sleep(30)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let own = current_rss_bytes().unwrap();
        let tree = process_tree_rss_bytes().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(tree >= own + (75 << 20), "own {own}, tree {tree}");
        let after = process_tree_rss_bytes().unwrap();
        assert!(
            after < own + (40 << 20),
            "own {own}, tree after the child {after}"
        );
    }

    #[test]
    fn sampler_sees_a_short_peak() {
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sampler = MemorySampler::start(Duration::from_millis(5));
        let baseline = current_rss_bytes().unwrap();
        let block = std::hint::black_box(vec![1u8; 48 << 20]);
        std::thread::sleep(Duration::from_millis(50));
        sampler.mark("block held");
        drop(block);
        let report = sampler.finish();
        assert!(report.peak_sampled_host_rss_bytes >= baseline + (40 << 20));
        assert_eq!(report.marks.len(), 1);
        assert!(!report.timeline.is_empty());
    }

    #[test]
    fn phases_keep_their_own_peaks() {
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sampler = MemorySampler::start(Duration::from_millis(5));
        sampler.phase(Phase::DataWait);
        let quiet = current_rss_bytes().unwrap();
        sampler.phase(Phase::Forward);
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        std::thread::sleep(Duration::from_millis(30));
        sampler.phase(Phase::OptimizerStep);
        drop(block);
        sampler.device_sample(100, 300, Some(900));
        sampler.device_sample(200, 300, None);
        let report = sampler.finish();
        let peaks = &report.phase_peak_host_rss_bytes;
        assert!(peaks["forward"] >= quiet + (60 << 20), "{peaks:?}");
        assert!(peaks["data_wait"] < peaks["forward"], "{peaks:?}");
        assert_eq!(report.peak_device_in_use_bytes, Some(200));
        assert_eq!(report.peak_device_reserved_bytes, Some(300));
        assert_eq!(report.peak_device_driver_used_bytes, Some(900));
        let svg = report.svg();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
    }

    #[test]
    fn bytes_format_with_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
    }
}
