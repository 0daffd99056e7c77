//! What the figures are built from: the benchmark records, the external tools that give the
//! baselines (`redis-benchmark`, `dd`), Redis' own counters, and the peak RSS of a child.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use buffer_core::Buffer;
use buffer_tests::RedisServer;
use serde_json::{Value, json};

/// The size of every benchmark record, as the compact JSON that is buffered.
pub const RECORD_BYTES: usize = 200;

/// The `i`-th benchmark record: an event-like JSON object with eight top-level keys whose
/// compact text is exactly [`RECORD_BYTES`] long (a `note` field pads it).
pub fn record(i: usize) -> Value {
    const EVENTS: [&str; 4] = ["page_view", "add_to_cart", "checkout", "search"];
    let mut value = json!({
        "id": format!("evt-{i:010}"),
        "ts": 1_700_000_000_000u64 + i as u64,
        "user": format!("user-{:06}", i % 100_000),
        "event": EVENTS[i % EVENTS.len()],
        "path": format!("/catalog/item/{:06}", i % 1_000_000),
        "amount": (i % 10_000) as f64 / 100.0,
        "ok": !i.is_multiple_of(7),
        "note": "",
    });
    let pad = RECORD_BYTES.saturating_sub(value.to_string().len());
    let letters = "abcdefghijklmnopqrstuvwxyz";
    let note: String = letters.chars().cycle().skip(i % 26).take(pad).collect();
    value["note"] = Value::String(note);
    value
}

/// `count` consecutive records starting at `from`.
pub fn records(from: usize, count: usize) -> Vec<Value> {
    (from..from + count).map(record).collect()
}

/// Calls `push` (one-record batches) or `push_many` on `store` `calls` times from `tasks`
/// concurrent tasks sharing one `Buffer`, cycling over `batches`. Returns records/s.
pub async fn push_rate(
    buffer: &Buffer,
    store: &str,
    batches: Arc<Vec<Vec<Value>>>,
    calls: usize,
    tasks: usize,
) -> Result<f64> {
    let (buffer, store) = (buffer.clone(), store.to_owned());
    calls_rate(batches, calls, tasks, move |batch| {
        let (buffer, store) = (buffer.clone(), store.clone());
        async move {
            if let [single] = batch.as_slice() {
                buffer.push(store.as_str(), single).await?;
            } else {
                buffer.push_many(store.as_str(), &batch).await?;
            }
            Ok(())
        }
    })
    .await
}

/// What a user would write by hand instead of `push_many`: `calls` times, from `tasks`
/// concurrent tasks sharing one multiplexed redis-rs connection, serialize a batch with
/// `serde_json::to_string` and send it as one `RPUSH key text…`, cycling over `batches`.
/// Returns records/s.
pub async fn hand_rpush_rate(
    conn: &redis::aio::MultiplexedConnection,
    key: &str,
    batches: Arc<Vec<Vec<Value>>>,
    calls: usize,
    tasks: usize,
) -> Result<f64> {
    let (conn, key) = (conn.clone(), key.to_owned());
    calls_rate(batches, calls, tasks, move |batch| {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let texts = batch
                .iter()
                .map(serde_json::to_string)
                .collect::<serde_json::Result<Vec<String>>>()?;
            let _length: u64 = redis::cmd("RPUSH")
                .arg(&key)
                .arg(texts)
                .query_async(&mut conn)
                .await?;
            Ok(())
        }
    })
    .await
}

