//! The trainer's ground floor: which backend a config runs on, the CPU's compute pool, the one
//! place that turns a [`BackendChoice`] into a backend type (`on_backend!`, used by training,
//! evaluation, prediction and the benches), and the one way the configured model is built
//! ([`build_model`]).

use burn::prelude::*;
use vidtrain_config::{Accelerator, Config, Fold};
use vidtrain_model::{ActionModel, ActionModelConfig};

use crate::{Error, Result, device, distributed};

/// Runs `$body` with `$B` the backend type `$choice` names (CPU: [`CpuBackend`]; CUDA:
/// `burn::backend::Cuda<f32>`, in builds with the `cuda` feature) and `$device` its device (GPU
/// `cuda_device`, by default 0). The body is compiled once per backend.
macro_rules! on_backend {
    ($choice:expr, |$B:ident, $device:ident| $body:expr) => {
        on_backend!($choice, cuda_device = 0, |$B, $device| $body)
    };
    ($choice:expr, cuda_device = $gpu:expr, |$B:ident, $device:ident| $body:expr) => {
        match $choice {
            $crate::BackendChoice::Cpu => {
                type $B = $crate::CpuBackend;
                let $device = $crate::FlexDevice;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::BackendChoice::Cuda => {
                type $B = burn::backend::Cuda<f32>;
                let $device = burn::backend::cuda::CudaDevice::new($gpu);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::BackendChoice::Cuda => {
                let _ = $gpu;
                unreachable!("resolve_backend returns Cuda only in cuda builds")
            }
        }
    };
}

/// The model `config` describes, in the compute dtype of `trainer.precision`, every lazily
/// initialised parameter drawn now (so initial weights depend on the seed alone). Training,
/// evaluation, prediction, export and the benches all build it here; loading weights into it is
/// theirs.
pub fn build_model<B: Backend>(config: &Config, device: &B::Device) -> ActionModel<B> {
    let mut model_config = ActionModelConfig::from_config(config);
    model_config.compute_dtype = crate::precision::compute_dtype(config.trainer.precision);
    let model = model_config.init(device);
    model.materialize_parameters();
    model
}

/// The CPU backend: burn-flex (run-time dtypes, so mixed precision runs as on CUDA; gemm
/// matmul). Every CPU path (training, evaluation, prediction, benches, tests) uses this alias.
pub type CpuBackend = burn::backend::Flex;
pub use burn::backend::flex::FlexDevice;

/// The backend a config resolves to in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// burn-flex on the CPU ([`CpuBackend`]).
    Cpu,
    /// burn-cuda (only in builds with the `cuda` feature).
    Cuda,
}

/// The backend `trainer.accelerator` picks in this build, without checking anything else.
pub fn accelerator_backend(config: &Config) -> BackendChoice {
    let cuda_built = cfg!(feature = "cuda");
    match config.trainer.accelerator {
        Accelerator::Cpu => BackendChoice::Cpu,
        Accelerator::Cuda => BackendChoice::Cuda,
        Accelerator::Auto if cuda_built && std::path::Path::new("/dev/nvidiactl").exists() => {
            BackendChoice::Cuda
        }
        Accelerator::Auto => BackendChoice::Cpu,
    }
}

/// Sizes the CPU backend's compute pool (rayon's global pool, which burn-flex runs on) from
/// `trainer.compute_threads` (0: every core, or this rank's share of them when a launcher started
/// several ranks on the machine), before the first tensor op. A process has one pool: the first call
/// sizes it and a later call asking for another size is told so in a warning. Returns the pool's
/// thread count.
pub fn configure_compute_threads(config: &Config) -> usize {
    // The host allocator's reuse pool (the `vidtrain` binary's global allocator) is sized with
    // the compute pool: both are set where a run starts computing.
    vidtrain_memutil::reuse_pool::set_slack_percent(
        config.trainer.allocator_slack_percent as usize,
    );
    static APPLIED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let mut wanted = config.trainer.compute_threads;
    // Several ranks on one machine share its cores (as torchrun sets OMP_NUM_THREADS): each
    // computes on its share unless trainer.compute_threads says otherwise.
    if wanted == 0
        && let Some(local_ranks) =
            distributed::local_ranks_from_environment().filter(|&ranks| ranks > 1)
    {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        wanted = (cores / local_ranks).max(1);
    }
    let applied = *APPLIED.get_or_init(|| {
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(wanted)
            .thread_name(|index| format!("compute-{index}"))
            .build_global();
        if let Err(error) = built {
            // Someone (a test harness, an embedding program) built the pool first.
            tracing::warn!("trainer.compute_threads={wanted} not applied: {error}");
        }
        rayon::current_num_threads()
    });
    if wanted != 0 && wanted != applied {
        tracing::warn!(
            "trainer.compute_threads={wanted} not applied: this process already computes on \
             {applied} threads (the pool is sized once per process)"
        );
    }
    applied
}

/// Picks the backend for `config` and refuses settings it cannot honour, before any work starts.
pub fn resolve_backend(config: &Config) -> Result<BackendChoice> {
    let cuda_built = cfg!(feature = "cuda");
    if config.trainer.accelerator == Accelerator::Cuda && !cuda_built {
        return Err(Error::Unsupported {
            key: "trainer.accelerator".into(),
            message: "is \"cuda\" but this vidtrain was built without CUDA; rebuild with \
                      `cargo build --release -p trainer-cli --features cuda` or use \"cpu\""
                .into(),
        });
    }
    let mut choice = accelerator_backend(config);
    if choice == BackendChoice::Cuda
        && let Err(reason) = device::memory::cuda_available()
    {
        if config.trainer.accelerator == Accelerator::Cuda {
            return Err(Error::Unsupported {
                key: "trainer.accelerator".into(),
                message: format!(
                    "is \"cuda\" but {reason}; install the NVIDIA driver or use \"cpu\""
                ),
            });
        }
        tracing::warn!("trainer.accelerator=auto: {reason}; training on the CPU");
        choice = BackendChoice::Cpu;
    }
    // Both backends (flex on the CPU, CUDA) hold f16/bf16 tensors next to f32 ones, so every
    // precision runs as configured; `trainer.precision_fallback` only matters for a backend
    // without half precision, and this build has none.
    if config.train.fold == Fold::All && !config.train.resume.trim().is_empty() {
        return Err(Error::Unsupported {
            key: "train.resume".into(),
            message: "cannot resume a train.fold=all run as a whole; resume one fold with \
                      train.fold=N and that fold's experiment (<experiment>/fold-N)"
                .into(),
        });
    }
    Ok(choice)
}
