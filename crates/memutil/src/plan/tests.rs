//! Tests of `plan`.

use super::*;

fn layer(name: &str, saved: u64, output: u64, recomputed: bool) -> ActivationLayer {
    ActivationLayer {
        name: name.into(),
        saved,
        forward_extra: 0,
        backward_extra: 0,
        replay_peak: saved,
        inference_extra: saved,
        output,
        recomputed,
        kept_input: None,
        restored_input: None,
        in_place: false,
        per_clip: false,
        inference_per_clip: false,
    }
}

#[test]
fn a_layer_run_per_clip_in_inference_holds_one_clips_temporaries_and_its_output_twice() {
    let mut conv = layer("conv", 0, 40, false);
    conv.inference_extra = 80;
    let input = layer("input", 0, 20, false);
    assert_eq!(
        inference_peak(&[input.clone(), conv.clone()], 4, 0).0,
        20 + 80 + 40
    );
    conv.inference_per_clip = true;
    assert_eq!(inference_peak(&[input, conv], 4, 0).0, 20 + 80 / 4 + 2 * 40);
}

#[test]
fn without_recompute_the_peak_holds_every_saved_tensor() {
    let layers = [layer("a", 100, 10, false), layer("b", 50, 5, false)];
    // Forward of b: a's 100 + b's input 10 + b's 50 + b's output 5 = 165. Backward of b: 150
    // kept + its output 5 + the chain's last output 5 = 160.
    assert_eq!(activation_peak(&layers, 1), (165, "b".to_string()));
}

#[test]
fn recompute_keeps_inputs_and_replays_one_layer_at_a_time() {
    let layers = [
        layer("a", 100, 10, true),
        layer("b", 100, 10, true),
        layer("c", 100, 10, true),
    ];
    // Kept: only the inputs of b and c (10 each). The largest moment is a replay: layer c's
    // backward with both stored inputs (20), 100 replayed, its upstream gradient 10 and the
    // chain's last output 10.
    let (peak, at) = activation_peak(&layers, 1);
    assert_eq!((peak, at.as_str()), (140, "c"));
    let plain = activation_peak(
        &layers.map(|l| ActivationLayer {
            recomputed: false,
            ..l
        }),
        1,
    );
    assert!(peak < plain.0, "{peak} vs {plain:?}");
}

#[test]
fn a_per_clip_replay_divides_its_saved_tensors_by_the_clips() {
    let mut conv = layer("conv", 400, 40, true);
    conv.per_clip = true;
    let layers = [conv, layer("head", 0, 4, false)];
    // Replay of conv: 400 / 4 clips + its upstream gradient 40 + the last output 4 = 144.
    assert_eq!(activation_peak(&layers, 4).0, 144);
}

/// A small model's plan input (4000 bytes of weights, Adam, three pipeline batches, a runtime of
/// 7) with `layers` in training, one layer `a` in validation, on the CPU (`home`: host).
fn small_input(layers: Vec<ActivationLayer>) -> PlanInput {
    PlanInput {
        parameters: 1000,
        parameter_bytes: 4,
        largest_layer_parameters: 400,
        optimizer_state_bytes: 8000,
        optimizer_state: "Adam moments".into(),
        blockwise_optimizer_step: false,
        clips: 1,
        layers,
        batch_bytes: 50,
        pipeline_batches: 3,
        input_tensor_bytes: 200,
        inference_layers: vec![layer("a", 100, 10, false)],
        inference_input_tensor_bytes: 50,
        inference_batch: 2,
        inference_clips: 2,
        decoded_cache_bytes: 0,
        runtime_bytes: 7,
        home: ActivationHome::Host,
        allocator_slack_percent: 0,
    }
}

#[test]
fn the_plan_adds_components_where_they_live() {
    let input = PlanInput {
        home: ActivationHome::Device,
        ..small_input(vec![layer("a", 100, 10, false)])
    };
    let plan = MemoryPlan::build(&input);
    // Device: weights 4000, gradients 4000, Adam 8000, step 1600 (the largest layer), input
    // 200, activations 120 (a's backward: its 100 saved, its output 10 and its gradient 10).
    assert_eq!(plan.device_peak_bytes, 17_920);
    // Host: runtime 7 + the optimizer state copied out at a save 8000 + pipeline 150.
    assert_eq!(plan.host_peak_bytes, 8157);
    let cpu = MemoryPlan::build(&PlanInput {
        home: ActivationHome::Host,
        ..input.clone()
    });
    // The save (weights 4000 + Adam 8000 + its copy 8000) is above the step's 17 920: it
    // adds 8000 - (4000 + 1600 + 320) = 2080.
    assert_eq!(cpu.host_peak_bytes, 7 + 17_920 + 2080 + 150);
    assert_eq!(cpu.device_peak_bytes, 0);
}

