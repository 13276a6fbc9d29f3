//! The replays of blocks whose intermediates would dwarf their input: an encoder block's
//! attention one query block at a time, a Mamba block's selective scans one chunk at a time. Each
//! leaves its parameter gradients in [`Gradients`] and returns its input's gradient.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::Gradients;
use crate::layers::encoder::{EncoderBlock, query_block_seed, query_blocks};
use crate::layers::mamba::MambaBlock;
use crate::layers::selective_scan::{ScanInputs, scan_chunk, selective_scan_with_carries};

/// Replays a recomputed Mamba block without ever holding a whole scan's states: the block's
/// first stage (norm, projections, convolutions) and its scans run untracked, the last stage
/// (gate, out-projection, residual) is differentiated from the scans' outputs, then each scan is
/// differentiated one chunk at a time from the last, each chunk from its carried-in state (kept
/// from an untracked pass) with the gradient of its carried-out state coming from the chunk after
/// it, and finally the first stage from the scan inputs' gradients.
pub(super) fn replay_mamba_block<B: AutodiffBackend, M: AutodiffModule<B>>(
    block: &MambaBlock<B>,
    input: Tensor<B, 3>,
    upstream: Tensor<B, 3>,
    wants_input_gradient: bool,
    gradients: &mut Gradients<'_, B, M>,
) -> Option<Tensor<B, 3>> {
    let track = |tensor: Tensor<B, 3>| {
        if wants_input_gradient {
            tensor.detach().require_grad()
        } else {
            tensor.detach()
        }
    };
    let untracked = block.clone().no_grad();
    let (gate, scans) = untracked.scan_inputs(input.clone().detach());
    let dtype = scans[0].x.dtype();
    // One untracked pass per scan gives its output and the state entering each chunk.
    let (outputs, carries): (Vec<_>, Vec<_>) = scans
        .iter()
        .zip(untracked.scan_parameters(dtype))
        .map(|(inputs, parameters)| selective_scan_with_carries(inputs, &parameters, block.chunk()))
        .unzip();

    // The last stage, from the scans' outputs.
    let residual = track(input.clone());
    let gate = gate.require_grad();
    let outputs: Vec<Tensor<B, 3>> = outputs.into_iter().map(Tensor::require_grad).collect();
    let output = block.output(residual.clone(), gate.clone(), outputs.clone());
    let grads = (output * upstream).sum().backward();
    let residual_gradient = residual.grad(&grads).map(Tensor::<B, 3>::from_inner);
    let gradient_of = |leaf: &Tensor<B, 3>, grads: &B::Gradients| {
        Tensor::<B, 3>::from_inner(leaf.grad(grads).expect("a Mamba stage input is used"))
    };
    let gate_gradient = gradient_of(&gate, &grads);
    let output_gradients: Vec<Tensor<B, 3>> = outputs
        .iter()
        .map(|output| gradient_of(output, &grads))
        .collect();
    gradients.add(grads);
    // Only their gradients are read from here on.
    drop((gate, outputs));

    // Each scan, one chunk at a time from the last.
    let mut scan_gradients = Vec::with_capacity(scans.len());
    for (direction, ((inputs, output_gradient), carries)) in
        scans.iter().zip(output_gradients).zip(carries).enumerate()
    {
        let mut carry_gradient: Option<Tensor<B, 3>> = None;
        let mut pieces = Vec::new();
        for ((start, length), carry) in inputs.chunks(block.chunk()).into_iter().zip(carries).rev()
        {
            let piece = inputs.narrow(start, length);
            let leaves = ScanInputs {
                x: piece.x.require_grad(),
                delta: piece.delta.require_grad(),
                b: piece.b.require_grad(),
                c: piece.c.require_grad(),
            };
            let carry = carry.map(Tensor::require_grad);
            let parameters = block.direction_scan_parameters(direction, dtype);
            let (y, last) = scan_chunk(&leaves, &parameters, carry.clone());
            let mut objective = (y * output_gradient.clone().narrow(0, start, length)).sum();
            if let Some(carry_gradient) = carry_gradient.take() {
                objective = objective + (last * carry_gradient).sum();
            }
            let grads = objective.backward();
            pieces.push(ScanInputs {
                x: gradient_of(&leaves.x, &grads),
                delta: gradient_of(&leaves.delta, &grads),
                b: gradient_of(&leaves.b, &grads),
                c: gradient_of(&leaves.c, &grads),
            });
            carry_gradient = carry.map(|carry| gradient_of(&carry, &grads));
            gradients.add(grads);
        }
        pieces.reverse();
        let cat = |field: fn(&ScanInputs<B>) -> &Tensor<B, 3>| {
            Tensor::cat(pieces.iter().map(|piece| field(piece).clone()).collect(), 0)
        };
        scan_gradients.push(ScanInputs {
            x: cat(|piece| &piece.x),
            delta: cat(|piece| &piece.delta),
            b: cat(|piece| &piece.b),
            c: cat(|piece| &piece.c),
        });
    }

    // The first stage, from the gradients of the gate and of the scans' inputs, which it
    // recomputes tracked: the untracked ones are no longer needed.
    drop(scans);
    let input = track(input);
    let (gate, scans) = block.scan_inputs(input.clone());
    // The gate is in the compute dtype, the scan inputs in the scan's: sum the terms in the
    // scan's.
    let mut objective = (gate * gate_gradient).sum().cast(dtype);
    for (inputs, gradient) in scans.into_iter().zip(scan_gradients) {
        objective = objective
            + (inputs.x * gradient.x).sum()
            + (inputs.delta * gradient.delta).sum()
            + (inputs.b * gradient.b).sum()
            + (inputs.c * gradient.c).sum();
    }
    let grads = objective.backward();
    let input_gradient = input.grad(&grads).map(Tensor::<B, 3>::from_inner);
    gradients.add(grads);
    match (input_gradient, residual_gradient) {
        (Some(stages), Some(residual)) => Some(stages + residual),
        _ => None,
    }
}

