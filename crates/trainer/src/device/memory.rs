//! Device memory readings and CubeCL runtime settings. On CUDA and wgpu: the CubeCL runtime's
//! memory pools of the device (bytes in use by live tensors, bytes reserved from the driver),
//! comparable to PyTorch's `memory_allocated` / `memory_reserved`; releasing cached pool memory
//! between phases; and persistent kernel and autotune caches, so that only the first run on a
//! machine compiles and tunes kernels. On the CPU backend there is no device memory: every
//! reading is `None`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::BackendChoice;

/// One reading of device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMemory {
    /// Bytes held by live tensors.
    pub in_use_bytes: u64,
    /// Bytes reserved by the memory pools (in use, padding and free pages kept for reuse).
    pub reserved_bytes: u64,
    /// The driver's used bytes on the whole device (total − free: every process, the CUDA
    /// context and kernels included), when the driver answers.
    pub driver_used_bytes: Option<u64>,
}

/// The current reading for `backend` (`None` on the CPU backend, or when the runtime does not
/// answer).
pub fn read(backend: BackendChoice) -> Option<DeviceMemory> {
    match backend {
        BackendChoice::Cpu => None,
        BackendChoice::Cuda => cuda::read(),
        BackendChoice::Wgpu => wgpu::read(),
    }
}

/// Whether a CUDA driver and at least one GPU answer here; the reason when not. Asked before any
/// CUDA work, so that a machine without a driver gets a message instead of a runtime panic.
pub fn cuda_available() -> Result<(), String> {
    cuda::available()
}

/// The adapter wgpu trains on (the one `WgpuDevice::DefaultDevice` picks: the high-performance
/// adapter of the platform's graphics API), described as `name (type, API, driver)`; the reason
/// when there is none. Asked before any wgpu work, so that a machine without a Vulkan/Metal
/// driver gets a message instead of a runtime panic.
pub fn wgpu_adapter() -> Result<String, String> {
    // Asked by the precision fallback and by the backend choice: one request per process.
    static ADAPTER: OnceLock<Result<String, String>> = OnceLock::new();
    ADAPTER.get_or_init(wgpu::adapter).clone()
}

/// Returns cached, unused pool memory to the driver; the reserved bytes released, when known.
pub fn release_cached(backend: BackendChoice) -> Option<u64> {
    match backend {
        BackendChoice::Cpu => None,
        BackendChoice::Cuda => cuda::release_cached(),
        BackendChoice::Wgpu => wgpu::release_cached(),
    }
}

/// Keeps CubeCL's compiled kernels and autotune results in `vidtrain`'s cache folder
/// (`$VIDTRAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/vidtrain`, else `~/.cache/vidtrain`, then
/// `cubecl/`) unless a `cubecl.toml` or the environment already chose; must run before the
/// first CUDA tensor. Does nothing on the CPU backend.
pub fn persist_kernel_caches(backend: BackendChoice) {
    if backend.on_device()
        && let Some(folder) = cache_folder()
    {
        cubecl_caches::persist(&folder.join("cubecl"));
    }
}

fn cache_folder() -> Option<std::path::PathBuf> {
    if let Some(folder) = std::env::var_os("VIDTRAIN_CACHE_DIR") {
        return Some(folder.into());
    }
    if let Some(folder) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(std::path::PathBuf::from(folder).join("vidtrain"));
    }
    std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache/vidtrain"))
}

/// Micro-batches whose inside is probed (`vidtrain_model::memory_probe`): the first ones of the
/// process. A step's peak is the same every step; each probe costs a device sync.
const PROBED_MICRO_BATCHES: usize = 2;
static MICRO_BATCHES_PROBED: AtomicUsize = AtomicUsize::new(0);
static PROBED_IN_USE: AtomicU64 = AtomicU64::new(0);
static PROBED_RESERVED: AtomicU64 = AtomicU64::new(0);

/// Keeps the highest of the probe's readings.
fn keep_highest(reading: Option<DeviceMemory>) {
    if let Some(reading) = reading {
        PROBED_IN_USE.fetch_max(reading.in_use_bytes, Ordering::Relaxed);
        PROBED_RESERVED.fetch_max(reading.reserved_bytes, Ordering::Relaxed);
    }
}