/// Makes `calls` calls of `call`, each with the next of `batches` (cycled), from `tasks`
/// concurrent tasks that take the next call as they finish one. Returns records/s over the
/// whole.
async fn calls_rate<C, F>(
    batches: Arc<Vec<Vec<Value>>>,
    calls: usize,
    tasks: usize,
    call: C,
) -> Result<f64>
where
    C: Fn(Arc<Vec<Value>>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<()>> + Send,
{
    ensure!(!batches.is_empty(), "no batches to push");
    // Each batch shared, so a call hands its future a batch without copying it.
    let batches: Arc<Vec<Arc<Vec<Value>>>> =
        Arc::new(batches.iter().cloned().map(Arc::new).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (batches, next, call) = (batches.clone(), next.clone(), call.clone());
        set.spawn(async move {
            let mut records = 0usize;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= calls {
                    return Ok::<usize, anyhow::Error>(records);
                }
                let batch = batches[index % batches.len()].clone();
                records += batch.len();
                call(batch).await?;
            }
        });
    }
    let mut records = 0;
    while let Some(joined) = set.join_next().await {
        records += joined.context("a pusher task panicked")??;
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

/// Calls, from one task, `calls` times: one record into each of `stores`, either as one
/// `PushPipeline` (one round trip) or as one `push` after the other (one round trip each),
/// cycling over `samples`. Every push must succeed. Returns records/s.
pub async fn fan_out_rate(
    buffer: &Buffer,
    stores: &[String],
    samples: &[Value],
    calls: usize,
    pipelined: bool,
) -> Result<f64> {
    ensure!(!samples.is_empty(), "no records to push");
    let started = Instant::now();
    let mut next = 0usize;
    for _ in 0..calls {
        if pipelined {
            let mut pipeline = buffer.pipeline();
            let handles: Vec<_> = stores
                .iter()
                .map(|store| {
                    next += 1;
                    pipeline.push(store.as_str(), &samples[next % samples.len()])
                })
                .collect();
            pipeline.execute().await?;
            for handle in handles {
                handle.receipt()?;
            }
        } else {
            for store in stores {
                next += 1;
                buffer
                    .push(store.as_str(), &samples[next % samples.len()])
                    .await?;
            }
        }
    }
    Ok((calls * stores.len()) as f64 / started.elapsed().as_secs_f64())
}

/// Loads `total` records (rounded up to whole calls of 1000) into `store`, untimed.
/// Returns how many were pushed.
pub async fn load(buffer: &Buffer, store: &str, total: usize) -> Result<usize> {
    const PER_CALL: usize = 1000;
    // 50 000 distinct records, cycled: repeats are 10 MB apart, farther than a zstd or gzip
    // window, so compressed outputs are not flattered by the repetition.
    let batch = Arc::new((0..50).map(|b| records(b * PER_CALL, PER_CALL)).collect());
    let calls = total.div_ceil(PER_CALL);
    push_rate(buffer, store, batch, calls, 4).await?;
    Ok(calls * PER_CALL)
}

/// One line of `redis-benchmark --csv`: the test's title and its requests per second.
#[derive(Debug)]
pub struct BenchmarkLine {
    pub title: String,
    pub requests_per_sec: f64,
}

/// Runs `redis-benchmark -p <port> --csv <args>` and returns its result lines.
pub fn redis_benchmark(port: u16, args: &[String]) -> Result<Vec<BenchmarkLine>> {
    let output = Command::new("redis-benchmark")
        .arg("-p")
        .arg(port.to_string())
        .arg("--csv")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run redis-benchmark (it ships with redis-server: install redis-tools)")?;
    ensure!(
        output.status.success(),
        "redis-benchmark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<BenchmarkLine> = stdout
        .lines()
        .filter(|line| line.starts_with('"') && !line.starts_with("\"test\""))
        .filter_map(parse_csv_line)
        .collect();
    ensure!(
        !lines.is_empty(),
        "redis-benchmark printed no result: {stdout}"
    );
    Ok(lines)
}

/// `"title","rps","avg",...,"max"`. The title of a custom command is the command itself and
/// is not escaped (a JSON argument brings its own quotes and commas), so the seven numeric
/// fields are taken from the right.
fn parse_csv_line(line: &str) -> Option<BenchmarkLine> {
    let inner = line.strip_prefix('"')?.strip_suffix('"')?;
    let mut fields = inner.rsplitn(8, "\",\"");
    let numbers: Vec<&str> = fields.by_ref().take(7).collect();
    let title = fields.next()?;
    let requests_per_sec = numbers.last()?.parse().ok()?;
    Some(BenchmarkLine {
        title: title.to_owned(),
        requests_per_sec,
    })
}

/// The disk's sequential write speed in bytes/s: `dd if=/dev/zero of=<dir>/dd.bin bs=1M
/// count=<mib> conv=fdatasync`, as dd itself reports it.
pub fn disk_write_rate(dir: &Path, mib: u32) -> Result<f64> {
    let target = dir.join("dd.bin");
    let output = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", &format!("count={mib}"), "conv=fdatasync"])
        .env("LC_ALL", "C")
        .output()
        .context("cannot run dd")?;
    let _ = std::fs::remove_file(&target);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "dd failed: {stderr}");
    // "536870912 bytes (537 MB, 512 MiB) copied, 0.43 s, 1.2 GB/s"
    let line = stderr
        .lines()
        .find(|line| line.contains(" copied, "))
        .with_context(|| format!("unexpected dd output: {stderr}"))?;
    let bytes: f64 = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected dd output: {line}"))?;
    let seconds: f64 = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" s")?.parse().ok())
        .with_context(|| format!("unexpected dd output: {line}"))?;
    ensure!(seconds > 0.0, "dd took no time: {line}");
    Ok(bytes / seconds)
}

