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
    let status = Command::new(&venv_python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
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

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-setup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
