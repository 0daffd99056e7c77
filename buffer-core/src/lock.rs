//! Locks on stores and batches: `SET NX PX` with a unique token, released and extended only by
//! a compare-and-set script, so a holder can never release or extend a lock it lost.
//!
//! A [`LockGuard`] can keep its lock alive with a heartbeat ([`LockGuard::keep_alive`]): a
//! background task that extends the lock every TTL/3 for as long as the guard lives, so slow
//! work (a long fsync, a publish that compares a large file) never outlives the lock, while a
//! holder that dies or freezes still loses it after one TTL.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::batch::BatchId;
use crate::batch::PreparedBatch;
use crate::buffer::{Buffer, millis};
use crate::error::{Error, Result};
use crate::keys::KeyLayout;
use crate::name::StoreName;
use crate::prepare::PrepareOutcome;
use crate::replicas::{ReplicaWait, ScriptCall};
use crate::scripts;

/// Who holds a lock and for how much longer, as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder id of the process that took it.
    pub holder: String,
    /// Remaining time to live (ms precision), or `None` when the lock has no expiry.
    pub ttl: Option<Duration>,
}

impl LockInfo {
    /// A lock held by `holder` with `ttl` left (`None`: no expiry).
    pub fn new(holder: impl Into<String>, ttl: Option<Duration>) -> Self {
        Self {
            holder: holder.into(),
            ttl,
        }
    }
}

/// What a lock protects: a live store or one of its prepared batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockTarget {
    /// The live store (taken to prepare it).
    Store(StoreName),
    /// A prepared batch (held while it is written out and emptied).
    Batch(StoreName, BatchId),
}

impl LockTarget {
    fn key(&self, layout: &KeyLayout) -> String {
        match self {
            Self::Store(store) => layout.store_lock(store),
            Self::Batch(store, batch) => layout.batch_lock(store, batch),
        }
    }

    fn store(&self) -> &StoreName {
        match self {
            Self::Store(store) | Self::Batch(store, _) => store,
        }
    }
}

/// A held lock. Dropping the guard does not release the lock (that needs a round trip): call
/// [`LockGuard::release`], or let the TTL expire it. Dropping it does stop its heartbeat.
#[derive(Debug)]
#[must_use = "a lock stays taken until it is released or its TTL runs out"]
pub struct LockGuard {
    buffer: Buffer,
    target: LockTarget,
    key: String,
    /// `<holder-id>:<random token>`: the holder part is for people, the token makes the
    /// value unique to this acquisition so only this guard can release or extend it.
    value: String,
    /// The TTL the lock was taken with; every extension (explicit or by the heartbeat) sets it
    /// again from now.
    ttl: Duration,
    /// Until when the lock is known to be ours, or that it is lost. Written by this guard
    /// (acquisition, [`LockGuard::extend`], a failed prepare) and by the heartbeat task; read by
    /// [`LockGuard::check_held`]. Shared with the heartbeat, so it outlives a restarted task.
    liveness: Arc<Mutex<Liveness>>,
    /// The heartbeat, when [`LockGuard::keep_alive`] started one. Dropping it stops the task,
    /// so the heartbeat ends with the guard (release, empty, or a plain drop).
    heartbeat: Option<Heartbeat>,
}

/// What a guard knows about its lock without asking Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness {
    /// Ours at least until this instant: one TTL after the last successful set or extension
    /// was *sent* (Redis counts the TTL from when it ran the command, which is later).
    HeldUntil(Instant),
    /// An extension found another value (or none) at the key: the lock expired or was taken.
    Lost,
}

/// The background task that extends a lock every TTL/3. Aborted on drop.
#[derive(Debug)]
struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // An EXTEND already sent may still run on the server; it is token-checked, so at worst
        // it refreshes a lock that is still ours or finds the key gone and changes nothing.
        self.task.abort();
    }
}

