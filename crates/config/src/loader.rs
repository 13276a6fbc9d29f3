//! Layered resolution of a [`Config`] with figment, and translation of figment's errors into
//! messages that name the key, the layer and the closest valid key.

use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::{Config, Error, Result};

/// `configs/default.toml`, embedded so that the binary works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");

/// Environment variables `VIDTRAIN_SECTION__KEY=value` override `section.key`.
pub const ENV_PREFIX: &str = "VIDTRAIN_";

/// Builds a [`Config`] from layers; each later layer overrides the earlier ones.
///
/// ```
/// let config = vidtrain_config::ConfigLoader::new()
///     .overrides(["data.batch_size=1", "trainer.precision=16"])
///     .unwrap()
///     .load()
///     .unwrap();
/// assert_eq!(config.data.batch_size, 1);
/// ```
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    /// Everything above the built-in defaults: presets, files, environment, overrides.
    figment: Figment,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    /// Built-in defaults, then `configs/default.toml` (added when the config is resolved).
    pub fn new() -> Self {
        Self {
            figment: Figment::new(),
        }
    }

    /// The built-in defaults and `configs/default.toml`.
    fn defaults() -> Figment {
        Figment::new()
            .merge(Serialized::defaults(Config::default()))
            .merge(Named::new(
                "configs/default.toml",
                Toml::string(DEFAULT_TOML),
            ))
    }

    /// Adds an embedded preset (TOML text) named `name` in error messages.
    pub fn preset(mut self, name: &str, toml_text: &str) -> Self {
        self.figment = self.figment.merge(Named::new(
            format!("preset {name}"),
            Toml::string(toml_text),
        ));
        self
    }

    /// Adds a config file, TOML or YAML by extension.
    pub fn file(mut self, path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .unwrap_or("");
        self.figment = match extension {
            "toml" => self.figment.merge(Toml::file(path)),
            "yaml" | "yml" => self.figment.merge(Yaml::file(path)),
            _ => {
                return Err(Error::UnknownFormat {
                    path: path.to_path_buf(),
                });
            }
        };
        Ok(self)
    }

    /// Adds `VIDTRAIN_SECTION__KEY` environment variables (only those naming a section with `__`,
    /// so unrelated `VIDTRAIN_*` variables such as `VIDTRAIN_LOG` are not mistaken for keys).
    pub fn env(mut self) -> Self {
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__") || key.as_str() == "experiment")
            .split("__");
        self.figment = self.figment.merge(env);
        self
    }

    /// Adds dotted `key=value` overrides, Hydra style (`trainer.precision=16`).
    pub fn overrides<I, S>(mut self, overrides: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for raw in overrides {
            let raw = raw.as_ref();
            let Some((key, value)) = raw.split_once('=') else {
                return Err(Error::BadOverride { raw: raw.into() });
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(Error::BadOverride { raw: raw.into() });
            }
            self.figment = self.figment.merge(Override {
                key: key.to_string(),
                raw: raw.to_string(),
                value: parse_value(value.trim()),
            });
        }
        Ok(self)
    }

    /// The built-in defaults with dotted `key=value` overrides, resolved and validated: the
    /// config a library user or a test builds without files or environment.
    pub fn with_overrides<I, S>(overrides: I) -> Result<Config>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::new().overrides(overrides)?.load()
    }

    /// Resolves and validates the config.
    pub fn load(self) -> Result<Config> {
        let config = self.load_unvalidated()?;
        config.validate()?;
        Ok(config)
    }

    /// Resolves the config without [`Config::validate`] (for tools that inspect partial configs).
    pub fn load_unvalidated(self) -> Result<Config> {
        let config = Self::defaults()
            .merge(self.figment.clone())
            .extract::<Config>()
            .map_err(translate)?;
        // `data.augment` names a preset of augmentation keys: it sits just above the defaults,
        // so a key the user set anywhere wins over it.
        let Some(preset) = config.data.augment.as_toml() else {
            return Ok(config);
        };
        Self::defaults()
            .merge(Named::new(
                format!(
                    "data.augment preset `{preset_name}`",
                    preset_name = config.data.augment.name()
                ),
                Toml::string(preset),
            ))
            .merge(self.figment)
            .extract::<Config>()
            .map_err(translate)
    }
}

