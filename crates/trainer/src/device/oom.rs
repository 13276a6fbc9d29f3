//! Device out-of-memory: the CubeCL runtimes (CUDA, wgpu) panic when an allocation fails. The training call is
//! run under `catch_unwind`; an out-of-memory panic becomes [`Error::DeviceOutOfMemory`] with the
//! plan's largest parts and the switches that lower them, any other panic continues unwinding.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex};

use vidtrain_config::{Config, Precision, RecomputeMode};

use crate::plan::plan;
use crate::{BackendChoice, Error, Result};

/// A panic caught by [`catch_panic_quietly`]: its payload (to resume unwinding) and its report.
pub(crate) struct CaughtPanic {
    pub payload: Box<dyn std::any::Any + Send>,
    /// The report of the panic that ended the work.
    pub message: String,
    /// Every panic reported while the work ran, on any thread, first first: a backend that
    /// computes on its own threads (Burn's fusion server, CubeCL's autotune) panics there, and
    /// the caller's panic only says that the call failed.
    pub reports: Vec<String>,
}

/// Runs `work` under `catch_unwind` with the panic reports kept instead of printed (the CubeCL
/// runtimes report some failures only by panicking).
pub(crate) fn catch_panic_quietly<T>(
    work: impl FnOnce() -> T,
) -> std::result::Result<T, CaughtPanic> {
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    let previous = std::panic::take_hook();
    {
        let reports = Arc::clone(&reports);
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut reports) = reports.lock() {
                reports.push(info.to_string());
            }
        }));
    }
    let outcome = catch_unwind(AssertUnwindSafe(work));
    std::panic::set_hook(previous);
    outcome.map_err(|payload| {
        let reports = reports
            .lock()
            .map(|reports| reports.clone())
            .unwrap_or_default();
        let message = reports
            .last()
            .cloned()
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        CaughtPanic {
            payload,
            message,
            reports,
        }
    })
}

/// Runs `work`; turns a device out-of-memory panic into a clear error.
pub fn catching_device_oom<T>(
    config: &Config,
    backend: BackendChoice,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match catch_panic_quietly(work) {
        Ok(result) => result,
        Err(caught) => {
            let out_of_memory = caught
                .reports
                .iter()
                .chain([&caught.message])
                .find(|report| is_out_of_memory(report))
                .cloned();
            match out_of_memory {
                Some(report) => {
                    drop(caught.payload);
                    Err(Error::DeviceOutOfMemory {
                        message: out_of_memory_line(&report),
                        advice: out_of_memory_advice(config, backend),
                    })
                }
                None => {
                    for report in &caught.reports {
                        eprintln!("{report}");
                    }
                    if caught.reports.is_empty() {
                        eprintln!("{}", caught.message);
                    }
                    resume_unwind(caught.payload)
                }
            }
        }
    }
}

/// The line of a panic report that says what ran out, without the `unwrap` wording around it.
fn out_of_memory_line(report: &str) -> String {
    let line = report
        .lines()
        .map(str::trim)
        .rfind(|line| is_out_of_memory(line))
        .or_else(|| report.lines().last().map(str::trim))
        .unwrap_or_default();
    line.trim_start_matches("called `Result::unwrap()` on an `Err` value: ")
        .to_string()
}

fn is_out_of_memory(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("out of memory")
        || lower.contains("outofmemory")
        || lower.contains("cuda_error_out_of_memory")
        // wgpu: a buffer larger than the adapter allows, or a failed device allocation.
        || lower.contains("greater than the maximum buffer size")
        || lower.contains("not enough memory left")
        || lower.contains("can't allocate buffer")
}

