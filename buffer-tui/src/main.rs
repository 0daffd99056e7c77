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
            // Each cause once, as buffer-persist prints it: `{:#}` printed an I/O error (the
            // TTY's "No such device or address") once per layer that wraps it.
            eprintln!(
                "buffer-tui: {}",
                buffer_persist::cli::error_chain_text(&err)
            );
            ExitCode::FAILURE
        }
    }
}