impl Buffer {
    /// Tries to take the lock of a store (`batch = None`) or of one of its batches, for `ttl`.
    ///
    /// Returns `Ok(None)` when someone else holds it.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; [`Error::Config`] for a zero TTL; transient errors.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use std::time::Duration;
    /// if let Some(guard) = buffer.lock("orders", None, Duration::from_secs(30)).await? {
    ///     // ... prepare and persist ...
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock<S>(
        &self,
        store: S,
        batch: Option<&BatchId>,
        ttl: Duration,
    ) -> Result<Option<LockGuard>>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        let target = match batch {
            Some(batch) => LockTarget::Batch(store, batch.clone()),
            None => LockTarget::Store(store),
        };
        self.lock_target(target, ttl).await
    }

    /// Tries to take a lock on `target` for `ttl`; `Ok(None)` when someone else holds it.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero TTL; transient errors.
    #[tracing::instrument(level = "debug", name = "lock", skip_all, fields(store = %target.store()))]
    pub async fn lock_target(
        &self,
        target: LockTarget,
        ttl: Duration,
    ) -> Result<Option<LockGuard>> {
        let ttl_ms = millis(ttl);
        if ttl_ms == 0 {
            return Err(Error::Config("a lock TTL must be at least 1 ms".into()));
        }
        let key = target.key(self.layout());
        let value = format!(
            "{}:{:016x}{:016x}",
            self.holder_id(),
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let sent = Instant::now();
        let reply: Option<String> = match (&target, ReplicaWait::of(self)) {
            // A batch is locked to be written. With `wait_replicas`, its prepare must be on the
            // replicas before that: a prepare whose WAIT failed leaves a batch that a failover
            // can undo (the promoted replica holding its records live, to be prepared and
            // written again). The lock's write and a WAIT go in one round trip on one
            // connection, and WAIT counts every write before it there, the prepare included
            // (it preceded the lock in the master's replication stream).
            (LockTarget::Batch(store, _), Some(_)) => {
                let mut call = ScriptCall::new(&scripts::LOCK);
                call.key(&key).arg(&value).arg(ttl_ms);
                match call
                    .invoke::<Option<String>>(
                        self,
                        "confirm the batch's prepare on replicas before writing it",
                        store.as_str(),
                    )
                    .await
                {
                    Ok(reply) => reply,
                    Err(err) => {
                        // Whatever the lock's fate, a lock of ours must not keep the batch
                        // from the next attempt for a whole TTL.
                        drop(self.release_key(&key, &value, store.as_str()).await);
                        return Err(err);
                    }
                }
            }
            _ => {
                let mut conn = self.conn();
                let (k, v) = (key.clone(), value.clone());
                let mut invocation = scripts::LOCK.key(k);
                invocation.arg(v).arg(ttl_ms);
                self.run("lock", target.store().as_str(), async move {
                    invocation.invoke_async(&mut conn).await
                })
                .await?
            }
        };
        Ok(reply.map(|_| LockGuard {
            buffer: self.clone(),
            target,
            key,
            value,
            ttl,
            liveness: Arc::new(Mutex::new(Liveness::HeldUntil(sent + ttl))),
            heartbeat: None,
        }))
    }

    /// Who holds the lock of a store (`batch = None`) or batch, and its remaining TTL.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn lock_info(
        &self,
        store: &StoreName,
        batch: Option<&BatchId>,
    ) -> Result<Option<LockInfo>> {
        let target = match batch {
            Some(batch) => LockTarget::Batch(store.clone(), batch.clone()),
            None => LockTarget::Store(store.clone()),
        };
        Ok(self.lock_infos(&[target]).await?.pop().flatten())
    }

    /// [`Buffer::lock_info`] for many targets in one round trip (the dashboard's visible rows).
    ///
    /// # Errors
    /// Transient errors.
    pub async fn lock_infos(&self, targets: &[LockTarget]) -> Result<Vec<Option<LockInfo>>> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for target in targets {
            let key = target.key(self.layout());
            pipe.get(&key).pttl(&key);
        }
        let mut conn = self.conn();
        let replies: Vec<(Option<String>, i64)> = self
            .run(
                "lock_info",
                "",
                async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        Ok(replies
            .into_iter()
            .map(|(value, ttl)| {
                value.map(|value| LockInfo {
                    holder: holder_of(&value).to_owned(),
                    ttl: u64::try_from(ttl).ok().map(Duration::from_millis),
                })
            })
            .collect())
    }
}

