//! What an operator does to a running buffer, from the CLI or the dashboard: pause and resume
//! a store, flush a store now, retry a failing batch now.
//!
//! Each is one atomic step on the server (a plain single-key command or a script) or a
//! lock-respecting composition of them, so none can lose or duplicate a record whatever
//! producers and persisters do meanwhile:
//!
//! - **Pause** is a field in the group's `paused` hash (`<ns>:{<ns>:<g>}:paused`, enc → Unix
//!   ms when paused). The prepare script refuses a paused store in the step that would move its
//!   records (`scripts::PREPARE`), so nothing of it is prepared after [`Buffer::pause`]
//!   returns, by any persister or library user; persisters also leave a paused store's
//!   prepared batches alone (they read the paused stores at every poll). Pushes are untouched:
//!   a paused store is still pushed to and still limited.
//! - **Flush now** ([`Buffer::flush_now`]) takes the store lock, prepares (the lock moves to
//!   the batch in the same script) and releases the batch lock, token-checked: the batch is
//!   then an ordinary prepared batch with a free lock, which running persisters write at their
//!   next poll. It is what a persister does before writing, stopped before the write.
//! - **Retry now** ([`Buffer::retry_now`]) sets a failure record's next retry to 0, by a
//!   compare-and-set script that writes only while the record is the one read and the batch
//!   still exists: a persister that recorded a new failure meanwhile is not overwritten, and a
//!   batch emptied meanwhile gets no record back.

use std::collections::HashMap;
use std::time::Duration;

use crate::batch::{BatchId, PreparedBatch};
use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::failures::FailureRecord;
use crate::lock::LockTarget;
use crate::name::StoreName;
use crate::scripts;

/// What [`Buffer::flush_now`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushOutcome {
    /// The store's live records are now this prepared batch, unlocked: running persisters
    /// write it at their next poll.
    Prepared(PreparedBatch),
    /// The store had no live records.
    Empty,
    /// Someone holds the store's lock: a persister (or library user) is preparing it right
    /// now, which is the flush asked for.
    Busy {
        /// Who holds the lock.
        holder: String,
    },
}

/// What [`Buffer::retry_now`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// The failure record's wait was cleared: persisters try the batch at their next poll.
    /// The record as it was before.
    Cleared(FailureRecord),
    /// No failure record: the batch is not failing (or was written, or no longer exists).
    NotFailing,
}

