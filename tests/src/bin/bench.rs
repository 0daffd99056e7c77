//! `bench`: measures ARCHITECTURE.md's performance targets against baselines taken in the same
//! run, prints them and writes BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p buffer-tests --bin bench -- [--quick] [--runs N] [--only push,drain]
//! ```
//!
//! Every figure runs on private redis-server processes this harness starts (never on one it
//! did not start). See `tests/src/bench/` for how each figure and its baseline are measured.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Measures the performance targets of ARCHITECTURE.md and writes BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "bench", about, long_about = None)]
struct Cli {
    /// Smaller sizes (100k-record drain, 256 MiB RSS batch…): finishes in about two minutes.
    #[arg(long)]
    quick: bool,
    /// Runs per figure; each figure reports the median (default 3, or 5 without --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Only these figures (comma-separated ids: push, push_many, http, pipeline, drain, postgres, sustained,
    /// rss, memory, dashboard). A partial run writes no report unless --out is given, except
    /// that `memory` always brings BENCHMARKS.md's "Redis memory per record" section up to
    /// date in place.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the report (default: BENCHMARKS.md at the workspace root).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A partial run (--only) must not overwrite the full report unless told where to write.
    let report = match cli.out {
        Some(path) => Some(path),
        None if cli.only.is_empty() => Some(bench::default_report_path()),
        None => None,
    };
    let options = bench::Options {
        quick: cli.quick,
        runs: cli.runs.unwrap_or(if cli.quick { 3 } else { 5 }).max(1),
        only: cli.only,
        report,
        args: std::env::args().skip(1).collect(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
