//! What vidtrain's own autodiff ops on the CPU share: Burn records a custom op only for code that
//! names the backend (`burn::backend::autodiff::ops::Backward` on `Autodiff<Flex>`), while the
//! models are generic over `B`. The tensors of a generic `B` are taken as burn-flex's autodiff
//! tensors when that is what they are (the downcast [`crate::cpu_kernels`] makes for plain
//! burn-flex tensors), and given back as `B`'s after the op; on any other backend the caller
//! composes Burn's ops. The ops: `layers::conv3d::tracked` (a convolution),
//! `layers::batch_norm::tracked` (BatchNorm, with or without ReLU), `precision::tracked_linear`,
//! `precision::tracked_layer_norm`, `layers::gelu` and `layers::encoder::tracked_attention`.

use std::any::Any;
use std::sync::Arc;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Shape, TensorMetadata, TensorPrimitive};

use crate::quantize::{HostCodes, HostInput, Quantized, next_kept_codes};

/// burn-flex's tensor under autodiff: what a float tensor of `Autodiff<Flex>` is.
pub(crate) type TrackedHost = FloatTensor<Autodiff<Flex>>;

/// The burn-flex autodiff tensor a tensor of backend `B` is, if it is one.
pub(crate) fn tracked_host<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Option<TrackedHost> {
    let primitive: Box<dyn Any> = Box::new(tensor.into_primitive().tensor());
    primitive
        .downcast::<TrackedHost>()
        .ok()
        .map(|tensor| *tensor)
}

/// Whether `tensor` is outside every autodiff graph: a tensor of a backend without autodiff, or
/// an autodiff tensor that neither wants a gradient nor was computed from one that does. Such a
/// tensor can be replaced by a new one with its values. (`Tensor::is_require_grad` is true only
/// for leaves: a tensor computed from one reads false.)
pub(crate) fn untracked<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    match tracked_host(tensor.clone()) {
        Some(tracked) => tracked.node.requirement.is_none(),
        None => !B::ad_enabled(&tensor.device()),
    }
}

/// An op's output as a tensor of `B`, which its inputs showed to be `Autodiff<Flex>`.
pub(crate) fn from_tracked_host<B: Backend, const D: usize>(tensor: TrackedHost) -> Tensor<B, D> {
    let tensor: Box<dyn Any> = Box::new(tensor);
    let tensor = *tensor
        .downcast::<B::FloatTensorPrimitive>()
        .expect("B is Autodiff<Flex>: the op's inputs were");
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// A burn-flex tensor as a tensor of rank `D`.
pub(crate) fn host<const D: usize>(tensor: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// A tensor's burn-flex storage (to register as a gradient, or keep as an op's state).
pub(crate) fn flex<const D: usize>(tensor: Tensor<Flex, D>) -> FlexTensor {
    tensor.into_primitive().tensor()
}

/// Records `op` with `parents` and its already computed `output` in the autodiff graph: with the
/// backward's state (made only then) when some parent wants a gradient, else as an untracked
/// step. Compute-bound (never recomputed by Burn's checkpointing); the state is the op's own.
pub(crate) fn record<Op, const N: usize>(
    op: Op,
    parents: [&TrackedHost; N],
    output: FlexTensor,
    state: impl FnOnce() -> Op::State,
) -> TrackedHost
where
    Op: Backward<Flex, N>,
{
    let nodes = parents.map(|parent| parent.node.clone());
    match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// The node ids of an op's first three parents (input, weight or γ, bias or β): `None` for a
/// parent that wants no gradient, or one the op does not have.
pub(crate) fn parent_ids<S, const N: usize>(ops: &Ops<S, N>) -> [Option<NodeId>; 3] {
    std::array::from_fn(|index| {
        ops.parents
            .get(index)
            .and_then(Option::as_ref)
            .map(|node| node.id)
    })
}

/// Registers `gradient` for the parent `node`, when both are there (a parent that wants no
/// gradient has no node; a gradient not asked for was not made).
pub(crate) fn register(grads: &mut Gradients, node: Option<NodeId>, gradient: Option<FlexTensor>) {
    if let (Some(node), Some(gradient)) = (node, gradient) {
        grads.register::<Flex>(node, gradient);
    }
}

/// A per-channel parameter's gradient (γ's, β's: summed in f32) as a burn-flex tensor in the
/// parameter's `dtype`.
pub(crate) fn parameter_gradient(values: Vec<f32>, dtype: burn::tensor::DType) -> FlexTensor {
    let length = values.len();
    let gradient = Tensor::<Flex, 1>::from_data(
        burn::tensor::TensorData::new(values, [length]),
        &Default::default(),
    );
    flex(crate::cpu_kernels::cast(gradient, dtype))
}

/// A tensor an op keeps for its backward: as computed, or — inside a stretch that compresses what
/// it keeps ([`crate::quantize::CompressedKeeping`], `model.activation_bits`) — as block codes,
/// which the backward kernels restore a piece at a time.
#[derive(Clone, Debug)]
pub(crate) enum KeptTensor {
    Whole(FlexTensor),
    Codes(Arc<KeptCodes>),
}

/// The codes of a kept tensor (which know its dtype), with its shape.
pub(crate) struct KeptCodes {
    pub(crate) codes: HostCodes,
    pub(crate) shape: Vec<usize>,
}

impl std::fmt::Debug for KeptCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeptCodes({:?}, {:?})", self.codes.dtype(), self.shape)
    }
}

impl KeptTensor {
    /// `tensor` as the op keeps it: compressed inside a compressing stretch when its dtype is one
    /// the host kernels read, else as it is (shared with whoever else holds it, not copied).
    pub(crate) fn keep(tensor: FlexTensor) -> Self {
        let Some((bits, seed)) = next_kept_codes() else {
            return KeptTensor::Whole(tensor);
        };
        if !crate::cpu_kernels::host_float(tensor.dtype()) {
            return KeptTensor::Whole(tensor);
        }
        let shape = tensor.shape().to_vec();
        let length = shape.iter().product();
        let flat = host::<1>(Flex::float_reshape(tensor, Shape::new([length])));
        match Quantized::<Flex>::new(flat, bits, seed) {
            Quantized::Host { codes, .. } => {
                KeptTensor::Codes(Arc::new(KeptCodes { codes, shape }))
            }
            Quantized::Tensors(_) => unreachable!("burn-flex tensors are quantized on the host"),
        }
    }

    /// The tensor again: as kept, or restored from its codes (each value within one step of
    /// its block of the original), whole, for an op's backward that reads it at once.
    pub(crate) fn restore(self) -> FlexTensor {
        match self {
            KeptTensor::Whole(tensor) => tensor,
            KeptTensor::Codes(kept) => {
                let values = kept.codes.to_tensor::<Flex>(&Default::default());
                Flex::float_reshape(flex(values), Shape::from(kept.shape.clone()))
            }
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            KeptTensor::Whole(tensor) => tensor.dtype(),
            KeptTensor::Codes(kept) => kept.codes.dtype(),
        }
    }

    /// The codes of a kept `[n, c, t, h, w]` activation as the convolution kernels read them.
    pub(crate) fn host_input(kept: &KeptCodes) -> HostInput<'_> {
        let dims: [usize; 5] = kept
            .shape
            .as_slice()
            .try_into()
            .expect("a convolution keeps a 5-D input");
        HostInput {
            codes: &kept.codes,
            dims,
        }
    }
}

