//! The Redis memory study behind `--only memory`: bytes of Redis memory per buffered record
//! for two realistic shapes and two push sizes, broken down by key, against the raw JSON
//! size; what `list-max-listpack-size` changes; and a prototype of a compact encoding in
//! Redis (MessagePack, `super::msgpack`) measured against the rule ARCHITECTURE.md's
//! performance section and docs/operations.md's "Redis memory per record" state: offered only if it
//! saves at least 20 % of Redis memory for one shape without making the drain more than 20 %
//! slower.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use buffer_core::{Buffer, BufferConfig};
use buffer_persist::{PersistConfig, Persister};
use buffer_tests::RedisServer;
use serde_json::{Value, json};

use super::msgpack;
use super::tools::{self, median};

/// Records buffered per measurement: enough that per-store constants (the key set, the
/// indexes) and allocator slack vanish from the per-record figure.
pub const STUDY_RECORDS: usize = 100_000;
/// Records drained per timed drain: a drain's fixed costs (output marker, fsyncs) must not
/// hide the per-record cost the decode would add to.
const DRAIN_RECORDS: usize = 500_000;
/// Timed drains and decodes per shape; the median counts.
const TIMED_RUNS: usize = 3;
/// The encoding rule: the least saving of Redis memory, and the most drain slowdown.
const MIN_SAVING: f64 = 0.20;
const MAX_SLOWDOWN: f64 = 0.20;

/// What a buffered record looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The demo's metric events (`buffer-tui/src/demo.rs`): a host, a decimal value, three
    /// small integers and a millisecond timestamp, about 70 B of JSON.
    SmallEvent,
    /// The bench's 200 B records (`tools::record`): eight fields, a 100-odd-byte string.
    Payload200,
}

impl Shape {
    const ALL: [Shape; 2] = [Shape::SmallEvent, Shape::Payload200];

    fn label(self) -> &'static str {
        match self {
            Self::SmallEvent => "small numeric event (demo metric, ~70 B)",
            Self::Payload200 => "200 B record with a string payload",
        }
    }

    /// The `i`-th record of this shape, as the compact JSON text that is buffered.
    fn text(self, i: usize) -> String {
        match self {
            Self::SmallEvent => small_event(i).to_string(),
            Self::Payload200 => tools::record(i).to_string(),
        }
    }
}

/// The `i`-th small event, the shape of the demo's `metrics/*` stores, deterministic.
fn small_event(i: usize) -> Value {
    const HOSTS: [&str; 3] = ["web-1", "web-2", "db-1"];
    json!({
        "host": HOSTS[i % HOSTS.len()],
        "value": ((i * 37) % 10_000) as f64 / 100.0,
        "load": [i % 400, (i * 7) % 400, (i * 13) % 400],
        "at": 1_700_000_000_000u64 + i as u64,
    })
}

/// The kinds of keys a store's memory is split into.
const KINDS: [&str; 5] = [
    "data list",
    "run list",
    "key set",
    "first + bytes",
    "group indexes",
];

/// One shape pushed in one push size into a fresh server.
#[derive(Debug, Clone)]
pub struct Footprint {
    pub shape: Shape,
    pub per_push: usize,
    /// Average compact JSON text length.
    pub raw: f64,
    /// `used_memory` after − before, per record.
    pub used: f64,
    /// `MEMORY USAGE … SAMPLES 0` per record, summed over the keys of each of [`KINDS`].
    pub by_kind: [f64; KINDS.len()],
    /// `MEMORY USAGE` of the key set, first-write time, byte counter and index entries, in
    /// bytes: what a store costs whatever its record count (the key set grows with the
    /// number of distinct top-level keys, not with records).
    pub per_store: f64,
}

/// The plain LIST of one shape's texts under one `list-max-listpack-size`.
#[derive(Debug, Clone)]
pub struct ListpackSetting {
    pub shape: Shape,
    pub setting: i64,
    /// `MEMORY USAGE` of the list per record.
    pub per_record: f64,
}

