//! `cpu_per_record`: the CPU cost per record of `push_many` and of the drain to JSON Lines,
//! in measures that a busy machine does not change much (BENCHMARKS.md, "CPU per record").
//!
//! ```text
//! cargo run --release -p buffer-tests --bin cpu_per_record -- [--records N] [--callgrind]
//! ```
//!
//! - user+sys CPU ÷ records: of this process (all threads, `CLOCK_PROCESS_CPUTIME_ID`) around
//!   `push_many` calls of 100 records (one task, so the figure is the client's work, not
//!   Redis's) and around an in-process `Persister::drain`; and of a release
//!   `buffer-persist drain` child (next to this binary) as `/usr/bin/time` reports it from
//!   `wait4`'s rusage.
//! - `--callgrind`: the same workloads, each in a child of this binary run under
//!   `valgrind --tool=callgrind`, as instructions per record: the child's total minus that of
//!   the same child with nothing to do (no records to push; an empty buffer to drain), so the
//!   start-up and connection cost is not counted. Instruction counts do not depend on the load
//!   of the machine, so a 10 % regression shows in one run.
//!
//! Every workload runs on a private redis-server this binary starts (never one it did not).

#[allow(
    dead_code,
    reason = "the benchmark records are all this binary takes from the bench tools"
)]
#[path = "../bench/tools.rs"]
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use buffer_core::{Buffer, BufferConfig};
use buffer_persist::{PersistConfig, Persister};
use buffer_tests::RedisServer;
use clap::Parser;

/// Measures the CPU cost per record of push_many and of the drain.
#[derive(Debug, Parser)]
#[command(name = "cpu_per_record", about, long_about = None)]
struct Cli {
    /// Records per workload (getrusage); the callgrind workloads use a tenth of it.
    #[arg(long, default_value_t = 500_000)]
    records: usize,
    /// Also count instructions per record with valgrind's callgrind.
    #[arg(long)]
    callgrind: bool,
    /// Internal: run one workload in this process (used under callgrind).
    #[arg(long, hide = true)]
    phase: Option<Phase>,
    /// Internal: the server of `--phase`.
    #[arg(long, hide = true)]
    redis: Option<String>,
    /// Internal: the output directory of `--phase drain`.
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    PushMany,
    Drain,
}

/// Records per `push_many` call, as in the bench's push_many figure.
const PER_CALL: usize = 100;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cpu_per_record: cannot start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cpu_per_record: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Some(phase) = cli.phase {
        let url = cli.redis.context("--phase needs --redis")?;
        let buffer = Buffer::connect(BufferConfig::new(url)).await?;
        return match phase {
            Phase::PushMany => push_many(&buffer, cli.records).await,
            Phase::Drain => drain(&buffer, &cli.out.context("--phase drain needs --out")?)
                .await
                .map(|_| ()),
        };
    }
    let n = cli.records.div_ceil(PER_CALL) * PER_CALL;
    let server = RedisServer::start();
    let buffer = server.buffer().await;
    println!(
        "records ~{} B; {n} records per workload (CPU), {} under callgrind\n",
        tools::RECORD_BYTES,
        if cli.callgrind { n / 10 } else { 0 }
    );
    println!("| workload | measure | per record |\n|---|---|---|");

    let cpu = Cpu::of_self();
    push_many(&buffer, n).await?;
    println!(
        "| push_many, {PER_CALL} per call (client) | user+sys CPU | {:.0} ns |",
        cpu.elapsed_ns() / n as f64
    );

    server.command(&["FLUSHALL"]);
    let loaded = tools::load(&buffer, "drain", n).await?;
    let out = tempfile::tempdir()?;
    let cpu = Cpu::of_self();
    let drained = drain(&buffer, out.path()).await?;
    ensure!(drained == loaded as u64, "drained {drained} of {loaded}");
    println!(
        "| drain to JSONL, in process | user+sys CPU | {:.0} ns |",
        cpu.elapsed_ns() / n as f64
    );

    let persist = sibling("buffer-persist")?;
    if persist.exists() {
        server.command(&["FLUSHALL"]);
        let loaded = tools::load(&buffer, "drain", n).await?;
        let out = tempfile::tempdir()?;
        let mut command = Command::new(&persist);
        command
            .args(["drain", "--redis", &server.url(), "--out"])
            .arg(out.path());
        println!(
            "| drain to JSONL, `buffer-persist drain` process | user+sys CPU (wait4) | {:.0} ns |",
            child_cpu_ns(command)? / loaded as f64
        );
    } else {
        println!(
            "(no {}: build it with --release to measure the process)",
            persist.display()
        );
    }

    if cli.callgrind {
        let small = (n / 10).div_ceil(PER_CALL) * PER_CALL;
        callgrind(&server, &buffer, small, &persist).await?;
    }
    Ok(())
}