/// What the tests of vidtrain's CPU ops share.
#[cfg(test)]
pub(crate) mod testing {
    use burn::backend::Autodiff;
    use burn::prelude::*;
    use burn::tensor::{FloatDType, Tolerance};

    use crate::TestBackend;

    type B = Autodiff<TestBackend>;

    /// `ours` (the op, on a tracked input) and `burns` (the composition it replaces), each
    /// differentiated for the loss `Σ output · upstream` at `x`: outputs and input gradients
    /// agree within `tolerance`, both in `x`'s dtype; and `evaluated` (the op without autodiff,
    /// on `x`'s inner tensor) gives `ours`'s output exactly.
    pub(crate) fn assert_matches_burn<const D: usize>(
        x: Tensor<B, D>,
        upstream: Tensor<B, D>,
        ours: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
        burns: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
        evaluated: impl Fn(Tensor<TestBackend, D>) -> Tensor<TestBackend, D>,
        tolerance: Tolerance<f32>,
    ) {
        let dtype = x.dtype();
        let run = |forward: &dyn Fn(Tensor<B, D>) -> Tensor<B, D>| {
            let x = x.clone().require_grad();
            let output = forward(x.clone());
            assert_eq!(output.dims(), upstream.dims());
            assert_eq!(output.dtype(), dtype);
            let grads = (output.clone() * upstream.clone()).sum().backward();
            let gradient = x.grad(&grads).expect("the input is tracked");
            assert_eq!(gradient.dtype(), dtype);
            (output.inner(), gradient)
        };
        let ours = run(&ours);
        let burns = run(&burns);
        let as_f32 = |tensor: Tensor<TestBackend, D>| tensor.cast(FloatDType::F32).into_data();
        as_f32(ours.0.clone()).assert_approx_eq::<f32>(&as_f32(burns.0), tolerance);
        as_f32(ours.1).assert_approx_eq::<f32>(&as_f32(burns.1), tolerance);
        as_f32(evaluated(x.inner()))
            .assert_approx_eq::<f32>(&as_f32(ours.0), Tolerance::rel_abs(0.0, 0.0));
    }
}
