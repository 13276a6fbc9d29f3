//! Points inside a training step where device memory peaks, for the trainer to read.
//!
//! A GPU's memory pools keep no high-water mark, and the trainer sees a step only from outside
//! (before and after `loss_and_gradients`). Where the step's peak lies — in a stem
//! convolution's gradients, with the patches of one clip and its input gradient alive, or
//! between two segments' backward passes — the model calls [`at`]; the trainer installs a
//! probe (a plain function that reads and keeps the device's memory) for the few steps it
//! measures, and nothing runs here otherwise.

use std::sync::RwLock;

use burn::prelude::*;

static PROBE: RwLock<Option<fn()>> = RwLock::new(None);

/// Installs `probe` (or removes it with `None`) for every model of the process.
pub fn set(probe: Option<fn()>) {
    *PROBE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = probe;
}

/// A peak candidate: runs the installed probe once the device has run the queued work (Burn's
/// fusion queues operations, which allocate when they run). Nothing when none is installed.
pub(crate) fn at<B: Backend>(device: &B::Device) {
    let probe = *PROBE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(probe) = probe {
        // A failed sync surfaces at the step's next read of a value, with its cause.
        let _ = B::sync(device);
        probe();
    }
}
