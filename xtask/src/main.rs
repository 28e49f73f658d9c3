//! Project automation, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! This crate must build before libtorch exists, so it never depends on tch:
//! it installs libtorch (`setup`), prepares data (`prepare-data`, through
//! `genesis-io` and `genesis-transforms`), and drives cargo and the
//! `genesis-train` binary for everything that needs libtorch.

mod prepare_data;
mod quickstart;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Models Genesis project automation",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install libtorch (PyPI torch==2.13.0 into the project's `.venv`) unless a usable one is set up.
    Setup(setup::SetupArgs),
    /// Set up libtorch if absent, then run fmt --check, clippy -D warnings and the whole test suite.
    Test(test::TestArgs),
    /// End to end on an offline phantom dataset: set-up, data, pretraining, fine-tuning, report.
    Quickstart(quickstart::QuickstartArgs),
    /// Download LUNA16, make the offline phantom dataset, pack cubes, build target tasks.
    PrepareData(Box<prepare_data::PrepareDataArgs>),
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup(args) => setup::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Quickstart(args) => quickstart::run(&args),
        Task::PrepareData(args) => prepare_data::run(&args),
    }
}
