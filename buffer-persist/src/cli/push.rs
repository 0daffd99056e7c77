//! `buffer-persist push`: JSON Lines from stdin into a store, each `--batch` of lines one push.
//!
//! With `--idempotent` each push goes through `Buffer::push_once` under a push id derived from
//! the input (the store, the lines' numbers and their bytes), so the same command run again on
//! the same input after a failure stores nothing twice (docs/persister.md, "Re-running a push").
//! A failure says what is known of the lines: which are stored, which may or may not be, and
//! whether running the command again is safe.

use std::io::BufRead;

use anyhow::{Context, bail};
use buffer_core::{Buffer, Error as CoreError};
use clap::Args;

use super::{RedisArgs, ReplicaArgs};
use crate::units::count;

/// `push`'s arguments.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    replicas: ReplicaArgs,
    /// The store to push into.
    pub store: String,
    /// Lines per push (one atomic push: all of its lines are stored or none).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Push each batch of lines at most once: its push id is derived from the store, the
    /// lines' numbers and their bytes, so running the same command again on the same input
    /// (same order, same --batch) after a failure stores nothing twice and counts what an
    /// earlier run stored. Ids are remembered 24 h.
    #[arg(long)]
    pub idempotent: bool,
}

/// `push`'s exit code when a store limit refused lines.
pub const EXIT_LIMITED: i32 = 3;

/// `push`'s exit code when lines are not records.
pub const EXIT_BAD_LINES: i32 = 2;

/// Runs `push`: reads stdin to the end, pushing every `--batch` lines.
///
/// # Errors
/// When stdin cannot be read, Redis cannot be reached, or a push fails for any reason other
/// than its lines (a limit, a line that is not a record); the error says which lines are
/// stored, which may be, and how to go on.
pub(super) async fn push(args: PushArgs) -> anyhow::Result<i32> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    // Before connecting and before stdin is read: a store name that can never be pushed to
    // is the error, not whatever the input holds.
    buffer_core::StoreName::new(args.store.as_str())?;
    let buffer = args.redis.connect_writing(&args.replicas).await?;
    let mut run = PushRun {
        buffer,
        store: args.store,
        idempotent: args.idempotent,
        counts: PushCounts::default(),
    };
    let stdin = std::io::stdin();
    let mut pending: Vec<Line> = Vec::new();
    for (index, text) in stdin.lock().lines().enumerate() {
        let text = text.context("cannot read stdin")?;
        if text.trim().is_empty() {
            continue;
        }
        pending.push(Line {
            number: index + 1,
            text,
        });
        if pending.len() >= args.batch {
            run.push_group(std::mem::take(&mut pending)).await?;
        }
    }
    if !pending.is_empty() {
        run.push_group(pending).await?;
    }
    eprintln!("{}", run.counts.summary(&run.store, run.idempotent));
    Ok(run.counts.exit_code())
}

/// One line of the input.
struct Line {
    /// Its 1-based number in the input (blank lines count), as reported and hashed.
    number: usize,
    /// The line as read, without its line ending.
    text: String,
}

/// One `push` command under way: where it pushes, how, and what became of the lines so far.
struct PushRun {
    buffer: Buffer,
    store: String,
    /// Whether each group goes through `push_once` under its derived push id.
    idempotent: bool,
    counts: PushCounts,
}

/// What became of the lines pushed so far.
#[derive(Default)]
struct PushCounts {
    /// Lines this run stored.
    pushed: u64,
    /// Lines an earlier run had stored already (`--idempotent` only): not stored again.
    already: u64,
    /// Lines that are not records.
    bad: u64,
    /// Lines refused by a limit of the store (whole pushes of them).
    limited: u64,
}

impl PushCounts {
    /// The last line on stderr of a push that went through.
    fn summary(&self, store: &str, idempotent: bool) -> String {
        let refused = self.bad + self.limited;
        let by_limit = if self.limited > 0 {
            format!(" ({} by a limit of the store)", self.limited)
        } else {
            String::new()
        };
        let refused = count(refused, "line", "lines");
        if idempotent {
            format!(
                "pushed {} to {store:?}, {} already stored by an earlier run, {refused} refused{by_limit}",
                count(self.pushed, "new record", "new records"),
                match self.already {
                    1 => "1 line was".to_owned(),
                    n => format!("{n} lines were"),
                },
            )
        } else {
            format!(
                "pushed {} to {store:?}, {refused} refused{by_limit}",
                count(self.pushed, "record", "records")
            )
        }
    }

    fn exit_code(&self) -> i32 {
        if self.limited > 0 {
            EXIT_LIMITED
        } else if self.bad > 0 {
            EXIT_BAD_LINES
        } else {
            0
        }
    }

