//! Config errors: each names the key and the layer (file, environment, override) it came from.

use std::path::PathBuf;

/// A config that could not be resolved or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key that the schema does not have.
    #[error("unknown key `{key}` in {source_name}{}", suggestion_text(.suggestion))]
    UnknownKey {
        key: String,
        source_name: String,
        suggestion: Option<String>,
    },
    /// A key whose value has the wrong type or an unaccepted value.
    #[error("bad value for `{key}` in {source_name}: {message}")]
    BadValue {
        key: String,
        source_name: String,
        message: String,
    },
    /// A resolved config whose values cannot work together.
    #[error("invalid config: `{key}` {message}")]
    Invalid { key: String, message: String },
    /// A `--config` file that does not exist.
    #[error("config file {} not found; check the path given to --config", .path.display())]
    FileNotFound { path: PathBuf },
    /// A `--config` file with an extension other than .toml/.yaml/.yml.
    #[error("config file {} has an unknown format; use a .toml, .yaml or .yml file", .path.display())]
    UnknownFormat { path: PathBuf },
    /// A command-line override that is not `key=value`.
    #[error("override `{raw}` is not of the form key=value (e.g. data.batch_size=1)")]
    BadOverride { raw: String },
    /// Anything else figment reports (e.g. a TOML syntax error), with its source.
    #[error("{0}")]
    Other(String),
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(key) => format!("; did you mean `{key}`?"),
        None => String::new(),
    }
}

/// Result of config operations.
pub type Result<T> = std::result::Result<T, Error>;