/// The compact-encoding prototype for one shape.
#[derive(Debug, Clone)]
pub struct Encoding {
    pub shape: Shape,
    /// Average stored length: JSON text, MessagePack (or the text when it would not come
    /// back exactly).
    pub json_len: f64,
    pub packed_len: f64,
    /// Share of records stored as MessagePack.
    pub packed_share: f64,
    /// `MEMORY USAGE` per record of a plain LIST of the JSON texts and of the encoded ones.
    pub json_list: f64,
    pub packed_list: f64,
    /// The saving on the store's `used_memory` per record, at 1 and at 100 records per push.
    pub saving: [f64; 2],
    /// `Persister::drain` of the JSON store, ns per record (median).
    pub drain_ns: f64,
    /// Decoding the stored form back to the JSON text, ns per record (median, one thread).
    pub decode_ns: f64,
}

impl Encoding {
    /// The drain's slowdown if each record had to be decoded on the way: the decode's time
    /// over the drain's (the drain reads one store on one task, so it adds up).
    fn slowdown(&self) -> f64 {
        self.decode_ns / self.drain_ns
    }

    fn qualifies(&self) -> bool {
        self.saving.iter().any(|s| *s >= MIN_SAVING) && self.slowdown() <= MAX_SLOWDOWN
    }
}

/// Everything the study measured.
#[derive(Debug, Clone, Default)]
pub struct Study {
    pub footprints: Vec<Footprint>,
    pub listpack: Vec<ListpackSetting>,
    pub encodings: Vec<Encoding>,
}

/// Runs the whole study on fresh private servers.
///
/// # Errors
/// A server that would not start, a push or drain that failed, a prototype record that did
/// not decode back to its exact text.
pub async fn study() -> Result<Study> {
    let mut study = Study::default();
    let n = STUDY_RECORDS;
    for shape in Shape::ALL {
        let texts: Arc<Vec<String>> = Arc::new((0..n).map(|i| shape.text(i)).collect());
        for per_push in [1, 100] {
            let footprint = footprint(shape, per_push, &texts).await?;
            eprintln!(
                "[memory] {}, {per_push} per push: {:.1} B/rec used, raw {:.1} B",
                shape.label(),
                footprint.used,
                footprint.raw
            );
            study.footprints.push(footprint);
        }
        for setting in [-1, -2, -3, -4, -5] {
            let per_record = plain_list(&texts_as_bytes(&texts), Some(setting))?;
            study.listpack.push(ListpackSetting {
                shape,
                setting,
                per_record,
            });
        }
        study
            .encodings
            .push(encoding(shape, &texts, &study.footprints).await?);
    }
    Ok(study)
}

fn texts_as_bytes(texts: &[String]) -> Vec<Vec<u8>> {
    texts.iter().map(|text| text.as_bytes().to_vec()).collect()
}

/// Pushes `texts` with `push_json`, `per_push` per call from 4 tasks, into one store of a
/// fresh server, and measures its memory.
async fn footprint(shape: Shape, per_push: usize, texts: &Arc<Vec<String>>) -> Result<Footprint> {
    let server = RedisServer::start();
    let buffer = connect(&server).await?;
    let before = tools::used_memory(&server)?;
    push_texts(&buffer, "memory", texts, per_push).await?;
    let after = tools::used_memory(&server)?;
    let n = texts.len() as f64;
    let mut by_kind = [0.0; KINDS.len()];
    let mut conn = server.conn();
    for (key, kind) in keys_by_kind(&mut conn)? {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query(&mut conn)?;
        by_kind[kind] += bytes as f64 / n;
    }
    Ok(Footprint {
        shape,
        per_push,
        per_store: by_kind[2..].iter().sum::<f64>() * n,
        raw: texts.iter().map(String::len).sum::<usize>() as f64 / n,
        used: after.saturating_sub(before) as f64 / n,
        by_kind,
    })
}

async fn connect(server: &RedisServer) -> Result<Buffer> {
    Buffer::connect(BufferConfig::new(server.url()))
        .await
        .context("connect to the private redis-server")
}

