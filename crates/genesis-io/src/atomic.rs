//! Atomic file writes (a temporary file in the destination directory, then a rename),
//! and directory creation whose errors name what is in the way.

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

/// Creates the directory `path` and any missing parents, like
/// [`std::fs::create_dir_all`], with an error that names what is in the way when a
/// file sits where a directory must be (the system's own message is "File exists"
/// or "Not a directory", naming neither file).
pub fn create_dir_all(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    std::fs::create_dir_all(path).map_err(|error| {
        let blocking = path.ancestors().find(|p| p.exists() && !p.is_dir());
        match blocking {
            Some(file) if file == path => Error::io(
                path,
                std::io::Error::other("cannot create this directory: a file of this name exists"),
            ),
            Some(file) => Error::io(
                path,
                std::io::Error::other(format!(
                    "cannot create this directory: {} is a file, not a directory",
                    file.display()
                )),
            ),
            None => Error::io(
                path,
                std::io::Error::new(
                    error.kind(),
                    format!("cannot create this directory: {error}"),
                ),
            ),
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_all_names_the_file_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scan.raw");
        std::fs::write(&file, b"data").unwrap();

        let below = file.join("run/sub");
        let message = create_dir_all(&below).unwrap_err().to_string();
        assert!(
            message.starts_with(&below.display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("{} is a file, not a directory", file.display())),
            "{message}"
        );

        let message = create_dir_all(&file).unwrap_err().to_string();
        assert!(message.contains("a file of this name exists"), "{message}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"data",
            "the file is untouched"
        );

        let fresh = dir.path().join("a/b/c");
        create_dir_all(&fresh).unwrap();
        create_dir_all(&fresh).unwrap();
        assert!(fresh.is_dir());
    }
}