    /// What became of the lines before a failed push, for its message: "3 stored by this run,
    /// 2 refused (reported above)".
    fn so_far(&self) -> String {
        let mut parts = Vec::new();
        if self.pushed > 0 {
            parts.push(format!("{} stored by this run", self.pushed));
        }
        if self.already > 0 {
            parts.push(format!("{} already stored by an earlier run", self.already));
        }
        if self.bad + self.limited > 0 {
            parts.push(format!(
                "{} refused (reported above)",
                self.bad + self.limited
            ));
        }
        parts.join(", ")
    }
}

/// Why one attempt at pushing a group did not store it.
enum Refusal {
    /// The line at this index of the group is not a record; nothing was sent.
    Line { index: usize, reason: String },
    /// The push itself failed (a limit, Redis, the network).
    Push(CoreError),
}

impl PushRun {
    /// Pushes numbered lines as one push; lines that are not records are reported with their
    /// number and left out, and the good ones are pushed. A push a store limit refuses is
    /// reported (its lines, the store and the limit) and stored not at all; the next ones are
    /// still tried, so lines not refused land.
    ///
    /// # Errors
    /// Any other failure of the push, as [`PushRun::failure`] words it.
    async fn push_group(&mut self, mut lines: Vec<Line>) -> anyhow::Result<()> {
        while !lines.is_empty() {
            match self.attempt(&lines).await {
                Ok(duplicate) => {
                    let n = lines.len() as u64;
                    if duplicate {
                        self.counts.already += n;
                    } else {
                        self.counts.pushed += n;
                    }
                    return Ok(());
                }
                Err(Refusal::Line { index, reason }) => {
                    eprintln!("line {}: {reason}", lines[index].number);
                    lines.remove(index);
                    self.counts.bad += 1;
                }
                Err(Refusal::Push(err)) if err.is_backpressure() => {
                    let (first, last) = span(&lines);
                    // A push larger than the limit itself can never be admitted.
                    let hint = match err {
                        CoreError::LimitExceeded { max, requested, .. }
                            if requested > max && lines.len() > 1 =>
                        {
                            " (more than the limit in one push never fits: use a smaller --batch)"
                        }
                        _ => "",
                    };
                    eprintln!("lines {first}-{last} refused: {err}{hint}");
                    self.counts.limited += lines.len() as u64;
                    return Ok(());
                }
                Err(Refusal::Push(err)) => {
                    let message = self.failure(&lines, &err);
                    return Err(anyhow::Error::new(err).context(message));
                }
            }
        }
        Ok(())
    }