/// `push_json` of `texts` in order, `per_push` per call, from 4 tasks sharing `buffer`.
async fn push_texts(
    buffer: &Buffer,
    store: &str,
    texts: &Arc<Vec<String>>,
    per_push: usize,
) -> Result<()> {
    let calls = texts.len().div_ceil(per_push);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (buffer, store, texts, next) = (
            buffer.clone(),
            store.to_owned(),
            texts.clone(),
            next.clone(),
        );
        set.spawn(async move {
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    return Ok::<(), buffer_core::Error>(());
                }
                let end = ((call + 1) * per_push).min(texts.len());
                buffer
                    .push_json(store.as_str(), &texts[call * per_push..end])
                    .await?;
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.context("a pusher task panicked")??;
    }
    Ok(())
}

/// Every key of the server (a private one, so SCAN sees only this study's store) with the
/// index in [`KINDS`] of what it holds, told by its type and its name's last part.
fn keys_by_kind(conn: &mut redis::Connection) -> Result<Vec<(String, usize)>> {
    let keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(conn)?
        .collect::<redis::RedisResult<_>>()?;
    let mut kinds = Vec::with_capacity(keys.len());
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(conn)?;
        let index = match (kind.as_str(), key.rsplit(':').next().unwrap_or_default()) {
            ("list", "records") => 0,
            ("list", "runs") => 1,
            ("set", "keys") => 2,
            ("string", _) => 3,
            ("zset", _) => 4,
            _ => anyhow::bail!("unexpected key {key} ({kind}) after pushes into one store"),
        };
        kinds.push((key, index));
    }
    Ok(kinds)
}

/// `MEMORY USAGE` per element of a plain LIST of `items` (RPUSHed 100 at a time) on a fresh
/// server, with `list-max-listpack-size` set to `setting` when given.
fn plain_list(items: &[Vec<u8>], setting: Option<i64>) -> Result<f64> {
    let server = RedisServer::start();
    let mut conn = server.conn();
    if let Some(setting) = setting {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("list-max-listpack-size")
            .arg(setting)
            .query::<()>(&mut conn)?;
    }
    for chunk in items.chunks(100) {
        redis::cmd("RPUSH")
            .arg("plain")
            .arg(chunk)
            .query::<u64>(&mut conn)?;
    }
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("plain")
        .arg("SAMPLES")
        .arg(0)
        .query(&mut conn)?;
    Ok(bytes as f64 / items.len() as f64)
}

/// The compact-encoding prototype for one shape: sizes, memory saving, drain and decode time.
async fn encoding(
    shape: Shape,
    texts: &Arc<Vec<String>>,
    footprints: &[Footprint],
) -> Result<Encoding> {
    let n = texts.len() as f64;
    let mut stored = Vec::with_capacity(texts.len());
    let mut packed = 0usize;
    for text in texts.iter() {
        let (bytes, was_packed) = msgpack::encode(text)?;
        packed += usize::from(was_packed);
        stored.push(bytes);
    }
    // The prototype must give back every text exactly, or its figures mean nothing.
    let mut back = Vec::new();
    for (text, bytes) in texts.iter().zip(&stored) {
        back.clear();
        msgpack::decode_into(bytes, &mut back)?;
        ensure!(back == text.as_bytes(), "the prototype changed {text}");
    }
    let json_list = plain_list(&texts_as_bytes(texts), None)?;
    let packed_list = plain_list(&stored, None)?;
    let saved = json_list - packed_list;
    let store_used = |per_push: usize| {
        footprints
            .iter()
            .find(|f| f.shape == shape && f.per_push == per_push)
            .map_or(f64::NAN, |f| f.used)
    };
    let saving = [saved / store_used(1), saved / store_used(100)];

    let mut decodes = Vec::with_capacity(TIMED_RUNS);
    let mut out = Vec::with_capacity(1 << 20);
    for _ in 0..TIMED_RUNS {
        let started = Instant::now();
        for bytes in &stored {
            // A persister writes through a buffer it flushes now and then; so does this.
            if out.len() > 1 << 20 {
                out.clear();
            }
            msgpack::decode_into(bytes, &mut out)?;
            out.push(b'\n');
        }
        decodes.push(started.elapsed().as_secs_f64() * 1e9 / n);
    }
    let drain_ns = drain_ns(texts).await?;
    let encoding = Encoding {
        shape,
        json_len: texts.iter().map(String::len).sum::<usize>() as f64 / n,
        packed_len: stored.iter().map(Vec::len).sum::<usize>() as f64 / n,
        packed_share: packed as f64 / n,
        json_list,
        packed_list,
        saving,
        drain_ns,
        decode_ns: median(&decodes),
    };
    eprintln!(
        "[memory] {}: MessagePack saves {:.0} % / {:.0} % (1 / 100 per push); decode {:.0} ns \
         vs drain {:.0} ns per record (+{:.0} %)",
        shape.label(),
        encoding.saving[0] * 100.0,
        encoding.saving[1] * 100.0,
        encoding.decode_ns,
        encoding.drain_ns,
        encoding.slowdown() * 100.0
    );
    Ok(encoding)
}

