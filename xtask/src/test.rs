//! `cargo xtask test`: the project's whole check, exactly what CI runs.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{ensure_libtorch, workspace_root};

/// Arguments of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Runs set-up (if needed), `cargo fmt --check`, clippy with warnings denied, and all tests.
pub fn run(args: &TestArgs) -> Result<()> {
    ensure_libtorch()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let mut test = vec!["test", "--workspace"];
    if !args.test_args.is_empty() {
        test.push("--");
        test.extend(args.test_args.iter().map(String::as_str));
    }
    cargo(&test)?;
    eprintln!("xtask test: all checks passed");
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask test: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
