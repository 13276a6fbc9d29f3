//! The memory plan: peak host and device memory of a training run predicted from sizes alone,
//! before anything is decoded or trained. The caller (the trainer, which knows the model and the
//! config) describes the parts in bytes; this module combines them the way a training step lives
//! through them: parameters, gradients and optimizer state for the whole run, prefetched batches,
//! and the activations of one micro-batch, whose peak depends on which layers are recomputed.

use serde::Serialize;

/// Resident memory allowed for one running ffmpeg decoder process of one view (its code and
/// shared libraries count in its RSS, plus the reference frames it holds). Measured with ffmpeg
/// 5.1, `-threads 1`, H.264 scaled to 224 px: 45 MiB from a 64 px source, 68 MiB from 720p,
/// 76 MiB from 1080p. The pipeline runs at most one decoder per worker at a time, so the process
/// tree stays within the host plan plus `num_workers × decoder_rss_bytes(data.views_per_decoder)`.
pub const DECODER_RSS_BYTES: u64 = 96 << 20;

/// What each further view of a sample adds to a decoder that decodes several
/// (`data.views_per_decoder`): its input's reference frames. Measured (ffmpeg 5.1, 224 px
/// output): three views in one process 75 MiB from 720p against 60 MiB for one, 90 MiB from
/// 1080p against 64 MiB.
pub const DECODER_VIEW_RSS_BYTES: u64 = 24 << 20;

/// [`DECODER_RSS_BYTES`] for a decoder process of `views` views.
pub fn decoder_rss_bytes(views: usize) -> u64 {
    DECODER_RSS_BYTES + views.saturating_sub(1) as u64 * DECODER_VIEW_RSS_BYTES
}

/// One layer of a chain, in bytes for one micro-batch.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationLayer {
    /// Layer name (for the table).
    pub name: String,
    /// Kept by the autodiff graph for backward when the layer runs tracked.
    pub saved: u64,
    /// Alive only while its forward runs.
    pub forward_extra: u64,
    /// Alive only while its backward runs.
    pub backward_extra: u64,
    /// Alive at the peak of its replay under recompute (for the whole micro-batch).
    pub replay_peak: u64,
    /// Alive while it runs without autodiff, beyond input and output.
    pub inference_extra: u64,
    /// Its output (the next layer's input).
    pub output: u64,
    /// Whether activation recompute drops its graph and replays it in backward.
    pub recomputed: bool,
    /// When recomputed (or differentiated by hand), the bytes its input is kept in until its
    /// backward (`model.activation_bits` below 32: codes, block ranges and a ReLU gate); `None`
    /// keeps it as computed (the previous layer's output).
    pub kept_input: Option<u64>,
    /// What its backward holds of its kept input: `None`, the input restored whole (a replay);
    /// less where a kernel reads the kept input piece by piece.
    pub restored_input: Option<u64>,
    /// Its forward writes its output over its input (a BatchNorm + ReLU step whose input was
    /// compressed first): the output costs nothing beside the input.
    pub in_place: bool,
    /// Whether its replay runs one clip at a time (`clips` of them).
    pub per_clip: bool,
    /// Whether it runs one clip at a time without autodiff (validation, inference), its outputs
    /// then concatenated.
    pub inference_per_clip: bool,
}

/// Where the activations live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationHome {
    /// The CPU backend: activations are host memory.
    Host,
    /// A GPU: activations are device memory.
    Device,
}

