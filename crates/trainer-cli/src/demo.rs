//! The bundled demo: its preset and the cached dataset `vidtrain train` falls back to.

use std::path::PathBuf;

use anyhow::Context;
use vidtrain_data::demo::{DemoSpec, generate};

/// `configs/demo.toml`, embedded.
pub const DEMO_TOML: &str = include_str!("../../../configs/demo.toml");

/// Bump when the generator changes, so old caches are not reused.
const DEMO_VERSION: &str = "demo-v2";

/// The demo dataset's `vidtrain.toml`, generating the dataset into the cache folder on first use.
pub fn ensure_demo_dataset() -> anyhow::Result<PathBuf> {
    let folder = cache_dir().join(DEMO_VERSION);
    let config = folder.join("vidtrain.toml");
    if config.is_file() {
        return Ok(config);
    }
    // Generate beside the final folder and rename, so an interrupted run never leaves a
    // half-written dataset that a later run would trust.
    let staging = cache_dir().join(format!("{DEMO_VERSION}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!(
        "generating the demo dataset (once) in {} ...",
        folder.display()
    );
    generate(&DemoSpec {
        out: staging.clone(),
        ..DemoSpec::default()
    })
    .context("generating the demo dataset")?;
    // The generated config names its own folder; point it at the final one.
    let staged_config = staging.join("vidtrain.toml");
    let text = std::fs::read_to_string(&staged_config)
        .with_context(|| format!("reading {}", staged_config.display()))?;
    let staging_text = std::path::absolute(&staging)?.display().to_string();
    let final_text = std::path::absolute(&folder)?.display().to_string();
    std::fs::write(&staged_config, text.replace(&staging_text, &final_text))
        .with_context(|| format!("writing {}", staged_config.display()))?;
    match std::fs::rename(&staging, &folder) {
        Ok(()) => {}
        // Another process finished first: use its copy.
        Err(_) if config.is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("moving the demo dataset to {}", folder.display()));
        }
    }
    Ok(config)
}

/// `$VIDTRAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/vidtrain`, else `~/.cache/vidtrain`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIDTRAIN_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("vidtrain");
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache").join("vidtrain"))
        .unwrap_or_else(|| std::env::temp_dir().join("vidtrain-cache"))
}
