//! `vidtrain export`: a trained model's weights as a PyTorch state dict, under the names its
//! PyTorch reference uses (torchvision's R3D, mmaction2's ST-GCN, the references in `bench/`):
//! the names `model.pretrained` reads, so a model trained here is deployed with PyTorch and an
//! exported file trains on here (decision 0010).
//!
//! The tensors come from burn-store's PyTorch adapter (Linear weights transposed to
//! `[out, in]`, norms' γ/β named `weight`/`bias`), renamed by the backbone's export names
//! (`vidtrain_model::pytorch_names`); every BatchNorm gets PyTorch's `num_batches_tracked`, so
//! `load_state_dict(strict=True)` takes the file. Two formats from the same tensors:
//! `.safetensors` (the `safetensors` crate) and `.pth` (what `torch.save` writes: a zip of a
//! pickled `OrderedDict` of tensors and one storage record per tensor, written here; it loads
//! with `torch.load(weights_only=True)`). Each file is written whole (temporary file, rename).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, TensorSnapshot};
use vidtrain_config::Config;
use vidtrain_model::pytorch_names::{PytorchLayout, export_renames, pytorch_layouts};
use vidtrain_model::{ActionModel, ActionModelConfig};

use crate::{Error, Result};

/// The file format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `.safetensors`: `safetensors.torch.load_file`.
    Safetensors,
    /// `.pth`: `torch.load`.
    Pth,
}

impl ExportFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Safetensors => "safetensors",
            ExportFormat::Pth => "pth",
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The weights file read.
    pub weights: PathBuf,
    /// The file written.
    pub out: PathBuf,
    /// Tensors in it.
    pub tensors: usize,
    /// Values in them.
    pub values: usize,
}

/// One entry of the state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTensor {
    /// PyTorch's key.
    pub name: String,
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: StateValues,
}

