//! What a run writes and reads back: the run directory, model weights, resumable checkpoints and
//! pretrained weights from other frameworks' files.

pub(crate) mod checkpoint;
pub mod pretrained;
pub mod run_dir;
pub mod weights;
