//! The trainer's ground floor: which backend a config runs on, the CPU's compute pool, the one
//! place that turns a [`BackendChoice`] into a backend type (`on_backend!`, used by training,
//! evaluation, prediction and the benches), and the one way the configured model is built
//! ([`build_model`]).

use burn::prelude::*;
use burn::tensor::DType;
use vidtrain_config::{Accelerator, Config, Fold, Precision};
use vidtrain_model::{ActionModel, ActionModelConfig};

use crate::{Error, Result, device, distributed};

/// Runs `$body` with `$B` the backend type `$choice` names (CPU: [`CpuBackend`]; CUDA:
/// `burn::backend::Cuda<f32>`, in builds with the `cuda` feature; wgpu: `burn::backend::Wgpu<f32>`
/// on the adapter wgpu prefers, in builds with the `wgpu` feature) and `$device` its device (GPU
/// `cuda_device`, by default 0). The body is compiled once per backend built.
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
            #[cfg(feature = "wgpu")]
            $crate::BackendChoice::Wgpu => {
                type $B = burn::backend::Wgpu<f32>;
                let $device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
                $body
            }
            #[allow(unreachable_patterns)]
            other => {
                let _ = $gpu;
                unreachable!("resolve_backend returns {other:?} only in builds that have it")
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
    /// burn-wgpu: Vulkan, Metal or DirectX 12 (only in builds with the `wgpu` feature).
    Wgpu,
}

impl BackendChoice {
    /// Whether tensors live in device memory (a GPU, or a software GPU driver's buffers).
    pub fn on_device(self) -> bool {
        self != BackendChoice::Cpu
    }

    /// Whether this binary was built with the backend (its cargo feature).
    pub fn built(self) -> bool {
        match self {
            BackendChoice::Cpu => true,
            BackendChoice::Cuda => cfg!(feature = "cuda"),
            BackendChoice::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The name runs report: `cpu (flex)`, `cuda`, `wgpu`.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Cpu => "cpu (flex)",
            BackendChoice::Cuda => "cuda",
            BackendChoice::Wgpu => "wgpu",
        }
    }
}

