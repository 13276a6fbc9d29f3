//! `model.pretrained`: PyTorch weights into a vidtrain model through burn-store (decision 0005).
//!
//! A `.pth`/`.pt` state dict (read by burn-store's pickle reader, no Python) or a `.safetensors`
//! file; keys are renamed by `vidtrain_model::pytorch_names::pytorch_key_renames` (torchvision's
//! R3D, mmaction2's ST-GCN, Lightning/DataParallel prefixes), Linear weights transposed and
//! BatchNorm's `weight`/`bias` read as γ/β by burn-store's PyTorch adapter. The classifier is
//! left at its fresh initialisation when the file's class count differs from
//! `model.model_class_num` (fine-tuning on other classes); anything else that does not fit —
//! a parameter the file lacks, a key the model has no place for, a shape that differs — is an
//! error that lists every such key.

use std::path::Path;
use std::rc::Rc;

use burn::prelude::*;
use burn_store::{
    ApplyError, KeyRemapper, ModuleSnapshot, ModuleStore, PathFilter, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore, TensorSnapshot,
};
use vidtrain_config::Config;
use vidtrain_model::pytorch_names::{
    PytorchLayout, is_ignored_pytorch_key, pytorch_key_renames, pytorch_layouts,
};
use vidtrain_model::{ActionModel, ActionModelConfig};

use crate::{Error, Result};

/// What loading a pretrained file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainedReport {
    /// Tensors loaded.
    pub loaded: usize,
    /// The file's class count when it differed from the model's (the classifier was left at
    /// its fresh initialisation), else `None`.
    pub head_reinitialised_from: Option<usize>,
}

const KEY: &str = "model.pretrained";

fn setting(message: String) -> Error {
    Error::Setting {
        key: KEY.into(),
        message,
    }
}

/// The file's tensors, renamed by `remapper` (read lazily: a tensor's values are read when it
/// is applied).
fn read_tensors(path: &Path, remapper: &KeyRemapper) -> Result<Vec<TensorSnapshot>> {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let unreadable = |error: String| {
        setting(format!(
            "{} could not be read as weights: {error}",
            path.display()
        ))
    };
    match extension.as_str() {
        "pth" | "pt" | "bin" | "ckpt" => PytorchStore::from_file(path)
            .remap(remapper.clone())
            .map_indices_contiguous(false)
            .get_all_snapshots()
            .map(|tensors| tensors.values().cloned().collect())
            .map_err(|error| unreadable(error.to_string())),
        "safetensors" => SafetensorsStore::from_file(path)
            .remap(remapper.clone())
            .map_indices_contiguous(false)
            .get_all_snapshots()
            .map(|tensors| tensors.values().cloned().collect())
            .map_err(|error| unreadable(error.to_string())),
        _ => Err(setting(format!(
            "{} is neither a PyTorch state dict (.pth, .pt) nor a .safetensors file",
            path.display()
        ))),
    }
}

/// `tensors` with every tensor that `layouts` names in vidtrain's layout. A tensor of another
/// shape than PyTorch's layout is left as it is (the load then reports its shape).
fn in_vidtrain_layouts(
    tensors: Vec<TensorSnapshot>,
    layouts: &[PytorchLayout],
) -> Vec<TensorSnapshot> {
    tensors
        .into_iter()
        .map(|tensor| {
            let path = tensor.full_path();
            let Some(layout) = layouts.iter().find(|layout| {
                layout.path == path && tensor.shape.as_slice() == layout.pytorch_shape()
            }) else {
                return tensor;
            };
            let shape = layout.shape.clone();
            let layout = layout.clone();
            let read = tensor.clone_data_fn();
            TensorSnapshot::from_closure(
                Rc::new(move || read().map(|data| layout.from_pytorch(data))),
                tensor.dtype,
                shape.into(),
                tensor.path_stack.clone().unwrap_or_default(),
                tensor.container_stack.clone().unwrap_or_default(),
                tensor.tensor_id.unwrap_or_default(),
            )
        })
        .collect()
}

/// Checks, before a run starts, that `model.pretrained` (when set) loads into the configured
/// model: the same load into a throwaway CPU model.
pub fn check(config: &Config) -> Result<()> {
    if config.model.pretrained.is_empty() {
        return Ok(());
    }
    let device = Default::default();
    let mut model: ActionModel<burn::backend::Flex> =
        vidtrain_model::ActionModelConfig::from_config(config).init(&device);
    load(&mut model, config, Path::new(&config.model.pretrained)).map(|_| ())
}