/// Everything the plan prices.
#[derive(Debug, Clone, Serialize)]
pub struct PlanInput {
    /// Trainable parameters.
    pub parameters: u64,
    /// Bytes of a parameter as stored (f32 master weights: 4).
    pub parameter_bytes: u64,
    /// Parameters of the largest layer. The optimizer steps one parameter tensor at a time
    /// (Burn's adaptor takes each gradient out as it goes), so its temporaries are about one
    /// such layer, not a copy of the model (measured on r3d_18: the step's peak is parameters,
    /// gradients and moments plus ~one layer-4 convolution).
    pub largest_layer_parameters: u64,
    /// The optimizer's state between steps (Adam's two moments, SGD's momentum), bytes, as
    /// `train.optimizer_state` stores it.
    pub optimizer_state_bytes: u64,
    /// What it is, for the table (`Adam moments, 8-bit`).
    pub optimizer_state: String,
    /// The optimizer step's temporaries are one block per thread (the block-wise optimizers of
    /// bf16/8-bit state update parameters in place), not about one layer (Burn's f32 ones).
    pub blockwise_optimizer_step: bool,
    /// Clips per micro-batch (samples × views), for per-clip replays.
    pub clips: u64,
    /// The layers of every chain, in execution order.
    pub layers: Vec<ActivationLayer>,
    /// One loaded micro-batch on the host (u8 frames + f32 keypoints).
    pub batch_bytes: u64,
    /// Micro-batches the loading pipeline holds at most (queued + in workers + in use).
    pub pipeline_batches: u64,
    /// The model input as tensors (f32 video + keypoints) for one micro-batch.
    pub input_tensor_bytes: u64,
    /// The layers again for one validation / inference batch (`train.video_batch_size`), run
    /// forward only.
    pub inference_layers: Vec<ActivationLayer>,
    /// The model input as tensors for one validation batch (alive through the first layer).
    pub inference_input_tensor_bytes: u64,
    /// Samples per validation batch (for the table).
    pub inference_batch: u64,
    /// Clips per validation batch (per-clip layers run one clip at a time without autodiff).
    pub inference_clips: u64,
    /// Decoded samples kept across epochs (`data.cache_decoded_mib`, or less when the dataset is
    /// smaller).
    pub decoded_cache_bytes: u64,
    /// The process itself: code, allocator and runtime before any tensor (host).
    pub runtime_bytes: u64,
    /// Where activations live.
    pub home: ActivationHome,
    /// What the host allocator's reuse pool may add to the host tensors' peak, in percent
    /// (`trainer.allocator_slack_percent`; [`crate::reuse_pool`]). Priced at the largest working
    /// set the step frees before its peak ([`freed_before_peak`]), at most this bound.
    pub allocator_slack_percent: u64,
}

/// One row of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    /// What it is.
    pub name: String,
    /// Bytes at the peak.
    pub bytes: u64,
}

/// The predicted peaks, by component.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// Host components (their sum is the host peak).
    pub host: Vec<Component>,
    /// Device components (empty on the CPU backend).
    pub device: Vec<Component>,
    /// Predicted peak host RSS.
    pub host_peak_bytes: u64,
    /// Predicted peak device memory in use (0 on the CPU backend).
    pub device_peak_bytes: u64,
    /// The layer at the activation peak, for "what to turn down".
    pub activation_peak_layer: String,
    /// Activation and input bytes at the peak, training step or validation batch, whichever is
    /// larger (included in the host or device sum).
    pub activation_peak_bytes: u64,
}

/// The activation peak of one micro-batch and the layer at which it happens.
///
/// Forward: each kept layer adds its saved tensors; a recomputed one adds only its input (the
/// stored boundary) and its forward temporaries pass. Backward walks the layers in reverse:
/// while layer `i`'s backward runs, everything kept or stored for layers `0..=i` is still alive,
/// plus its gradients and temporaries; a recomputed layer first replays its forward (its saved
/// tensors, for one clip at a time when it replays per clip).
pub fn activation_peak(layers: &[ActivationLayer], clips: u64) -> (u64, String) {
    let moments = training_moments(layers, clips);
    peak_moment(&moments).map_or((0, String::new()), |index| {
        (moments[index].alive, moments[index].layer.to_string())
    })
}

/// One moment of a training step: a layer's forward or backward.
struct Moment<'a> {
    /// Bytes alive while it runs.
    alive: u64,
    layer: &'a str,
    /// Bytes it frees when it ends: its temporaries, and in backward the graph (or replay) it
    /// kept for it.
    freed: u64,
}

/// The index of the first moment with the most bytes alive.
fn peak_moment(moments: &[Moment<'_>]) -> Option<usize> {
    let mut peak: Option<usize> = None;
    for (index, moment) in moments.iter().enumerate() {
        if peak.is_none_or(|best| moment.alive > moments[best].alive) {
            peak = Some(index);
        }
    }
    peak
}

/// The moments of a training step in order (see [`activation_peak`]).
fn training_moments(layers: &[ActivationLayer], clips: u64) -> Vec<Moment<'_>> {
    let clips = clips.max(1);
    let mut moments = Vec::with_capacity(2 * layers.len());
    let mut kept_before = Vec::with_capacity(layers.len());
    let mut kept = 0u64;
    for (index, layer) in layers.iter().enumerate() {
        kept_before.push(kept);
        // While it runs: everything kept so far, its input, what it saves as it goes, its
        // temporaries and its output.
        let input = index
            .checked_sub(1)
            .map_or(0, |previous| layers[previous].output);
        let saving = if layer.recomputed {
            // A compressed input's codes are made before the layer runs.
            layer.kept_input.unwrap_or(0)
        } else {
            layer.saved
        };
        let output = if layer.in_place { 0 } else { layer.output };
        moments.push(Moment {
            alive: kept + input + saving + layer.forward_extra + output,
            layer: &layer.name,
            freed: layer.forward_extra,
        });
        kept += if layer.recomputed {
            layer.kept_input.unwrap_or(input)
        } else {
            layer.saved
        };
    }
    // The last output stays (the head's input) through the backward.
    let last_output = layers.last().map_or(0, |layer| layer.output);
    for (index, layer) in layers.iter().enumerate().rev() {
        // A replay first runs the layer forward again (its saved tensors and forward temporaries),
        // then its backward (saved tensors freed as it goes, gradient temporaries made).
        let share = if layer.recomputed && layer.per_clip {
            clips
        } else {
            1
        };
        let replay = if layer.recomputed {
            layer.replay_peak / share
        } else {
            0
        };
        let input = index
            .checked_sub(1)
            .map_or(0, |previous| layers[previous].output);
        // Its own stored input (recomputed) or graph (kept), and its gradient temporaries (a
        // per-clip replay makes them one clip at a time; the upstream gradient is whole).
        let own = if layer.recomputed {
            layer.restored_input.unwrap_or(input)
        } else {
            layer.saved
        };
        let backward = if layer.recomputed {
            0
        } else {
            layer.backward_extra
        };
        moments.push(Moment {
            alive: kept_before[index] + own + replay + backward + layer.output + last_output,
            layer: &layer.name,
            freed: own + replay + backward,
        });
    }
    moments
}