/// A state-dict tensor's values: parameters and running statistics are f32, BatchNorm's step
/// counter is an int64 scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum StateValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl StateValues {
    fn len(&self) -> usize {
        match self {
            StateValues::F32(values) => values.len(),
            StateValues::I64(values) => values.len(),
        }
    }

    fn little_endian_bytes(&self) -> Vec<u8> {
        match self {
            StateValues::F32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StateValues::I64(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Exports the weights `checkpoint` names (a run folder, a checkpoint folder or a `.mpk` file,
/// as `vidtrain eval` takes it), built by `config` (the run's own), to `out` — by default beside
/// the weights, `model.<format>`.
pub fn export(
    config: &Config,
    checkpoint: &Path,
    format: ExportFormat,
    out: Option<&Path>,
) -> Result<ExportReport> {
    let weights = crate::inference::resolve_weights(checkpoint)?;
    let device = crate::FlexDevice;
    let model: ActionModel<crate::CpuBackend> = crate::build_model(config, &device);
    let model = crate::persist::weights::load(model, &weights, config, &device)?;
    let out = out.map_or_else(
        || weights.with_extension(format.extension()),
        Path::to_path_buf,
    );
    let state = state_dict(&model, &ActionModelConfig::from_config(config))?;
    write(&state, format, &out)?;
    Ok(ExportReport {
        weights,
        out,
        tensors: state.len(),
        values: state.iter().map(|tensor| tensor.values.len()).sum(),
    })
}

/// The model's PyTorch state dict, in the module's order.
pub fn state_dict<B: Backend>(
    model: &ActionModel<B>,
    config: &ActionModelConfig,
) -> Result<Vec<StateTensor>> {
    let snapshots = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
    let snapshots = in_pytorch_layouts(snapshots, &pytorch_layouts(config))?;
    let remapper = KeyRemapper::from_patterns(export_renames(config))
        .expect("the export renames are valid regular expressions");
    let (snapshots, _) = remapper.remap(snapshots);
    let mut state = Vec::with_capacity(snapshots.len());
    for snapshot in snapshots {
        let name = snapshot.full_path();
        let data = snapshot.to_data().map_err(|error| Error::Checkpoint {
            path: PathBuf::from(&name),
            message: format!("could not be read for export: {error:?}"),
        })?;
        let values = match data.dtype {
            DType::I64 | DType::I32 => StateValues::I64(
                data.convert::<i64>()
                    .into_vec::<i64>()
                    .expect("converted to i64"),
            ),
            _ => StateValues::F32(
                data.convert::<f32>()
                    .into_vec::<f32>()
                    .expect("converted to f32"),
            ),
        };
        let is_batch_norm = snapshot.module_type().as_deref() == Some("Struct:BatchNorm");
        let running_mean = name.strip_suffix(".running_mean").map(str::to_string);
        state.push(StateTensor {
            name,
            shape: snapshot.shape.to_vec(),
            values,
        });
        // PyTorch's BatchNorm counts its updates; with the default momentum the count is never
        // read, but `load_state_dict(strict=True)` wants the key.
        if let (true, Some(prefix)) = (is_batch_norm, running_mean) {
            state.push(StateTensor {
                name: format!("{prefix}.num_batches_tracked"),
                shape: Vec::new(),
                values: StateValues::I64(vec![0]),
            });
        }
    }
    let mut names: Vec<&str> = state.iter().map(|tensor| tensor.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(Error::Checkpoint {
            path: PathBuf::from(pair[0]),
            message: "is the PyTorch name of two tensors: the backbone's export names \
                      (vidtrain_model::pytorch_names) map two module paths onto one"
                .into(),
        });
    }
    Ok(state)
}

/// `snapshots` with every tensor that `layouts` names (by vidtrain path) in PyTorch's layout.
fn in_pytorch_layouts(
    snapshots: Vec<TensorSnapshot>,
    layouts: &[PytorchLayout],
) -> Result<Vec<TensorSnapshot>> {
    snapshots
        .into_iter()
        .map(|snapshot| {
            let path = snapshot.full_path();
            let Some(layout) = layouts.iter().find(|layout| layout.path == path) else {
                return Ok(snapshot);
            };
            let data = snapshot.to_data().map_err(|error| Error::Checkpoint {
                path: PathBuf::from(&path),
                message: format!("could not be read for export: {error:?}"),
            })?;
            Ok(TensorSnapshot::from_data(
                layout.to_pytorch(data),
                snapshot.path_stack.clone().unwrap_or_default(),
                snapshot.container_stack.clone().unwrap_or_default(),
                snapshot.tensor_id.unwrap_or_default(),
            ))
        })
        .collect()
}

/// Writes `state` to `path` in `format`, whole.
pub fn write(state: &[StateTensor], format: ExportFormat, path: &Path) -> Result<()> {
    let bytes = match format {
        ExportFormat::Safetensors => safetensors_bytes(state),
        ExportFormat::Pth => pth_bytes(state, &archive_name(path)),
    }
    .map_err(|message| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    })?;
    crate::write_atomically(path, &bytes)
}

fn safetensors_bytes(state: &[StateTensor]) -> std::result::Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = state
        .iter()
        .map(|tensor| tensor.values.little_endian_bytes())
        .collect();
    let views = state
        .iter()
        .zip(&bytes)
        .map(|(tensor, bytes)| {
            let dtype = match tensor.values {
                StateValues::F32(_) => safetensors::Dtype::F32,
                StateValues::I64(_) => safetensors::Dtype::I64,
            };
            safetensors::tensor::TensorView::new(dtype, tensor.shape.clone(), bytes)
                .map(|view| (tensor.name.clone(), view))
                .map_err(|error| format!("{}: {error}", tensor.name))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|error| error.to_string())
}

/// The folder inside a `.pth` zip: `torch.save` uses the file's stem; any one name loads.
fn archive_name(path: &Path) -> String {
    let stem: String = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    if stem.is_empty() {
        "archive".into()
    } else {
        stem
    }
}

/// A `.pth` file as `torch.save` writes it (zip format, pickle protocol 2): `NAME/data.pkl`
/// holds an `OrderedDict` of `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
/// OrderedDict())`, each storage a persistent id `('storage', torch.FloatStorage, 'K', 'cpu',
/// numel)` whose bytes are `NAME/data/K`; then `NAME/version` and `NAME/byteorder`. Records are
/// stored uncompressed, their data 64-byte aligned as torch's own writer does.
fn pth_bytes(state: &[StateTensor], archive: &str) -> std::result::Result<Vec<u8>, String> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(false);
    let mut add = |name: String, bytes: &[u8]| -> std::result::Result<(), String> {
        zip.start_file(name, options)
            .and_then(|()| zip.write_all(bytes).map_err(Into::into))
            .map_err(|error| error.to_string())
    };
    add(format!("{archive}/data.pkl"), &pickle_state_dict(state))?;
    add(format!("{archive}/byteorder"), b"little")?;
    for (key, tensor) in state.iter().enumerate() {
        add(
            format!("{archive}/data/{key}"),
            &tensor.values.little_endian_bytes(),
        )?;
    }
    add(format!("{archive}/version"), b"3\n")?;
    zip.finish()
        .map(Cursor::into_inner)
        .map_err(|error| error.to_string())
}

/// The pickle of the state dict (protocol 2, the opcodes `torch.save` emits for one).
fn pickle_state_dict(state: &[StateTensor]) -> Vec<u8> {
    let mut pickle = Pickle::default();
    pickle.bytes.extend_from_slice(&[0x80, 2]); // PROTO 2
    pickle.empty_ordered_dict();
    pickle.bytes.push(b'('); // MARK
    for (key, tensor) in state.iter().enumerate() {
        pickle.string(&tensor.name);
        pickle.global("torch._utils", "_rebuild_tensor_v2");
        pickle.bytes.push(b'('); // MARK: the arguments
        // The storage, as a persistent id.
        pickle.bytes.push(b'(');
        pickle.string("storage");
        match tensor.values {
            StateValues::F32(_) => pickle.global("torch", "FloatStorage"),
            StateValues::I64(_) => pickle.global("torch", "LongStorage"),
        }
        pickle.string(&key.to_string());
        pickle.string("cpu");
        pickle.int(tensor.values.len());
        pickle.bytes.push(b't'); // TUPLE
        pickle.bytes.push(b'Q'); // BINPERSID
        pickle.int(0); // storage offset
        let strides: Vec<usize> = (0..tensor.shape.len())
            .map(|axis| tensor.shape[axis + 1..].iter().product())
            .collect();
        pickle.tuple(&tensor.shape);
        pickle.tuple(&strides);
        pickle.bytes.push(0x89); // NEWFALSE: requires_grad
        pickle.empty_ordered_dict(); // backward hooks
        pickle.bytes.push(b't'); // TUPLE
        pickle.bytes.push(b'R'); // REDUCE
    }
    pickle.bytes.push(b'u'); // SETITEMS
    pickle.bytes.push(b'.'); // STOP
    pickle.bytes
}

/// The few pickle opcodes a state dict needs.
#[derive(Default)]
struct Pickle {
    bytes: Vec<u8>,
}

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.bytes.push(b'c');
        self.bytes.extend_from_slice(module.as_bytes());
        self.bytes.push(b'\n');
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'\n');
    }

    fn string(&mut self, text: &str) {
        self.bytes.push(b'X'); // BINUNICODE
        self.bytes
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(text.as_bytes());
    }

    fn int(&mut self, value: usize) {
        if let Ok(small) = i32::try_from(value) {
            self.bytes.push(b'J'); // BININT
            self.bytes.extend_from_slice(&small.to_le_bytes());
        } else {
            self.bytes.extend_from_slice(&[0x8a, 8]); // LONG1, 8 bytes
            self.bytes.extend_from_slice(&(value as u64).to_le_bytes());
        }
    }

    fn tuple(&mut self, values: &[usize]) {
        self.bytes.push(b'(');
        for &value in values {
            self.int(value);
        }
        self.bytes.push(b't');
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.bytes.push(b')'); // EMPTY_TUPLE
        self.bytes.push(b'R'); // REDUCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_state() -> Vec<StateTensor> {
        vec![
            StateTensor {
                name: "fc.weight".into(),
                shape: vec![2, 3],
                values: StateValues::F32(vec![0.5, -1.0, 2.0, 3.5, 0.0, -0.25]),
            },
            StateTensor {
                name: "bn.num_batches_tracked".into(),
                shape: vec![],
                values: StateValues::I64(vec![0]),
            },
        ]
    }

    /// The safetensors file reads back with the names, shapes, dtypes and values written.
    #[test]
    fn safetensors_export_reads_back_exactly() {
        let bytes = safetensors_bytes(&sample_state()).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let weight = file.tensor("fc.weight").unwrap();
        assert_eq!(weight.dtype(), safetensors::Dtype::F32);
        assert_eq!(weight.shape(), &[2, 3]);
        let values: Vec<f32> = weight
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![0.5, -1.0, 2.0, 3.5, 0.0, -0.25]);
        let counter = file.tensor("bn.num_batches_tracked").unwrap();
        assert_eq!(counter.dtype(), safetensors::Dtype::I64);
        assert!(counter.shape().is_empty());
    }

    /// The `.pth` zip has torch's layout: one folder, the pickle first, one stored record per
    /// tensor with its bytes, 64-byte aligned; burn-store's PyTorch reader (an independent
    /// unpickler) reads the names, shapes and values back.
    #[test]
    fn pth_export_has_torchs_layout_and_reads_back() {
        let state = sample_state();
        let bytes = pth_bytes(&state, "model").unwrap();
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes.clone())).unwrap();
        let names: Vec<String> = archive.file_names().map(str::to_string).collect();
        assert_eq!(names[0], "model/data.pkl");
        for name in [
            "model/version",
            "model/byteorder",
            "model/data/0",
            "model/data/1",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        let record = archive.by_name("model/data/0").unwrap();
        assert_eq!(record.compression(), zip::CompressionMethod::Stored);
        assert_eq!(record.data_start().unwrap() % 64, 0);
        drop(record);

        let dir = std::env::temp_dir().join(format!("vidtrain-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.pth");
        std::fs::write(&path, bytes).unwrap();
        let reader = burn_store::pytorch::PytorchReader::new(&path).unwrap();
        let weight = reader.get("fc.weight").unwrap();
        assert_eq!(weight.shape.to_vec(), vec![2, 3]);
        let values = weight.to_data().unwrap().into_vec::<f32>().unwrap();
        assert_eq!(values, vec![0.5, -1.0, 2.0, 3.5, 0.0, -0.25]);
        assert!(reader.get("bn.num_batches_tracked").is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
