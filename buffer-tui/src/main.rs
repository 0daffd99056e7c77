//! `buffer-tui`: parses the command line and hands it to the library.

use std::process::ExitCode;

use buffer_tui::cli::{Cli, execute};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("buffer-tui: {err:#}");
            ExitCode::FAILURE
        }
    }
}
