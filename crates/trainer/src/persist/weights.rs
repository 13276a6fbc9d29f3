//! Model weights on disk: `<name>.mpk` (Burn's named MessagePack) with `<name>.architecture.json`
//! and `<name>.mpk.sha256` beside it: the config keys that decide the weights' shapes, and the
//! file's digest. Saving streams to a temporary file and writes whole (fsync, size check, rename),
//! so a full disk leaves the previous file and says "No space left on device"; loading refuses a
//! file whose digest changed, weights from another architecture (naming the keys that differ),
//! and any tensor whose shape differs (Burn's loader accepts any shape silently).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::record::{BurnRecord, FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vidtrain_config::{Config, InputType};

use crate::{Error, Result};

/// The config keys (and derived sizes) that decide the shapes of a model's weights, by name.
pub(crate) fn architecture(config: &Config) -> BTreeMap<String, Value> {
    let model = &config.model;
    let mut keys = BTreeMap::from([
        ("model.backbone".to_string(), json!(model.backbone)),
        ("model.input_type".to_string(), json!(model.input_type)),
        ("model.model_class_num".into(), json!(model.model_class_num)),
        ("model.transformer_dim".into(), json!(model.transformer_dim)),
        (
            "model.transformer_layers".into(),
            json!(model.transformer_layers),
        ),
        (
            "model.transformer_heads".into(),
            json!(model.transformer_heads),
        ),
        (
            "model.transformer_ff_dim".into(),
            json!(model.transformer_ff_dim),
        ),
        ("model.fusion_mode".into(), json!(model.fusion_mode)),
        ("model.modality_fusion".into(), json!(model.modality_fusion)),
        (
            "views (train.view, data.views)".into(),
            json!(config.active_views().len()),
        ),
        (
            "joints (data.keypoint_indices)".into(),
            json!(config.data.keypoint_indices.len()),
        ),
    ]);
    if model.input_type != InputType::Rgb {
        keys.insert(
            "model.keypoint_backbone".into(),
            json!(model.keypoint_encoder()),
        );
    }
    // Each encoder names the keys that shape its own weights (`ChainConfig::architecture_keys`).
    let values = serde_json::to_value(config).expect("the config serialises");
    let model_config = vidtrain_model::ActionModelConfig::from_config(config);
    let rgb = model_config.backbone.iter().map(|c| c.as_chain());
    let keypoints = model_config.keypoint_encoder.iter().map(|c| c.as_chain());
    for key in rgb
        .chain(keypoints)
        .flat_map(|chain| chain.architecture_keys())
    {
        let value = values.pointer(&format!("/{}", key.replace('.', "/")));
        keys.insert(key.to_string(), value.cloned().unwrap_or(Value::Null));
    }
    keys
}

/// The architecture file beside a weights file: `model.mpk` → `model.architecture.json`.
fn architecture_path(weights: &Path) -> PathBuf {
    weights.with_extension("architecture.json")
}

/// Writes `module` to `weights` (a `.mpk` path) and its architecture beside it, each whole.
pub(crate) fn save<B: Backend, M: Module<B>>(
    module: &M,
    weights: &Path,
    config: &Config,
) -> Result<()> {
    let text = serde_json::to_string_pretty(&architecture(config)).expect("JSON serialises");
    crate::write_atomically(&architecture_path(weights), text.as_bytes())?;
    save_record::<B, _>(module.clone().into_record(), weights)
}

/// `record` as named MessagePack bytes (what a `.mpk` file holds).
pub(crate) fn record_bytes<B: Backend, R: burn::record::Record<B>>(
    record: R,
) -> std::result::Result<Vec<u8>, String> {
    Recorder::<B>::record(
        &NamedMpkBytesRecorder::<FullPrecisionSettings>::new(),
        record,
        (),
    )
    .map_err(|error| format!("encoding: {error}"))
}

/// The record in `bytes` written by [`record_bytes`].
pub(crate) fn record_from_bytes<B: Backend, R: burn::record::Record<B>>(
    bytes: Vec<u8>,
    device: &B::Device,
) -> std::result::Result<R, String> {
    Recorder::<B>::load(
        &NamedMpkBytesRecorder::<FullPrecisionSettings>::new(),
        bytes,
        device,
    )
    .map_err(|error| error.to_string())
}

