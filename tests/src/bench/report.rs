//! The results table on stdout and the BENCHMARKS.md report.

use std::fmt::Write as _;
use std::process::Command;

use super::figures::{Figure, Target};

/// The machine and software the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub redis: String,
    pub commit: String,
    pub date: String,
}

impl Machine {
    /// Reads `/proc`, `redis-server --version` and `git`.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or("unknown".to_owned(), |(_, model)| model.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|kb| kb.split_whitespace().next()?.parse::<f64>().ok())
            .map_or("unknown".to_owned(), |kb| {
                format!("{:.1} GiB", kb / f64::from(1 << 20))
            });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".to_owned(), |text| text.trim().to_owned());
        let redis = output_of(Command::new(buffer_tests::redis_server_binary()).arg("--version"));
        let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let commit = output_of(
            Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(workspace),
        );
        let dirty = !output_of(
            Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .current_dir(workspace),
        )
        .is_empty();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory,
            kernel,
            redis,
            commit: if dirty {
                format!("{commit} (with uncommitted changes)")
            } else {
                commit
            },
            date: utc_now(),
        }
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (days to a civil date by Howard Hinnant's
/// `civil_from_days`, so a timestamp needs no date crate).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn output_of(command: &mut Command) -> String {
    command
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map_or(String::new(), |output| {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        })
}

/// One row of the table: figure, ours, baseline, ratio, target, result.
fn row(figure: &Figure) -> [String; 6] {
    [
        figure.title.to_owned(),
        figure.unit.show(figure.ours()),
        figure
            .baseline()
            .map_or("—".to_owned(), |b| figure.unit.show(b)),
        figure
            .ratio()
            .map_or("—".to_owned(), |r| format!("{r:.2}×")),
        figure.target_text(),
        match (figure.target, figure.passed()) {
            (Target::Report, _) => "—",
            (_, true) => "pass",
            (_, false) => "FAIL",
        }
        .to_owned(),
    ]
}

const HEADER: [&str; 6] = ["figure", "ours", "baseline", "ratio", "target", "result"];

/// The table, aligned for a terminal.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 6]> = figures.iter().map(row).collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&HEADER.map(str::to_owned)));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", line(&rule));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

/// What BENCHMARKS.md says about one run of the harness.
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub command: String,
    pub quick: bool,
    pub runs: usize,
    pub figures: &'a [Figure],
}

impl Report<'_> {
    /// The whole BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let m = self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "The performance targets of ARCHITECTURE.md, measured by `tests/src/bin/bench.rs` against baselines \
             taken in the same run on private `redis-server` processes it starts itself. Written \
             by the harness: rerun it rather than editing this file.\n"
        );
        let _ = writeln!(out, "- Date: {}", m.date);
        let _ = writeln!(out, "- Command: `{}`", self.command);
        let mode = if self.quick {
            "quick (smaller workloads than ARCHITECTURE.md names; see each method below)"
        } else {
            "full (the sizes ARCHITECTURE.md names)"
        };
        let _ = writeln!(
            out,
            "- Mode: {mode}; {} runs per figure, median reported",
            self.runs
        );
        let _ = writeln!(out, "- Commit: {}", m.commit);
        let _ = writeln!(
            out,
            "- Machine: {} cores (nproc), {}, {} RAM, Linux {}",
            m.cores, m.cpu, m.memory, m.kernel
        );
        let _ = writeln!(out, "- Redis: {}\n", m.redis);

        let _ = writeln!(out, "## Results\n");
        let _ = writeln!(out, "| {} |", HEADER.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(HEADER.len()));
        for figure in self.figures {
            let _ = writeln!(out, "| {} |", row(figure).join(" | "));
        }
        let _ = writeln!(
            out,
            "\nRatio = median of ours ÷ median of the baseline. Baselines: {}.\n",
            self.figures
                .iter()
                .filter(|f| f.baseline_label != "—")
                .map(|f| format!("{} — {}", f.title, f.baseline_label))
                .collect::<Vec<_>>()
                .join("; ")
        );

        let _ = writeln!(out, "## What is weak\n");
        let missed: Vec<&Figure> = self.figures.iter().filter(|f| !f.passed()).collect();
        if missed.is_empty() {
            let _ = writeln!(out, "Every target was met in this run.\n");
        }
        for figure in missed {
            let _ = writeln!(
                out,
                "- **{}** missed its target ({} against {}). {}\n",
                figure.title,
                figure
                    .ratio()
                    .map_or(figure.unit.show(figure.ours()), |r| format!("{r:.2}×")),
                figure.target_text(),
                weak_text(figure)
            );
        }
        let _ = writeln!(out, "{NOISE}\n");

        let _ = writeln!(out, "## How each figure is measured\n");
        for figure in self.figures {
            let _ = writeln!(
                out,
                "- **{}** (`--only {}`): {}",
                figure.title, figure.id, figure.method
            );
        }

        let _ = writeln!(out, "\n## Raw numbers per run\n");
        for figure in self.figures {
            let _ = writeln!(out, "### {}\n", figure.title);
            let _ = writeln!(out, "| run | ours | baseline | ratio | detail |");
            let _ = writeln!(out, "|---|---|---|---|---|");
            for (i, run) in figure.runs.iter().enumerate() {
                let baseline = run.baseline.map_or("—".to_owned(), |b| figure.unit.show(b));
                let ratio = run
                    .baseline
                    .filter(|b| *b > 0.0)
                    .map_or("—".to_owned(), |b| format!("{:.2}×", run.ours / b));
                let _ = writeln!(
                    out,
                    "| {} | {} | {baseline} | {ratio} | {} |",
                    i + 1,
                    figure.unit.show(run.ours),
                    run.detail.replace('|', "\\|")
                );
            }
            let _ = writeln!(out);
        }
        out
    }
}

