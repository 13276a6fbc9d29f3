//! What a run writes and reads back: the run directory, model weights, resumable checkpoints,
//! pretrained weights from PyTorch files, and trained weights out to PyTorch files.

pub(crate) mod checkpoint;
pub mod export;
pub mod pretrained;
pub mod run_dir;
pub mod weights;
