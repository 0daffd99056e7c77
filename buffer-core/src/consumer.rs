//! The gist's consumer operations, composed from locks and the prepare script:
//! [`Buffer::prepare_to_persist`] and [`Buffer::empty`].

use std::time::Duration;

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::lock::{LockTarget, LockedBatch};
use crate::name::StoreName;

impl Buffer {
    /// Freezes a store's records into a new batch, atomically, and returns it locked to the
    /// caller: pushes that follow land in a fresh live buffer, and the batch never changes
    /// again.
    ///
    /// The batch is created under a lock with time to live `ttl` (taken on the store, handed to
    /// the batch in the same script that creates it), and a heartbeat extends it every `ttl`/3
    /// while the returned [`LockedBatch`] lives. So a persister's recovery pass, which takes
    /// only batches whose lock is free, never writes or deletes a batch you hold. Read it with
    /// [`Buffer::reader`], then delete it with [`Buffer::empty`] (or hand it back to the
    /// persisters with [`LockedBatch::release`]). If your process dies, the lock expires after
    /// `ttl` and a persister writes the batch.
    ///
    /// Returns `Ok(None)` when there is nothing to prepare for you now: the store has no
    /// records, or another process holds the store's lock because it is preparing the store
    /// this very moment (its batch then takes the records).
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`]; [`Error::Config`] for a zero TTL; [`Error::StorePaused`]
    /// when the store is paused ([`Buffer::pause`]); [`Error::WrongType`]
    /// when a key of the store holds the wrong type (nothing is moved then); transient errors.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(buffer: buffer_core::Buffer) -> Result<(), buffer_core::Error> {
    /// use std::time::Duration;
    /// match buffer.prepare_to_persist("orders", Duration::from_secs(30)).await? {
    ///     Some(batch) => {
    ///         println!("batch {} holds {} records", batch.id, batch.records);
    ///         buffer.empty(batch).await?;
    ///     }
    ///     None => println!("nothing to persist"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn prepare_to_persist<S>(
        &self,
        store: S,
        ttl: Duration,
    ) -> Result<Option<LockedBatch>>
    where
        S: TryInto<StoreName>,
        Error: From<S::Error>,
    {
        let store = store.try_into()?;
        let Some(mut guard) = self.lock_target(LockTarget::Store(store), ttl).await? else {
            return Ok(None);
        };
        // The heartbeat starts on the store lock and moves with it to the batch's lock, so
        // the batch is never unlocked, not even between its creation and this return.
        let prepared = match guard.keep_alive() {
            Ok(()) => guard.prepare().await,
            Err(err) => Err(err),
        };
        match prepared {
            Ok(Some(batch)) => Ok(Some(LockedBatch::new(batch, guard))),
            Ok(None) => {
                guard.release().await?;
                Ok(None)
            }
            Err(err) => {
                // Nothing was prepared; free the store lock for the next preparer (if this
                // fails too, it expires after `ttl`).
                let _ = guard.release().await;
                Err(err)
            }
        }
    }

    /// Deletes a batch you hold (from [`Buffer::prepare_to_persist`]) with its index entry and
    /// its lock, only if the lock is still yours: a caller whose lock expired or was taken
    /// deletes nothing. One script of GET, UNLINK, ZREM and DEL (no MULTI), so it works when
    /// Redis is out of memory.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock is no longer yours (nothing was deleted; whoever holds
    /// the batch now writes it); transient errors (the batch stays, and is recovered by a
    /// persister once the lock expires).
    pub async fn empty(&self, batch: LockedBatch) -> Result<()> {
        batch.empty().await
    }
}