/// `Persister::drain` (in process, default config: JSON Lines, fsync) of [`DRAIN_RECORDS`]
/// records cycled from `texts`, pushed 1000 per call (untimed); ns per record, median of
/// [`TIMED_RUNS`].
async fn drain_ns(texts: &Arc<Vec<String>>) -> Result<f64> {
    let server = RedisServer::start();
    let buffer = connect(&server).await?;
    let cycled: Arc<Vec<String>> =
        Arc::new(texts.iter().cycle().take(DRAIN_RECORDS).cloned().collect());
    let mut times = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        push_texts(&buffer, "drain", &cycled, 1000).await?;
        let out = tempfile::tempdir()?;
        let started = Instant::now();
        let report = Persister::new(buffer.clone(), PersistConfig::new(out.path()))
            .drain()
            .await?;
        let elapsed = started.elapsed().as_secs_f64();
        ensure!(
            report.failures.is_empty() && report.records == DRAIN_RECORDS as u64,
            "drain persisted {} of {DRAIN_RECORDS} records: {:?}",
            report.records,
            report.failures
        );
        times.push(elapsed * 1e9 / DRAIN_RECORDS as f64);
    }
    Ok(median(&times))
}

impl Study {
    /// Whether the compact encoding met the rule for some shape.
    pub fn encoding_qualifies(&self) -> bool {
        self.encodings.iter().any(Encoding::qualifies)
    }

    /// The study's tables (Markdown, also readable on a terminal).
    pub fn tables(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Bytes of Redis memory per buffered record, {STUDY_RECORDS} records in one store of a \
             fresh server, pushed with `push_json` from 4 tasks. *used* is `INFO memory` \
             `used_memory` after − before, ÷ records; the key columns are `MEMORY USAGE <key> \
             SAMPLES 0` ÷ records, summed per kind of key (*first + bytes*: the store's \
             first-write time and byte counter; *group indexes*: its group's `stores`, `bytes` \
             and `count` ZSETs).\n"
        );
        let _ = writeln!(
            out,
            "| shape | records per push | raw JSON | used | {} | used ÷ raw | per store, not per record |",
            KINDS.join(" | ")
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|{}---|---|",
            "---|".repeat(KINDS.len())
        );
        for f in &self.footprints {
            let kinds: Vec<String> = f.by_kind.iter().map(|b| format!("{b:.2}")).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {} | {:.2}× | {:.0} B |",
                f.shape.label(),
                f.per_push,
                f.raw,
                f.used,
                kinds.join(" | "),
                f.used / f.raw,
                f.per_store
            );
        }

        let _ = writeln!(
            out,
            "\n`list-max-listpack-size` (Redis' default is -2, 8 KiB per list node): `MEMORY \
             USAGE` per element of a plain LIST holding the same {STUDY_RECORDS} JSON texts.\n"
        );
        let settings: Vec<String> = self
            .listpack
            .iter()
            .filter(|l| l.shape == Shape::ALL[0])
            .map(|l| format!("{} ({} KiB)", l.setting, 2u32 << l.setting.unsigned_abs()))
            .collect();
        let _ = writeln!(out, "| shape | {} |", settings.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(settings.len()));
        for shape in Shape::ALL {
            let cells: Vec<String> = self
                .listpack
                .iter()
                .filter(|l| l.shape == shape)
                .map(|l| format!("{:.2}", l.per_record))
                .collect();
            let _ = writeln!(out, "| {} | {} |", shape.label(), cells.join(" | "));
        }

        let _ = writeln!(
            out,
            "\nCompact encoding prototype (MessagePack, `tests/src/bench/msgpack.rs`; a record \
             that would not decode back to its exact text stays JSON). Stored sizes in bytes \
             per record; *list* is `MEMORY USAGE` per element of a plain LIST of the stored \
             forms; the saving is (JSON list − MessagePack list) ÷ the store's *used* above. \
             The drain is `Persister::drain` of {DRAIN_RECORDS} records of the shape (JSON \
             Lines, fsync), the decode is MessagePack → the exact JSON text on one thread; \
             both medians of {TIMED_RUNS}; absolute times vary several-fold with the \
             machine's load, the slowdown is the ratio of the two, taken in the same run. \
             Rule: offered only if it saves ≥ {:.0} % for a shape and the decode adds ≤ {:.0} % \
             to the drain.\n",
            MIN_SAVING * 100.0,
            MAX_SLOWDOWN * 100.0
        );
        let _ = writeln!(
            out,
            "| shape | JSON | MessagePack | packed | JSON list | MessagePack list | saving, 1 per push | saving, 100 per push | drain ns/rec | decode ns/rec | drain slowdown | meets the rule |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for e in &self.encodings {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.0} % | {:.1} | {:.1} | {:.1} % | {:.1} % | {:.0} | {:.0} | +{:.0} % | {} |",
                e.shape.label(),
                e.json_len,
                e.packed_len,
                e.packed_share * 100.0,
                e.json_list,
                e.packed_list,
                e.saving[0] * 100.0,
                e.saving[1] * 100.0,
                e.drain_ns,
                e.decode_ns,
                e.slowdown() * 100.0,
                if e.qualifies() { "yes" } else { "no" }
            );
        }
        out
    }
}