/// Writes `record` to `path` as named MessagePack (what Burn's `NamedMpkFileRecorder` writes),
/// streamed: beyond the record's tensors as `TensorData`, only a write buffer is held, where
/// encoding in memory held the whole file and its growth copies too (a full-size r3d_18's
/// optimizer state: ~0.7 GiB more at the save). Then `<path>.sha256` (`sha256sum -c` format),
/// which [`load_record`] checks.
pub(crate) fn save_record<B: Backend, R: burn::record::Record<B>>(
    record: R,
    path: &Path,
) -> Result<()> {
    let item = BurnRecord::<_, B>::new::<NamedMpkBytesRecorder<FullPrecisionSettings>>(
        record.into_item::<FullPrecisionSettings>(),
    );
    let mut digest = None;
    crate::persist::run_dir::write_atomically_with(path, |writer| {
        let mut hashing = HashingWriter {
            inner: writer,
            hasher: Sha256::new(),
            io_error: None,
        };
        let encoded = rmp_serde::encode::write_named(&mut hashing, &item);
        // The encoder's error hides the I/O error behind it ("No space left on device").
        if let Some(error) = hashing.io_error.take() {
            return Err(error);
        }
        encoded.map_err(|error| std::io::Error::other(format!("encoding: {error}")))?;
        digest = Some(hashing.hasher.finalize());
        Ok(())
    })?;
    let digest = digest.expect("set when the write succeeded");
    let line = format!("{}  {}\n", hex(&digest), file_name(path));
    crate::write_atomically(&checksum_path(path), line.as_bytes())
}

/// Hashes what passes through it and keeps the first I/O error (see [`save_record`]).
struct HashingWriter<'a> {
    inner: &'a mut dyn std::io::Write,
    hasher: Sha256,
    io_error: Option<std::io::Error>,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write(buf) {
            Ok(written) => {
                self.hasher.update(&buf[..written]);
                Ok(written)
            }
            Err(error) => {
                let kept = std::io::Error::new(error.kind(), error.to_string());
                self.io_error.get_or_insert(kept);
                Err(error)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `model.mpk` → `model.mpk.sha256`.
fn checksum_path(path: &Path) -> PathBuf {
    crate::persist::run_dir::with_suffix(path, ".sha256")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Refuses `bytes` read from `path` when `<path>.sha256` exists and records another digest: a
/// flipped byte in a weights file used to load as slightly different weights without a word.
/// Files without a checksum (runs older than it, weights from elsewhere) load as before.
fn verify_checksum(path: &Path, bytes: &[u8]) -> Result<()> {
    let sidecar = checksum_path(path);
    let Ok(text) = std::fs::read_to_string(&sidecar) else {
        return Ok(());
    };
    let recorded = text.split_whitespace().next().unwrap_or_default();
    let actual = hex(&Sha256::digest(bytes));
    if recorded.eq_ignore_ascii_case(&actual) {
        return Ok(());
    }
    Err(Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!(
            "is damaged: its SHA-256 is {actual}, but {} (written with it) records {recorded}; \
             the file changed after it was saved (a disk or copy error). Use another checkpoint \
             (checkpoints/best, checkpoints/last.old) or copy it again",
            file_name(&sidecar)
        ),
    })
}

/// Reads a record written by [`save_record`] (or Burn's `NamedMpkFileRecorder`).
pub(crate) fn load_record<B: Backend, R: burn::record::Record<B>>(
    path: &Path,
    device: &B::Device,
) -> Result<R> {
    let bytes = std::fs::read(path).map_err(|error| Error::io(path, error))?;
    verify_checksum(path, &bytes)?;
    record_from_bytes::<B, R>(bytes, device).map_err(|error| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!(
            "unreadable weights ({error}); the file is damaged or not a vidtrain checkpoint"
        ),
    })
}

/// Loads the weights at `weights` into `module` (built from `config`): refuses weights saved for
/// another architecture (naming each key that differs) and any tensor whose shape differs.
pub(crate) fn load<B: Backend, M: Module<B>>(
    module: M,
    weights: &Path,
    config: &Config,
    device: &B::Device,
) -> Result<M> {
    check_architecture(weights, config)?;
    let expected = parameter_shapes(&module);
    let record = load_record::<B, M::Record>(weights, device)?;
    // Burn's derived `load_record` of an enum module (the backbones) panics on a record of
    // another variant: a file of another backbone without its architecture.json (a model file
    // copied alone, a run older than that file) would end the program with a panic.
    let loaded = crate::device::oom::catch_panic_quietly(|| module.load_record(record)).map_err(
        |caught| Error::Checkpoint {
            path: weights.to_path_buf(),
            message: format!(
                "holds the weights of another model: its layers do not fit model.backbone = {} \
                 ({}), and no {} beside it says which model it is; use the config.toml of the \
                 run that wrote it",
                serde_json::to_string(&config.model.backbone).unwrap_or_default(),
                caught.message.lines().last().unwrap_or_default().trim(),
                architecture_path(weights)
                    .file_name()
                    .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
            ),
        },
    )?;
    let found = parameter_shapes(&loaded);
    let mismatched: Vec<String> = expected
        .iter()
        .filter_map(|(name, shape)| {
            let got = found.get(name)?;
            (got != shape).then(|| format!("{name}: {got:?} in the file, {shape:?} in the model"))
        })
        .collect();
    if !mismatched.is_empty() {
        return Err(Error::Checkpoint {
            path: weights.to_path_buf(),
            message: format!(
                "{} tensors do not fit the model this config describes (use the run's own \
                 config.toml): {}",
                mismatched.len(),
                mismatched.join("; ")
            ),
        });
    }
    Ok(loaded)
}

/// Compares the architecture saved beside `weights` (when there is one: older checkpoints have
/// none, and rely on the shape check) with the one `config` describes.
fn check_architecture(weights: &Path, config: &Config) -> Result<()> {
    let path = architecture_path(weights);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let saved: BTreeMap<String, Value> =
        serde_json::from_str(&text).map_err(|error| Error::Checkpoint {
            path: path.clone(),
            message: format!("unreadable architecture file: {error}"),
        })?;
    let wanted = architecture(config);
    let mut keys: Vec<&String> = saved.keys().chain(wanted.keys()).collect();
    keys.sort();
    keys.dedup();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|key| saved.get(*key) != wanted.get(*key))
        .map(|key| {
            let show = |value: Option<&Value>| value.map_or("unset".to_string(), Value::to_string);
            format!(
                "{key} = {} in the checkpoint, {} in this config",
                show(saved.get(key)),
                show(wanted.get(key))
            )
        })
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::Checkpoint {
        path: weights.to_path_buf(),
        message: format!(
            "was trained with another model: {}; use the run's own config.toml (or set these \
             keys as the checkpoint has them)",
            differences.join(", ")
        ),
    })
}