/// A figure's "What is weak" text. The CSV and Parquet drains have their own (the other
/// format rows share `drain.rs`'s, which speaks for the compressed JSON Lines drains).
fn weak_text(figure: &Figure) -> &'static str {
    match figure.id {
        "drain_csv" => WEAK_CSV,
        "drain_parquet" | "drain_parquet_plain" => WEAK_PARQUET,
        _ => figure.weak,
    }
}

const WEAK_CSV: &str = "The CSV drain is bounded by the persister's CPU on the thread that \
    encodes: measured on 2026-12-07 (1 000 000 records, `--only drain`, 3 runs, load average \
    3-4 on 2 cores), about 1 150-1 300 ns of CPU per record against 1 400-1 670 before, and \
    0.23-0.27× of a JSON Lines drain that itself ran at 2.4-3.3 million records/s. What was \
    done: each record is split in one borrowed serde_json pass into its columns' raw value \
    texts (`FieldSplitter`, columns.rs: reused slots, no `Value`, no `Vec` of fields or of \
    the row, no `String` per field), and fields go straight into the csv writer. Under `perf` \
    the rest is the parse (about a third: serde_json's string scan, keys, raw values) and the \
    csv crate's field writer (about a quarter: its quoting state machine and copy), then the \
    page reads. Next levers: a hand-written scan of the record instead of serde's visitor, \
    and the csv writer's `write_byte_record` fast path or an own quoting writer; the bytes \
    must stay those of the csv crate, since an earlier attempt's file is compared byte for \
    byte.";

const WEAK_PARQUET: &str = "The Parquet drains are bounded by the persister's CPU on the \
    thread that encodes: measured on 2026-12-07 (1 000 000 records, `--only drain`, 3 runs, \
    load average 3-4 on 2 cores), 0.14-0.20× of the JSON Lines drain (427 000-650 000 \
    records/s against 127 000-198 000 before, 1 600-2 000 ns of CPU per record against \
    3 600-4 750). What was done: the batch is read from Redis once (the column types come \
    from its first page, and only a later value that does not fit them makes the persister \
    read the batch again and start the file over, so the file is always the one a full pass \
    gives), records are split in one borrowed pass without a `Value` or a `Vec` per record, \
    and a decimal's exactness as an `f64` is decided without formatting it. Under `perf` what \
    is left is spread: the parquet crate's dictionary encoding (interning and hashing each \
    string and number, about 15 %), comparisons and copies for page statistics and Arrow \
    arrays (about 11 %), the record parse (about 15 %), zstd (about 7 %), and building the \
    Arrow arrays. Next levers, each of which changes the files' bytes (an earlier version's \
    file of the same batch would then be a conflict): no dictionary for columns whose values \
    are nearly all distinct, chunk statistics instead of page statistics, and a hand-written \
    record scan.";

const NOISE: &str = "Caveat for every figure: the machine has few cores, and the harness, \
    redis-server and redis-benchmark share them (other builds may also run on it). The \
    baselines run under the same conditions in the same run, in alternating order, so the \
    ratios are fairer than the absolute numbers; still, treat a ratio within about 10 % of its \
    target as a tie and rerun before drawing conclusions.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
