//! The run directory `runs/<experiment>/<timestamp>/`: resolved config, metrics lines, memory
//! report, summary and checkpoints. Every file is written whole (temporary file + rename).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::{Error, Result};

/// An open run directory. In a data-parallel run only rank 0 holds a writing one; the other
/// ranks hold a [`RunDir::follower`] of the same folder, whose writes do nothing.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// `metrics.jsonl`, open for appending; `None` on a follower.
    metrics: Option<std::fs::File>,
}

impl RunDir {
    /// Creates `<run_dir>/<experiment>/<UTC timestamp>[-N]/` and its `checkpoints/` folder. The
    /// run folder itself is made with one `mkdir` that fails if it exists, so two runs started in
    /// the same second never share a folder: the second takes the next free `-N`.
    pub fn create(run_dir: &Path, experiment: &str) -> Result<Self> {
        let parent = run_dir.join(experiment);
        std::fs::create_dir_all(&parent).map_err(|error| Error::io(&parent, error))?;
        let stamp = utc_timestamp();
        let mut attempt = 1;
        let path = loop {
            let candidate = if attempt == 1 {
                parent.join(&stamp)
            } else {
                parent.join(format!("{stamp}-{attempt}"))
            };
            match std::fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => attempt += 1,
                Err(error) => return Err(Error::io(&candidate, error)),
            }
        };
        let checkpoints = path.join("checkpoints");
        std::fs::create_dir(&checkpoints).map_err(|error| Error::io(&checkpoints, error))?;
        let metrics_path = path.join("metrics.jsonl");
        let metrics = std::fs::File::create_new(&metrics_path)
            .map_err(|error| Error::io(&metrics_path, error))?;
        Ok(Self {
            path,
            metrics: Some(metrics),
        })
    }

    /// The run directory rank 0 created at `path`, seen from another rank: every write is
    /// skipped (rank 0 writes the same contents).
    pub fn follower(path: PathBuf) -> Self {
        Self {
            path,
            metrics: None,
        }
    }

    /// Whether this process writes the folder (false on a follower).
    pub fn writes(&self) -> bool {
        self.metrics.is_some()
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoints folder.
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// Appends one JSON line to `metrics.jsonl` (flushed, so a crash keeps what was logged).
    pub fn log_metrics(&mut self, record: &impl Serialize) -> Result<()> {
        let path = self.path.join("metrics.jsonl");
        let Some(metrics) = self.metrics.as_mut() else {
            return Ok(());
        };
        let line = serde_json::to_string(record).expect("metrics serialise");
        writeln!(metrics, "{line}")
            .and_then(|()| metrics.flush())
            .map_err(|error| Error::io(path, error))
    }

    /// Writes `name` in the run directory whole.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        let path = self.path.join(name);
        if self.writes() {
            write_atomically(&path, contents)?;
        }
        Ok(path)
    }

    /// Writes `name` as pretty JSON.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> Result<PathBuf> {
        let text = serde_json::to_string_pretty(value).expect("JSON serialise");
        self.write(name, text.as_bytes())
    }
}

/// Writes to `<path>.partial`, syncs, checks its size, then renames over `path`: readers see the
/// old file or the new one, never half of one. On failure (a full disk: "No space left on
/// device") the partial file is removed and `path` keeps its previous contents.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomically_with(path, |writer| writer.write_all(contents))
}

/// [`write_atomically`] with the contents streamed by `write` through a buffer, so that a large
/// file (a checkpoint) is never whole in memory.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let temporary = partial_path(path);
    let written = std::fs::File::create(&temporary).and_then(|file| {
        let bytes = stream_synced(file, write)?;
        let size = std::fs::metadata(&temporary)?.len();
        if size == bytes {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "wrote {size} of {bytes} bytes"
            )))
        }
    });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(Error::io(&temporary, error));
    }
    std::fs::rename(&temporary, path).map_err(|error| Error::io(path, error))?;
    // The rename is durable once the folder is synced (ignored where folders cannot be opened).
    if let Some(folder) = path.parent()
        && let Ok(folder) = std::fs::File::open(folder)
    {
        let _ = folder.sync_all();
    }
    Ok(())
}

/// Streams `write` into `file` through a buffer and syncs it to the device, so that an
/// out-of-space error surfaces here instead of being lost in a buffered write or a later close;
/// returns the bytes written.
fn stream_synced(
    file: std::fs::File,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut counted = CountingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        bytes: 0,
    };
    write(&mut counted)?;
    let file = counted
        .inner
        .into_inner()
        .map_err(|error| error.into_error())?;
    file.sync_all()?;
    Ok(counted.bytes)
}

/// Counts the bytes written through it (to check the file's size after the sync).
struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn partial_path(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

/// The file beside `path` named as it plus `suffix` (`model.mpk` → `model.mpk.sha256`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// `2026-11-27T14-05-09Z` (file-name safe UTC).
pub fn utc_timestamp() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let (days, time_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        time_of_day / 3600,
        (time_of_day / 60) % 60,
        time_of_day % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn a_full_device_is_reported_as_such() {
        // /dev/full accepts the open and fails every write with ENOSPC, as a full disk does.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        // Less than the buffer: the error comes from the final flush, not from a write.
        let error = stream_synced(full, |writer| writer.write_all(&[7u8; 1 << 16])).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28), "{error}");
        assert!(error.to_string().contains("No space left on device"));
    }

    #[test]
    fn runs_started_in_the_same_second_get_their_own_folders() {
        let root = std::env::temp_dir().join(format!("vidtrain-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let folders: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| RunDir::create(&root, "same").unwrap().path().to_path_buf())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        let mut distinct = folders.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "{folders:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn atomic_write_leaves_no_partial_file() {
        let folder = std::env::temp_dir().join(format!("vidtrain-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("summary.json");
        write_atomically(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert!(!partial_path(&path).exists());
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
