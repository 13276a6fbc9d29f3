//! A stop request (Ctrl-C, SIGTERM) seen by the slow parts of data loading. Indexing probes every
//! video once, each with its own timeout; a signal that only took effect after the next optimizer
//! step would wait out every probe first (minutes on a hung mount, past Kubernetes' 30 s grace)
//! and then start a run. With the training's stop flag watched here, a probe in flight is killed
//! and indexing ends with [`crate::Error::Stopped`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

static WATCHED: RwLock<Option<Arc<AtomicBool>>> = RwLock::new(None);

/// Makes indexing stop when `flag` is set (the flag a signal handler sets to stop training);
/// `None` stops watching.
pub fn watch_stop_flag(flag: Option<Arc<AtomicBool>>) {
    *WATCHED
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = flag;
}

/// Whether the watched flag is set.
pub(crate) fn stop_requested() -> bool {
    WATCHED
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_ref()
        .is_some_and(|flag| flag.load(Ordering::Relaxed))
}
