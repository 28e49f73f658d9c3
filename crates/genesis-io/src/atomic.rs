//! Atomic file writes: write a temporary file in the destination directory, then rename.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary path in the directory of `path`, ending in `suffix`.
///
/// The name has no dots before `suffix`, because some writers (the `nifti`
/// crate) rebuild the extension from the name.
pub(crate) fn temp_path(path: &Path, suffix: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(".genesis-io-tmp-{}-{n}{suffix}", std::process::id());
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// Renames `temp` onto `path`, removing `temp` if that fails.
pub(crate) fn commit(temp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(temp, path).map_err(|e| {
        let _ = std::fs::remove_file(temp);
        Error::io(path, e)
    })
}

/// Writes `path` atomically with the bytes produced by `fill`.
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let temp = temp_path(path, ".tmp");
    let result = (|| {
        let file = File::create(&temp)?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        fill(&mut writer)?;
        writer.flush()?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(())
    })();
    match result {
        Ok(()) => commit(&temp, path),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(Error::io(path, e))
        }
    }
}
