//! What a run reports about the model: classification metrics and the pictures drawn from them.

pub mod confusion_svg;
pub mod metrics;
