//! `cargo xtask setup`: make libtorch available to torch-sys.
//!
//! tch 0.26 needs libtorch 2.13.0. pytorch.org may be unreachable, PyPI is
//! not: the `torch==2.13.0` wheel carries a complete libtorch (headers and
//! shared libraries). We install it into the project-local, git-ignored
//! `.venv` and point the stable link `.libtorch` at the wheel's `torch/`
//! directory; `.cargo/config.toml` sets `LIBTORCH=.libtorch` for every cargo
//! command, so plain `cargo build` / `cargo test` work afterwards.
//!
//! A user's own set-up wins: with `LIBTORCH` pointing elsewhere or
//! `LIBTORCH_USE_PYTORCH` set, nothing is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The libtorch version that tch 0.26 (torch-sys) is built against.
pub const TORCH_VERSION: &str = "2.13.0";

/// Disk that `torch==2.13.0` and its CUDA libraries take once installed in the venv
/// (measured: 4.7 GB), rounded up.
const VENV_BYTES: u64 = 5_000_000_000;

/// Disk that pip's downloaded wheels hold in its temporary directory until the
/// install ends (measured: 2.8 GB), rounded up.
const WHEEL_BYTES: u64 = 3_000_000_000;

/// Arguments of `cargo xtask setup`.
#[derive(Debug, Default, clap::Args)]
pub struct SetupArgs {
    /// Python interpreter used to create the venv (default: $GENESIS_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<String>,
    /// Reinstall even if a usable libtorch is already set up.
    #[arg(long)]
    pub force: bool,
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Sets libtorch up if needed, with default options (used by other tasks).
pub fn ensure_libtorch() -> Result<()> {
    run(&SetupArgs::default())
}

/// Runs `cargo xtask setup`.
pub fn run(args: &SetupArgs) -> Result<()> {
    let root = workspace_root();
    let managed_link = root.join(".libtorch");
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        eprintln!(
            "setup: LIBTORCH_USE_PYTORCH is set: torch-sys will use the PyTorch of the `python` on PATH; installing nothing"
        );
        return Ok(());
    }
    if let Some(dir) = std::env::var_os("LIBTORCH").map(PathBuf::from) {
        let ours = dir == managed_link || dir == Path::new(".libtorch");
        if !ours {
            if !has_libtorch(&dir) {
                bail!(
                    "LIBTORCH={} has no lib/libtorch_cpu.so; point it at a libtorch {TORCH_VERSION} directory or unset it and run `cargo xtask setup`",
                    dir.display()
                );
            }
            eprintln!(
                "setup: using your libtorch at LIBTORCH={}; installing nothing",
                dir.display()
            );
            return Ok(());
        }
    }
    if !args.force
        && let Some(version) = managed_version(&managed_link)
    {
        if version == TORCH_VERSION {
            eprintln!(
                "setup: libtorch {TORCH_VERSION} ready at {}",
                managed_link.display()
            );
            return Ok(());
        }
        eprintln!(
            "setup: {} holds libtorch {version}, need {TORCH_VERSION}; reinstalling",
            managed_link.display()
        );
    }
    install(&root, args)
}

fn has_libtorch(dir: &Path) -> bool {
    let lib = dir.join("lib");
    lib.join("libtorch_cpu.so").exists()
        || lib.join("libtorch_cpu.dylib").exists()
        || lib.join("torch_cpu.dll").exists()
}

/// The torch version behind the managed link, if it holds a usable libtorch.
fn managed_version(link: &Path) -> Option<String> {
    if !has_libtorch(link) {
        return None;
    }
    let version_py = std::fs::read_to_string(link.join("version.py")).ok()?;
    parse_version_py(&version_py)
}

/// Reads `__version__ = '2.13.0+cu130'` from torch's version.py, without the local part.
fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?;
        let value = rest.trim_start().strip_prefix('=')?.trim();
        let value = value.trim_matches(|c| c == '\'' || c == '"');
        Some(value.split('+').next().unwrap_or(value).to_string())
    })
}