/// Runs `work` (one micro-batch's forward and backward) with the model's peak candidates
/// reading `backend`'s memory, for the first micro-batches of the process on a device; returns
/// what `work` returns and the highest reading inside it (`None` when not probed). A device's
/// pools keep no high-water mark, and from outside a step its peak (inside the stem's
/// gradients) is gone: lavapipe read 6.1 MiB in use between forward and backward, 7.1 MiB
/// inside backward.
pub fn probing_inside<T>(
    backend: BackendChoice,
    work: impl FnOnce() -> T,
) -> (T, Option<DeviceMemory>) {
    // A probe is a plain `fn()`: one per device backend.
    let probe: fn() = match backend {
        BackendChoice::Cpu => return (work(), None),
        BackendChoice::Cuda => || keep_highest(cuda::read()),
        BackendChoice::Wgpu => || keep_highest(wgpu::read()),
    };
    if MICRO_BATCHES_PROBED.fetch_add(1, Ordering::Relaxed) >= PROBED_MICRO_BATCHES {
        return (work(), None);
    }
    PROBED_IN_USE.store(0, Ordering::Relaxed);
    PROBED_RESERVED.store(0, Ordering::Relaxed);
    vidtrain_model::memory_probe::set(Some(probe));
    let result = work();
    vidtrain_model::memory_probe::set(None);
    let peak = DeviceMemory {
        in_use_bytes: PROBED_IN_USE.load(Ordering::Relaxed),
        reserved_bytes: PROBED_RESERVED.load(Ordering::Relaxed),
        driver_used_bytes: None,
    };
    (result, (peak.reserved_bytes > 0).then_some(peak))
}

/// Tracks the highest readings over a run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DevicePeaks {
    /// Highest bytes in use seen.
    pub in_use_bytes: u64,
    /// Highest bytes reserved seen.
    pub reserved_bytes: u64,
    /// Highest driver-reported used bytes seen (whole device).
    pub driver_used_bytes: Option<u64>,
    /// Whether any reading was taken.
    pub measured: bool,
}

impl DevicePeaks {
    /// Takes a reading and keeps the maxima.
    pub fn sample(&mut self, backend: BackendChoice) {
        if let Some(reading) = read(backend) {
            self.in_use_bytes = self.in_use_bytes.max(reading.in_use_bytes);
            self.reserved_bytes = self.reserved_bytes.max(reading.reserved_bytes);
            self.driver_used_bytes = self.driver_used_bytes.max(reading.driver_used_bytes);
            self.measured = true;
        }
    }

    /// The peak in use, or `None` when nothing was measured (CPU backend).
    pub fn in_use(&self) -> Option<u64> {
        self.measured.then_some(self.in_use_bytes)
    }

