//! Failure records: which prepared batches (and which live stores) failed to persist, how
//! often, why, and when a persister may try them again.
//!
//! A batch that fails every time (a record that cannot be encoded, a key of the wrong type,
//! a target path that is a directory) must not be rewritten from scratch at every poll, and
//! operators must see it. Persisters and dashboards are separate processes, so the record
//! lives in Redis: one HASH per slot group, `<ns>:{<ns>:<g>}:failures`, whose field is the
//! batch's prepared-index member `<T>:<enc>` (or `<enc>` for a live store that could not be
//! prepared; `<enc>` never contains `:`, so the two cannot be confused) and whose value is a
//! [`FailureRecord`] as JSON.
//!
//! A record is written only while its batch (or store) still exists, by a script that checks
//! that and writes in one step: a persister that failed after another one emptied the batch
//! cannot leave a record behind. Records are removed by [`Buffer::clear_failure`] after a
//! success, and by [`Buffer::forget_stale_failures`] once their batch is gone by any path.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::batch::BatchId;
use crate::buffer::{Buffer, millis};
use crate::error::{Error, Result};
use crate::keys::KeyLayout;
use crate::name::StoreName;
use crate::scripts;

/// The longest error message kept in a record, in bytes (longer ones are cut at a character
/// boundary): the record is for people to read, and a huge message must not bloat Redis.
pub const MAX_FAILURE_ERROR_BYTES: usize = 300;

/// How long to wait before the next attempt after `attempts` failures in a row: the base
/// delay doubled at each failure, never more than the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure (a persister uses its poll interval).
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Backoff {
    /// The delay after `attempts` failures in a row (0 or 1: `base`).
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// What is recorded about a batch (or store) that failed to persist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailureRecord {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// The last error, cut to [`MAX_FAILURE_ERROR_BYTES`].
    pub last_error: String,
    /// When the last attempt failed (Unix ms, the recording persister's clock).
    pub last_ms: u64,
    /// No persister tries again before this (Unix ms); `drain` tries at once regardless.
    pub next_retry_ms: u64,
    /// The holder id of the persister that failed last.
    pub holder: String,
}

/// A failure record and what it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailingWork {
    /// The store.
    pub store: StoreName,
    /// The prepared batch that failed, or `None` when the live store could not be prepared.
    pub batch: Option<BatchId>,
    /// What is recorded.
    pub record: FailureRecord,
}

impl FailingWork {
    /// The failure `record` of `batch` of `store` (or of the live store when `batch` is
    /// `None`).
    pub fn new(store: StoreName, batch: Option<BatchId>, record: FailureRecord) -> Self {
        Self {
            store,
            batch,
            record,
        }
    }

    /// Whether persisters wait before trying again, as of `now_ms`.
    pub fn backing_off(&self, now_ms: u64) -> bool {
        self.record.next_retry_ms > now_ms
    }
}

/// The field of a group's failures hash that stands for a batch or a live store.
pub(crate) fn field(store: &StoreName, batch: Option<&BatchId>) -> String {
    match batch {
        Some(batch) => KeyLayout::prepared_member(store, batch),
        None => store.encoded().to_owned(),
    }
}

