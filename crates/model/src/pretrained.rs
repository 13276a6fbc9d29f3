//! How PyTorch state dicts name vidtrain's parameters: the key renames that carry
//! torchvision's `r3d_18` (and its depth-10/34 siblings), mmaction2's ST-GCN and the seed
//! transformer of `bench/pytorch_reference.py` onto
//! [`crate::ActionModel`]'s module paths. Pure data: reading the file is the trainer's
//! (`vidtrain_trainer::pretrained`, through burn-store).

/// `(regex, replacement)` pairs applied in order to every key of a PyTorch state dict.
/// Keys already in vidtrain's own layout (`backbone.…`, `keypoint_gcn.…`, `head.…`) pass
/// through unchanged.
pub const PYTORCH_KEY_RENAMES: &[(&str, &str)] = &[
    // Checkpoints saved from a Lightning module or mmaction2 runner nest the state dict.
    (r"^(?:state_dict\.|model\.|module\.)+", ""),
    // torchvision's VideoResNet.
    (r"^stem\.0\.", "backbone.stem_conv."),
    (r"^stem\.1\.", "backbone.stem_norm."),
    (r"^(layer[1-4]\.\d+)\.conv1\.0\.", "backbone.$1.conv1."),
    (r"^(layer[1-4]\.\d+)\.conv1\.1\.", "backbone.$1.bn1."),
    (r"^(layer[1-4]\.\d+)\.conv2\.0\.", "backbone.$1.conv2."),
    (r"^(layer[1-4]\.\d+)\.conv2\.1\.", "backbone.$1.bn2."),
    (
        r"^(layer[1-4]\.\d+)\.downsample\.0\.",
        "backbone.$1.downsample.conv.",
    ),
    (
        r"^(layer[1-4]\.\d+)\.downsample\.1\.",
        "backbone.$1.downsample.norm.",
    ),
    (r"^fc\.", "head."),
    // The seed transformer of `bench/pytorch_reference.py` (stages of Conv3d + BatchNorm3d,
    // `nn.TransformerEncoderLayer` blocks with `norm_first`).
    (r"^stage([12])\.0\.", "backbone.stem.conv$1."),
    (r"^stage([12])\.1\.", "backbone.stem.norm$1."),
    (
        r"^blocks\.(\d+)\.layer\.self_attn\.in_proj_(weight|bias)$",
        "backbone.blocks.$1.qkv.$2",
    ),
    (
        r"^blocks\.(\d+)\.layer\.self_attn\.out_proj\.",
        "backbone.blocks.$1.projection.",
    ),
    (
        r"^blocks\.(\d+)\.layer\.norm1\.",
        "backbone.blocks.$1.norm_attention.",
    ),
    (
        r"^blocks\.(\d+)\.layer\.norm2\.",
        "backbone.blocks.$1.norm_feed_forward.",
    ),
    (
        r"^blocks\.(\d+)\.layer\.linear1\.",
        "backbone.blocks.$1.feed_forward_in.",
    ),
    (
        r"^blocks\.(\d+)\.layer\.linear2\.",
        "backbone.blocks.$1.feed_forward_out.",
    ),
    (r"^norm\.", "backbone.norm."),
    (r"^head\.", "head."),
    // mmaction2's RecognizerGCN: `backbone.` (STGCN) and `cls_head.fc_cls.`.
    (r"^backbone\.(data_bn|gcn)\.", "keypoint_gcn.$1."),
    (r"^cls_head\.fc_cls\.", "head."),
    // ST-GCN's `unit_gcn`: PyTorch's `A` and `PA`.
    (r"\.gcn\.A$", ".gcn.adjacency"),
    (r"\.gcn\.PA$", ".gcn.importance"),
];

/// State-dict entries with no counterpart in a Burn module: BatchNorm's step counter.
pub fn is_ignored_pytorch_key(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}