/// The most bytes one moment of the training step frees before the step's activation peak (the
/// first moment of [`activation_peak`]). The host allocator's reuse pool caches freed blocks, and the step's
/// later moments reuse cached blocks of the sizes they free; so at the peak it holds about the
/// largest working set freed before it (measured, `cargo xtask bench plan`, stop 41: the seed
/// model's stem at 224 px, whose convolutions' temporaries exceed the pool's bound, fills it —
/// RSS 160 MiB above the live tensors, bound 161 MiB; r3d_18 at 112 px with every block
/// replayed, about 50 MiB above them beside 250 MiB of bound, the replay at the peak being
/// the largest one; ViViT without recompute, whose temporaries are a few token-sized values, no
/// more than the runtime's share above them).
///
/// A peak in a layer's backward does not count what that layer's own forward freed: its
/// backward makes again what its forward made, in the same sizes (a replay; a CPU stem
/// convolution's clip of its input in f32), and takes those blocks back out of the pool
/// (measured, stop 55: the seed model's 224 px bf16 step on a CPU without a bf16 instruction
/// held 22 MiB above its live tensors at its second convolution's backward, where that
/// convolution's forward had freed 57 MiB).
pub fn freed_before_peak(layers: &[ActivationLayer], clips: u64) -> u64 {
    let moments = training_moments(layers, clips);
    let Some(before) = peak_moment(&moments) else {
        return 0;
    };
    // The forward moments come first, one per layer in order.
    let own_forward = (before >= layers.len()).then(|| 2 * layers.len() - 1 - before);
    moments[..before]
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != own_forward)
        .map(|(_, moment)| moment.freed)
        .max()
        .unwrap_or(0)
}

/// The peak of a forward pass without autodiff (validation, inference): one layer at a time holds
/// its input, its temporaries (what it would save is freed when it ends; a per-clip layer makes
/// them one of `clips` clips at a time, and holds its output twice while concatenating) and its
/// output. The first layer's input is `input_bytes`, the model's input tensors: nothing holds
/// them once it has run.
pub fn inference_peak(layers: &[ActivationLayer], clips: u64, input_bytes: u64) -> (u64, String) {
    let mut peak = (0u64, String::new());
    for (index, layer) in layers.iter().enumerate() {
        let input = index
            .checked_sub(1)
            .map_or(input_bytes, |previous| layers[previous].output);
        let share = if layer.inference_per_clip {
            clips.max(1)
        } else {
            1
        };
        // Per clip, the clips' outputs are collected and then concatenated: two copies.
        let outputs = if layer.inference_per_clip { 2 } else { 1 };
        let bytes = input + layer.inference_extra / share + outputs * layer.output;
        if bytes > peak.0 {
            peak = (bytes, layer.name.clone());
        }
    }
    peak
}