/// One field of `INFO <section>`.
pub fn info_field(server: &RedisServer, section: &str, field: &str) -> Result<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut server.conn())
        .context("INFO")?;
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_owned())
        .with_context(|| format!("INFO {section} has no {field}"))
}

/// Redis' `used_memory`, in bytes.
/// redis-server's user+sys CPU seconds so far (`INFO cpu`).
pub fn server_cpu_s(server: &RedisServer) -> Result<f64> {
    let user: f64 = info_field(server, "cpu", "used_cpu_user")?.parse()?;
    let sys: f64 = info_field(server, "cpu", "used_cpu_sys")?.parse()?;
    Ok(user + sys)
}

/// This process's user+sys CPU time, all threads.
pub fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

pub fn used_memory(server: &RedisServer) -> Result<u64> {
    Ok(info_field(server, "memory", "used_memory")?.parse()?)
}

/// Empties the server (synchronously, so the memory is back before the next measurement).
pub fn flush_all(server: &RedisServer) -> Result<()> {
    redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query::<()>(&mut server.conn())
        .context("FLUSHALL")
}

/// Total size of the regular files under `dir`.
pub fn bytes_under(dir: &Path) -> u64 {
    buffer_tests::files_under(dir)
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum()
}

/// The `buffer-persist` binary next to this executable (same target directory and profile),
/// built first with `cargo build --release -p buffer-persist` when cargo is at hand, so it is
/// never stale.
pub fn persist_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let dir = exe
        .parent()
        .context("the bench executable has no directory")?;
    let binary = dir.join("buffer-persist");
    let profile_is_release = dir.file_name().is_some_and(|name| name == "release");
    if let (Some(target), true) = (dir.parent(), profile_is_release) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        eprintln!("building buffer-persist (release) for the RSS figure…");
        let mut command = Command::new(cargo);
        // `cargo run` gives this process the package's CARGO_* variables; build scripts that
        // watch the environment would see them as a change and rebuild half the tree (and
        // again at the next plain `cargo build`). Hand the inner cargo a clean environment.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let keep = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref());
            if (name.starts_with("CARGO_") && !keep) || name == "OUT_DIR" {
                command.env_remove(name.as_ref());
            }
        }
        let status = command
            .args(["build", "--release", "--quiet", "-p", "buffer-persist"])
            .arg("--target-dir")
            .arg(target)
            .current_dir(workspace)
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("warning: could not build buffer-persist; using what is there");
        }
    }
    ensure!(
        binary.is_file(),
        "{} not found: build it with `cargo build --release -p buffer-persist` \
         (with the same CARGO_TARGET_DIR as this harness)",
        binary.display()
    );
    Ok(binary)
}