/// The heading of the study's section in BENCHMARKS.md (docs/operations.md links to it).
const HEADING: &str = "## Redis memory per record";

impl Study {
    /// The study's section of BENCHMARKS.md: when and how it was measured, the tables, and
    /// the decision about a compact encoding.
    pub fn section(&self, machine: &super::report::Machine) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{HEADING}\n");
        let _ = writeln!(
            out,
            "Measured {} at commit {} by `cargo run --release -p buffer-tests --bin bench -- \
             --only memory` (which rewrites only this section; a full run rewrites it too), \
             on {}.\n",
            machine.date, machine.commit, machine.redis
        );
        out.push_str(&self.tables());
        let _ = writeln!(out);
        let decision = if self.encoding_qualifies() {
            "**Decision:** records stay JSON text in Redis, decided on the first runs, where \
             no shape met the rule; in this run a shape met it, so the decision should be \
             looked at again (rerun to rule out noise first)."
        } else {
            "**Decision:** no shape met the rule (in this run, as in the first runs), so \
             records stay JSON text in Redis and no compact encoding is offered (docs/operations.md, \
             \"Redis memory per record\", says why)."
        };
        let _ = writeln!(out, "{decision}\n");
        out.push_str(FINDINGS);
        let _ = writeln!(out);
        out
    }
}

/// `report` with its study section replaced by `section`, or `section` inserted before "How
/// each figure is measured" (or at the end) when it has none.
pub fn splice(report: &str, section: &str) -> String {
    let section = format!("{}\n\n", section.trim_end());
    if let Some(start) = report.find(&format!("\n{HEADING}\n")).map(|at| at + 1) {
        let end = report[start + HEADING.len()..]
            .find("\n## ")
            .map_or(report.len(), |at| start + HEADING.len() + at + 1);
        return format!("{}{section}{}", &report[..start], &report[end..]);
    }
    match report.find("\n## How each figure is measured") {
        Some(at) => format!("{}\n{section}{}", &report[..at], &report[at + 1..]),
        None if report.is_empty() => section,
        None => format!("{}\n\n{section}", report.trim_end()),
    }
}

/// What the tables show beyond the encoding rule, written from the first runs of the study
/// (2026-11-23) and true of the layout the code has.
const FINDINGS: &str = "What the tables show (first runs, 2026-11-23, on a 2-core machine \
    shared with other builds):