/// The backend `trainer.accelerator` picks in this build, without checking anything else.
pub fn accelerator_backend(config: &Config) -> BackendChoice {
    let cuda_built = cfg!(feature = "cuda");
    match config.trainer.accelerator {
        Accelerator::Cpu => BackendChoice::Cpu,
        Accelerator::Cuda => BackendChoice::Cuda,
        Accelerator::Wgpu => BackendChoice::Wgpu,
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

/// Runs `op` on one of the compute pool's threads (on this one when it is one) when `B` computes
/// on the host (burn-flex), and here otherwise, and returns its result. The CPU backend's
/// kernels split every op across the pool: called from another thread, each split hands its
/// work to the pool and sleeps until it is done, a wake-up of a sleeping thread both ways per op
/// — at micro-batch 1, with ops of a few hundred thousand values, a fifth of ViViT's step was
/// the kernel switching threads. From a pool thread, the split runs its first half itself and
/// the other thread steals the rest. Device backends run where they did.
pub fn on_compute_threads<B: burn::tensor::backend::Backend, R: Send>(
    device: &B::Device,
    op: impl FnOnce() -> R + Send,
) -> R {
    if !vidtrain_model::cpu_kernels::computes_on_host::<B>(device)
        || rayon::current_thread_index().is_some()
    {
        return op();
    }
    // `rayon::scope` called outside the pool runs its body on a pool thread and blocks here.
    rayon::scope(|_| op())
}

/// Picks the backend for `config` and refuses settings it cannot honour, before any work starts.
pub fn resolve_backend(config: &Config) -> Result<BackendChoice> {
    let unsupported = |message: String| Error::Unsupported {
        key: "trainer.accelerator".into(),
        message,
    };
    let mut choice = accelerator_backend(config);
    if !choice.built() {
        let rebuild = match choice {
            BackendChoice::Wgpu => {
                "`cargo build --release -p trainer-cli --features vulkan` (Linux, Windows), \
                 `--features metal` (macOS) or `--features wgpu`"
            }
            _ => "`cargo build --release -p trainer-cli --features cuda`",
        };
        return Err(unsupported(format!(
            "is \"{}\" but this vidtrain was built without it; rebuild with {rebuild} or use \
             \"cpu\"",
            choice.name()
        )));
    }
    if choice == BackendChoice::Cuda
        && let Err(reason) = device::memory::cuda_available()
    {
        if config.trainer.accelerator == Accelerator::Cuda {
            return Err(unsupported(format!(
                "is \"cuda\" but {reason}; install the NVIDIA driver or use \"cpu\""
            )));
        }
        tracing::warn!("trainer.accelerator=auto: {reason}; training on the CPU");
        choice = BackendChoice::Cpu;
    }
    if choice == BackendChoice::Wgpu {
        let adapter = device::memory::wgpu_adapter().map_err(|reason| {
            unsupported(format!(
                "is \"wgpu\" but {reason}; install your GPU's Vulkan/Metal driver (or Mesa's \
                 lavapipe, a software one: `apt-get install mesa-vulkan-drivers`) or use \"cpu\""
            ))
        })?;
        tracing::info!("wgpu adapter: {adapter}");
        if let Err(reason) = precision_support(config, choice) {
            return Err(Error::Unsupported {
                key: "trainer.precision".into(),
                message: format!(
                    "{reason}; use trainer.precision=32 (or 16 where the adapter has f16), or \
                     trainer.precision_fallback=true to train in 32-bit on such adapters"
                ),
            });
        }
    }
    // flex on the CPU and CUDA hold f16/bf16 tensors next to f32 ones, so every precision runs
    // as configured there; wgpu is checked per adapter above.
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

/// Whether `backend`'s device computes in the dtype `trainer.precision` asks for; the reason when
/// not. Only wgpu adapters differ (WGSL has no bf16, f16 needs the adapter's `shader-f16`); flex
/// and CUDA hold all three float dtypes, and are not asked (asking starts the device).
fn precision_support(config: &Config, backend: BackendChoice) -> std::result::Result<(), String> {
    let precision = config.trainer.precision;
    if precision == Precision::Full || backend != BackendChoice::Wgpu {
        return Ok(());
    }
    let dtype = DType::from(crate::precision::compute_dtype(precision));
    let supported = on_backend!(backend, |B, device| B::supports_dtype(&device, dtype));
    if supported {
        Ok(())
    } else {
        Err(format!(
            "is {precision} but the wgpu adapter computes no {dtype:?} (wgpu has no bf16 \
             arithmetic; f16 needs the adapter's shader-f16 feature and a `vulkan`/`metal` build)"
        ))
    }
}

/// `trainer.precision_fallback`: where the configured backend cannot compute in the asked half
/// precision (a wgpu adapter without it), trains in 32-bit instead and says so. Call before
/// [`resolve_backend`], which refuses the half precision otherwise.
pub fn apply_precision_fallback(config: &mut Config) {
    if !config.trainer.precision_fallback
        || config.trainer.precision == Precision::Full
        || accelerator_backend(config) != BackendChoice::Wgpu
        // No adapter (or no wgpu in this build): `resolve_backend` says so.
        || device::memory::wgpu_adapter().is_err()
    {
        return;
    }
    if let Err(reason) = precision_support(config, BackendChoice::Wgpu) {
        tracing::warn!(
            "trainer.precision {reason}: training in 32-bit (trainer.precision_fallback=true)"
        );
        config.trainer.precision = Precision::Full;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_this_build_lacks_is_refused_naming_the_feature_to_build() {
        for (accelerator, feature) in [
            (Accelerator::Cuda, "--features cuda"),
            (Accelerator::Wgpu, "--features vulkan"),
        ] {
            let mut config = Config::default();
            config.trainer.accelerator = accelerator;
            if accelerator_backend(&config).built() {
                continue;
            }
            let Err(Error::Unsupported { key, message }) = resolve_backend(&config) else {
                panic!("{accelerator:?} is not built, yet it was accepted");
            };
            assert_eq!(key, "trainer.accelerator");
            assert!(message.contains(feature), "{message}");
        }
    }
}