/// What the plan says about this config on `backend`'s device, and the switches to turn, cheapest
/// first.
pub fn out_of_memory_advice(config: &Config, backend: BackendChoice) -> String {
    let planned = plan(config, backend, None);
    let mut parts = planned.device.clone();
    parts.sort_by_key(|component| std::cmp::Reverse(component.bytes));
    let mut advice = format!(
        "planned device peak {} (vidtrain plan); its largest parts:",
        vidtrain_memutil::format_bytes(planned.device_peak_bytes)
    );
    for component in parts.iter().take(3) {
        advice += &format!(
            "\n  {} {}",
            vidtrain_memutil::format_bytes(component.bytes),
            component.name
        );
    }
    advice += "\nto lower it:";
    let data = &config.data;
    if data.batch_size > 1 {
        advice += &format!(
            "\n  data.batch_size={} train.accumulate_grad_batches={} (same effective batch)",
            data.batch_size / 2,
            config.train.accumulate_grad_batches * 2
        );
    }
    if config.model.effective_recompute() != RecomputeMode::All {
        advice += "\n  model.checkpoint=all (recompute activations in backward)";
    }
    if config.trainer.precision == Precision::Full {
        // wgpu computes no bf16; f16 where the adapter has shader-f16.
        advice += if backend == BackendChoice::Wgpu {
            "\n  trainer.precision=16 (half-precision activations, where the adapter has f16)"
        } else {
            "\n  trainer.precision=bf16 (half-precision activations)"
        };
    }
    advice += &format!(
        "\n  train.video_batch_size={} (if it failed in validation)",
        (config.inference_batch_size() / 2).max(1)
    );
    advice += "\n  or let vidtrain choose: vidtrain train --fit-vram <your GPU's memory> ...";
    advice
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The panic hook is one per process: these tests take turns at it.
    static PANIC_HOOK: Mutex<()> = Mutex::new(());

    fn hook_turn() -> std::sync::MutexGuard<'static, ()> {
        PANIC_HOOK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[test]
    fn an_out_of_memory_panic_becomes_an_error_with_advice() {
        let _turn = hook_turn();
        let config = Config::default();
        let result: Result<()> = catching_device_oom(&config, BackendChoice::Cuda, || {
            panic!("Allocation failed: CUDA_ERROR_OUT_OF_MEMORY, out of memory")
        });
        let Err(Error::DeviceOutOfMemory { message, advice }) = result else {
            panic!("expected DeviceOutOfMemory, got {result:?}");
        };
        assert!(message.contains("OUT_OF_MEMORY"), "{message}");
        assert!(
            advice.contains("data.batch_size=2 train.accumulate_grad_batches=2"),
            "{advice}"
        );
        assert!(advice.contains("model.checkpoint=all"), "{advice}");
        assert!(advice.contains("--fit-vram"), "{advice}");
    }

    /// As on lavapipe: the allocation fails on the wgpu server's thread, and the caller's panic
    /// only says the call failed. The server's report names the cause.
    #[test]
    fn an_out_of_memory_on_a_runtime_thread_is_found_behind_the_callers_panic() {
        use std::hint::black_box;
        let _turn = hook_turn();
        let config = Config::default();
        let result: Result<()> = catching_device_oom(&config, BackendChoice::Wgpu, || {
            let server = std::thread::spawn(|| {
                // As the runtime fails: an `unwrap` of the allocator's error.
                black_box(Err::<(), _>("can't allocate buffer of size: 301989888")).unwrap();
            });
            assert!(server.join().is_err());
            black_box(Err::<(), _>("CallError")).unwrap();
            Ok(())
        });
        let Err(Error::DeviceOutOfMemory { message, advice }) = result else {
            panic!("expected DeviceOutOfMemory, got {result:?}");
        };
        assert_eq!(message, "\"can't allocate buffer of size: 301989888\"");
        assert!(advice.contains("trainer.precision=16"), "{advice}");
        assert!(!advice.contains("bf16"), "wgpu has no bf16: {advice}");
    }

    #[test]
    fn other_panics_keep_unwinding_and_results_pass_through() {
        let _turn = hook_turn();
        let config = Config::default();
        assert_eq!(
            catching_device_oom(&config, BackendChoice::Cuda, || Ok(7)).unwrap(),
            7
        );
        let unwound = std::panic::catch_unwind(|| {
            let _ = catching_device_oom::<()>(&config, BackendChoice::Cuda, || {
                panic!("index out of bounds")
            });
        });
        assert!(unwound.is_err());
    }
}