fn install(root: &Path, args: &SetupArgs) -> Result<()> {
    let venv = root.join(".venv");
    let venv_python = venv.join("bin").join("python");
    check_free_space(&venv, &std::env::temp_dir())?;
    if !venv_python.exists() {
        let python = args
            .python
            .clone()
            .or_else(|| std::env::var("GENESIS_PYTHON").ok())
            .unwrap_or_else(|| "python3".to_string());
        eprintln!("setup: creating {} with {python}", venv.display());
        let status = Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .with_context(|| {
                format!("cannot run `{python}`: libtorch comes from PyPI's torch wheel and needs Python 3 with pip (or set LIBTORCH to your own libtorch {TORCH_VERSION})")
            })?;
        if !status.success() {
            bail!(
                "`{python} -m venv {}` failed ({status}); on Debian/Ubuntu install python3-venv, or set LIBTORCH to your own libtorch {TORCH_VERSION}",
                venv.display()
            );
        }
    }
    eprintln!(
        "setup: installing torch=={TORCH_VERSION} from PyPI into {} (about 4.7 GB, a minute or more)",
        venv.display()
    );
    // `--no-cache-dir`: the wheels (2.8 GB) would otherwise stay in pip's cache as a
    // second copy; a reinstall is rare and the disk is often the tighter resource.
    let status = Command::new(&venv_python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "--progress-bar",
            "off",
        ])
        .arg(format!("torch=={TORCH_VERSION}"))
        .status()
        .with_context(|| format!("cannot run {}", venv_python.display()))?;
    if !status.success() {
        bail!("pip install torch=={TORCH_VERSION} failed ({status}); see pip's output above");
    }
    let torch_dir = torch_dir(&venv_python)?;
    if !has_libtorch(&torch_dir) {
        bail!(
            "the torch wheel at {} has no lib/libtorch_cpu.so",
            torch_dir.display()
        );
    }
    link_managed(&root.join(".libtorch"), &torch_dir)?;
    eprintln!(
        "setup: libtorch {TORCH_VERSION} ready: .libtorch -> {}",
        torch_dir.display()
    );
    Ok(())
}

/// Refuses to start a download that cannot fit: the venv needs [`VENV_BYTES`] on its
/// file system and pip's temporary wheels [`WHEEL_BYTES`] on theirs (both on one file
/// system, usually). Where the free space cannot be read, the install just goes ahead.
fn check_free_space(venv: &Path, temp: &Path) -> Result<()> {
    let shortfalls = space_shortfalls(FileSystem::of(venv), FileSystem::of(temp));
    if shortfalls.is_empty() {
        return Ok(());
    }
    bail!(
        "not enough disk to install torch=={TORCH_VERSION}: {}. The wheel and its CUDA libraries take \
         about 4.7 GB in the venv, plus 2.8 GB of downloaded wheels in the temporary directory \
         ($TMPDIR) while pip installs them. Free some space, point TMPDIR at a larger disk, or set \
         LIBTORCH to an existing libtorch {TORCH_VERSION}",
        shortfalls.join("; ")
    )
}

/// A path, the bytes free on its file system and that file system's device number,
/// each `None` where it cannot be read.
#[derive(Debug, Clone, Copy)]
struct FileSystem<'a> {
    path: &'a Path,
    free: Option<u64>,
    device: Option<u64>,
}

impl<'a> FileSystem<'a> {
    /// Reads the file system of `path`'s nearest existing ancestor (the venv may not
    /// exist yet).
    fn of(path: &'a Path) -> Self {
        let dir = path.ancestors().find(|p| p.exists());
        Self {
            path,
            free: dir.and_then(free_space),
            device: dir.and_then(device_of),
        }
    }
}

/// What is short for the venv and pip's temporary wheels, one line per file system.
fn space_shortfalls(venv: FileSystem<'_>, temp: FileSystem<'_>) -> Vec<String> {
    let shared = venv.device.is_some() && venv.device == temp.device;
    let needs = if shared {
        vec![(venv, VENV_BYTES + WHEEL_BYTES)]
    } else {
        vec![(venv, VENV_BYTES), (temp, WHEEL_BYTES)]
    };
    needs
        .into_iter()
        .filter_map(|(fs, need)| shortfall(fs.path, fs.free?, need))
        .collect()
}

fn shortfall(path: &Path, free: u64, need: u64) -> Option<String> {
    (free < need).then(|| {
        format!(
            "{} has {:.1} GB free, needs {:.1} GB",
            path.display(),
            free as f64 / 1e9,
            need as f64 / 1e9
        )
    })
}