    /// The peak reserved, or `None` when nothing was measured.
    pub fn reserved(&self) -> Option<u64> {
        self.measured.then_some(self.reserved_bytes)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::DeviceMemory;
    use cubecl::Runtime;
    use cubecl::cuda::{CudaDevice, CudaRuntime};

    pub fn read() -> Option<DeviceMemory> {
        let client = CudaRuntime::client(&CudaDevice::default());
        let usage = client.memory_usage().ok()?;
        let driver_used_bytes = cudarc::driver::CudaContext::new(0)
            .and_then(|context| context.mem_get_info())
            .ok()
            .map(|(free, total)| total.saturating_sub(free) as u64);
        Some(DeviceMemory {
            in_use_bytes: usage.bytes_in_use,
            reserved_bytes: usage.bytes_reserved,
            driver_used_bytes,
        })
    }

    pub fn release_cached() -> Option<u64> {
        let before = read()?;
        CudaRuntime::client(&CudaDevice::default()).memory_cleanup();
        let after = read()?;
        Some(before.reserved_bytes.saturating_sub(after.reserved_bytes))
    }

    pub fn available() -> Result<(), String> {
        // cudarc loads libcuda on first use and panics when it is missing.
        let answer = crate::device::oom::catch_panic_quietly(|| {
            cudarc::driver::result::init()?;
            cudarc::driver::result::device::get_count()
        });
        match answer {
            Ok(Ok(count)) if count > 0 => Ok(()),
            Ok(Ok(_)) => Err("the CUDA driver reports no GPU".into()),
            Ok(Err(error)) => Err(format!("the CUDA driver failed to start: {error:?}")),
            Err(_) => Err("no CUDA driver library (libcuda.so) could be loaded".into()),
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::DeviceMemory;

    pub fn read() -> Option<DeviceMemory> {
        None
    }

    pub fn release_cached() -> Option<u64> {
        None
    }

    pub fn available() -> Result<(), String> {
        Err("this vidtrain was built without CUDA".into())
    }
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod cubecl_caches {
    pub fn persist(folder: &std::path::Path) {
        use cubecl::config::cache::CacheConfig;
        use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        // The runtime reads its configuration once; setting it afterwards would panic.
        if CubeClRuntimeConfig::storage().lock().is_some() {
            return;
        }
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if config.compilation.cache.is_none() {
            let kernels = folder.join("kernels");
            // The first H200 run spent 134 s in NVRTC and autotuning before its first step
            // ended; say so, or a first run looks hung.
            let warm =
                std::fs::read_dir(&kernels).is_ok_and(|mut entries| entries.next().is_some());
            if warm {
                tracing::info!(
                    "GPU kernels compiled by earlier runs: {}",
                    kernels.display()
                );
            } else {
                tracing::info!(
                    "GPU kernels are compiled and tuned on first use: the first steps on this \
                     machine can take minutes; they are kept in {} for later runs",
                    folder.display()
                );
            }
            config.compilation.cache = Some(CacheConfig::File(kernels));
        }
        if matches!(config.autotune.cache, CacheConfig::Target) {
            config.autotune.cache = CacheConfig::File(folder.join("autotune"));
        }
        CubeClRuntimeConfig::set(config);
    }
}

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
mod cubecl_caches {
    pub fn persist(_folder: &std::path::Path) {}
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::DeviceMemory;
    use cubecl::Runtime;
    use cubecl::wgpu::{GraphicsApi, WgpuDevice, WgpuRuntime};

    pub fn read() -> Option<DeviceMemory> {
        let usage = WgpuRuntime::client(&WgpuDevice::DefaultDevice)
            .memory_usage()
            .ok()?;
        Some(DeviceMemory {
            in_use_bytes: usage.bytes_in_use,
            reserved_bytes: usage.bytes_reserved,
            // wgpu has no query of the driver's used bytes.
            driver_used_bytes: None,
        })
    }

    pub fn release_cached() -> Option<u64> {
        let before = read()?;
        WgpuRuntime::client(&WgpuDevice::DefaultDevice).memory_cleanup();
        let after = read()?;
        Some(before.reserved_bytes.saturating_sub(after.reserved_bytes))
    }

    pub fn adapter() -> Result<String, String> {
        use wgpu_api as api;
        let backend = cubecl::wgpu::AutoGraphicsApi::backend();
        let instance = api::Instance::new(api::InstanceDescriptor {
            backends: backend.into(),
            ..api::InstanceDescriptor::new_without_display_handle()
        });
        // The options cubecl's `DefaultDevice` asks with, so this is the adapter it takes.
        let adapter =
            cubecl::future::block_on(instance.request_adapter(&api::RequestAdapterOptions {
                power_preference: api::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
            }))
            .map_err(|error| format!("wgpu finds no {backend:?} adapter ({error})"))?;
        let info = adapter.get_info();
        Ok(format!(
            "{} ({:?}, {:?}, driver {} {})",
            info.name, info.device_type, info.backend, info.driver, info.driver_info
        ))
    }
}

#[cfg(not(feature = "wgpu"))]
mod wgpu {
    use super::DeviceMemory;

    pub fn read() -> Option<DeviceMemory> {
        None
    }

    pub fn release_cached() -> Option<u64> {
        None
    }

    pub fn adapter() -> Result<String, String> {
        Err("this vidtrain was built without wgpu".into())
    }
}