impl MemoryPlan {
    /// Combines `input` into per-component peaks.
    pub fn build(input: &PlanInput) -> Self {
        let weights = input.parameters * input.parameter_bytes;
        let (training, training_layer) = activation_peak(&input.layers, input.clips);
        let (validation, validation_layer) = inference_peak(
            &input.inference_layers,
            input.inference_clips,
            input.inference_input_tensor_bytes,
        );
        let training = training + input.input_tensor_bytes;
        let (activations, peak_layer, activation_name) = if training >= validation {
            (
                training,
                training_layer.clone(),
                format!("activations + input, training step (peak in {training_layer})"),
            )
        } else {
            (
                validation,
                validation_layer.clone(),
                format!(
                    "activations + input, validation batch of {} (peak in {validation_layer})",
                    input.inference_batch
                ),
            )
        };
        let (temporaries, temporaries_name) = if input.blockwise_optimizer_step {
            (0, "optimizer step temporaries (a block per thread)")
        } else {
            (
                (input.largest_layer_parameters * input.parameter_bytes).min(weights),
                "optimizer step temporaries (about one layer)",
            )
        };
        let optimizer_state = input.optimizer_state_bytes;
        let optimizer_state_name = format!("optimizer state ({})", input.optimizer_state);
        let model_state = [
            ("parameters (f32 master weights)", weights),
            ("gradients", weights),
            (optimizer_state_name.as_str(), optimizer_state),
            (temporaries_name, temporaries),
        ];
        let mut host = vec![Component {
            name: "runtime (code, allocator, threads)".into(),
            bytes: input.runtime_bytes,
        }];
        let mut device = Vec::new();
        let compute = match input.home {
            ActivationHome::Host => &mut host,
            ActivationHome::Device => &mut device,
        };
        for (name, bytes) in model_state {
            compute.push(Component {
                name: name.into(),
                bytes,
            });
        }
        compute.push(Component {
            name: activation_name,
            bytes: activations,
        });
        // Saving a checkpoint copies the optimizer state (the largest record) into `TensorData`
        // on the host as it is written, after the step's gradients and activations are freed.
        // On the host that is what it adds beyond them; from a GPU the copy is all host memory.
        let save_name = "checkpoint save (optimizer state copied as it is written)";
        match input.home {
            ActivationHome::Host => {
                let beyond = optimizer_state.saturating_sub(weights + temporaries + activations);
                if beyond > 0 {
                    host.push(Component {
                        name: format!("{save_name}, beyond the step's gradients and activations"),
                        bytes: beyond,
                    });
                }
            }
            ActivationHome::Device => host.push(Component {
                name: save_name.into(),
                bytes: optimizer_state,
            }),
        }
        host.push(Component {
            name: format!(
                "loading pipeline ({} batches of {})",
                input.pipeline_batches,
                crate::format_bytes(input.batch_bytes)
            ),
            bytes: input.pipeline_batches * input.batch_bytes,
        });
        if input.decoded_cache_bytes > 0 {
            host.push(Component {
                name: "decoded-sample cache".into(),
                bytes: input.decoded_cache_bytes,
            });
        }
        let sum = |components: &[Component]| components.iter().map(|c| c.bytes).sum::<u64>();
        if input.allocator_slack_percent > 0 {
            // The pool holds freed blocks for reuse up to this share of the live blocks' peak:
            // everything on the host but the runtime itself. At a validation peak it holds
            // what the training step left and validation could not reuse (it allocates the same
            // sizes batch after batch): at most the share of the training step's tensors
            // (measured 7 % above the live blocks at the validation peak of the seed model's
            // 160 px 3-view case, where the share of the validation tensors over-predicted by
            // 16 %).
            let validation_excess = match input.home {
                ActivationHome::Host => activations - training.min(activations),
                ActivationHome::Device => 0,
            };
            let tensors = sum(&host) - input.runtime_bytes - validation_excess;
            let bound = tensors * input.allocator_slack_percent / 100;
            // At a validation peak the pool holds what the training step left: the same.
            let pool_at_peak = freed_before_peak(&input.layers, input.clips);
            host.push(Component {
                name: format!(
                    "allocator reuse pool (what the step freed before its peak, at most {} % \
                     of the host tensors, trainer.allocator_slack_percent)",
                    input.allocator_slack_percent
                ),
                bytes: bound.min(pool_at_peak),
            });
        }
        Self {
            host_peak_bytes: sum(&host),
            device_peak_bytes: sum(&device),
            host,
            device,
            activation_peak_layer: peak_layer,
            activation_peak_bytes: activations,
        }
    }

    /// The plan as a table, host then device, each with its peak.
    pub fn table(&self) -> String {
        let mut text = String::new();
        for (title, components, peak) in [
            ("host", &self.host, self.host_peak_bytes),
            ("device", &self.device, self.device_peak_bytes),
        ] {
            if components.is_empty() {
                continue;
            }
            text += &format!("{title}\n");
            for component in components {
                text += &format!(
                    "  {:<52} {:>12}\n",
                    component.name,
                    crate::format_bytes(component.bytes)
                );
            }
            text += &format!("  {:<52} {:>12}\n", "peak", crate::format_bytes(peak));
        }
        text
    }
}

/// Parses `4GiB`, `512MiB`, `8GB`, `1.5g` or a plain number of bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        _ => return None,
    };
    (number >= 0.0).then_some((number * factor) as u64)
}

#[cfg(test)]
mod tests;
