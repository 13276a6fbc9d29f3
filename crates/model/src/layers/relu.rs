//! ReLU for the blocks whose kept tensors can be compressed (the 3-D ResNet's and ST-GCN's block
//! outputs). Burn's ReLU keeps its output for backward, which is also the next block's input:
//! when the next block's ops keep that input as codes (`model.activation_bits`), Burn's ReLU would
//! still hold the whole tensor. Inside a compressing stretch on the CPU
//! ([`crate::quantize::CompressedKeeping`]) the ReLU is one op of the autodiff graph that keeps
//! which values passed, one bit each, as ActNN keeps its ReLU masks; elsewhere it is Burn's.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Shape, TensorMetadata};

use crate::quantize::{compressing, gate_bits, gated_by};
use crate::tracked_ops::{
    flex, from_tracked_host, host, parent_ids, record, register, tracked_host,
};

/// `max(x, 0)`; see the module's comment for what it keeps.
pub fn relu_block_output<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    let on_host = B::ad_enabled(&device) && crate::cpu_kernels::host_tensors::<B>(&device);
    if !(on_host && compressing() && crate::cpu_kernels::host_float(x.dtype())) {
        return relu(x);
    }
    let x = tracked_host(x).expect("autodiff tensors on the host are burn-flex's");
    let shape = x.primitive.shape();
    let flat = Shape::new([shape.num_elements()]);
    let output = relu(host::<1>(Flex::float_reshape(x.primitive.clone(), flat)));
    let output_primitive = Flex::float_reshape(flex(output.clone()), shape);
    let output = record(GatedRelu, [&x], output_primitive, || {
        Arc::new(gate_bits(output))
    });
    from_tracked_host(output)
}

/// The op; its state is the gate.
#[derive(Debug)]
struct GatedRelu;

impl Backward<Flex, 1> for GatedRelu {
    type State = Arc<Vec<u8>>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let [input_node, ..] = parent_ids(&ops);
        let shape = upstream.shape();
        let flat = host::<1>(Flex::float_reshape(
            upstream,
            Shape::new([shape.num_elements()]),
        ));
        let gradient = flex(gated_by(&ops.state, flat));
        register(
            grads,
            input_node,
            Some(Flex::float_reshape(gradient, shape)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use crate::quantize::CompressedKeeping;
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, FloatDType};

    type B = Autodiff<TestBackend>;

    /// Inside a compressing stretch the gated op gives Burn's ReLU and its gradient exactly, in
    /// f32 and in bf16 (values at exactly 0 included: neither passes a gradient there).
    #[test]
    fn the_gated_relu_equals_burns() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let x = Tensor::<B, 4>::random([2, 3, 5, 7], Distribution::Default, &device)
                .sub_scalar(0.5)
                .mask_fill(
                    Tensor::<B, 4>::random([2, 3, 5, 7], Distribution::Default, &device)
                        .lower_elem(0.1),
                    0.0,
                )
                .cast(dtype)
                .detach();
            let upstream = Tensor::<B, 4>::random([2, 3, 5, 7], Distribution::Default, &device);
            let run = |gated: bool| {
                let x = x.clone().require_grad();
                let output = if gated {
                    let _scope = CompressedKeeping::begin(8, 1);
                    relu_block_output(x.clone())
                } else {
                    relu(x.clone())
                };
                let grads = (output.clone().cast(FloatDType::F32) * upstream.clone())
                    .sum()
                    .backward();
                (
                    output.inner().into_data(),
                    x.grad(&grads).unwrap().into_data(),
                )
            };
            let (ours, theirs) = (run(true), run(false));
            assert_eq!(ours.0, theirs.0, "{dtype:?}");
            assert_eq!(ours.1, theirs.1, "{dtype:?}");
        }
    }
}