/// The holder part of a lock value `<holder>:<token>` (the holder may itself contain `:`).
fn holder_of(value: &str) -> &str {
    value.rsplit_once(':').map_or(value, |(holder, _)| holder)
}

impl LockGuard {
    /// The lock key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What the lock protects.
    pub fn target(&self) -> &LockTarget {
        &self.target
    }

    /// The TTL the lock was taken with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Sets the lock's TTL to `ttl` from now, if this guard still holds it. This is the
    /// explicit check a holder makes right before an irreversible step (publishing a file).
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock expired or another holder has it; transient errors.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        let sent = Instant::now();
        if extend_lock(&self.buffer, &self.target, &self.key, &self.value, ttl).await? {
            set_liveness(&self.liveness, Liveness::HeldUntil(sent + ttl));
            Ok(())
        } else {
            set_liveness(&self.liveness, Liveness::Lost);
            Err(self.lost())
        }
    }

    /// Starts the heartbeat: a background task that extends the lock to its full TTL every
    /// TTL/3 (token-checked, so it never extends a lock taken over by someone else) until the
    /// guard is released, emptied or dropped. A lock kept alive this way outlives any slow step
    /// of its holder, and still expires one TTL after the holder dies or freezes.
    ///
    /// The heartbeat records what it finds: [`LockGuard::check_held`] reports a lock it found
    /// gone, or could not extend (Redis unreachable) before the TTL ran out. Calling this twice
    /// keeps the one heartbeat running.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] when called outside a Tokio runtime (nothing could run the task;
    /// the lock is still held, without a heartbeat).
    pub fn keep_alive(&mut self) -> Result<()> {
        if self.heartbeat.is_some() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            op: "LockGuard::keep_alive",
        })?;
        let beat = heartbeat(
            self.buffer.clone(),
            self.target.clone(),
            self.key.clone(),
            self.value.clone(),
            self.ttl,
            self.liveness.clone(),
        );
        self.heartbeat = Some(Heartbeat {
            task: runtime.spawn(beat),
        });
        Ok(())
    }

    /// Whether the lock is still this guard's as far as it knows without asking Redis: `Ok`
    /// while the last extension (by [`LockGuard::extend`] or the heartbeat) is less than one
    /// TTL old and none found the lock gone. Cheap: call it between steps of long work and
    /// stop as soon as it fails. Before an irreversible step, ask Redis with
    /// [`LockGuard::extend`].
    ///
    /// # Errors
    /// [`Error::LockLost`] when an extension found the lock gone or taken, or when its TTL ran
    /// out without a successful extension (it may have expired).
    pub fn check_held(&self) -> Result<()> {
        match liveness(&self.liveness) {
            Liveness::HeldUntil(until) if Instant::now() < until => Ok(()),
            Liveness::HeldUntil(_) | Liveness::Lost => Err(self.lost()),
        }
    }

    /// True when this guard still holds its lock.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn is_held(&self) -> Result<bool> {
        self.buffer.lock_value_matches(&self.key, &self.value).await
    }

    /// Releases the lock if this guard still holds it. Returns whether it did; a lock that
    /// expired or was taken over by someone else is left alone. Sends no MULTI.
    ///
    /// # Errors
    /// Transient errors.
    pub async fn release(mut self) -> Result<bool> {
        self.heartbeat = None;
        self.buffer
            .release_key(&self.key, &self.value, self.target.store().as_str())
            .await
    }

    /// Prepares the locked store and hands this lock over to the new batch, atomically: on
    /// success the guard holds the batch's lock (with the full TTL the guard was taken with,
    /// so the batch lock always expires) and the store lock is free for the next round.
    ///
    /// Returns `Ok(None)` when the store has no records (the guard keeps the store lock).
    ///
    /// # Errors
    /// [`Error::StorePaused`] when the store is paused (nothing is prepared; the guard keeps the
    /// store lock); [`Error::LockLost`] when the store lock is no longer ours (nothing is
    /// prepared then);
    /// [`Error::WrongLockKind`] when the guard locks a batch rather than a store; as
    /// [`Buffer::prepare_to_persist`] otherwise.
    pub async fn prepare(&mut self) -> Result<Option<PreparedBatch>> {
        let LockTarget::Store(store) = &self.target else {
            return Err(Error::WrongLockKind {
                op: "prepare",
                store: self.target.store().to_string(),
                needs: "store",
                held: "batch",
            });
        };
        let store = store.clone();
        // The heartbeat extends one key; stop it while the lock moves to another key, and
        // start it again on whichever key the guard holds afterwards. The batch lock gets the
        // full TTL afresh, so the liveness recorded so far (counted from the store lock) stays
        // a safe underestimate.
        let kept_alive = self.heartbeat.take().is_some();
        let outcome = self
            .buffer
            .prepare(&store, Some(&self.value), self.ttl)
            .await;
        let result = match outcome {
            Ok(PrepareOutcome::Empty) => Ok(None),
            Ok(PrepareOutcome::LockLost) => {
                set_liveness(&self.liveness, Liveness::Lost);
                return Err(self.lost());
            }
            Ok(PrepareOutcome::Paused) => Err(Error::StorePaused {
                store: store.to_string(),
            }),
            Ok(PrepareOutcome::Prepared(batch)) => {
                self.target = LockTarget::Batch(store, batch.id.clone());
                self.key = self.target.key(self.buffer.layout());
                Ok(Some(batch))
            }
            Err(err) => Err(err),
        };
        if kept_alive {
            self.keep_alive()?;
        }
        result
    }

    /// Empties the locked batch and releases the lock, only if this guard still holds it:
    /// a holder that lost its lock never deletes. Uses a script of UNLINK/ZREM/DEL only, so it
    /// works when Redis is out of memory.
    ///
    /// # Errors
    /// [`Error::LockLost`] (nothing deleted); [`Error::WrongLockKind`] on a store lock;
    /// transient errors.
    #[tracing::instrument(level = "debug", skip_all, fields(store = %self.target.store()))]
    pub async fn empty_batch(mut self) -> Result<()> {
        let LockTarget::Batch(store, batch) = &self.target else {
            return Err(Error::WrongLockKind {
                op: "empty_batch",
                store: self.target.store().to_string(),
                needs: "batch",
                held: "store",
            });
        };
        // The script deletes the lock: a heartbeat still running would only find it gone.
        self.heartbeat = None;
        let layout = self.buffer.layout();
        let data = layout.batch(store, batch);
        let mut invocation = scripts::EMPTY_LOCKED.key(&self.key);
        invocation.key(layout.group_for(store).prepared);
        for key in data.all_data() {
            invocation.key(key);
        }
        invocation
            .arg(&self.value)
            .arg(KeyLayout::prepared_member(store, batch));
        let mut conn = self.buffer.conn();
        let emptied: i64 = self
            .buffer
            .run("empty batch", store.as_str(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if emptied == 1 {
            Ok(())
        } else {
            Err(self.lost())
        }
    }

    fn lost(&self) -> Error {
        Error::LockLost {
            key: self.key.clone(),
        }
    }
}

/// A prepared batch locked to the caller, as [`Buffer::prepare_to_persist`] returns it.
///
/// While this value lives, a heartbeat keeps the batch's lock alive, so no persister's recovery
/// pass takes the batch, however long the caller takes to read it. [`Buffer::empty`] deletes
/// the batch under the lock; [`LockedBatch::release`] hands it back, still prepared, for a
/// persister to write. Dropping it stops the heartbeat: the lock then expires after its TTL
/// and a persister recovers the batch, so nothing is lost.
///
/// It dereferences to the [`PreparedBatch`] it holds, so `batch.id` and
/// `buffer.reader(&batch)` work on it directly.
#[derive(Debug)]
#[must_use = "the batch stays locked until it is emptied, released or its lock expires"]
pub struct LockedBatch {
    batch: PreparedBatch,
    guard: LockGuard,
}

impl LockedBatch {
    pub(crate) fn new(batch: PreparedBatch, guard: LockGuard) -> Self {
        Self { batch, guard }
    }

    /// The batch.
    pub fn batch(&self) -> &PreparedBatch {
        &self.batch
    }

    /// The guard of the batch's lock (its key, target and TTL).
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Whether the batch is still locked to this caller, as far as its heartbeat knows
    /// (see [`LockGuard::check_held`]).
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock was found gone or could not be extended in time.
    pub fn check_held(&self) -> Result<()> {
        self.guard.check_held()
    }

    /// Gives the batch back without emptying it: the lock is released (if still ours) and the
    /// batch stays prepared, for a persister's recovery pass to write. Returns whether the lock
    /// was still ours.
    ///
    /// # Errors
    /// Transient errors (the lock then expires after its TTL).
    pub async fn release(self) -> Result<bool> {
        self.guard.release().await
    }

    /// Deletes the batch under its lock (see [`Buffer::empty`]).
    pub(crate) async fn empty(self) -> Result<()> {
        self.guard.empty_batch().await
    }
}

impl Deref for LockedBatch {
    type Target = PreparedBatch;

    fn deref(&self) -> &PreparedBatch {
        &self.batch
    }
}

/// Runs the token-checked EXTEND script: true when the lock held `value` and now has `ttl`.
async fn extend_lock(
    buffer: &Buffer,
    target: &LockTarget,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<bool> {
    let mut invocation = scripts::EXTEND.key(key);
    invocation.arg(value).arg(millis(ttl).max(1));
    let mut conn = buffer.conn();
    let extended: i64 = buffer
        .run("extend lock", target.store().as_str(), async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    Ok(extended == 1)
}

/// The heartbeat task: every TTL/3, extends the lock to its full TTL and records the result.
/// It ends when the lock is found lost; the guard aborts it otherwise.
async fn heartbeat(
    buffer: Buffer,
    target: LockTarget,
    key: String,
    value: String,
    ttl: Duration,
    liveness: Arc<Mutex<Liveness>>,
) {
    // Three beats per TTL: a lock survives two failed extensions in a row (a Redis hiccup)
    // before it can expire under its holder.
    let period = (ttl / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(period).await;
        let sent = Instant::now();
        match extend_lock(&buffer, &target, &key, &value, ttl).await {
            Ok(true) => set_liveness(&liveness, Liveness::HeldUntil(sent + ttl)),
            Ok(false) => {
                tracing::warn!(lock = %key, "lock lost: its heartbeat found it expired or taken");
                set_liveness(&liveness, Liveness::Lost);
                return;
            }
            Err(err) => {
                // The lock may still be ours: try again at the next beat. If none succeeds
                // before the TTL runs out, `check_held` reports the lock as lost.
                tracing::warn!(lock = %key, error = %err, "lock heartbeat could not extend the lock");
            }
        }
    }
}

fn liveness(shared: &Mutex<Liveness>) -> Liveness {
    // The value is a plain `Copy` state written whole, so a poisoned mutex still holds a
    // consistent one.
    *shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_liveness(shared: &Mutex<Liveness>, new: Liveness) {
    let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
    // A lost lock stays lost: its token is unique, so no later extension can succeed.
    if *state != Liveness::Lost {
        *state = new;
    }
}

impl Buffer {
    pub(crate) async fn lock_value_matches(&self, key: &str, value: &str) -> Result<bool> {
        let mut conn = self.conn();
        let key = key.to_owned();
        let current: Option<String> = self
            .run("lock", "", async move {
                redis::cmd("GET").arg(key).query_async(&mut conn).await
            })
            .await?;
        Ok(current.as_deref() == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_is_everything_before_the_last_colon() {
        assert_eq!(holder_of("host/12:abcd"), "host/12");
        assert_eq!(holder_of("a:b:abcd"), "a:b");
        assert_eq!(holder_of("plain"), "plain");
    }
}
