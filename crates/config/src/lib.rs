//! Typed, layered configuration for vidtrain.
//!
//! One schema ([`Config`]) with the seed's key names, resolved by [`ConfigLoader`] from layers in
//! increasing priority: built-in defaults < `configs/default.toml` (embedded) < presets < `--config`
//! files (TOML or YAML) < environment `VIDTRAIN_SECTION__KEY` < dotted `key=value` overrides.
//! Every error names the key and the layer it came from; [`Config::validate`] rejects impossible
//! combinations before any work starts.

mod controls;
mod error;
mod loader;
mod schema;
mod validate;

pub use controls::*;
pub use error::{Error, Result};
pub use loader::{ConfigLoader, DEFAULT_TOML, ENV_PREFIX};
pub use schema::*;
