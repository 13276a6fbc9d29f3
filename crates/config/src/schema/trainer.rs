//! `trainer.*`: the machine side (precision, accelerator, threads, clipping).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `trainer.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    /// Numeric precision: `32`, `16` / `16-mixed` (fp16 compute, loss scaling), `bf16` /
    /// `bf16-mixed`. The CPU and CUDA run all four (wgpu: 32, and 16 where the adapter has f16): activations in 2 bytes, f32
    /// master weights, Adam state, norms and loss.
    pub precision: Precision,
    /// Where to train: `auto` (CUDA when built with it and a GPU is present, else CPU), `cpu`,
    /// `cuda`, `wgpu` (any Vulkan/Metal/DirectX 12 GPU, in builds with `--features vulkan`,
    /// `metal` or `wgpu`).
    pub accelerator: Accelerator,
    /// Train in 32-bit instead of failing when half precision is asked for on a backend without it:
    /// a wgpu adapter has no bf16, and f16 only with `shader-f16` (the CPU and CUDA have both).
    pub precision_fallback: bool,
    /// Threads for tensor compute on the CPU backend (0 = every core; under mpiexec/srun, the
    /// machine's cores divided among the ranks it runs). Decoder workers and their
    /// ffmpeg processes run beside them; set it to leave cores to decoding. Applies once per
    /// process: the first run of a process sizes the pool.
    pub compute_threads: usize,
    /// How much the host allocator's reuse pool may add to the peak RSS, in percent of the peak
    /// of live tensor-sized blocks. Freed blocks of 1 MiB or more are kept and reused instead of
    /// being mapped, zeroed and unmapped by the kernel on every op (which took a third of a CPU
    /// step); 0 reuses only what never raises the peak (leanest, slower). Cached bytes are part
    /// of every RSS figure vidtrain prints. Applies to the `vidtrain` binary.
    pub allocator_slack_percent: u32,
    /// Clip gradients to this global L2 norm before each optimizer step (after fp16 loss-scale
    /// unscaling), as Lightning's `gradient_clip_val`; 0 turns clipping off.
    pub gradient_clip_val: f64,
    /// Write TensorBoard event files (`tensorboard/` in the run directory) beside
    /// `metrics.jsonl`: `tensorboard --logdir runs`.
    pub tensorboard: bool,
    /// Data-parallel runs (`mpiexec -n N vidtrain train`): seconds one rank waits in a
    /// collective (gradient all-reduce, weight broadcast, metric gather) for the others before
    /// it ends every rank with an error naming the collective. A dead or hung rank then stops
    /// the run instead of hanging it; raise it when validation or checkpoints take longer.
    pub collective_timeout_s: f64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            precision: Precision::Full,
            accelerator: Accelerator::Auto,
            precision_fallback: false,
            compute_threads: 0,
            allocator_slack_percent: 25,
            gradient_clip_val: 0.0,
            tensorboard: true,
            collective_timeout_s: 600.0,
        }
    }
}

/// `trainer.precision`, accepting the seed's (Lightning's) spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout (`32`, `32-true`).
    Full,
    /// fp16 compute, f32 master weights, dynamic loss scaling (`16`, `16-mixed`).
    Half,
    /// bf16 compute, f32 master weights (`bf16`, `bf16-mixed`).
    BHalf,
}

impl Precision {
    /// The canonical spelling, as written back by `config show`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Full => "32",
            Precision::Half => "16-mixed",
            Precision::BHalf => "bf16-mixed",
        }
    }

    /// Parses every spelling Lightning accepts for these three modes.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "32" | "32-true" => Some(Precision::Full),
            "16" | "16-mixed" => Some(Precision::Half),
            "bf16" | "bf16-mixed" => Some(Precision::BHalf),
            _ => None,
        }
    }

    /// Whether compute runs in a 16-bit float type.
    pub fn is_half(self) -> bool {
        self != Precision::Full
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Precision {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        const EXPECTED: &str = "one of 32, 16, 16-mixed, bf16, bf16-mixed";
        let raw = Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom(format!("expected {EXPECTED}")))?;
        let text = match raw {
            Raw::Number(number) => number.to_string(),
            Raw::Text(text) => text,
        };
        Precision::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("expected {EXPECTED}, got \"{text}\"")))
    }
}

/// `trainer.accelerator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// CUDA when the binary has it and a GPU answers, else the CPU.
    Auto,
    /// The CPU backend (burn-flex: f32, f16 and bf16).
    Cpu,
    /// The CUDA backend; an error if the binary was built without `--features cuda`.
    Cuda,
    /// Burn's wgpu backend (Vulkan, Metal, DirectX 12: any GPU, or a software Vulkan driver such
    /// as lavapipe); an error if the binary was built without `--features wgpu` (or `vulkan`,
    /// `metal`).
    Wgpu,
}
