//! `buffer-persist`: parses the command line and hands it to the library.

use std::process::ExitCode;

use buffer_persist::cli::{error_chain_text, execute, init_logging, parse_args};

fn main() -> ExitCode {
    run_with_fixed_mmap_threshold();
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
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

/// Runs this binary again, once, with glibc's mmap threshold fixed (ARCHITECTURE.md, the
/// `cli.rs` entry: memory of the persister). By default glibc raises the threshold each time a large block
/// is freed, after which blocks of that size come from per-thread arenas that keep them when
/// freed: a persister writing values of several MiB then held tens of MiB it no longer used
/// (a Parquet drain of forty 4 MiB values peaked at 110-190 MiB instead of about 70). glibc
/// reads the setting only from the environment at start-up, and `mallopt` would need `unsafe`,
/// which this workspace forbids, hence the second start. A threshold already in the
/// environment (the user's own) is kept; if the new start fails, this one goes on as it is.
fn run_with_fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        // glibc's variable that fixes its mmap threshold, and the threshold this binary runs
        // with: blocks of 4 MiB and more are mapped on their own and given back when freed.
        const MMAP_THRESHOLD_VAR: &str = "MALLOC_MMAP_THRESHOLD_";
        const MMAP_THRESHOLD: &str = "4194304";

        if std::env::var_os(MMAP_THRESHOLD_VAR).is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(name) = args.next() {
            command.arg0(name);
        }
        // `exec` replaces this process (same pid, same open files) and returns only on failure.
        let _failed = command
            .args(args)
            .env(MMAP_THRESHOLD_VAR, MMAP_THRESHOLD)
            .exec();
    }
}