/// Parses an override's value like figment does (numbers, booleans, `[lists]`, strings), plus the
/// scientific notation figment reads as a string (`train.lr=1e-4`).
fn parse_value(text: &str) -> Value {
    let value = text.parse::<Value>().unwrap_or_else(|never| match never {});
    let is_scientific = text.chars().any(|c| c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
    match (&value, text.parse::<f64>()) {
        (Value::String(..), Ok(number)) if is_scientific => Value::from(number),
        _ => value,
    }
}

/// One command-line override, its own layer so that errors can quote it.
struct Override {
    key: String,
    raw: String,
    value: Value,
}

impl Provider for Override {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("command-line override `{}`", self.raw))
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Serialized::global(self.key.as_str(), &self.value).data()
    }
}

/// A provider renamed for error messages.
struct Named<P> {
    name: String,
    inner: P,
}

impl<P> Named<P> {
    fn new(name: impl Into<String>, inner: P) -> Self {
        Self {
            name: name.into(),
            inner,
        }
    }
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.inner.data()
    }
}

fn source_name(metadata: Option<&Metadata>) -> String {
    let Some(metadata) = metadata else {
        return "the config".to_string();
    };
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("{} {}", metadata.name, path.display()),
        _ if metadata.name.starts_with("`VIDTRAIN_") || metadata.name.contains("environment") => {
            format!("environment ({})", metadata.name)
        }
        _ => metadata.name.to_string(),
    }
}

fn translate(error: figment::Error) -> Error {
    // Report the first error; figment may chain several.
    let error = error
        .into_iter()
        .next()
        .expect("an error holds at least one");
    let path = error.path.join(".");
    let source = source_name(error.metadata.as_ref());
    match &error.kind {
        Kind::UnknownField(field, expected) => {
            // figment's path may or may not already end with the unknown field.
            let section = match error.path.split_last() {
                Some((last, parent)) if last == field => parent.join("."),
                _ => path.clone(),
            };
            let key = join_key(&section, field);
            let suggestion = closest(field, expected).map(|best| join_key(&section, best));
            // Dotted overrides can name a wrong *section*; look across the whole schema then.
            let suggestion = suggestion.or_else(|| closest_anywhere(&key));
            Error::UnknownKey {
                key,
                source_name: source,
                suggestion,
            }
        }
        Kind::UnknownVariant(got, expected) => Error::BadValue {
            key: path,
            source_name: source,
            message: format!("\"{got}\" is not one of {}", expected.join(", ")),
        },
        Kind::InvalidType(actual, expected) => Error::BadValue {
            key: path,
            source_name: source,
            message: format!("expected {expected}, found {actual}"),
        },
        Kind::InvalidValue(actual, expected) => Error::BadValue {
            key: path,
            source_name: source,
            message: format!("expected {expected}, found {actual}"),
        },
        Kind::Message(message) if !path.is_empty() => Error::BadValue {
            key: path,
            source_name: source,
            message: message.clone(),
        },
        _ => Error::Other(error.to_string()),
    }
}