/// The reuse pool is priced at the largest working set the step frees before its peak (a
/// layer's forward temporaries here), within its bound (a share of everything but the runtime).
#[test]
fn the_reuse_pool_holds_what_the_step_freed_before_its_peak_within_its_bound() {
    let mut first = layer("x", 0, 10, false);
    first.forward_extra = 300;
    let input = small_input(vec![first, layer("a", 1000, 10, false)]);
    // The peak is a's forward (1000 saved beside x's output and its own); x's 300 were freed.
    assert_eq!(freed_before_peak(&input.layers, 1), 300);
    let pooled = |percent| {
        MemoryPlan::build(&PlanInput {
            allocator_slack_percent: percent,
            ..input.clone()
        })
        .host_peak_bytes
    };
    let unpooled = pooled(0);
    assert_eq!(pooled(25), unpooled + 300);
    assert_eq!(pooled(1), unpooled + (unpooled - 7) / 100);
    assert!((unpooled - 7) / 100 < 300);
}

/// What the step frees after its peak (a later layer's graph, a replay) is not in the pool at
/// the peak.
#[test]
fn only_what_is_freed_before_the_peak_counts() {
    let mut replayed = layer("early", 50, 10, true);
    replayed.replay_peak = 400;
    let layers = [replayed, layer("late", 1000, 10, false)];
    // Forward: early keeps its input (0) and frees nothing; late saves 1000 (the peak).
    assert_eq!(freed_before_peak(&layers, 1), 0);
    // After a smaller forward temporary of early's, that one.
    let mut layers = layers;
    layers[0].forward_extra = 30;
    assert_eq!(freed_before_peak(&layers, 1), 30);
}

/// A peak in a layer's backward takes back the blocks its own forward freed (its backward makes
/// the same temporaries again): only what other layers freed before it stays in the pool.
#[test]
fn a_peak_in_a_layers_backward_reuses_what_its_own_forward_freed() {
    let mut early = layer("early", 10, 10, false);
    early.forward_extra = 20;
    let mut stem = layer("stem", 10, 10, false);
    stem.forward_extra = 60;
    stem.backward_extra = 1000;
    let layers = [early, stem, layer("late", 10, 10, false)];
    // The peak is stem's backward; its forward freed 60, early's 20.
    assert_eq!(freed_before_peak(&layers, 1), 20);
    // A peak in another layer's backward keeps stem's 60 in the pool.
    let mut layers = layers;
    layers[1].backward_extra = 0;
    layers[0].backward_extra = 1000;
    assert_eq!(freed_before_peak(&layers, 1), 60);
}

#[test]
fn compressed_inputs_are_kept_small_and_restored_whole_for_their_backward() {
    let layers = [
        layer("a", 100, 40, true),
        layer("b", 100, 40, true),
        layer("c", 100, 40, true),
    ];
    let whole = activation_peak(&layers, 1).0;
    let compressed = layers.map(|l| ActivationLayer {
        kept_input: Some(10),
        ..l
    });
    // c's backward: b's and c's inputs kept at 10 each, c's restored whole (40) under its
    // replay (100), its output 40 and the chain's last 40: 240, where whole inputs held 40
    // each: 260.
    assert_eq!(whole, 260);
    assert_eq!(activation_peak(&compressed, 1), (240, "c".to_string()));
}

#[test]
fn a_large_validation_batch_can_set_the_peak() {
    let mut first = layer("a", 100, 10, false);
    first.forward_extra = 20;
    let layers = [first, layer("b", 50, 5, false)];
    // Training (peak 165 in b's forward, after a's 20 of temporaries were freed) vs a
    // forward-only batch ten times larger: a holds 1000 + 100.
    let big: Vec<_> = layers
        .iter()
        .map(|l| ActivationLayer {
            saved: l.saved * 10,
            inference_extra: l.inference_extra * 10,
            output: l.output * 10,
            ..l.clone()
        })
        .collect();
    assert_eq!(inference_peak(&big, 1, 0), (1100, "a".to_string()));
    let input = PlanInput {
        parameters: 0,
        parameter_bytes: 4,
        largest_layer_parameters: 0,
        optimizer_state_bytes: 0,
        optimizer_state: "none".into(),
        blockwise_optimizer_step: false,
        clips: 1,
        layers: layers.to_vec(),
        batch_bytes: 0,
        pipeline_batches: 0,
        input_tensor_bytes: 0,
        inference_layers: big,
        inference_input_tensor_bytes: 0,
        inference_batch: 20,
        inference_clips: 20,
        decoded_cache_bytes: 0,
        runtime_bytes: 0,
        home: ActivationHome::Host,
        allocator_slack_percent: 0,
    };
    let plan = MemoryPlan::build(&input);
    assert_eq!(plan.activation_peak_bytes, 1100);
    assert!(
        plan.host[5].name.contains("validation batch of 20"),
        "{:?}",
        plan.host
    );
    // The reuse pool at a validation peak holds what the training step freed before its peak
    // (a's 20), within a share of the training step's tensors (165 / 5), not of the validation
    // batch's.
    let pooled = |percent| {
        MemoryPlan::build(&PlanInput {
            allocator_slack_percent: percent,
            ..input.clone()
        })
        .host_peak_bytes
    };
    assert_eq!(pooled(20), 1100 + 20);
    assert_eq!(pooled(10), 1100 + 165 / 10);
}

#[test]
fn byte_sizes_parse_with_binary_and_decimal_units() {
    assert_eq!(parse_bytes("4GiB"), Some(4 << 30));
    assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
    assert_eq!(parse_bytes("8GB"), Some(8_000_000_000));
    assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
    assert_eq!(parse_bytes("1000"), Some(1000));
    assert_eq!(parse_bytes("lots"), None);
}
