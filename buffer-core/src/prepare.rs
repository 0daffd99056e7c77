//! The prepare script: freezes a store's live records into a batch (`Buffer::prepare`), and a
//! batch's counts (`Buffer::batch_info`). Locks and the gist's `prepare_to_persist` build on it.

use std::time::Duration;

use crate::batch::{BatchId, PreparedBatch};
use crate::buffer::{Buffer, millis};
use crate::error::{Error, Result};
use crate::keys::KeyLayout;
use crate::name::StoreName;
use crate::replicas::ScriptCall;
use crate::scripts;

pub(crate) enum PrepareOutcome {
    Prepared(PreparedBatch),
    Empty,
    LockLost,
    /// The store is paused (`crate::operator`): nothing was moved.
    Paused,
}

impl Buffer {
    /// Runs the prepare script, retrying with a new id when the id is already taken (two
    /// prepares of one store in the same millisecond never merge). With `lock_value`, the
    /// store lock must hold it, and the batch lock is set to it for `lock_ttl`.
    #[tracing::instrument(level = "debug", skip_all, fields(store = %store))]
    pub(crate) async fn prepare(
        &self,
        store: &StoreName,
        lock_value: Option<&str>,
        lock_ttl: Duration,
    ) -> Result<PrepareOutcome> {
        let layout = self.layout();
        let live = layout.live(store);
        let group = layout.group_for(store);
        for _attempt in 0..16 {
            let id = BatchId::new(self.stamp_ms().await?);
            let batch = layout.batch(store, &id);
            let mut invocation = ScriptCall::new(&scripts::PREPARE);
            for key in live.all_data().into_iter().chain(batch.all_data()) {
                invocation.key(key);
            }
            invocation
                .key(&group.stores)
                .key(&group.bytes)
                .key(&group.count)
                .key(&group.prepared)
                .key(layout.store_lock(store))
                .key(layout.batch_lock(store, &id))
                .key(&group.paused)
                .arg(store.encoded())
                .arg(KeyLayout::prepared_member(store, &id))
                .arg(id.created_ms())
                .arg(lock_value.unwrap_or(""))
                .arg(millis(lock_ttl));
            // With `wait_replicas`, WAIT follows the script: a batch is handed to the persister
            // (and its file written) only once the move is on the replicas, so a failover
            // cannot bring its records back live to be written twice (ARCHITECTURE.md).
            let reply: Vec<i64> = match invocation
                .invoke(self, "prepare_to_persist", store.as_str())
                .await
            {
                Ok(reply) => reply,
                Err(err @ Error::ReplicasNotConfirmed { .. }) => {
                    // The script ran, so a batch may now exist under our lock, its move not yet
                    // on the replicas. Nobody may write it before it is (see `Buffer::lock`,
                    // which waits again): release its lock, token-checked, so the next attempt
                    // (a recovery, which waits for the replicas first) need not wait a TTL.
                    if let Some(value) = lock_value {
                        drop(
                            self.release_key(&layout.batch_lock(store, &id), value, store.as_str())
                                .await,
                        );
                    }
                    return Err(err);
                }
                Err(err) => return Err(err),
            };
            let count = |value: &i64| u64::try_from(*value).unwrap_or(0);
            match reply.as_slice() {
                [0] => return Ok(PrepareOutcome::Empty),
                [-1] => return Ok(PrepareOutcome::LockLost),
                [-3] => return Ok(PrepareOutcome::Paused),
                [-2] => {}
                [1, records, bytes, keys, first] => {
                    // A store without a first-write stamp (the script replies 0) takes the
                    // batch's own time, as `batch_info` does: a batch's first write must read
                    // the same when it is prepared and when it is recovered (file paths are
                    // made from it).
                    let first_write_ms = match count(first) {
                        0 => id.created_ms(),
                        stamp => stamp,
                    };
                    return Ok(PrepareOutcome::Prepared(PreparedBatch {
                        store: store.clone(),
                        id,
                        records: count(records),
                        bytes: count(bytes),
                        keys: count(keys),
                        first_write_ms,
                    }));
                }
                other => {
                    return Err(Error::Corrupt {
                        what: format!("prepare script replied {other:?}"),
                    });
                }
            }
            tracing::debug!(store = %store, batch = %id, "batch id already taken, picking another");
        }
        Err(Error::Corrupt {
            what: format!("could not find a free batch id for store {store:?} in 16 attempts"),
        })
    }

    /// Deletes the lock `key` (here because a prepare whose WAIT failed releases the batch
    /// lock it made; `LockGuard::release` uses it too) if it still holds `value` (token-checked, no MULTI). Returns
    /// whether it did.
    ///
    /// # Errors
    /// Transient errors.
    pub(crate) async fn release_key(&self, key: &str, value: &str, store: &str) -> Result<bool> {
        let mut invocation = scripts::RELEASE.key(key);
        invocation.arg(value);
        let mut conn = self.conn();
        let released: i64 = self
            .run("release lock", store, async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(released == 1)
    }

    /// Reads a batch's counts, or `None` when it does not exist (it was emptied).
    ///
    /// # Errors
    /// [`Error::WrongType`] when a batch key holds the wrong type; transient errors.
    pub async fn batch_info(
        &self,
        store: &StoreName,
        batch: &BatchId,
    ) -> Result<Option<PreparedBatch>> {
        let keys = self.layout().batch(store, batch);
        let mut pipe = redis::pipe();
        pipe.exists(&keys.records)
            .llen(&keys.records)
            .get(&keys.bytes)
            .scard(&keys.keys)
            .get(&keys.first)
            .exists(&keys.entities)
            .llen(&keys.entities);
        let mut conn = self.conn();
        #[allow(clippy::type_complexity)]
        let (exists, appended, bytes, key_count, first, rows_exist, entities): (
            bool,
            u64,
            Option<u64>,
            u64,
            Option<u64>,
            bool,
            u64,
        ) = self
            .run("batch_info", store.as_str(), async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        // A coalesced batch's rows count as its records (one row per entity), after any
        // records appended to it (see `crate::coalesce`).
        Ok((exists || rows_exist).then(|| PreparedBatch {
            store: store.clone(),
            id: batch.clone(),
            records: appended + entities,
            bytes: bytes.unwrap_or(0),
            keys: key_count,
            first_write_ms: first.unwrap_or(batch.created_ms()),
        }))
    }
}
