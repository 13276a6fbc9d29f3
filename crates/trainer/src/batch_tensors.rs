//! Loaded batches as tensors on the device: u8 frames to f32 in 0..1, keypoints and labels, for
//! training and for scoring alike.

use burn::prelude::*;
use vidtrain_data::Batch;

/// u8 frames → f32 in 0..1, `[batch, views, t, h, w, 3]` (`None` when RGB is not loaded).
pub(crate) fn video_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Option<Tensor<B, 6>> {
    let shape = batch.shape;
    if !shape.rgb {
        return None;
    }
    let values: Vec<f32> = batch
        .video
        .iter()
        .map(|&byte| f32::from(byte) * (1.0 / 255.0))
        .collect();
    let dims = [
        batch.len(),
        shape.views,
        shape.frames,
        shape.img_size,
        shape.img_size,
        3,
    ];
    Some(Tensor::from_data(TensorData::new(values, dims), device))
}

/// Keypoints `[batch, views, t, joints, 3]`, moved out of the batch (`None` when keypoints are
/// not loaded).
pub(crate) fn keypoint_tensor<B: Backend>(
    batch: &mut Batch,
    device: &B::Device,
) -> Option<Tensor<B, 5>> {
    let shape = batch.shape;
    (shape.joints > 0).then(|| {
        let dims = [batch.len(), shape.views, shape.frames, shape.joints, 3];
        let values = std::mem::take(&mut batch.keypoints);
        Tensor::from_data(TensorData::new(values, dims), device)
    })
}

pub(crate) fn labels_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 1, Int> {
    let labels: Vec<i64> = batch.labels.iter().map(|&label| label as i64).collect();
    Tensor::from_data(TensorData::new(labels, [batch.len()]), device)
}