/// Replays a recomputed encoder block without ever holding all of its attention scores: the
/// queries/keys/values and the attention context are recomputed untracked, the block's second
/// half is differentiated from the context, then attention is differentiated one query block at
/// a time (dropout masks replayed from the per-block seeds derived from `seed`), and finally the
/// first half. The backend generator must be seeded with `seed`, as before the block's forward.
pub(super) fn replay_encoder_block<B: AutodiffBackend, M: AutodiffModule<B>>(
    block: &EncoderBlock<B>,
    input: Tensor<B, 3>,
    upstream: Tensor<B, 3>,
    seed: u64,
    wants_input_gradient: bool,
    gradients: &mut Gradients<'_, B, M>,
) -> Option<Tensor<B, 3>> {
    let tokens = input.dims()[1];
    let blocks = query_blocks(tokens);
    let untracked = block.clone().no_grad();
    let qkv = untracked.query_key_value(input.clone().detach());
    let context = untracked.attention(qkv.clone(), Some(seed));

    let input_leaf = input.clone().detach().require_grad();
    let context_leaf = context.require_grad();
    let output = block.after_attention(input_leaf.clone(), context_leaf.clone());
    let grads = (output * upstream).sum().backward();
    let residual_gradient = input_leaf.grad(&grads).map(Tensor::<B, 3>::from_inner);
    let context_gradient = Tensor::<B, 3>::from_inner(
        context_leaf
            .grad(&grads)
            .expect("the attention context feeds the block output"),
    );
    gradients.add(grads);

    let [batch, _, width] = qkv.dims();
    let mut qkv_gradient: Option<Tensor<B, 3>> = None;
    for (number, rows) in blocks.into_iter().enumerate() {
        let qkv_leaf = qkv.clone().require_grad();
        let rows_seed = Some(query_block_seed(seed, number));
        let rows_context = block.attention_rows(qkv_leaf.clone(), rows.clone(), rows_seed);
        let rows_upstream = context_gradient
            .clone()
            .slice([0..batch, rows, 0..width / 3]);
        let grads = (rows_context * rows_upstream).sum().backward();
        let part = Tensor::<B, 3>::from_inner(
            qkv_leaf
                .grad(&grads)
                .expect("attention reads the queries, keys and values"),
        );
        qkv_gradient = Some(match qkv_gradient {
            Some(sum) => sum + part,
            None => part,
        });
    }
    let qkv_gradient = qkv_gradient.expect("a block attends over at least one query");

    let input_leaf = if wants_input_gradient {
        input.detach().require_grad()
    } else {
        input.detach()
    };
    let grads = (block.query_key_value(input_leaf.clone()) * qkv_gradient)
        .sum()
        .backward();
    let first_half_gradient = input_leaf.grad(&grads).map(Tensor::<B, 3>::from_inner);
    gradients.add(grads);
    match (residual_gradient, first_half_gradient) {
        (Some(a), Some(b)) if wants_input_gradient => Some(a + b),
        _ => None,
    }
}