    /// One push of `lines`: `Ok(true)` when an earlier run had stored them already.
    async fn attempt(&self, lines: &[Line]) -> Result<bool, Refusal> {
        let outcome = if self.idempotent {
            let records = lines
                .iter()
                .enumerate()
                .map(|(index, line)| {
                    crate::json_text::compact_record(&line.text)
                        .map_err(|reason| Refusal::Line { index, reason })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let id = push_id(&self.store, lines);
            self.buffer
                .push_once(self.store.as_str(), &id, &records)
                .await
                .map(|outcome| outcome.duplicate)
        } else {
            let texts: Vec<&str> = lines.iter().map(|line| line.text.as_str()).collect();
            self.buffer
                .push_json(self.store.as_str(), &texts)
                .await
                .map(|_| false)
        };
        outcome.map_err(|err| match err {
            CoreError::InvalidRecord { index, reason, .. } => Refusal::Line { index, reason },
            // A coalescing store's rule cannot take the line: refused like a line that is not
            // a record (the script wrote nothing of the push), the others pushed again.
            CoreError::CoalesceRecordRefused {
                index,
                field,
                rule,
                reason,
                ..
            } => Refusal::Line {
                index,
                reason: format!("field {field:?} (rule {rule}): {reason}"),
            },
            CoreError::RecordTooLarge {
                index, size, max, ..
            } => Refusal::Line {
                index,
                reason: format!("record is {size} bytes, over the limit of {max}"),
            },
            err => Refusal::Push(err),
        })
    }

    /// What a failed push of `lines` means for the user: what is known of those lines (stored
    /// on the master but unconfirmed, perhaps stored, or not stored), what became of the
    /// lines before them, and whether running the command again is safe.
    fn failure(&self, lines: &[Line], err: &CoreError) -> String {
        let (first, last) = span(lines);
        let (these, are, were, them) = if first == last {
            (format!("line {first}"), "is", "was", "it")
        } else {
            (format!("lines {first}-{last}"), "are", "were", "them")
        };
        let unconfirmed = matches!(err, CoreError::ReplicasNotConfirmed { .. });
        let unknown = err.is_outcome_unknown();
        let mut message = if unconfirmed {
            format!(
                "{these} {are} stored on the master but not confirmed by replicas: a failover may still lose {them}"
            )
        } else if unknown {
            format!("{these} may or may not be stored: the push was sent but its reply never came")
        } else {
            format!("{these} {were} not stored")
        };
        let so_far = self.counts.so_far();
        if !so_far.is_empty() {
            message.push_str(&format!("; the lines before {first} are done: {so_far}"));
        }
        message.push_str(&format!("; no line after {last} was pushed"));
        let retry = unknown || unconfirmed || err.is_transient();
        if retry && self.idempotent {
            message.push_str(
                ". Running the same command again on the same input is safe (--idempotent): \
                 lines already stored are recognised and not stored twice",
            );
        } else if unknown || unconfirmed {
            let before = if so_far.is_empty() {
                String::new()
            } else {
                format!("store the lines before {first} again and ")
            };
            let twice = if unconfirmed { "" } else { "perhaps " };
            message.push_str(&format!(
                ". Running this command again would {before}{twice}store {these} twice: \
                 push with --idempotent so that running it again is safe; to go on from here, \
                 push the lines after {last} (`tail -n +{}`)",
                last + 1
            ));
        } else if retry {
            message.push_str(&format!(
                ". To go on, push from line {first} (`tail -n +{first}`), or push with \
                 --idempotent so that running the whole command again is safe"
            ));
        }
        message
    }
}

/// The numbers of the first and last lines of a group.
fn span(lines: &[Line]) -> (usize, usize) {
    let number = |line: Option<&Line>| line.map_or(0, |line| line.number);
    (number(lines.first()), number(lines.last()))
}

/// The push id of a group of lines pushed to `store` with `--idempotent`:
/// `cli.<first>-<last>.<FNV-1a 128 in hex>`, hashing a version tag, the store name and each
/// line's number and bytes (every field length-prefixed, so no two inputs run together).
///
/// The same lines at the same positions give the same id in every run, so a push an earlier
/// run stored is recognised; two identical lines at different positions give different ids
/// and stay two records. FNV-1a is not a cryptographic hash: ids are only compared within one
/// store, among inputs the operator pushes, where 128 bits make an accidental collision
/// negligible (a collision would make a group look already stored).
fn push_id(store: &str, lines: &[Line]) -> String {
    let mut hash = Fnv1a128::new();
    hash.write(b"buffer-persist push 1\0");
    hash.write_field(store.as_bytes());
    for line in lines {
        hash.write(&(line.number as u64).to_le_bytes());
        hash.write_field(line.text.as_bytes());
    }
    let (first, last) = span(lines);
    format!("cli.{first}-{last}.{:032x}", hash.finish())
}

/// The 128-bit FNV-1a hash (<http://www.isthe.com/chongo/tech/comp/fnv/>): a few lines, no
/// dependency, stable across versions and platforms, which a push id needs.
struct Fnv1a128(u128);

impl Fnv1a128 {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u128::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// `bytes` after their length, so that consecutive fields cannot be confused.
    fn write_field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    fn finish(&self) -> u128 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[(usize, &str)]) -> Vec<Line> {
        texts
            .iter()
            .map(|&(number, text)| Line {
                number,
                text: text.to_owned(),
            })
            .collect()
    }

    #[test]
    fn fnv1a_128_matches_the_reference_vectors() {
        assert_eq!(Fnv1a128::new().finish(), Fnv1a128::OFFSET_BASIS);
        let mut hash = Fnv1a128::new();
        hash.write(b"a");
        assert_eq!(hash.finish(), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }

    #[test]
    fn a_push_id_depends_on_the_store_the_positions_and_the_bytes() {
        let id = push_id("s", &lines(&[(1, "{\"a\":1}"), (2, "{\"a\":1}")]));
        assert!(id.starts_with("cli.1-2."), "{id}");
        assert!(id.len() <= 128, "{id}");
        // The same input gives the same id in every run.
        assert_eq!(
            id,
            push_id("s", &lines(&[(1, "{\"a\":1}"), (2, "{\"a\":1}")]))
        );
        // The same line at another position, in another store, or with other bytes is another push.
        let one = push_id("s", &lines(&[(1, "{\"a\":1}")]));
        assert_ne!(one, push_id("s", &lines(&[(2, "{\"a\":1}")])));
        assert_ne!(one, push_id("t", &lines(&[(1, "{\"a\":1}")])));
        assert_ne!(one, push_id("s", &lines(&[(1, "{\"a\": 1}")])));
        // Length prefixes keep fields apart: store "s1" + line 1 is not store "s" + line 11.
        assert_ne!(
            push_id("s1", &lines(&[(1, "{}")])),
            push_id("s", &lines(&[(11, "{}")]))
        );
    }
}
