//! What a run reports about the model: classification metrics, the pictures drawn from them
//! (confusion matrix, learning curves) and TensorBoard event files.

pub mod confusion_svg;
pub mod curves_svg;
pub mod metrics;
pub mod tensorboard;
