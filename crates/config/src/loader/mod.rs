//! Layered resolution of a [`Config`] with figment, and translation of figment's errors into
//! messages that name the key, the layer and the closest valid key.

use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::{Config, Error, Result};

/// `configs/default.toml`, embedded so that the binary works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../../../configs/default.toml");

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
mod tests;
