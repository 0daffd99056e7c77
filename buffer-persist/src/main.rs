//! `buffer-persist`: parses the command line and hands it to the library.

use std::process::ExitCode;

use buffer_persist::cli::{error_chain_text, execute, init_logging, parse_args};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse_args();
    init_logging(cli.log_format);
    match execute(cli).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("error: {}", error_chain_text(&err));
            ExitCode::FAILURE
        }
    }
}
