//! The benchmark harness behind the `bench` binary: ARCHITECTURE.md's performance targets, each
//! figure next to a baseline measured in the same run on the same machine.
//!
//! # Layout
//! - `figures`: the figures (push, push_many, pipeline, rss, memory, dashboard), their sizes,
//!   targets and what limits them; `drain`: the drain figures (`buffer-persist drain` as a
//!   process: two sizes, CPU per record, other formats); `sustained`: the sustained
//!   end-to-end rate with `buffer-persist run` processes; `http`: records/s through
//!   `buffer-persist serve` against `push_many` in process; `postgres`: `buffer-persist drain
//!   --out postgres://…` against server-side `COPY` and `INSERT … ON CONFLICT` from a file, and
//!   COPY's binary format against its text format; `coalesce`: the coalescing push rate
//!   against the raw commands of a hand-merged write buffer, and memory per entity.
//! - `tools`: the benchmark records, `redis-benchmark` and `dd` runs, Redis counters, and the
//!   peak RSS of a child process.
//! - `report`: the table on stdout and BENCHMARKS.md.
//! - `memory`: the Redis memory study of `--only memory` (per record, per key, per shape) and
//!   `msgpack`, the compact-encoding prototype it measures.

mod coalesce;
mod drain;
mod figures;
mod http;
mod memory;
mod msgpack;
mod postgres;
mod report;
mod sustained;
mod tools;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};

/// What the command line asked for.
#[derive(Debug)]
pub struct Options {
    /// Smaller workloads.
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// Figure ids to run (all when empty).
    pub only: Vec<String>,
    /// Where to write BENCHMARKS.md, if anywhere.
    pub report: Option<PathBuf>,
    /// The arguments given, to record the exact command.
    pub args: Vec<String>,
}

/// BENCHMARKS.md at the workspace root.
pub fn default_report_path() -> PathBuf {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).join("BENCHMARKS.md")
}

const IDS: [&str; 11] = [
    "push",
    "push_many",
    "http",
    "pipeline",
    "drain",
    "postgres",
    "sustained",
    "rss",
    "memory",
    "dashboard",
    "coalesce",
];

/// Measures the selected figures, prints the table and writes the report.
///
/// # Errors
/// Whatever stopped a figure: a tool missing, a server that would not start, a drain that
/// did not persist every record.
pub async fn run(options: Options) -> Result<()> {
    if let Some(unknown) = options.only.iter().find(|id| !IDS.contains(&id.as_str())) {
        bail!(
            "unknown figure {unknown:?}; the figures are {}",
            IDS.join(", ")
        );
    }
    let wanted = |id: &str| options.only.is_empty() || options.only.iter().any(|o| o == id);
    let sizes = figures::Sizes::new(options.quick);
    let runs = options.runs;
    // Built before anything is measured, so the compile does not compete with a figure.
    let started = Instant::now();
    let persist = if ["drain", "rss", "sustained", "http", "postgres"]
        .iter()
        .any(|id| wanted(id))
    {
        Some(tools::persist_binary()?)
    } else {
        None
    };
    took("building buffer-persist", started);
    let machine = report::Machine::detect();
    eprintln!(
        "{} cores, {}, {}; {} runs per figure{}",
        machine.cores,
        machine.cpu,
        machine.redis,
        runs,
        if options.quick { " (quick)" } else { "" }
    );

    let mut measured = Vec::new();
    if wanted("push") {
        let started = Instant::now();
        measured.push(figures::push(&sizes, runs).await?);
        took("push", started);
    }
    if wanted("push_many") {
        let started = Instant::now();
        measured.extend(figures::push_many(&sizes, runs).await?);
        took("push_many", started);
    }
    if let (true, Some(persist)) = (wanted("http"), &persist) {
        let started = Instant::now();
        measured.push(http::http(sizes.push_many_calls, runs, persist).await?);
        took("http", started);
    }
    if wanted("pipeline") {
        let started = Instant::now();
        measured.extend(figures::pipeline(&sizes, runs).await?);
        took("pipeline", started);
    }
    if let (true, Some(persist)) = (wanted("drain"), &persist) {
        let started = Instant::now();
        measured.extend(drain::drains(&sizes, runs, persist).await?);
        took("drain", started);
    }
    if let (true, Some(persist)) = (wanted("postgres"), &persist) {
        let started = Instant::now();
        measured.extend(postgres::postgres(&sizes, runs, persist).await?);
        took("postgres", started);
    }
    if let (true, Some(persist)) = (wanted("sustained"), &persist) {
        let started = Instant::now();
        measured.extend(sustained::sustained(&sizes, persist).await?);
        took("sustained", started);
    }
    if let (true, Some(persist)) = (wanted("rss"), &persist) {
        let started = Instant::now();
        measured.push(figures::rss(&sizes, runs, persist).await?);
        took("rss", started);
    }
    let mut study = None;
    if wanted("memory") {
        let started = Instant::now();
        measured.push(figures::memory(&sizes, runs).await?);
        study = Some(memory::study().await?);
        took("memory", started);
    }
    if wanted("dashboard") {
        let started = Instant::now();
        measured.extend(figures::dashboard(&sizes, runs).await?);
        took("dashboard", started);
    }

    if wanted("coalesce") {
        let started = Instant::now();
        measured.extend(coalesce::coalesce(&sizes, runs).await?);
        took("coalesce", started);
    }

    println!("\n{}", report::table(&measured));
    let study_section = study.map(|study| {
        println!("{}", study.tables());
        study.section(&machine)
    });
    if let Some(path) = &options.report {
        let mut command = "cargo run --release -p buffer-tests --bin bench".to_owned();
        if !options.args.is_empty() {
            command.push_str(" -- ");
            command.push_str(&options.args.join(" "));
        }
        let text = report::Report {
            machine: &machine,
            command,
            quick: options.quick,
            runs,
            figures: &measured,
        }
        .markdown();
        let text = match &study_section {
            Some(section) => memory::splice(&text, section),
            None => text,
        };
        // The "CPU per record" section is written by the `cpu_per_record` binary, not by this
        // harness: carry it over rather than lose it.
        let text = match std::fs::read_to_string(path) {
            Ok(old) => text + &cpu_section(&old),
            Err(_) => text,
        };
        std::fs::write(path, text)
            .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", path.display()))?;
        println!("wrote {}", path.display());
    } else if let Some(section) = &study_section {
        // A partial run writes no report, but the memory study has its own section, which
        // it brings up to date in place (the rest of the file stays as the last full run
        // wrote it).
        let path = default_report_path();
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, memory::splice(&old, section))
            .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", path.display()))?;
        println!("updated the memory section of {}", path.display());
    }
    Ok(())
}

/// The heading of the section of BENCHMARKS.md that `cpu_per_record` writes.
pub const CPU_HEADING: &str = "## CPU per record";

/// The "CPU per record" section of a BENCHMARKS.md text (from its heading to the next `## `
/// heading or the end), with a blank line before it; empty if there is none.
pub fn cpu_section(text: &str) -> String {
    let Some(start) = text.find(CPU_HEADING) else {
        return String::new();
    };
    let rest = &text[start..];
    let end = rest[CPU_HEADING.len()..]
        .find("\n## ")
        .map_or(rest.len(), |at| at + CPU_HEADING.len() + 1);
    format!("\n{}", rest[..end].trim_end()) + "\n"
}

fn took(what: &str, started: Instant) {
    eprintln!("[{what}] took {:.1} s", started.elapsed().as_secs_f64());
}
