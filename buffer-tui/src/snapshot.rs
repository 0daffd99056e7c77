//! What one poll of Redis saw: plain data, sent from the poller to the app.

use std::collections::HashMap;

use buffer_core::{
    BatchId, CoalesceRules, CoalescedView, FailingWork, FailureRecord, LockInfo, PersisterInfo,
    PreparedSummary, ServerInfo, StoreLimits, StoreName, StoreSummary,
};

/// One poll: the server, every store and prepared batch from the indexes, and the details of
/// just the stores the dashboard shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// When the poll started (Unix ms); lock TTLs count down from here.
    pub(crate) taken_at_ms: u64,
    /// Facts from `INFO`.
    pub(crate) server: ServerInfo,
    /// Every live store (from the group indexes, so cheap for 10 000 stores).
    pub(crate) stores: Vec<StoreSummary>,
    /// Every prepared batch waiting to be persisted.
    pub(crate) prepared: Vec<PreparedSummary>,
    /// Every failure record: batches (and live stores) that failed to persist, with their
    /// attempts and next retry. A record whose batch is gone is ignored.
    pub(crate) failures: Vec<FailingWork>,
    /// Details of the rows that were visible when the poll started.
    pub(crate) details: HashMap<StoreName, StoreDetail>,
    /// Everything shown about the selected store.
    pub(crate) focus: Option<FocusDetail>,
    /// The persisters that announced themselves recently (their thresholds give the time
    /// until a store's flush); silent ones too, for the persisters screen to mark.
    pub(crate) persisters: Vec<PersisterInfo>,
    /// The paused stores.
    pub(crate) paused: Vec<StoreName>,
    /// Every held lock of a store or batch, read only while the persisters screen is shown.
    pub(crate) held: Vec<HeldBy>,
    /// Every live coalescing store with the writes merged into its live rows: the push rate
    /// counts these writes (a coalescing store's records are its entities, which grow only
    /// when a write is a new entity's first).
    pub(crate) merged_writes: Vec<(StoreName, u64)>,
}

/// A lock held on a store or batch: what the persisters screen lists under its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeldBy {
    /// The store.
    pub(crate) store: StoreName,
    /// The lock, with the batch it protects (`None`: the store lock).
    pub(crate) lock: HeldLock,
}

/// What the table shows for a visible row beyond the index data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreDetail {
    /// The number of unique top-level keys of the live store (exact, from SCARD).
    pub(crate) unique_keys: u64,
    /// The store's lock, or else the lock of one of its prepared batches (a persister hands
    /// the store lock over to the batch it prepares).
    pub(crate) lock: Option<HeldLock>,
    /// The cluster master holding the store (`host:port`); `None` on one server.
    pub(crate) node: Option<String>,
    /// For a coalescing store, the writes merged into its live rows (its records are its
    /// entities); `None` for an append store.
    pub(crate) merged_writes: Option<u64>,
}

/// A lock seen by a poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeldLock {
    /// Who holds it.
    pub(crate) holder: String,
    /// Its TTL when the poll read it, `None` when it never expires.
    pub(crate) ttl_ms: Option<u64>,
    /// The batch it protects, `None` for the store lock itself.
    pub(crate) batch: Option<BatchId>,
}

impl HeldLock {
    /// The lock of a store or batch, from what `lock_infos` returned.
    pub(crate) fn new(info: LockInfo, batch: Option<BatchId>) -> Self {
        Self {
            holder: info.holder,
            ttl_ms: info.ttl.map(buffer_core::millis),
            batch,
        }
    }
}

/// The remaining TTL of a lock read at `read_at_ms`, as of `now_ms`: counts down between
/// polls, and stops at zero.
pub(crate) fn remaining_ttl_ms(ttl_ms: u64, read_at_ms: u64, now_ms: u64) -> u64 {
    ttl_ms.saturating_sub(now_ms.saturating_sub(read_at_ms))
}

/// The selected store in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FocusDetail {
    pub(crate) store: StoreName,
    /// Its unique keys, sorted, up to a limit.
    pub(crate) keys: Vec<String>,
    /// The number of unique keys (exact, from SCARD; `keys` may list fewer).
    pub(crate) key_count: u64,
    /// Its latest records as JSON texts, oldest first.
    pub(crate) latest: Vec<String>,
    /// Its prepared batches, oldest first.
    pub(crate) batches: Vec<BatchDetail>,
    /// The failure record of the live store, when persisters could not prepare it.
    pub(crate) failure: Option<FailureRecord>,
    /// Its limits and its use of them, when it has any.
    pub(crate) limits: Option<LimitUse>,
    /// The cluster master holding the store (`host:port`); `None` on one server.
    pub(crate) node: Option<String>,
    /// Its rules and live rows at a glance, when it is a coalescing store.
    pub(crate) coalesced: Option<CoalescedFocus>,
}

/// A coalescing store as its screen shows it: its rules, the writes merged into its live
/// rows, and its top entities by one summed field (the one the user cycled to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CoalescedFocus {
    pub(crate) rules: CoalesceRules,
    /// The merged writes and the top entities by `view.field` (`None` when no field is
    /// summed).
    pub(crate) view: CoalescedView,
    /// How many fields are summed: the `t` key cycles through them.
    pub(crate) sum_fields: usize,
}

/// The summed field the top entities rank by: the `cycle`-th of the rules' summed fields
/// (sorted by name), wrapping around; `None` when no field is summed.
pub(crate) fn top_field(rules: &CoalesceRules, cycle: usize) -> Option<&str> {
    let fields: Vec<&str> = rules.fields_with(buffer_core::MergeRule::Sum).collect();
    fields.get(cycle % fields.len().max(1)).copied()
}

/// A store's limits and how much of them it uses. The live records and bytes come from the
/// indexes (the row); only the rate's use is read for the selected store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LimitUse {
    /// The limits set on the store.
    pub(crate) limits: StoreLimits,
    /// Records admitted in the current second of Redis's clock, when it has a rate limit.
    pub(crate) rate_now: Option<u64>,
}

/// A prepared batch of the selected store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchDetail {
    /// Its id (which carries its creation time).
    pub(crate) id: BatchId,
    /// Records, bytes and keys, `None` when it was emptied while the poll ran.
    pub(crate) size: Option<BatchSize>,
    /// Who is writing it out, if anyone.
    pub(crate) lock: Option<LockInfo>,
    /// Its failure record, when attempts to persist it failed.
    pub(crate) failure: Option<FailureRecord>,
}

/// The size of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchSize {
    /// Number of records.
    pub(crate) records: u64,
    /// Bytes of compact JSON.
    pub(crate) bytes: u64,
    /// Unique top-level keys.
    pub(crate) keys: u64,
}