- **A record costs its JSON text plus about 4-6 B in the data list** (the listpack entry's \
  length header and back-length, and the list nodes' share), and nothing else once pushes \
  carry many records: the key set, first-write time, byte counter and index entries are a \
  constant of under 1 KiB per store (the *per store* column; the key set grows with \
  the distinct top-level keys, not with records).
- **The run list is the one per-push cost:** one `<count>:<bytes>:<max>` entry per push, \
  about 9-11 B. Pushed one at a time, a small event costs 84 B instead of 75 B (+12 %), a \
  200 B record 219 B instead of 208 B (+5 %); at 100 records per push the entry is 0.1 B per \
  record. The cheap win is on the producer's side: batch records (`push_many`, or \
  `push_json` of several texts); a `PushPipeline` does not help here, since each of its \
  pushes is its own run. Shrinking the entry itself (merging a push into the previous run \
  when both hold one record of similar size) would need the push to read the run list's tail, \
  that is a script instead of MULTI/EXEC, or readers that tolerate runs they cannot size \
  exactly; it was not done.
- **`list-max-listpack-size` is not worth changing:** larger list nodes (-3 to -5) save at \
  most about 1 % over the default -2, smaller ones (-1) cost about 1 %.
- **A compact encoding (MessagePack) saves about a quarter for small numeric events but \
  not enough for string payloads, and decoding costs the drain far more than 20 %.** Field \
  names, strings and the record's structure stay in MessagePack; it saves the quotes, colons \
  and commas, and integers get shorter, while a decimal like `12.34` grows from 5 B of text \
  to a 9 B float64. So the saving is about 23-26 % of the store's memory for the small events \
  and 14-15 % for the 200 B records. Decoding each record back to its exact JSON text took \
  40-73 % of the drain's own time per record in the first runs, and 88-129 % once the drain \
  got cheaper with the page sockets (the drain is CPU-bound, so the decode adds to it; the \
  smaller Redis replies would give back only a little of that). No shape meets both halves of the rule.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_the_section_or_inserts_it_before_the_methods() {
        let report = "# B\n\n## Results\n\nx\n\n## How each figure is measured\n\ny\n";
        let once = splice(report, "## Redis memory per record\n\nfirst\n");
        assert_eq!(
            once,
            "# B\n\n## Results\n\nx\n\n## Redis memory per record\n\nfirst\n\n## How each figure is measured\n\ny\n"
        );
        let twice = splice(&once, "## Redis memory per record\n\nsecond\n");
        assert_eq!(twice, once.replace("first", "second"));
        let at_end = splice(
            "# B\n\n## Redis memory per record\n\nold\n",
            "## Redis memory per record\n\nnew\n",
        );
        assert_eq!(at_end, "# B\n\n## Redis memory per record\n\nnew\n\n");
    }

    #[tokio::test]
    async fn a_store_s_memory_is_split_by_kind_of_key_on_a_real_server() {
        let texts: Arc<Vec<String>> =
            Arc::new((0..1000).map(|i| Shape::SmallEvent.text(i)).collect());
        let alone = footprint(Shape::SmallEvent, 1, &texts).await.unwrap();
        let batched = footprint(Shape::SmallEvent, 100, &texts).await.unwrap();
        for f in [&alone, &batched] {
            // The data list holds every text; the other kinds exist once per store.
            assert!(f.by_kind[0] > f.raw, "{f:?}");
            assert!(f.by_kind[2..].iter().all(|b| *b > 0.0), "{f:?}");
            assert!(f.per_store > 0.0 && f.used > 0.0, "{f:?}");
        }
        // One run entry per push: several bytes per record pushed alone, a hundredth of
        // that at 100 per push.
        assert!(alone.by_kind[1] > 5.0, "{alone:?}");
        assert!(batched.by_kind[1] < 1.0, "{batched:?}");
    }

    #[test]
    fn small_events_are_the_demo_metric_shape() {
        let text = Shape::SmallEvent.text(12);
        assert_eq!(
            text,
            r#"{"host":"web-1","value":4.44,"load":[12,84,156],"at":1700000000012}"#
        );
    }
}