/// Bytes available to this user on the file system holding the existing `dir`.
#[cfg(unix)]
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` only writes the struct we hand it; `c_path` is NUL-terminated
    // and outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(not(unix))]
fn free_space(_dir: &Path) -> Option<u64> {
    None
}

/// The device number of the file system holding the existing `dir`.
#[cfg(unix)]
fn device_of(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    Some(std::fs::metadata(dir).ok()?.dev())
}

#[cfg(not(unix))]
fn device_of(_dir: &Path) -> Option<u64> {
    None
}

/// Asks the venv's Python where the installed torch package lives.
fn torch_dir(venv_python: &Path) -> Result<PathBuf> {
    let output = Command::new(venv_python)
        .args([
            "-c",
            "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('torch').origin))",
        ])
        .output()
        .with_context(|| format!("cannot run {}", venv_python.display()))?;
    if !output.status.success() {
        bail!(
            "{} cannot find the torch package: {}",
            venv_python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// Points `link` at `target`, replacing an older link, via a temporary name and rename.
fn link_managed(link: &Path, target: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let tmp = link.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)
            .with_context(|| format!("cannot create link {}", tmp.display()))?;
        std::fs::rename(&tmp, link)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), link.display()))?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        bail!(
            "automatic set-up links {} to {}; on this platform set LIBTORCH to {} yourself",
            link.display(),
            target.display(),
            target.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_py_is_parsed_without_local_part() {
        let text = "from typing import Optional\n__version__ = '2.13.0+cu130'\ndebug = False\n";
        assert_eq!(parse_version_py(text).as_deref(), Some("2.13.0"));
        assert_eq!(
            parse_version_py("__version__ = \"2.12.1\"").as_deref(),
            Some("2.12.1")
        );
        assert_eq!(parse_version_py("nothing here"), None);
    }

    #[test]
    fn a_directory_without_libraries_is_not_libtorch() {
        assert!(!has_libtorch(&std::env::temp_dir()));
        assert_eq!(managed_version(&std::env::temp_dir()), None);
    }

    #[test]
    fn managed_link_is_replaced_atomically() {
        let dir = tempfile_dir("link");
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let link = dir.join(".libtorch");
        link_managed(&link, &a).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), a);
        link_managed(&link, &b).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), b);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn free_space_is_read_from_the_nearest_existing_directory() {
        let dir = tempfile_dir("space");
        let missing = dir.join("not/yet/a/venv");
        let fs = FileSystem::of(&missing);
        let free = fs.free.expect("statvfs of the temp dir");
        assert!(free > 0);
        assert_eq!(fs.device, device_of(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shortfall_names_the_path_and_both_sizes() {
        assert_eq!(shortfall(Path::new("/x"), 10_000_000_000, VENV_BYTES), None);
        let text = shortfall(Path::new("/x/.venv"), 1_200_000_000, 8_000_000_000).unwrap();
        assert_eq!(text, "/x/.venv has 1.2 GB free, needs 8.0 GB");
    }

    #[test]
    fn shortfalls_add_up_on_one_file_system_and_split_on_two() {
        const GB: u64 = 1_000_000_000;
        // Shortfalls of a venv and a temporary directory with these free bytes and devices.
        let short = |venv: (Option<u64>, Option<u64>), temp: (Option<u64>, Option<u64>)| {
            let fs = |path: &'static str, (free, device)| FileSystem {
                path: Path::new(path),
                free,
                device,
            };
            space_shortfalls(fs("/a/.venv", venv), fs("/tmp", temp))
        };
        // One disk with 7 GB: enough for either part, not for both.
        assert_eq!(
            short((Some(7 * GB), Some(1)), (Some(7 * GB), Some(1))),
            ["/a/.venv has 7.0 GB free, needs 8.0 GB"]
        );
        assert!(short((Some(8 * GB), Some(1)), (Some(8 * GB), Some(1))).is_empty());
        // Two disks: each is held to its own part.
        assert_eq!(
            short((Some(6 * GB), Some(1)), (Some(2 * GB), Some(2))),
            ["/tmp has 2.0 GB free, needs 3.0 GB"]
        );
        assert_eq!(short((Some(4 * GB), Some(1)), (Some(GB), None)).len(), 2);
        // Unknown free space never blocks the install.
        assert!(short((None, Some(1)), (None, Some(1))).is_empty());
    }

    #[test]
    fn the_check_agrees_with_the_free_space_of_this_disk() {
        let dir = tempfile_dir("enough");
        let free = free_space(&dir).unwrap();
        let result = check_free_space(&dir.join(".venv"), &dir);
        assert_eq!(
            result.is_ok(),
            free >= VENV_BYTES + WHEEL_BYTES,
            "{result:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-setup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
