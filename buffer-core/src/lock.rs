//! Locks on stores and batches: `SET NX PX` with a unique token, released and extended only by
//! a compare-and-set script, so a holder can never release or extend a lock it lost.

use std::time::Duration;

use serde::Serialize;

use crate::batch::BatchId;
use crate::buffer::{Buffer, PrepareOutcome, PreparedBatch, millis};
use crate::error::{Error, Result};
use crate::keys::KeyLayout;
use crate::name::StoreName;
use crate::scripts;

/// Who holds a lock and for how much longer, as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    /// The holder id of the process that took it.
    pub holder: String,
    /// Remaining time to live in ms, or `None` when the lock has no expiry.
    pub ttl_ms: Option<u64>,
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
/// [`LockGuard::release`], or let the TTL expire it.
#[derive(Debug)]
pub struct LockGuard {
    buffer: Buffer,
    target: LockTarget,
    key: String,
    /// `<holder-id>:<random token>`: the holder part is for people, the token makes the
    /// value unique to this acquisition so only this guard can release or extend it.
    value: String,
    /// The TTL the lock was taken with; `prepare` gives the batch lock this TTL afresh.
    ttl: Duration,
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
        S: TryInto<StoreName, Error = Error>,
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
        let mut conn = self.conn();
        let (k, v) = (key.clone(), value.clone());
        let mut invocation = scripts::LOCK.key(k);
        invocation.arg(v).arg(ttl_ms);
        let reply: Option<String> = self
            .run("lock", target.store().as_str(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(reply.map(|_| LockGuard {
            buffer: self.clone(),
            target,
            key,
            value,
            ttl,
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
                    ttl_ms: u64::try_from(ttl).ok(),
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

    /// Sets the lock's TTL to `ttl` from now, if this guard still holds it.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock expired or another holder has it; transient errors.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        let mut invocation = scripts::EXTEND.key(&self.key);
        invocation.arg(&self.value).arg(millis(ttl).max(1));
        let mut conn = self.buffer.conn();
        let extended: i64 = self
            .buffer
            .run("extend lock", self.target.store().as_str(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if extended == 1 {
            Ok(())
        } else {
            Err(self.lost())
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
    pub async fn release(self) -> Result<bool> {
        let mut invocation = scripts::RELEASE.key(&self.key);
        invocation.arg(&self.value);
        let mut conn = self.buffer.conn();
        let released: i64 = self
            .buffer
            .run("release lock", self.target.store().as_str(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(released == 1)
    }

    /// Prepares the locked store and hands this lock over to the new batch, atomically: on
    /// success the guard holds the batch's lock (with the full TTL the guard was taken with,
    /// so the batch lock always expires) and the store lock is free for the next round.
    ///
    /// Returns `Ok(None)` when the store has no records (the guard keeps the store lock).
    ///
    /// # Errors
    /// [`Error::LockLost`] when the store lock is no longer ours (nothing is prepared then);
    /// [`Error::Config`] when the guard locks a batch rather than a store; as
    /// [`Buffer::prepare_to_persist`] otherwise.
    pub async fn prepare(&mut self) -> Result<Option<PreparedBatch>> {
        let LockTarget::Store(store) = &self.target else {
            return Err(Error::Config(
                "prepare needs a store lock, not a batch lock".into(),
            ));
        };
        let store = store.clone();
        match self
            .buffer
            .prepare(&store, Some(&self.value), self.ttl)
            .await?
        {
            PrepareOutcome::Empty => Ok(None),
            PrepareOutcome::LockLost => Err(self.lost()),
            PrepareOutcome::Prepared(batch) => {
                self.target = LockTarget::Batch(store, batch.id.clone());
                self.key = self.target.key(self.buffer.layout());
                Ok(Some(batch))
            }
        }
    }

    /// Empties the locked batch and releases the lock, only if this guard still holds it:
    /// a holder that lost its lock never deletes. Uses a script of UNLINK/ZREM/DEL only, so it
    /// works when Redis is out of memory.
    ///
    /// # Errors
    /// [`Error::LockLost`] (nothing deleted); [`Error::Config`] on a store lock; transient errors.
    pub async fn empty_batch(self) -> Result<()> {
        let LockTarget::Batch(store, batch) = &self.target else {
            return Err(Error::Config(
                "empty_batch needs a batch lock, not a store lock".into(),
            ));
        };
        let layout = self.buffer.layout();
        let data = layout.batch(store, batch);
        let mut invocation = scripts::EMPTY_LOCKED.key(&self.key);
        invocation.key(layout.group_for(store).prepared);
        for key in data.all() {
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
