//! The gradients of an accumulation group summed over the ranks: every parameter's gradient is
//! flattened into a few large buckets (as PyTorch DDP's 25 MB buckets), one all-reduce per bucket
//! instead of one per parameter. The loss of each micro-batch is already weighted by its share of
//! the whole group (all ranks), so the sum is the group's mean gradient.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::World;

/// Values per all-reduce bucket (25 MB of f32, PyTorch DDP's default `bucket_cap_mb`).
const BUCKET_VALUES: usize = 25 * 1024 * 1024 / 4;

/// Every float parameter's id and shape, in the module's order (the same on every rank).
struct ParamShapes(Vec<(ParamId, Vec<usize>)>);

impl<B: Backend> ModuleVisitor<B> for ParamShapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, param.val().dims().to_vec()));
    }
}

/// `grads[id]` as a flat f32 tensor, taken out of `grads`.
fn take_flat<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    dims: usize,
) -> Option<Tensor<B, 1>> {
    let flat = match dims {
        1 => grads.remove::<B, 1>(id),
        2 => grads.remove::<B, 2>(id).map(|g| g.flatten(0, 1)),
        3 => grads.remove::<B, 3>(id).map(|g| g.flatten(0, 2)),
        4 => grads.remove::<B, 4>(id).map(|g| g.flatten(0, 3)),
        5 => grads.remove::<B, 5>(id).map(|g| g.flatten(0, 4)),
        6 => grads.remove::<B, 6>(id).map(|g| g.flatten(0, 5)),
        _ => panic!("parameters of rank {dims} are not supported"),
    };
    flat.map(|g| g.cast(FloatDType::F32))
}

/// Registers `flat` reshaped to `shape` as the gradient of `id`.
fn register<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    flat: Tensor<B, 1>,
    shape: &[usize],
) {
    match *shape {
        [a] => grads.register::<B, 1>(id, flat.reshape([a])),
        [a, b] => grads.register::<B, 2>(id, flat.reshape([a, b])),
        [a, b, c] => grads.register::<B, 3>(id, flat.reshape([a, b, c])),
        [a, b, c, d] => grads.register::<B, 4>(id, flat.reshape([a, b, c, d])),
        [a, b, c, d, e] => grads.register::<B, 5>(id, flat.reshape([a, b, c, d, e])),
        [a, b, c, d, e, f] => grads.register::<B, 6>(id, flat.reshape([a, b, c, d, e, f])),
        _ => panic!("parameters of rank {} are not supported", shape.len()),
    }
}

/// Flat gradients waiting to be summed together.
struct Bucket<'a, B: Backend> {
    params: Vec<(ParamId, &'a [usize])>,
    gradients: Vec<Tensor<B, 1>>,
    values: usize,
}

impl<B: Backend> Default for Bucket<'_, B> {
    fn default() -> Self {
        Self {
            params: Vec::new(),
            gradients: Vec::new(),
            values: 0,
        }
    }
}

impl<'a, B: Backend> Bucket<'a, B> {
    fn push(&mut self, id: ParamId, shape: &'a [usize], flat: Tensor<B, 1>) {
        self.values += flat.dims()[0];
        self.params.push((id, shape));
        self.gradients.push(flat);
    }

    /// One all-reduce of the whole bucket; its sums registered in `reduced`. Leaves it empty.
    fn sum_into(&mut self, world: &World, reduced: &mut GradientsParams, device: &B::Device) {
        if self.gradients.is_empty() {
            return;
        }
        let lengths: Vec<usize> = self.gradients.iter().map(|g| g.dims()[0]).collect();
        let flat = Tensor::cat(std::mem::take(&mut self.gradients), 0);
        let mut values: Vec<f32> = flat
            .into_data()
            .into_vec()
            .expect("gradients were cast to f32");
        let total = values.len();
        world.sum_gradients("the gradient all-reduce", &mut values);
        let flat = Tensor::<B, 1>::from_data(TensorData::new(values, [total]), device);
        let mut offset = 0;
        for ((id, shape), length) in self.params.drain(..).zip(lengths) {
            register(
                reduced,
                id,
                flat.clone().slice(offset..offset + length),
                shape,
            );
            offset += length;
        }
        self.values = 0;
    }
}

/// Sums `grads` over the ranks (a rank with no gradient for a parameter adds zeros; a parameter
/// no rank has a gradient for stays without one, as on one rank). One rank: `grads` unchanged.
pub(crate) fn all_reduce_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    world: &World,
    model: &M,
    mut grads: GradientsParams,
    device: &B::Device,
) -> GradientsParams {
    if world.size() == 1 {
        return grads;
    }
    let mut shapes = ParamShapes(Vec::new());
    model.visit(&mut shapes);
    let params = shapes.0;
    // Which parameters have a gradient on some rank (one small all-reduce).
    let mut present: Vec<f32> = params
        .iter()
        // A gradient's rank is not checked on `get`; any `D` tells whether one is there.
        .map(|(id, _)| f32::from(u8::from(grads.get::<B::InnerBackend, 1>(*id).is_some())))
        .collect();
    world.sum_gradients("the gradient presence all-reduce", &mut present);
    let summed: Vec<&(ParamId, Vec<usize>)> = params
        .iter()
        .zip(&present)
        .filter(|(_, count)| **count > 0.0)
        .map(|(param, _)| param)
        .collect();

    let mut reduced = GradientsParams::new();
    let mut bucket = Bucket::<B::InnerBackend>::default();
    for (id, shape) in summed {
        let length: usize = shape.iter().product();
        let gradient = take_flat::<B::InnerBackend>(&mut grads, *id, shape.len())
            .unwrap_or_else(|| Tensor::zeros([length], device));
        bucket.push(*id, shape, gradient);
        if bucket.values >= BUCKET_VALUES {
            bucket.sum_into(world, &mut reduced, device);
        }
    }
    bucket.sum_into(world, &mut reduced, device);
    reduced
}
