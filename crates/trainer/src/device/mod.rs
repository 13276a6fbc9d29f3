//! The accelerator's side of a run: device memory readings and cache release (`memory`), and
//! turning an out-of-memory panic into an error that says what to lower (`oom`).

pub mod memory;
pub mod oom;
