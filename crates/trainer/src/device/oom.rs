//! Device out-of-memory: the CUDA runtime panics when an allocation fails. The training call is
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
    pub message: String,
}

/// Runs `work` under `catch_unwind` with the panic report kept instead of printed (the CUDA
/// runtime reports some failures only by panicking).
pub(crate) fn catch_panic_quietly<T>(
    work: impl FnOnce() -> T,
) -> std::result::Result<T, CaughtPanic> {
    let message = Arc::new(Mutex::new(None::<String>));
    let previous = std::panic::take_hook();
    {
        let message = Arc::clone(&message);
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut slot) = message.lock() {
                *slot = Some(info.to_string());
            }
        }));
    }
    let outcome = catch_unwind(AssertUnwindSafe(work));
    std::panic::set_hook(previous);
    outcome.map_err(|payload| {
        let message = message
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        CaughtPanic { payload, message }
    })
}

/// Runs `work`; turns a device out-of-memory panic into a clear error.
pub fn catching_device_oom<T>(config: &Config, work: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_panic_quietly(work) {
        Ok(result) => result,
        Err(CaughtPanic { payload, message }) if is_out_of_memory(&message) => {
            drop(payload);
            Err(Error::DeviceOutOfMemory {
                message: message
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                advice: out_of_memory_advice(config),
            })
        }
        Err(CaughtPanic { payload, message }) => {
            eprintln!("{message}");
            resume_unwind(payload)
        }
    }
}

fn is_out_of_memory(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("out of memory")
        || lower.contains("outofmemory")
        || lower.contains("cuda_error_out_of_memory")
}

/// What the plan says about this config on a GPU, and the switches to turn, cheapest first.
pub fn out_of_memory_advice(config: &Config) -> String {
    let planned = plan(config, BackendChoice::Cuda, None);
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
        advice += "\n  trainer.precision=bf16 (half-precision activations)";
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

    #[test]
    fn an_out_of_memory_panic_becomes_an_error_with_advice() {
        let config = Config::default();
        let result: Result<()> = catching_device_oom(&config, || {
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

    #[test]
    fn other_panics_keep_unwinding_and_results_pass_through() {
        let config = Config::default();
        assert_eq!(catching_device_oom(&config, || Ok(7)).unwrap(), 7);
        let unwound = std::panic::catch_unwind(|| {
            let _ = catching_device_oom::<()>(&config, || panic!("index out of bounds"));
        });
        assert!(unwound.is_err());
    }
}
