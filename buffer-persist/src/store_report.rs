//! What `stores` shows and `GET /v1/stores` returns: live stores and prepared batches with
//! their locks, failure records and pauses, read once and printed as a table or JSON.

use std::collections::HashMap;

use buffer_core::{
    BatchId, Buffer, FailureRecord, LockInfo, LockTarget, PreparedBatch, PreparedSummary,
    StoreName, StoreSummary,
};

/// One reading of the stores, the prepared batches, their locks and failures.
pub(crate) struct StoresReport {
    pub(crate) stores: Vec<(StoreSummary, Option<LockInfo>)>,
    pub(crate) prepared: Vec<(PreparedSummary, Option<LockInfo>, Option<PreparedBatch>)>,
    failures: HashMap<(StoreName, Option<BatchId>), FailureRecord>,
    /// Paused stores (`buffer-persist pause`), with when they were paused (Unix ms): listed
    /// whether or not they hold live records.
    pub(crate) paused: Vec<(StoreName, u64)>,
    /// Redis's time when read (ms), which ages are counted from.
    pub(crate) now: u64,
}

impl StoresReport {
    /// Reads everything the report shows.
    ///
    /// # Errors
    /// Whatever read failed first.
    pub(crate) async fn gather(buffer: &Buffer) -> Result<Self, buffer_core::Error> {
        let stores = buffer.stores().await?;
        let prepared = buffer.get_prepared().await?;
        let mut targets: Vec<LockTarget> = stores
            .iter()
            .map(|s| LockTarget::Store(s.store.clone()))
            .collect();
        targets.extend(
            prepared
                .iter()
                .map(|p| LockTarget::Batch(p.store.clone(), p.id.clone())),
        );
        let mut locks = buffer.lock_infos(&targets).await?.into_iter();
        let mut batches = Vec::new();
        for p in &prepared {
            batches.push(buffer.batch_info(&p.store, &p.id).await?);
        }
        // Failure records, joined to the stores and batches listed (a record whose batch was
        // emptied meanwhile matches nothing and is not shown).
        let failures = buffer
            .failures()
            .await?
            .into_iter()
            .map(|f| ((f.store, f.batch), f.record))
            .collect();
        let paused = buffer.paused_stores().await?;
        let stores = stores
            .into_iter()
            .map(|s| (s, locks.next().flatten()))
            .collect();
        let prepared = prepared
            .into_iter()
            .zip(batches)
            .map(|(p, info)| (p, locks.next().flatten(), info))
            .collect();
        Ok(Self {
            stores,
            prepared,
            failures,
            paused,
            now: buffer.now_ms(),
        })
    }

    /// Keeps the stores and batches whose store passes `keep`.
    pub(crate) fn retain(&mut self, keep: impl Fn(&StoreName) -> bool) {
        self.stores.retain(|(s, _)| keep(&s.store));
        self.prepared.retain(|(p, _, _)| keep(&p.store));
        self.paused.retain(|(store, _)| keep(store));
    }

    /// When `store` was paused (Unix ms), if it is.
    pub(crate) fn paused_since(&self, store: &StoreName) -> Option<u64> {
        self.paused
            .iter()
            .find_map(|(paused, since)| (paused == store).then_some(*since))
    }

    /// The failure record of `store`'s live store (`batch` `None`) or of one of its batches.
    pub(crate) fn failure(
        &self,
        store: &StoreName,
        batch: Option<&BatchId>,
    ) -> Option<&FailureRecord> {
        self.failures.get(&(store.clone(), batch.cloned()))
    }

    /// The report as `stores --json` prints it.
    pub(crate) fn json(&self) -> serde_json::Value {
        let now = self.now;
        let failure_json = |record: Option<&FailureRecord>| {
            record.map(|r| {
                serde_json::json!({
                    "attempts": r.attempts, "last_error": r.last_error, "last_ms": r.last_ms,
                    "next_retry_ms": r.next_retry_ms,
                    "retry_in_ms": r.next_retry_ms.saturating_sub(now), "holder": r.holder,
                })
            })
        };
        serde_json::json!({
            "stores": self.stores.iter().map(|(s, lock)| serde_json::json!({
                "store": s.store.as_str(), "records": s.records, "bytes": s.bytes,
                "first_write_ms": s.first_write_ms, "age_ms": now.saturating_sub(s.first_write_ms), "lock": lock,
                "failure": failure_json(self.failure(&s.store, None)),
                "paused_since_ms": self.paused_since(&s.store),
            })).collect::<Vec<_>>(),
            "prepared": self.prepared.iter().map(|(p, lock, info)| serde_json::json!({
                "store": p.store.as_str(), "batch": p.id.to_string(),
                "records": info.as_ref().map(|i| i.records), "bytes": info.as_ref().map(|i| i.bytes),
                "age_ms": now.saturating_sub(p.id.created_ms()), "lock": lock,
                "failure": failure_json(self.failure(&p.store, Some(&p.id))),
            })).collect::<Vec<_>>(),
            "paused": self.paused.iter().map(|(store, since)| serde_json::json!({
                "store": store.as_str(), "since_ms": since,
                "for_ms": now.saturating_sub(*since),
            })).collect::<Vec<_>>(),
        })
    }
}