/// Loads `config.model.pretrained` into `model`.
pub fn load<B: Backend>(
    model: &mut ActionModel<B>,
    config: &Config,
    path: &Path,
) -> Result<PretrainedReport> {
    if !path.is_file() {
        return Err(setting(format!(
            "{} does not exist or is not a file",
            path.display()
        )));
    }
    let remapper = KeyRemapper::from_patterns(pytorch_key_renames())
        .expect("the key renames are valid regular expressions");
    let layouts = pytorch_layouts(&ActionModelConfig::from_config(config));
    let tensors = in_vidtrain_layouts(read_tensors(path, &remapper)?, &layouts);
    let shapes: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|tensor| (tensor.full_path(), tensor.shape.to_vec()))
        .collect();
    // PyTorch's classifier weight is [classes, features].
    let classes = config.model.model_class_num;
    let head_reinitialised_from = shapes
        .iter()
        .find(|(key, _)| key == "head.weight")
        .and_then(|(_, shape)| shape.first().copied())
        .filter(|&file_classes| file_classes != classes);
    let filter = if head_reinitialised_from.is_some() {
        PathFilter::new().with_predicate(|path, _| !path.starts_with("head."))
    } else {
        PathFilter::new().match_all()
    };
    let result = model.apply(
        tensors,
        Some(filter),
        Some(Box::new(PyTorchToBurnAdapter)),
        true,
    );

    let mut problems = Vec::new();
    // One line per kind of problem: what, how many, which.
    let mut list = |what: &str, keys: Vec<String>| {
        if !keys.is_empty() {
            problems.push(format!("{what} ({}): {}", keys.len(), keys.join(", ")));
        }
    };
    // A head re-initialised for other classes is neither missing nor unexpected.
    let checked = |key: &str| head_reinitialised_from.is_none() || !key.starts_with("head.");
    list(
        "missing from the file",
        result
            .missing
            .iter()
            .map(|(path, _)| path.clone())
            .filter(|path| checked(path))
            .collect(),
    );
    // burn-store finds BatchNorm/LayerNorm's γ and β under PyTorch's `weight` and `bias` but
    // still lists those file keys as unused; they were used when their γ/β was applied, or
    // tried and refused for its shape (then the γ/β is listed as not loadable, and listing the
    // file key too named every such tensor twice). Applied paths carry enum variant names
    // (`backbone.Resnet3d.…`), which file keys do not.
    let without_variants = |path: &str| {
        path.split('.')
            .filter(|segment| !segment.starts_with(|c: char| c.is_ascii_uppercase()))
            .collect::<Vec<_>>()
            .join(".")
    };
    let mis_shaped_paths = result.errors.iter().filter_map(|error| match error {
        ApplyError::ShapeMismatch { path, .. } => Some(path.as_str()),
        _ => None,
    });
    let applied: std::collections::HashSet<String> = result
        .applied
        .iter()
        .map(String::as_str)
        .chain(mis_shaped_paths)
        .map(without_variants)
        .collect();
    let used_as_norm_parameter = |key: &str| {
        [(".weight", ".gamma"), (".bias", ".beta")]
            .iter()
            .any(|(pytorch, burn)| {
                key.strip_suffix(pytorch)
                    .is_some_and(|prefix| applied.contains(&format!("{prefix}{burn}")))
            })
    };
    list(
        "in the file but not in the model",
        result
            .unused
            .iter()
            .filter(|key| !is_ignored_pytorch_key(key) && !used_as_norm_parameter(key))
            .filter(|key| checked(key))
            .cloned()
            .collect(),
    );
    let mis_shaped = result
        .errors
        .iter()
        .map(|error| match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "{path} (model {:?}, file {:?})",
                expected.as_slice(),
                found.as_slice()
            ),
            other => other.to_string(),
        })
        .collect();
    list("not loadable", mis_shaped);
    if !problems.is_empty() {
        return Err(setting(format!(
            "{} does not fit the configured model (model.backbone = {:?}, model.resnet_depth, \
             model.resnet_width, model.stgcn_width, data.keypoint_indices must match the \
             network that saved it):\n  {}",
            path.display(),
            config.model.backbone,
            problems.join("\n  ")
        )));
    }
    Ok(PretrainedReport {
        loaded: result.applied.len(),
        head_reinitialised_from,
    })
}