/// Every float tensor of the model saved at `weights` (built from `config`, the run's own
/// `config.toml`), by its path in the module, as f32 values: for comparing two trainings
/// parameter by parameter (the data-parallel equality test does).
pub fn parameter_values(config: &Config, weights: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
    type Cpu = crate::CpuBackend;
    let device = crate::FlexDevice;
    let model: vidtrain_model::ActionModel<Cpu> = crate::build_model(config, &device);
    let model = load(model, weights, config, &device)?;
    // burn-store's snapshots name each tensor by its module path.
    Ok(
        burn_store::ModuleSnapshot::collect(&model, None, None, false)
            .into_iter()
            .filter(|snapshot| snapshot.dtype.is_float())
            .map(|snapshot| {
                let values = snapshot
                    .to_data()
                    .map(|data| data.convert::<f32>().into_vec::<f32>().expect("converted"))
                    .expect("an in-memory parameter reads");
                (snapshot.full_path(), values)
            })
            .collect(),
    )
}

/// Every float parameter's shape by its path in the module (`rgb.blocks.0.attention.query.weight`).
fn parameter_shapes<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<usize>> {
    let mut collector = ShapeCollector {
        path: Vec::new(),
        shapes: BTreeMap::new(),
    };
    module.visit(&mut collector);
    collector.shapes
}

struct ShapeCollector {
    path: Vec<String>,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl<B: Backend> ModuleVisitor<B> for ShapeCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // `lazy_shape` reads the shape without materialising a lazily initialised parameter.
        let mut name = self.path.join(".");
        if self.shapes.contains_key(&name) {
            name = format!("{name}#{}", self.shapes.len());
        }
        self.shapes
            .insert(name, param.lazy_shape().dims::<D>().to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(overrides: &[&str]) -> BTreeMap<String, Value> {
        architecture(&vidtrain_config::ConfigLoader::with_overrides(overrides).unwrap())
    }

    /// Each encoder adds the keys that shape its weights, with the config's values; keys of an
    /// encoder the model does not build are absent.
    #[test]
    fn every_encoder_names_the_keys_that_shape_its_weights() {
        let r3d = keys_of(&["model.backbone=\"3dcnn\"", "model.resnet_depth=34"]);
        assert_eq!(r3d["model.resnet_depth"], json!(34));
        assert_eq!(r3d["model.resnet_width"], json!(64));
        assert!(!r3d.contains_key("model.mamba_dim"));
        assert!(!r3d.contains_key("model.keypoint_backbone"));

        let vivit = keys_of(&["model.backbone=\"vivit\""]);
        for key in [
            "model.tubelet_size",
            "data.img_size",
            "data.uniform_temporal_subsample_num",
        ] {
            assert!(vivit.contains_key(key), "{key}");
        }
        assert!(!vivit.contains_key("model.resnet_depth"));

        let both_mamba = keys_of(&[
            "model.backbone=\"mamba\"",
            "model.input_type=\"rgb_kpt\"",
            "data.load_kpt=true",
            "model.keypoint_backbone=\"mamba\"",
            "model.mamba_state=8",
        ]);
        assert_eq!(both_mamba["model.mamba_state"], json!(8));
        assert_eq!(both_mamba["model.keypoint_backbone"], json!("mamba"));
        assert!(both_mamba.contains_key("model.tubelet_size"));

        let stgcn = keys_of(&[
            "model.backbone=\"stgcn\"",
            "model.input_type=\"kpt\"",
            "data.load_rgb=false",
            "data.load_kpt=true",
        ]);
        assert_eq!(stgcn["model.stgcn_width"], json!(64));
        assert_eq!(stgcn["model.skeleton"], json!("sam3d_body_52"));
        assert!(!stgcn.contains_key("model.tubelet_size"));
    }
}