fn join_key(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn closest<'a>(field: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (strsim::jaro_winkler(field, candidate), *candidate))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// The closest full dotted key of the schema to `key`, for unknown section names.
fn closest_anywhere(key: &str) -> Option<String> {
    let keys = all_keys();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    closest(key, &refs).map(str::to_string)
}

/// Every dotted key of the schema, read off the serialised defaults.
pub(crate) fn all_keys() -> Vec<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(table) => {
                for (name, child) in table {
                    walk(&join_key(prefix, name), child, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut keys = Vec::new();
    if let Ok(value) = toml::Value::try_from(Config::default()) {
        walk("", &value, &mut keys);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fold, Precision};

    fn load(overrides: &[&str]) -> Result<Config> {
        ConfigLoader::new().overrides(overrides)?.load()
    }

    /// The seed's scenario commands, as its users type them.
    const SCENARIO_A: [&str; 3] = [
        "trainer.precision=16",
        "train.accumulate_grad_batches=4",
        "data.batch_size=1",
    ];
    const SCENARIO_C: [&str; 7] = [
        "trainer.precision=16",
        "train.accumulate_grad_batches=16",
        "data.batch_size=1",
        "data.max_video_frames=200",
        "data.img_size=112",
        "data.num_workers=0",
        "model.use_gradient_checkpointing=true",
    ];

    fn error_text(overrides: &[&str]) -> String {
        load(overrides).expect_err("should be rejected").to_string()
    }

    #[test]
    fn checkpoint_modes_print_as_they_are_written() {
        for mode in [
            crate::RecomputeMode::None,
            crate::RecomputeMode::Encoder,
            crate::RecomputeMode::Stem,
            crate::RecomputeMode::All,
        ] {
            let config = ConfigLoader::new()
                .overrides(&[format!("model.checkpoint={}", mode.as_str())])
                .unwrap()
                .load()
                .unwrap();
            assert_eq!(config.model.recompute, mode);
        }
    }

    #[test]
    fn default_toml_spells_out_the_built_in_defaults() {
        let from_file: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(from_file, Config::default());
        // And it names every key of the schema.
        for key in all_keys() {
            let (section, field) = key.split_once('.').unwrap_or(("", &key));
            let table: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
            let present = if section.is_empty() {
                table.contains_key(field)
            } else {
                table[section].as_table().unwrap().contains_key(field)
            };
            assert!(present, "configs/default.toml lacks `{key}`");
        }
    }

    #[test]
    fn the_seeds_scenario_commands_are_accepted_verbatim() {
        let a = load(&SCENARIO_A).unwrap();
        assert_eq!(a.trainer.precision, Precision::Half);
        assert_eq!(a.train.accumulate_grad_batches, 4);
        assert_eq!(a.data.batch_size, 1);
        let b = load(&[
            "trainer.precision=16",
            "train.accumulate_grad_batches=8",
            "data.batch_size=1",
            "data.max_video_frames=300",
            "data.img_size=160",
            "data.num_workers=2",
        ])
        .unwrap();
        assert_eq!(
            (b.data.max_video_frames, b.data.img_size, b.data.num_workers),
            (300, 160, 2)
        );
        let c = load(&SCENARIO_C).unwrap();
        assert!(c.model.use_gradient_checkpointing);
        assert_eq!(c.data.num_workers, 0);
    }

    #[test]
    fn scenario_presets_equal_the_scenario_commands() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let preset = |name: &str| {
            ConfigLoader::new()
                .file(&root.join(name))
                .unwrap()
                .load()
                .unwrap()
        };
        assert_eq!(
            preset("scenario-a-16g-ram-8g-vram.toml"),
            load(&SCENARIO_A).unwrap()
        );
        assert_eq!(
            preset("scenario-c-4g-vram.toml"),
            load(&SCENARIO_C).unwrap()
        );
        let b = preset("scenario-b-8g-ram-6g-vram.toml");
        assert_eq!((b.train.accumulate_grad_batches, b.data.img_size), (8, 160));
    }

    #[test]
    fn precision_accepts_every_lightning_spelling() {
        for (text, expected) in [
            ("32", Precision::Full),
            ("32-true", Precision::Full),
            ("16", Precision::Half),
            ("16-mixed", Precision::Half),
            ("bf16", Precision::BHalf),
            ("bf16-mixed", Precision::BHalf),
        ] {
            let config = load(&[&format!("trainer.precision={text}")]).unwrap();
            assert_eq!(config.trainer.precision, expected, "{text}");
        }
        let message = error_text(&["trainer.precision=8"]);
        assert!(
            message.contains("trainer.precision") && message.contains("bf16-mixed"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_name_the_closest_valid_key_and_the_source() {
        let message = error_text(&["data.batchsize=1"]);
        assert!(message.contains("`data.batchsize`"), "{message}");
        assert!(
            message.contains("did you mean `data.batch_size`"),
            "{message}"
        );
        assert!(
            message.contains("command-line override `data.batchsize=1`"),
            "{message}"
        );
        let message = error_text(&["trian.lr=0.1"]);
        assert!(message.contains("did you mean `train"), "{message}");
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let message = error_text(&["data.batch_size=four"]);
        assert!(message.contains("data.batch_size"), "{message}");
        assert!(message.contains("expected"), "{message}");
        let message = error_text(&["data.on_bad_sample=ignore"]);
        assert!(
            message.contains("skip") && message.contains("error"),
            "{message}"
        );
    }

    #[test]
    fn impossible_combinations_are_rejected_with_the_key() {
        for (overrides, key) in [
            (
                &["data.load_rgb=false", "data.load_kpt=false"][..],
                "data.load_rgb",
            ),
            (
                &["train.accumulate_grad_batches=0"][..],
                "train.accumulate_grad_batches",
            ),
            (&["data.img_size=150"][..], "data.img_size"),
            (
                &["model.transformer_heads=3"][..],
                "model.transformer_heads",
            ),
            (&["train.fold=7"][..], "train.fold"),
            (&["data.views=[front, top]"][..], "data.views"),
            // Used to be accepted: every decode and probe then timed out at once.
            (&["data.decode_timeout_s=0"][..], "data.decode_timeout_s"),
            (
                &["trainer.allocator_slack_percent=5000"][..],
                "trainer.allocator_slack_percent",
            ),
        ] {
            let message = error_text(overrides);
            assert!(message.contains(key), "{overrides:?}: {message}");
        }
    }

    #[test]
    fn scientific_notation_is_a_number() {
        assert_eq!(load(&["train.lr=1e-3"]).unwrap().train.lr, 1e-3);
        assert_eq!(load(&["train.lr=2.5E-4"]).unwrap().train.lr, 2.5e-4);
        assert_eq!(load(&["experiment=1e3x"]).unwrap().experiment, "1e3x");
    }

    #[test]
    fn lists_and_fold_all_parse_from_overrides() {
        let config = load(&["data.views=[front, left]", "train.fold=all"]).unwrap();
        assert_eq!(config.data.views, vec!["front", "left"]);
        assert_eq!(config.train.fold, Fold::All);
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment::Jail's closure type is fixed by figment"
    )]
    fn layers_apply_in_order_file_then_env_then_overrides() {
        let folder = std::env::temp_dir().join(format!("vidtrain-config-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let toml_path = folder.join("a.toml");
        std::fs::write(&toml_path, "[data]\nbatch_size = 3\nimg_size = 64\n").unwrap();
        let yaml_path = folder.join("b.yaml");
        std::fs::write(&yaml_path, "data:\n  img_size: 96\ntrain:\n  lr: 0.5\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("VIDTRAIN_TRAIN__LR", "0.25");
            jail.set_env("VIDTRAIN_LOG", "debug"); // not a key: ignored
            let config = ConfigLoader::new()
                .file(&toml_path)
                .unwrap()
                .file(&yaml_path)
                .unwrap()
                .env()
                .overrides(["data.batch_size=2"])
                .unwrap()
                .load()
                .unwrap();
            assert_eq!(config.data.img_size, 96); // YAML over TOML
            assert_eq!(config.train.lr, 0.25); // env over files
            assert_eq!(config.data.batch_size, 2); // override over everything
            Ok(())
        });
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let error = ConfigLoader::new()
            .file(Path::new("/nonexistent/x.toml"))
            .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/x.toml"));
    }

    #[test]
    fn overrides_without_equals_are_rejected() {
        let error = ConfigLoader::new()
            .overrides(["data.batch_size"])
            .unwrap_err();
        assert!(error.to_string().contains("key=value"));
    }

    #[test]
    fn an_augment_preset_sets_its_keys_and_explicit_keys_win() {
        let standard = load(&["data.augment=standard"]).unwrap();
        assert_eq!(standard.data.hflip_prob, 0.5);
        assert_eq!(standard.data.crop_scale, [0.6, 1.0]);
        assert_eq!(standard.data.color_jitter, [0.2, 0.2, 0.2]);
        assert!(standard.data.temporal_jitter && standard.augments());
        // A key set on the command line, in either order, beats the preset.
        for overrides in [
            ["data.augment=standard", "data.hflip_prob=0"],
            ["data.hflip_prob=0", "data.augment=standard"],
        ] {
            let config = load(&overrides).unwrap();
            assert_eq!(config.data.hflip_prob, 0.0);
            assert_eq!(config.data.crop_scale, [0.6, 1.0]);
        }
        let light = load(&["data.augment=light"]).unwrap();
        assert_eq!(light.data.crop_scale, [1.0, 1.0]);
        assert_eq!(light.data.color_jitter, [0.0; 3]);
        assert!(!load(&[]).unwrap().augments());
    }

    #[test]
    fn class_weights_are_a_name_or_one_weight_per_class() {
        use crate::ClassWeights;
        let balanced = load(&["train.class_weights=balanced"]).unwrap();
        assert_eq!(balanced.train.class_weights, ClassWeights::Balanced);
        let list = load(&["train.class_weights=[1,1,1,1,1,1,1,1,0.2]"]).unwrap();
        assert_eq!(
            list.train.class_weights,
            ClassWeights::Fixed(vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2])
        );
        let short = load(&["train.class_weights=[1,2]"])
            .unwrap_err()
            .to_string();
        assert!(short.contains("train.class_weights") && short.contains("2 weights for 9"));
        let word = load(&["train.class_weights=inverse"])
            .unwrap_err()
            .to_string();
        assert!(word.contains("\"balanced\""), "{word}");
    }

    #[test]
    fn training_controls_are_checked_before_a_run() {
        for (override_, key) in [
            ("train.monitor=val_acc", "train.monitor"),
            ("data.hflip_prob=1.5", "data.hflip_prob"),
            ("data.crop_scale=[0.8,0.5]", "data.crop_scale"),
            ("train.nesterov=true", "train.nesterov"),
            ("eval.clips=0", "eval.clips"),
        ] {
            let error = load(&[override_]).unwrap_err().to_string();
            assert!(error.contains(key), "{override_}: {error}");
        }
        assert!(load(&["train.optimizer=sgd", "train.nesterov=true"]).is_ok());
        // Other classes: the seed's default flip pairs do not stand in the way until flips are
        // on, and then the error says what to set.
        let other_classes = [
            "data.class_names=[\"walk\",\"run\"]",
            "model.model_class_num=2",
        ];
        assert!(load(&other_classes).is_ok());
        let flipping = [other_classes[0], other_classes[1], "data.hflip_prob=0.5"];
        let error = load(&flipping).unwrap_err().to_string();
        assert!(
            error.contains("data.flip_label_pairs") && error.contains("`[]`"),
            "{error}"
        );
        let none = [
            other_classes[0],
            other_classes[1],
            "data.hflip_prob=0.5",
            "data.flip_label_pairs=[]",
        ];
        assert!(load(&none).is_ok());
        assert!(!crate::MonitorMode::Auto.maximises("val_loss"));
        assert!(crate::MonitorMode::Auto.maximises("val_macro_f1"));
    }

    #[test]
    fn flip_joint_pairs_become_positions_among_the_kept_joints() {
        let config = load(&[]).unwrap();
        let positions = config.flip_joint_positions();
        // Kept: 0–6 at 0–6, hands 21–62 at 7–48, 67–69 at 49–51.
        assert!(positions.contains(&[1, 2]) && positions.contains(&[5, 6]));
        assert!(positions.contains(&[7, 28]) && positions.contains(&[27, 48]));
        assert!(positions.contains(&[49, 50]));
        // Elbows, hips and feet are not kept: nothing to exchange.
        assert_eq!(positions.len(), 3 + 21 + 1);
        let custom = load(&["data.flip_joint_pairs=[[0,69]]"]).unwrap();
        assert_eq!(custom.flip_joint_positions(), vec![[0, 51]]);
    }
}