/// The inverse of [`field`]; `None` for a field only a foreign writer could have made.
fn parse_field(field: &str) -> Option<(StoreName, Option<BatchId>)> {
    match field.split_once(':') {
        Some((batch, encoded)) => Some((
            StoreName::from_encoded(encoded).ok()?,
            Some(batch.parse().ok()?),
        )),
        None => Some((StoreName::from_encoded(field).ok()?, None)),
    }
}

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl Buffer {
    /// The failure record of `field` in the failures hash `key`, as stored (JSON text), or
    /// `None` when there is none: the read before a record is replaced (`record_failure`,
    /// `retry_now`), whose script then checks it is still the same.
    pub(crate) async fn failure_record_text(
        &self,
        store: &StoreName,
        key: &str,
        field: &str,
    ) -> Result<Option<String>> {
        self.hget_field("read failure", store, key.to_owned(), field.to_owned())
            .await
    }

    /// The key whose existence tells whether a batch (or live store) is still there: its
    /// first-write stamp, which every push writes (appended or merged, see `crate::coalesce`),
    /// so a coalesced batch, which has no records list, is covered too.
    pub(crate) fn failure_subject_key(&self, store: &StoreName, batch: Option<&BatchId>) -> String {
        match batch {
            Some(batch) => self.layout().batch(store, batch).first,
            None => self.layout().live(store).first,
        }
    }

    /// Records one more failed attempt at a prepared batch (`batch = Some`) or at preparing a
    /// live store (`None`): attempts go up by one, and the next retry is `backoff.delay(attempts)`
    /// from now. Returns the new record, or `None` when the batch or store no longer exists
    /// (another persister finished it): then nothing is written.
    ///
    /// Two persisters recording a failure of the same batch at the same moment may count one
    /// attempt instead of two; the lock makes their attempts sequential, so that is rare and
    /// only delays the backoff by one step.
    ///
    /// # Errors
    /// Transient errors; a Redis error when the failures hash was overwritten with another type.
    pub async fn record_failure(
        &self,
        store: &StoreName,
        batch: Option<&BatchId>,
        error: &str,
        backoff: Backoff,
    ) -> Result<Option<FailureRecord>> {
        let key = self.layout().group_for(store).failures;
        let field = field(store, batch);
        let previous = self.failure_record_text(store, &key, &field).await?;
        // A record that does not parse (a foreign write) counts as no record.
        let attempts = previous
            .and_then(|json| serde_json::from_str::<FailureRecord>(&json).ok())
            .map_or(0, |r| r.attempts)
            .saturating_add(1);
        let now = self.now_ms();
        let record = FailureRecord {
            attempts,
            last_error: shorten(error, MAX_FAILURE_ERROR_BYTES),
            last_ms: now,
            next_retry_ms: now.saturating_add(millis(backoff.delay(attempts))),
            holder: self.holder_id().to_owned(),
        };
        let json = serde_json::to_string(&record).map_err(|err| Error::Corrupt {
            what: format!("a failure record could not be serialized: {err}"),
        })?;
        let mut invocation = scripts::RECORD_FAILURE.key(key);
        invocation
            .key(self.failure_subject_key(store, batch))
            .arg(field)
            .arg(json);
        let mut conn = self.conn();
        let written: i64 = self
            .run("record failure", store.as_str(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok((written == 1).then_some(record))
    }

    /// Removes the failure record of a batch (`batch = Some`) or live store, after it
    /// succeeded. Removing a record that does not exist succeeds.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn clear_failure(&self, store: &StoreName, batch: Option<&BatchId>) -> Result<()> {
        let key = self.layout().group_for(store).failures;
        let field = field(store, batch);
        let mut conn = self.conn();
        self.run("clear failure", store.as_str(), async move {
            redis::cmd("HDEL")
                .arg(key)
                .arg(field)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Every failure record, from one pipeline of one HGETALL per slot group, sorted by store
    /// and batch. Entries that do not parse (foreign writes) are skipped with a warning.
    ///
    /// Records of batches emptied by a path that does not clear them may be listed until a
    /// persister calls [`Buffer::forget_stale_failures`]; join them with
    /// [`Buffer::get_prepared`] to show only batches that are still there.
    ///
    /// On a cluster, the groups of a master that does not answer are left out, with a warning.
    ///
    /// # Errors
    /// Transient errors when no group could be read; a Redis error when a failures hash was
    /// overwritten with another type.
    pub async fn failures(&self) -> Result<Vec<FailingWork>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.hgetall(layout.group(g).failures);
        }
        let read = self.read_groups("list failures", 1, &pipe).await?;
        let groups = read.converted::<HashMap<String, String>>()?;
        let mut out = Vec::new();
        for (field, json) in groups.into_iter().flatten().flatten().flatten() {
            let parsed = parse_field(&field).and_then(|(store, batch)| {
                let record = serde_json::from_str::<FailureRecord>(&json).ok()?;
                Some(FailingWork {
                    store,
                    batch,
                    record,
                })
            });
            match parsed {
                Some(entry) => out.push(entry),
                None => tracing::warn!(%field, "skipping a malformed failure record"),
            }
        }
        out.sort_by(|a, b| (&a.store, &a.batch).cmp(&(&b.store, &b.batch)));
        Ok(crate::discovery::Partial {
            found: out,
            missed: read.missed,
        }
        .tolerated("list failures"))
    }

    /// Removes the records among `entries` whose batch (or live store) no longer exists, each
    /// checked and removed in one step on the server, and returns the others.
    ///
    /// This catches batches emptied by a path that does not clear their record (a crash
    /// between emptying and clearing, [`Buffer::empty`]).
    ///
    /// # Errors
    /// Transient errors.
    pub async fn forget_stale_failures(
        &self,
        entries: Vec<FailingWork>,
    ) -> Result<Vec<FailingWork>> {
        if entries.is_empty() {
            return Ok(entries);
        }
        let mut pipe = redis::pipe();
        // A pipeline does not load scripts by itself: load it first (a no-op when loaded).
        pipe.load_script(&scripts::FORGET_STALE_FAILURE).ignore();
        for entry in &entries {
            let batch = entry.batch.as_ref();
            pipe.invoke_script(
                scripts::FORGET_STALE_FAILURE
                    .key(self.layout().group_for(&entry.store).failures)
                    .key(self.failure_subject_key(&entry.store, batch))
                    .arg(field(&entry.store, batch)),
            );
        }
        let mut conn = self.conn();
        let removed: Vec<u64> = self
            .run("forget stale failures", "", async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        Ok(entries
            .into_iter()
            .zip(removed)
            .filter_map(|(entry, removed)| (removed == 0).then_some(entry))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let delays: Vec<u64> = (0..7).map(|n| millis(backoff.delay(n))).collect();
        assert_eq!(delays, [100, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn fields_of_batches_and_stores_round_trip_and_differ() {
        let store = StoreName::new("a:b c").unwrap();
        let batch = BatchId::new(1_700_000_000_000);
        for batch in [Some(&batch), None] {
            let text = field(&store, batch);
            assert_eq!(parse_field(&text), Some((store.clone(), batch.cloned())));
        }
        assert_ne!(field(&store, Some(&batch)), field(&store, None));
        assert_eq!(parse_field("not-a-batch:x"), None);
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let text = "é".repeat(400);
        let cut = shorten(&text, MAX_FAILURE_ERROR_BYTES);
        assert!(cut.len() <= MAX_FAILURE_ERROR_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(shorten("short", 10), "short");
    }
}
