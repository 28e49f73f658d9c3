//! Build-script helper for the crates of this workspace that link libtorch.
//!
//! `torch-sys` finds libtorch and links it, but leaves two things to its users:
//!
//! * **Finding the shared libraries at run time.** Without an rpath every
//!   binary, test and example would need `LD_LIBRARY_PATH`. [`link_libtorch`]
//!   bakes the (canonical) libtorch `lib/` directory into the binaries of the
//!   package whose build script calls it.
//! * **Keeping `libtorch_cuda.so`.** Nothing in our code references a symbol of
//!   `libtorch_cuda.so`, so a linker running with `--as-needed` (the default
//!   of rustc with GNU ld) drops it and `tch::Cuda::is_available()` is false
//!   even on a GPU machine. When the library exists we link it between
//!   `--no-as-needed` and `--as-needed` into the package's binaries.
//!
//! Not for: anything at run time. Only build scripts of packages that depend
//! directly on `torch-sys` see the directory it found (as
//! `DEP_TCH_LIBTORCH_LIB`, after torch-sys' `links = "tch"`), so each such
//! package calls this from its
//! own `build.rs`:
//!
//! ```no_run
//! // build.rs
//! genesis_build::link_libtorch();
//! ```

use std::path::{Path, PathBuf};

/// Environment variable through which torch-sys (`links = "tch"`) hands its
/// libtorch `lib/` directory to the build scripts of crates that depend on it
/// directly.
const TORCH_SYS_LIB_VAR: &str = "DEP_TCH_LIBTORCH_LIB";

/// CUDA libraries of libtorch that must stay linked when present.
const CUDA_LIBS: [&str; 1] = ["torch_cuda"];

/// Emits the cargo directives described in the crate documentation.
///
/// Prints a cargo warning (and nothing else) when torch-sys did not report a
/// libtorch directory, which only happens with torch-sys' `doc-only` feature.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed={TORCH_SYS_LIB_VAR}");
    let Some(lib_dir) = std::env::var_os(TORCH_SYS_LIB_VAR).map(PathBuf::from) else {
        println!(
            "cargo:warning=torch-sys reported no libtorch directory; binaries will need LD_LIBRARY_PATH (run `cargo xtask setup`)"
        );
        return;
    };
    for directive in directives(&lib_dir) {
        println!("{directive}");
    }
}

/// The cargo directives for a libtorch `lib/` directory, as printed lines.
fn directives(lib_dir: &Path) -> Vec<String> {
    // Canonicalise so that the rpath survives a symlinked LIBTORCH (the
    // project's `.libtorch` link into its venv) and relative paths.
    let lib_dir = lib_dir
        .canonicalize()
        .unwrap_or_else(|_| lib_dir.to_path_buf());
    let mut out = Vec::new();
    if cfg!(unix) {
        let rpath_flag = if cfg!(target_os = "macos") {
            format!("-Wl,-rpath,{}", lib_dir.display())
        } else {
            // --disable-new-dtags writes DT_RPATH, which (unlike RUNPATH) is
            // also used to resolve the dependencies of libtorch itself.
            format!("-Wl,--disable-new-dtags,-rpath,{}", lib_dir.display())
        };
        out.push(format!("cargo:rustc-link-arg={rpath_flag}"));
    }
    for lib in CUDA_LIBS {
        let present = lib_dir.join(format!("lib{lib}.so")).exists()
            || lib_dir.join(format!("{lib}.dll")).exists();
        if present {
            // The `-as-needed` link modifier would propagate to downstream
            // crates but is unstable, so this is a link argument of the
            // calling package's own binaries, tests and examples.
            out.push(format!(
                "cargo:rustc-link-arg=-Wl,--no-as-needed,-L{},-l{lib},--as-needed",
                lib_dir.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpath_points_at_the_canonical_directory() {
        let dir = std::env::temp_dir();
        let lines = directives(&dir);
        let canonical = dir.canonicalize().expect("temp dir exists");
        assert!(
            lines.iter().any(|l| l.starts_with("cargo:rustc-link-arg=")
                && l.ends_with(&*canonical.to_string_lossy())),
            "{lines:?}"
        );
    }

    #[test]
    fn cuda_library_is_kept_only_when_present() {
        let dir = std::env::temp_dir().join(format!("genesis-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        assert!(!directives(&dir).iter().any(|l| l.contains("torch_cuda")));
        std::fs::write(dir.join("libtorch_cuda.so"), b"").expect("write fake lib");
        let lines = directives(&dir);
        assert!(
            lines.iter().any(
                |l| l.starts_with("cargo:rustc-link-arg=-Wl,--no-as-needed,")
                    && l.ends_with(",-ltorch_cuda,--as-needed")
            ),
            "{lines:?}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
