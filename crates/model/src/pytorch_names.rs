//! How PyTorch state dicts name vidtrain's parameters, in both directions: `model.pretrained`
//! reads torchvision's R3D, mmaction2's ST-GCN and the references in `bench/` through the import
//! renames, and `vidtrain export` writes a trained model under the same names through the export
//! renames. Each backbone states its own names next to its code (`ChainConfig::pytorch_names`);
//! this module adds the renames that concern the whole model. Pure data: reading and writing the
//! files is the trainer's (`vidtrain_trainer::persist::{pretrained, export}`).

use burn::tensor::TensorData;

use crate::{ActionModelConfig, backbones};

/// `(regex, replacement)` pairs applied in order to every key.
pub type Renames = &'static [(&'static str, &'static str)];

/// A backbone's PyTorch names, each direction as tables of renames applied in order (tables,
/// so that backbones sharing parts — the encoder blocks of the seed transformer and ViViT —
/// share their names).
#[derive(Debug, Clone, Copy, Default)]
pub struct PytorchNames {
    /// PyTorch key → vidtrain module path (`stem.0.weight` → `backbone.stem_conv.weight`).
    pub import: &'static [Renames],
    /// vidtrain module path, as burn-store's PyTorch adapter writes it (BatchNorm's and
    /// LayerNorm's γ/β already `weight`/`bias`) → PyTorch key.
    pub export: &'static [Renames],
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
        backbones::vivit::PYTORCH_NAMES,
    ] {
        for &rename in names.import.iter().flat_map(|table| table.iter()) {
            // The seed transformer and ViViT share their encoder blocks' names.
            if !renames.contains(&rename) {
                renames.push(rename);
            }
        }
    }
    renames
}

/// The export renames of the model `config` describes: each of its encoders' (an encoder's
/// renames also name the classifier the way its PyTorch reference does).
pub fn export_renames(config: &ActionModelConfig) -> Vec<(&'static str, &'static str)> {
    let mut renames = Vec::new();
    if let Some(backbone) = &config.backbone {
        renames.extend(
            backbone
                .as_chain()
                .pytorch_names()
                .export
                .iter()
                .flat_map(|t| t.iter()),
        );
    }
    if let Some(encoder) = &config.keypoint_encoder {
        renames.extend(
            encoder
                .as_chain()
                .pytorch_names()
                .export
                .iter()
                .flat_map(|t| t.iter()),
        );
    }
    renames
}

/// A tensor that a chain's PyTorch reference stores in another layout than vidtrain's module:
/// ViViT's tubelet embedding is a `Linear` over (frame, channel, row, column) values here and a
/// `Conv3d` with weight `[D, channel, frame, row, column]` in PyTorch.
#[derive(Debug, Clone, PartialEq)]
pub struct PytorchLayout {
    /// vidtrain's module path (`backbone.embedding.weight`).
    pub path: &'static str,
    /// The tensor's shape here, in PyTorch's orientation (burn-store's PyTorch adapter gives a
    /// `Linear` weight as `[out, in]`).
    pub shape: Vec<usize>,
    /// That tensor viewed with this shape…
    pub view: Vec<usize>,
    /// …with its axes in this order is PyTorch's tensor.
    pub permutation: Vec<usize>,
}

impl PytorchLayout {
    /// PyTorch's shape of the tensor.
    pub fn pytorch_shape(&self) -> Vec<usize> {
        self.permutation
            .iter()
            .map(|&axis| self.view[axis])
            .collect()
    }

    /// vidtrain's values (of [`Self::shape`]) in PyTorch's layout.
    pub fn to_pytorch(&self, data: TensorData) -> TensorData {
        let values = data
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32");
        let permuted = permute(&values, &self.view, &self.permutation);
        TensorData::new(permuted, self.pytorch_shape())
    }

    /// PyTorch's values (of [`Self::pytorch_shape`]) in vidtrain's layout, of [`Self::shape`].
    pub fn from_pytorch(&self, data: TensorData) -> TensorData {
        let values = data
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32");
        let mut inverse = vec![0; self.permutation.len()];
        for (position, &axis) in self.permutation.iter().enumerate() {
            inverse[axis] = position;
        }
        let permuted = permute(&values, &self.pytorch_shape(), &inverse);
        TensorData::new(permuted, self.shape.clone())
    }
}

/// `values` of row-major `shape` with their axes reordered: axis `i` of the result is axis
/// `permutation[i]` of the input.
fn permute(values: &[f32], shape: &[usize], permutation: &[usize]) -> Vec<f32> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    let out_shape: Vec<usize> = permutation.iter().map(|&axis| shape[axis]).collect();
    let out_strides: Vec<usize> = permutation.iter().map(|&axis| strides[axis]).collect();
    let mut index = vec![0; out_shape.len()];
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        let source: usize = index.iter().zip(&out_strides).map(|(i, s)| i * s).sum();
        out.push(values[source]);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < out_shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

/// The layout changes of the model `config` describes (its encoders').
pub fn pytorch_layouts(config: &ActionModelConfig) -> Vec<PytorchLayout> {
    let backbone = config.backbone.as_ref().map(|c| c.as_chain());
    let keypoints = config.keypoint_encoder.as_ref().map(|c| c.as_chain());
    backbone
        .into_iter()
        .chain(keypoints)
        .flat_map(|chain| chain.pytorch_layouts())
        .collect()
}

/// State-dict entries with no counterpart in a Burn module: BatchNorm's step counter.
pub fn is_ignored_pytorch_key(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_change_round_trips_and_moves_axes_as_pytorch_permute_does() {
        // [2, 3·2] viewed as [2, 3, 2] (out, frame, channel), PyTorch's [out, channel, frame].
        let layout = PytorchLayout {
            path: "backbone.embedding.weight",
            shape: vec![2, 6],
            view: vec![2, 3, 2],
            permutation: vec![0, 2, 1],
        };
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let pytorch = layout.to_pytorch(TensorData::new(values.clone(), [2, 6]));
        assert_eq!(pytorch.shape.to_vec(), vec![2, 2, 3]);
        // out 0, channel 1, frames 0..3 were values 1, 3, 5 (index frame·2 + channel).
        assert_eq!(
            pytorch.to_vec::<f32>().unwrap(),
            vec![0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.]
        );
        let back = layout.from_pytorch(pytorch);
        assert_eq!(back.shape.to_vec(), vec![2, 6]);
        assert_eq!(back.to_vec::<f32>().unwrap(), values);
    }
}