impl Buffer {
    /// Pauses persisting `store`: from now on nothing of it is prepared (by any persister,
    /// `drain`, or [`Buffer::prepare_to_persist`], which fail with [`Error::StorePaused`] or
    /// skip it), and persisters leave its prepared batches alone, until [`Buffer::resume`].
    /// A batch a persister holds already is finished. Pushes go on as before, limits included.
    /// Returns whether it was running (false: it was paused already, and stays paused since
    /// the first pause).
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn pause<S>(&self, store: S) -> Result<bool>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        let key = self.layout().group_for(&store).paused;
        let (field, since) = (store.encoded().to_owned(), self.stamp_ms().await?);
        let mut conn = self.conn();
        let added: i64 = self
            .run("pause", store.as_str(), async move {
                redis::cmd("HSETNX")
                    .arg(key)
                    .arg(field)
                    .arg(since)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(added == 1)
    }

    /// Resumes persisting a paused `store`: persisters prepare and write it again from their
    /// next poll (an age over `--max-age` flushes it at once). Returns whether it was paused.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn resume<S>(&self, store: S) -> Result<bool>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        let key = self.layout().group_for(&store).paused;
        let field = store.encoded().to_owned();
        let mut conn = self.conn();
        let removed: i64 = self
            .run("resume", store.as_str(), async move {
                redis::cmd("HDEL")
                    .arg(key)
                    .arg(field)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(removed == 1)
    }

    /// Every paused store with when it was paused (Unix ms), by name: one `HGETALL` per slot
    /// group in one round trip. On a cluster, the groups of a master that does not answer are
    /// left out with a warning. A field that is not a store name is skipped with a warning.
    ///
    /// # Errors
    /// Transient errors when no group could be read.
    pub async fn paused_stores(&self) -> Result<Vec<(StoreName, u64)>> {
        let layout = self.layout();
        let mut pipe = redis::pipe();
        for g in 0..layout.groups() {
            pipe.hgetall(layout.group(g).paused);
        }
        let read = self.read_groups("list paused stores", 1, &pipe).await?;
        let groups = read.converted::<HashMap<String, String>>()?;
        let mut out = Vec::new();
        for (field, since) in groups.into_iter().flatten().flatten().flatten() {
            match StoreName::from_encoded(&field) {
                Ok(store) => out.push((store, since.parse().unwrap_or(0))),
                Err(_) => tracing::warn!(%field, "skipping a malformed paused-store entry"),
            }
        }
        out.sort();
        Ok(crate::discovery::Partial {
            found: out,
            missed: read.missed,
        }
        .tolerated("list paused stores"))
    }

    /// Prepares `store` now, so that running persisters write its records at their next poll
    /// whatever its age and size. The store lock is taken for `ttl` (a persister that holds it
    /// is preparing the store already: [`FlushOutcome::Busy`]), handed to the new batch by the
    /// prepare script, and released; if this process dies before the release, the batch's lock
    /// expires after `ttl` and a persister writes it then.
    ///
    /// # Errors
    /// [`Error::StorePaused`] for a paused store (nothing prepared); as
    /// [`Buffer::prepare_to_persist`] otherwise.
    pub async fn flush_now<S>(&self, store: S, ttl: Duration) -> Result<FlushOutcome>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        let Some(mut guard) = self
            .lock_target(LockTarget::Store(store.clone()), ttl)
            .await?
        else {
            let holder = self
                .lock_info(&store, None)
                .await?
                .map_or_else(|| "another process".to_owned(), |info| info.holder);
            return Ok(FlushOutcome::Busy { holder });
        };
        match guard.prepare().await {
            Ok(Some(batch)) => {
                // The batch is prepared; releasing its lock hands it to the persisters. A
                // failed release only delays them by `ttl`.
                guard.release().await?;
                Ok(FlushOutcome::Prepared(batch))
            }
            Ok(None) => {
                guard.release().await?;
                Ok(FlushOutcome::Empty)
            }
            Err(err) => {
                let _ = guard.release().await;
                Err(err)
            }
        }
    }

    /// Clears the wait of a failing batch (`batch = Some`) or of a live store that could not be
    /// prepared (`None`): its failure record's next retry becomes 0, so persisters try it at
    /// their next poll. The record's attempts and last error stay, for people to read, and the
    /// next failure backs off from there.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; transient errors.
    pub async fn retry_now<S>(&self, store: S, batch: Option<&BatchId>) -> Result<RetryOutcome>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        let key = self.layout().group_for(&store).failures;
        let field = crate::failures::field(&store, batch);
        let subject = self.failure_subject_key(&store, batch);
        // A persister may record a new failure between the read and the write: then read again.
        for _attempt in 0..8 {
            let current = self.failure_record_text(&store, &key, &field).await?;
            let Some(current) = current else {
                return Ok(RetryOutcome::NotFailing);
            };
            let record: FailureRecord =
                serde_json::from_str(&current).map_err(|err| Error::Corrupt {
                    what: format!("the failure record of {field:?}: {err}"),
                })?;
            let cleared = FailureRecord {
                next_retry_ms: 0,
                ..record.clone()
            };
            let json = serde_json::to_string(&cleared).map_err(|err| Error::Corrupt {
                what: format!("a failure record could not be serialized: {err}"),
            })?;
            let mut invocation = scripts::RETRY_FAILURE.key(&key);
            invocation.key(&subject).arg(&field).arg(current).arg(json);
            let mut conn = self.conn();
            let reply: i64 = self
                .run("retry now", store.as_str(), async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            match reply {
                1 => return Ok(RetryOutcome::Cleared(record)),
                0 => return Ok(RetryOutcome::NotFailing),
                _ => continue,
            }
        }
        Err(Error::Corrupt {
            what: format!("the failure record of {field:?} changed at every one of 8 attempts"),
        })
    }

    /// Whether this connection's Redis user may run the operator's actions (pause, limits,
    /// retry, flush), so a dashboard can leave them out rather than have them refused. Asked
    /// of the server with `redis.acl_check_cmd` inside one script, on keys of the namespace,
    /// without writing anything. A user that may not run scripts at all cannot act either.
    /// A server too old to check (before Redis 7) is taken to allow them.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn can_operate(&self) -> Result<bool> {
        let probe = StoreName::new("buffer-tui-access-probe")?;
        let layout = self.layout();
        let group = layout.group_for(&probe);
        let mut invocation = scripts::CAN_OPERATE.key(&group.paused);
        invocation
            .key(&group.limits)
            .key(&group.failures)
            .key(layout.store_lock(&probe))
            .key(layout.live(&probe).records)
            .key(layout.batch(&probe, &BatchId::new(0)).records);
        let mut conn = self.conn();
        match self
            .run("check access", "", async move {
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await
        {
            Ok(allowed) => Ok(allowed == 1),
            Err(err) if err.is_command_refused() => Ok(false),
            Err(err) if err.to_string().contains("acl_check_cmd") => Ok(true),
            Err(err) => Err(err),
        }
    }
}
