//! How PyTorch state dicts name vidtrain's parameters, in both directions: `model.pretrained`
//! reads torchvision's R3D, mmaction2's ST-GCN and the references in `bench/` through the import
//! renames, and `vidtrain export` writes a trained model under the same names through the export
//! renames. Each backbone states its own names next to its code (`ChainConfig::pytorch_names`);
//! this module adds the renames that concern the whole model. Pure data: reading and writing the
//! files is the trainer's (`vidtrain_trainer::persist::{pretrained, export}`).

use crate::{ActionModelConfig, backbones};

/// A backbone's PyTorch names: `(regex, replacement)` pairs applied in order to every key.
#[derive(Debug, Clone, Copy, Default)]
pub struct PytorchNames {
    /// PyTorch key → vidtrain module path (`stem.0.weight` → `backbone.stem_conv.weight`).
    pub import: &'static [(&'static str, &'static str)],
    /// vidtrain module path, as burn-store's PyTorch adapter writes it (BatchNorm's and
    /// LayerNorm's γ/β already `weight`/`bias`) → PyTorch key.
    pub export: &'static [(&'static str, &'static str)],
}

impl PytorchNames {
    /// A backbone whose PyTorch reference uses vidtrain's own module paths (the Mamba
    /// references in `bench/mamba_reference.py`): nothing to rename.
    pub const VIDTRAIN: PytorchNames = PytorchNames {
        import: &[],
        export: &[],
    };
}

/// Checkpoints saved from a Lightning module or mmaction2 runner nest the state dict.
const NESTING: (&str, &str) = (r"^(?:state_dict\.|model\.|module\.)+", "");

/// Every import rename, whatever the configured backbone: a file is read before anything says
/// which network saved it, and the renames of different backbones do not overlap. Keys already
/// in vidtrain's own layout (`backbone.…`, `keypoint_gcn.…`, `head.…`) pass through unchanged.
pub fn pytorch_key_renames() -> Vec<(&'static str, &'static str)> {
    let mut renames = vec![NESTING];
    for names in [
        backbones::resnet3d::PYTORCH_NAMES,
        backbones::video_transformer::PYTORCH_NAMES,
        backbones::stgcn::PYTORCH_NAMES,
    ] {
        renames.extend_from_slice(names.import);
    }
    renames
}

/// The export renames of the model `config` describes: each of its encoders' (an encoder's
/// renames also name the classifier the way its PyTorch reference does).
pub fn export_renames(config: &ActionModelConfig) -> Vec<(&'static str, &'static str)> {
    let mut renames = Vec::new();
    if let Some(backbone) = &config.backbone {
        renames.extend_from_slice(backbone.as_chain().pytorch_names().export);
    }
    if let Some(encoder) = &config.keypoint_encoder {
        renames.extend_from_slice(encoder.as_chain().pytorch_names().export);
    }
    renames
}

/// State-dict entries with no counterpart in a Burn module: BatchNorm's step counter.
pub fn is_ignored_pytorch_key(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}