/// Runs `buffer-persist drain --redis <url> --out <out> <extra…>` (the release binary
/// `persist`) to its end, measured as [`run_measuring_rss`] does, and checks that it reports
/// exactly `expected` records drained. Returns its measures.
pub async fn drain_process(
    persist: &Path,
    url: String,
    out: &Path,
    extra: &[&str],
    expected: usize,
) -> Result<PeakRss> {
    let mut args: Vec<String> = vec![
        "drain".into(),
        "--redis".into(),
        url,
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let persist = persist.to_path_buf();
    let (peak, stderr) =
        tokio::task::spawn_blocking(move || run_measuring_rss(&persist, &args)).await??;
    // Its last line: "drained <batches> batches, <records> records".
    let drained = stderr
        .lines()
        .find_map(|line| line.strip_prefix("drained "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|records| records.split_whitespace().next()?.parse::<usize>().ok());
    ensure!(
        drained == Some(expected),
        "the drain child ({extra:?}) persisted {drained:?} of {expected} records: {stderr}"
    );
    Ok(peak)
}

/// Elements per second `redis-benchmark -d 200 -t lrange_600 -n <requests>` reads on the
/// server at `port` (requests/s × 600).
pub fn lrange_600_rate(port: u16, requests: usize) -> Result<f64> {
    let args: Vec<String> = ["-d", "200", "-t", "lrange_600", "-n", &requests.to_string()]
        .map(str::to_owned)
        .into();
    Ok(redis_benchmark(port, &args)?
        .iter()
        .find(|line| line.title.starts_with("LRANGE_600"))
        .context("redis-benchmark printed no LRANGE_600 line")?
        .requests_per_sec
        * 600.0)
}

/// How much memory a child process used at most.
#[derive(Debug, Clone, Copy)]
pub struct PeakRss {
    /// `ru_maxrss` of the child as its parent's wait4 saw it (GNU time's `%M`), in bytes:
    /// exact, when `/usr/bin/time` exists.
    pub exact: Option<u64>,
    /// The largest `VmHWM` (the kernel's own high-water mark of resident memory) read from
    /// `/proc/<pid>/status` while polling every 2 ms: it can only miss growth in the last
    /// poll interval before the process exits.
    pub polled: u64,
    /// Wall time of the child.
    pub elapsed: Duration,
    /// User + system CPU time of the child (GNU time's `%U` + `%S`, from wait4's rusage, in
    /// 10 ms steps), when `/usr/bin/time` exists.
    pub cpu: Option<Duration>,
}

impl PeakRss {
    /// The exact figure when there is one, else the polled one.
    pub fn best(&self) -> u64 {
        self.exact.unwrap_or(self.polled).max(self.polled)
    }
}

/// Runs `program args…` to completion, measuring its peak RSS, and returns it with the
/// child's stderr. Fails when the child fails.
pub fn run_measuring_rss(program: &Path, args: &[String]) -> Result<(PeakRss, String)> {
    let time = Path::new("/usr/bin/time");
    let wrapped = time.is_file();
    let mut command = if wrapped {
        let mut command = Command::new(time);
        command
            .args(["-f", "bench-maxrss-kb=%M bench-cpu-s=%U %S"])
            .arg(program);
        command
    } else {
        Command::new(program)
    };
    let stderr_file = tempfile::NamedTempFile::new()?;
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file.reopen()?);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let mut measured_pid = (!wrapped).then_some(child.id());
    let mut polled_kb = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if measured_pid.is_none() {
            measured_pid = child_of(child.id());
        }
        if let Some(kb) = measured_pid.and_then(vm_hwm_kb) {
            polled_kb = polled_kb.max(kb);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    let stderr = std::fs::read_to_string(stderr_file.path())?;
    if !status.success() {
        bail!("{} failed ({status}): {stderr}", program.display());
    }
    let exact = stderr
        .lines()
        .find_map(|line| line.strip_prefix("bench-maxrss-kb="))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let cpu = stderr
        .lines()
        .find_map(|line| line.split_once(" bench-cpu-s="))
        .and_then(|(_, seconds)| {
            let mut parts = seconds.split_whitespace().map(str::parse::<f64>);
            let (user, system) = (parts.next()?.ok()?, parts.next()?.ok()?);
            Some(Duration::from_secs_f64(user + system))
        });
    Ok((
        PeakRss {
            exact,
            polled: polled_kb * 1024,
            elapsed,
            cpu,
        },
        stderr,
    ))
}

/// The first child of `pid` (the program GNU time runs), from
/// `/proc/<pid>/task/<pid>/children`, or by scanning `/proc` for a process whose parent it is.
fn child_of(pid: u32) -> Option<u32> {
    let listed = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok());
    listed.or_else(|| {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let candidate: u32 = entry.file_name().to_str()?.parse().ok()?;
                let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
                let parent: u32 = status_field(&status, "PPid:")?;
                (parent == pid).then_some(candidate)
            })
    })
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "VmHWM:")
}

fn status_field<T: std::str::FromStr>(status: &str, field: &str) -> Option<T> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The median (the mean of the two middle values for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_exactly_200_bytes_with_eight_keys() {
        for i in [0, 1, 9, 12_345, 99_999_999] {
            let value = record(i);
            assert_eq!(value.to_string().len(), RECORD_BYTES, "{value}");
            assert_eq!(value.as_object().unwrap().len(), 8);
        }
    }

    #[test]
    fn csv_lines_with_quotes_and_commas_in_the_title_parse() {
        let line = r#""RPUSH k {"a":1,"b":"x"}","79051.38","0.339","0.080","0.319","0.503","0.815","2.039""#;
        let parsed = parse_csv_line(line).unwrap();
        assert_eq!(parsed.title, r#"RPUSH k {"a":1,"b":"x"}"#);
        assert_eq!(parsed.requests_per_sec, 79051.38);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
