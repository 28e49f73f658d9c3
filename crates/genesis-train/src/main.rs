//! The `genesis-train` binary: see `genesis-train --help`.

use std::process::ExitCode;

use clap::Parser;
use genesis_train::{Cli, Error};

fn main() -> ExitCode {
    match genesis_train::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ Error::Interrupted { .. }) => {
            eprintln!("{error}");
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("error: {:#}", anyhow::Error::from(error));
            ExitCode::FAILURE
        }
    }
}