/// Pushes `n` records (rounded up to whole calls) in `push_many` calls of [`PER_CALL`] from
/// one task.
async fn push_many(buffer: &Buffer, n: usize) -> Result<()> {
    let batch = tools::records(0, PER_CALL);
    for _ in 0..n.div_ceil(PER_CALL) {
        buffer.push_many("push_many", &batch).await?;
    }
    Ok(())
}

/// Drains everything to JSON Lines in `out` (default PersistConfig); returns the records.
async fn drain(buffer: &Buffer, out: &Path) -> Result<u64> {
    let report = Persister::new(buffer.clone(), PersistConfig::new(out))
        .drain()
        .await?;
    ensure!(
        report.failures.is_empty(),
        "drain failures: {:?}",
        report.failures
    );
    Ok(report.records)
}

/// The instructions per record of each workload under callgrind, `n` records each.
async fn callgrind(server: &RedisServer, buffer: &Buffer, n: usize, persist: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let me = std::env::current_exe()?;
    let url = server.url();
    let phase = |phase: &str, records: usize, name: &str| -> Result<u64> {
        let out = dir.path().join(format!("{name}.out"));
        std::fs::create_dir_all(&out)?;
        let mut command = Command::new(&me);
        command
            .args(["--phase", phase, "--redis", &url, "--records"])
            .arg(records.to_string())
            .arg("--out")
            .arg(&out);
        instructions(command, &dir.path().join(format!("{name}.callgrind")))
    };
    server.command(&["FLUSHALL"]);
    let idle = phase("push-many", 0, "push-idle")?;
    let busy = phase("push-many", n, "push")?;
    println!(
        "| push_many, {PER_CALL} per call (client) | instructions | {:.0} |",
        busy.saturating_sub(idle) as f64 / n as f64
    );

    server.command(&["FLUSHALL"]);
    let idle = phase("drain", 0, "drain-idle")?;
    let loaded = tools::load(buffer, "drain", n).await?;
    let busy = phase("drain", 0, "drain")?;
    println!(
        "| drain to JSONL, in process | instructions | {:.0} |",
        busy.saturating_sub(idle) as f64 / loaded as f64
    );

    if persist.exists() {
        let process = |name: &str| -> Result<u64> {
            let out = dir.path().join(format!("{name}.out"));
            std::fs::create_dir_all(&out)?;
            let mut command = Command::new(persist);
            command.args(["drain", "--redis", &url, "--out"]).arg(&out);
            instructions(command, &dir.path().join(format!("{name}.callgrind")))
        };
        server.command(&["FLUSHALL"]);
        let idle = process("process-idle")?;
        let loaded = tools::load(buffer, "drain", n).await?;
        let busy = process("process")?;
        println!(
            "| drain to JSONL, `buffer-persist drain` process | instructions | {:.0} |",
            busy.saturating_sub(idle) as f64 / loaded as f64
        );
    }
    Ok(())
}

/// Runs `command` under callgrind, writing its profile to `file`; returns its total
/// instructions (the `totals:` line of the profile).
fn instructions(command: Command, file: &Path) -> Result<u64> {
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(command.get_program())
        .args(command.get_args())
        .stdout(Stdio::null())
        .output()
        .context("cannot run valgrind (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "{:?} under callgrind failed: {}",
            command.get_program(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let profile = std::fs::read_to_string(file)?;
    let totals = profile
        .lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or(line.strip_prefix("summary:"))
        })
        .context("no totals in the callgrind profile")?;
    let first = totals.split_whitespace().next().unwrap_or_default();
    Ok(first.parse()?)
}

/// The path of a binary built next to this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(name))
}

/// user+sys CPU time of this process, all threads, since a start (`CLOCK_PROCESS_CPUTIME_ID`,
/// which counts in nanoseconds where `getrusage` of one's own process counts the same time in
/// microseconds).
struct Cpu {
    start: Duration,
}

impl Cpu {
    fn of_self() -> Self {
        Self {
            start: process_cpu(),
        }
    }

    fn elapsed_ns(&self) -> f64 {
        (process_cpu().saturating_sub(self.start)).as_nanos() as f64
    }
}

fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `command` under `/usr/bin/time`, which reports the child's user and system CPU from
/// `wait4`'s rusage (the child's own `getrusage`, 10 ms resolution); returns them in ns.
fn child_cpu_ns(command: Command) -> Result<f64> {
    let report = tempfile::NamedTempFile::new()?;
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%U %S")
        .arg("-o")
        .arg(report.path())
        .arg(command.get_program())
        .args(command.get_args())
        .stdout(Stdio::null())
        .output()
        .context("cannot run /usr/bin/time")?;
    ensure!(
        output.status.success(),
        "{:?} failed: {}",
        command.get_program(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(report.path())?;
    let seconds: f64 = text
        .split_whitespace()
        .map(str::parse::<f64>)
        .sum::<Result<f64, _>>()
        .with_context(|| format!("unexpected /usr/bin/time output {text:?}"))?;
    Ok(seconds * 1e9)
}
